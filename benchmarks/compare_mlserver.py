"""Throughput and latency of modeldeploy-server against MLServer on this machine.

Both servers get the same models and the same V2 requests over loopback; `wrk` generates the load.
MLServer is installed into its own virtualenv (its pins clash with ours). Prints a table; not a
test. Run from the repository: `.venv/bin/python benchmarks/compare_mlserver.py`.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import skops.io
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

MLSERVER_VENV = Path.home() / ".cache" / "modeldeploy" / "mlserver-venv"
# MLServer pins fastapi below 0.116; with uvloop 0.23 its inference workers die at start-up.
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"]
SERVER = Path(sys.executable).parent / "modeldeploy-server"
CONCURRENCIES = (1, 8, 64)
BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Measurement:
    server: str
    model: str
    batch: int
    concurrency: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ensure_mlserver() -> Path:
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *MLSERVER_PACKAGES], check=True)
    return MLSERVER_VENV / "bin" / "mlserver"


def make_models(root: Path) -> dict[str, tuple[Any, int]]:
    """The tiny and the heavy model, saved for both servers; returns each with its feature count."""
    iris_features, iris_labels = load_iris(return_X_y=True)
    features, labels = make_classification(n_samples=5000, n_features=20, n_informative=10, random_state=0)
    models = {
        "tiny": (LogisticRegression(max_iter=1000).fit(iris_features, iris_labels), 4),
        "heavy": (RandomForestClassifier(n_estimators=100, random_state=0).fit(features, labels), 20),
    }
    for name, (model, _) in models.items():
        (root / "modeldeploy" / name).mkdir(parents=True)
        skops.io.dump(model, root / "modeldeploy" / name / "model.skops")
        (root / "mlserver" / name).mkdir(parents=True)
        joblib.dump(model, root / "mlserver" / name / "model.joblib")
        settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel"}
        settings["parameters"] = {"uri": "./model.joblib"}  # type: ignore[assignment]
        (root / "mlserver" / name / "model-settings.json").write_text(json.dumps(settings))
    return models


def request_body(features: int, batch: int) -> str:
    rows = np.random.default_rng(batch).normal(size=(batch, features)).round(4)
    tensor = {
        "name": "input-0",
        "shape": [batch, features],
        "datatype": "FP64",
        "data": rows.reshape(-1).tolist(),
    }
    return json.dumps({"inputs": [tensor], "outputs": [{"name": "predict"}]})


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def running(
    command: list[str], ready_url: str, env: dict[str, str], cwd: Path | None = None
) -> Iterator[None]:
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(ready_url, process)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_wrk(
    url: str, body: str, concurrency: int, seconds: int, scratch: Path
) -> tuple[float, float, float, int]:
    script = scratch / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    threads = str(min(2, concurrency))
    command = [
        "wrk",
        "-t",
        threads,
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _milliseconds(re.search(r"\s50%\s+([\d.]+\w+)", output).group(1))  # type: ignore[union-attr]
    p99 = _milliseconds(re.search(r"\s99%\s+([\d.]+\w+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(value) for value in socket_errors.groups())
    return rate, p50, p99, failed


def _milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def measure(
    server: str, model: str, features: int, url: str, seconds: int, scratch: Path
) -> list[Measurement]:
    run_wrk(url, request_body(features, 1), 8, 2, scratch)  # warm-up
    results = []
    for batch in BATCH_SIZES:
        for concurrency in CONCURRENCIES:
            rate, p50, p99, errors = run_wrk(
                url, request_body(features, batch), concurrency, seconds, scratch
            )
            results.append(Measurement(server, model, batch, concurrency, rate, p50, p99, errors))
            print(
                f"  {server:<22} {model:<6} batch {batch:>2} c {concurrency:>2}: {rate:8.0f} req/s "
                f"p50 {p50:7.2f} ms p99 {p99:7.2f} ms errors {errors}",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="duration of each load run")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 1
    mlserver = ensure_mlserver()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as directory:
        root = Path(directory)
        models = make_models(root)
        base_env = {
            key: value for key, value in os.environ.items() if not key.startswith("MODELDEPLOY_SERVER_")
        }
        variants = {
            "modeldeploy 2 workers": {"MODELDEPLOY_SERVER_WORKERS": "2"},
            "modeldeploy 2w batching": {
                "MODELDEPLOY_SERVER_WORKERS": "2",
                "MODELDEPLOY_SERVER_BATCHING_ENABLED": "true",
                "MODELDEPLOY_SERVER_BATCH_MAX_SIZE": "64",
                "MODELDEPLOY_SERVER_BATCH_WINDOW_MS": "2",
            },
        }
        for model, (_, features) in models.items():
            for variant, extra in variants.items():
                port = free_port()
                env = {
                    **base_env,
                    **extra,
                    "MODELDEPLOY_SERVER_MODEL_NAME": model,
                    "MODELDEPLOY_SERVER_MODEL_DIR": str(root / "modeldeploy" / model),
                    "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
                    "MODELDEPLOY_SERVER_HTTP_PORT": str(port),
                }
                base = f"http://127.0.0.1:{port}"
                with running([str(SERVER), "serve"], f"{base}/v2/health/ready", env):
                    url = f"{base}/v2/models/{model}/infer"
                    measurements += measure(variant, model, features, url, arguments.seconds, root)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port}
        settings["metrics_port"] = metrics_port
        (root / "mlserver" / "settings.json").write_text(json.dumps(settings))
        base = f"http://127.0.0.1:{http_port}"
        with running(
            [str(mlserver), "start", "."], f"{base}/v2/health/ready", base_env, cwd=root / "mlserver"
        ):
            for model, (_, features) in models.items():
                wait_ready(f"{base}/v2/models/{model}/ready")
                measurements += measure(
                    "mlserver 1.7.1",
                    model,
                    features,
                    f"{base}/v2/models/{model}/infer",
                    arguments.seconds,
                    root,
                )
    print_table(measurements)
    if arguments.json:
        arguments.json.write_text(json.dumps([m.__dict__ for m in measurements], indent=2))
    return 0


def print_table(measurements: list[Measurement]) -> None:
    print()
    print(f"| {'server':<24} | model | batch | conc | req/s | p50 ms | p99 ms | errors |")
    print(f"|{'-' * 26}|-------|-------|------|-------|--------|--------|--------|")
    for m in sorted(measurements, key=lambda m: (m.model, m.batch, m.concurrency, m.server)):
        print(
            f"| {m.server:<24} | {m.model:<5} | {m.batch:>5} | {m.concurrency:>4} | {m.requests_per_second:>5.0f} "
            f"| {m.p50_ms:>6.2f} | {m.p99_ms:>6.2f} | {m.errors:>6} |"
        )


if __name__ == "__main__":
    sys.exit(main())
