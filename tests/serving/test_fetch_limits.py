"""Fetching under hostile sources: size caps, gzip bombs, slow servers, signals, failed re-fetches,
symlinks, escaping MLflow model files, endless MLflow listings and one-line CLI errors."""

import http.server
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_serving.errors import ArtifactError, FetchError
from modeldeploy_serving.fetch import fetch

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
BOMB_DECODED_BYTES = 256 * MIB
STREAM_LIMIT_BYTES = 64 * MIB
"""The most a test server sends on an endless stream, so a missing cap fails instead of filling disk."""
DRIP_BYTES = 200
DRIP_INTERVAL_SECONDS = 0.2
LISTING_REQUEST_LIMIT = 500
"""After this many listings the fake tracking server answers 404, so an unbounded walk still ends."""


def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    return b"".join(compressor.compress(block) for _ in range(size // MIB)) + compressor.flush()


class HostileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the misbehaving artifacts the tests need; every loop here has a fixed bound."""

    bomb = b""
    listing_requests = 0

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/endless/model.bin":
                self._headers({})
                for _ in range(STREAM_LIMIT_BYTES // MIB):
                    self.wfile.write(bytes(MIB))
            elif path == "/bomb/model.bin":
                self._headers({"Content-Encoding": "gzip", "Content-Length": str(len(self.bomb))})
                self.wfile.write(self.bomb)
            elif path == "/bad-gzip/model.bin":
                self._headers({"Content-Encoding": "gzip", "Content-Length": "16"})
                self.wfile.write(b"\x1f\x8b" + b"not gzip at all!"[2:])
            elif path == "/drip/model.bin":
                self._headers({"Content-Length": str(DRIP_BYTES)})
                for _ in range(DRIP_BYTES):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(DRIP_INTERVAL_SECONDS)
            elif path == "/loop/model.bin":
                self.send_response(302)
                self.send_header("Location", "/loop/model.bin")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path.startswith("/any/"):
                self._headers({"Content-Length": "5"})
                self.wfile.write(b"model")
            elif path == "/api/2.0/mlflow-artifacts/artifacts":
                self._listing(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _headers(self, extra: dict[str, str]) -> None:
        self.send_response(200)
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()

    def _listing(self, query: dict[str, list[str]]) -> None:
        """A listing where every directory holds a directory of itself: it recurses for ever."""
        HostileHandler.listing_requests += 1
        if HostileHandler.listing_requests > LISTING_REQUEST_LIMIT:
            self.send_error(404)
            return
        path = query["path"][0]
        body = json.dumps({"files": [{"path": f"{path}/again", "is_dir": True}]}).encode()
        self._headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_base() -> Iterator[str]:
    HostileHandler.bomb = gzip_of_zeros(BOMB_DECODED_BYTES)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def limits(max_bytes: int = MIB, read_timeout: float = 30, deadline: float = 60) -> dict[str, str]:
    return {
        "MODELDEPLOY_FETCH_MAX_BYTES": str(max_bytes),
        "MODELDEPLOY_FETCH_READ_TIMEOUT_SECONDS": str(read_timeout),
        "MODELDEPLOY_FETCH_DEADLINE_SECONDS": str(deadline),
    }


def cli_fetch(uri: str, dest: str) -> list[str]:
    return [str(BIN / "modeldeploy-server"), "fetch", "--uri", uri, "--dest", dest]


def all_files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


# --- size, decompression and time limits ------------------------------------------------------


def test_a_stream_larger_than_the_cap_is_refused_once_the_cap_is_passed(
    hostile_base: str, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=f"larger than {MIB} bytes.*MODELDEPLOY_FETCH_MAX_BYTES"):
        fetch(f"{hostile_base}/endless/model.bin", dest, None, limits(max_bytes=MIB))
    assert all_files(dest) == []


def test_a_gzip_bomb_stops_at_the_cap_on_decompressed_bytes(hostile_base: str, tmp_path: Path) -> None:
    assert len(HostileHandler.bomb) < MIB  # the compressed body is itself under the cap
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=f"larger than {4 * MIB} bytes"):
        fetch(f"{hostile_base}/bomb/model.bin", dest, None, limits(max_bytes=4 * MIB))
    assert all_files(dest) == []


def test_a_gzip_bomb_under_the_cap_is_decoded_with_bounded_memory(hostile_base: str, tmp_path: Path) -> None:
    """256 MiB of decoded body through a process whose address space is capped well below twice that."""
    ceiling = 768 * MIB

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))

    done = subprocess.run(
        cli_fetch(f"{hostile_base}/bomb/model.bin", str(tmp_path / "dest")),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        preexec_fn=cap_memory,
        env={**os.environ, **limits(max_bytes=BOMB_DECODED_BYTES)},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dest" / "model.bin").stat().st_size == BOMB_DECODED_BYTES


def test_a_silent_server_times_out(hostile_base: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"ReadTimeout.*gave up after 4 attempts"):
        fetch(f"{hostile_base}/drip/model.bin", tmp_path / "dest", None, limits(read_timeout=0.05))


def test_a_dripping_server_hits_the_overall_deadline(hostile_base: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"took longer than 1 s.*MODELDEPLOY_FETCH_DEADLINE_SECONDS"):
        fetch(f"{hostile_base}/drip/model.bin", dest, None, limits(read_timeout=5, deadline=1))
    assert all_files(dest) == []


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_a_bad_limit_is_refused_naming_the_variable(tmp_path: Path, value: str) -> None:
    source = tmp_path / "model.skops"
    source.write_bytes(b"model")
    with pytest.raises(FetchError, match=f"MODELDEPLOY_FETCH_MAX_BYTES='{value}'"):
        fetch(str(source), tmp_path / "dest", None, {"MODELDEPLOY_FETCH_MAX_BYTES": value})


def test_a_directory_source_holding_the_destination_is_refused(tmp_path: Path) -> None:
    """Copying a folder into a destination inside it used to recurse until the path was too long."""
    (tmp_path / "model.skops").write_bytes(b"model")
    with pytest.raises(FetchError, match="contains the destination"):
        fetch(str(tmp_path), tmp_path / "dest", None, {})
    assert all_files(tmp_path / "dest") == []


def test_a_local_source_over_the_cap_is_refused_before_copying(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(2 * MIB))
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=f"larger than {MIB} bytes"):
        fetch(str(source), dest, None, limits(max_bytes=MIB))
    assert all_files(dest) == []


# --- keeping the previous model, cleaning staging ---------------------------------------------


@pytest.fixture
def fetched_once(tmp_path: Path) -> Path:
    source = tmp_path / "good" / "model.skops"
    source.parent.mkdir()
    source.write_bytes(b"the good model")
    dest = tmp_path / "dest"
    fetch(str(source), dest, None, {})
    return dest


@pytest.mark.parametrize("failure", ["missing", "mismatch"])
def test_a_failed_refetch_keeps_the_previous_model(fetched_once: Path, tmp_path: Path, failure: str) -> None:
    other = tmp_path / "other.skops"
    other.write_bytes(b"a new model")
    uri, pin = (str(tmp_path / "missing.skops"), None) if failure == "missing" else (str(other), "0" * 64)
    with pytest.raises(FetchError):
        fetch(uri, fetched_once, pin, {})
    assert (fetched_once / "model.skops").read_bytes() == b"the good model"
    assert all_files(fetched_once) == [".modeldeploy-fetched", "model.skops"]


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_download_cleans_staging_and_keeps_the_previous_model(
    fetched_once: Path, hostile_base: str, signal_number: int
) -> None:
    process = subprocess.Popen(
        cli_fetch(f"{hostile_base}/drip/model.bin", str(fetched_once)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = fetched_once / ".modeldeploy-staging" / "model.bin"
    for _ in range(300):
        if partial.exists() and partial.stat().st_size > 0:
            break
        time.sleep(0.1)
    assert partial.exists(), "the download did not start"
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.count("\n") == 1, stderr
    assert f"interrupted by {signal.Signals(signal_number).name}" in stderr
    assert all_files(fetched_once) == [".modeldeploy-fetched", "model.skops"]
    assert (fetched_once / "model.skops").read_bytes() == b"the good model"


# --- what a source may hold -------------------------------------------------------------------


def test_a_symlink_in_a_directory_source_is_refused_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model")
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "model.skops").write_bytes(b"model")
    (source / "sub" / "link").symlink_to(secret)
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=rf"{source / 'sub' / 'link'} is a symlink \(to {secret}\)"):
        fetch(str(source), dest, None, {})
    assert all_files(dest) == []


@pytest.mark.parametrize("pickled_model", ["../outside.pkl", "/etc/outside.pkl", "sub/../../x.pkl"])
def test_an_mlflow_model_file_outside_the_model_directory_is_refused(
    tmp_path: Path, pickled_model: str
) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "MLmodel").write_text(
        f"flavors:\n  sklearn:\n    pickled_model: {pickled_model}\n    serialization_format: pickle\n"
    )
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=f"pickled_model '{pickled_model}' points outside"):
        fetch(str(source), dest, None, {})
    assert all_files(dest) == []


def test_an_mlflow_model_file_inside_is_fetched_and_pinned(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: sub/./model.pkl\n")
    (source / "sub" / "model.pkl").write_bytes(b"pickle")
    first = fetch(str(source), tmp_path / "a", None, {})
    (source / "sub" / "model.pkl").write_bytes(b"another pickle")
    assert fetch(str(source), tmp_path / "b", None, {}) != first  # the loaded file is in the digest


def test_an_mlflow_listing_that_recurses_is_cut_off(hostile_base: str, tmp_path: Path) -> None:
    HostileHandler.listing_requests = 0
    with pytest.raises(ArtifactError, match="nested deeper than 32 directories"):
        fetch("mlflow-artifacts:/loop", tmp_path / "dest", None, {"MLFLOW_TRACKING_URI": hostile_base})
    assert HostileHandler.listing_requests <= 34


# --- every failure is one line on stderr ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("http://127.0.0.1:99999/model.bin", "http://127.0.0.1:99999/model.bin is not a valid URL"),
        ("BASE/any/a%00b.bin", "BASE/any/a%00b.bin: the file name 'a\\x00b.bin' holds control"),
        ("BASE/loop/model.bin", "BASE/loop/model.bin: too many redirects"),
        ("BASE/bad-gzip/model.bin", "BASE/bad-gzip/model.bin: the gzip-encoded body is corrupt"),
    ],
)
def test_fetch_failures_are_one_line_naming_the_source(
    hostile_base: str, tmp_path: Path, path: str, message: str
) -> None:
    done = subprocess.run(
        cli_fetch(path.replace("BASE", hostile_base), str(tmp_path / "dest")),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("modeldeploy-server fetch: error:")
    assert message.replace("BASE", hostile_base) in done.stderr
