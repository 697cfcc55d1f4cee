"""Fetching artifacts from local paths, HTTP, S3 (moto's server) and MLflow (a real tracking server)."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import skops.io
from serving_helpers import free_port

from modeldeploy_serving.errors import ArtifactError, FetchError
from modeldeploy_serving.fetch import FETCHED_MARKER, fetch
from modeldeploy_serving.loading import load_artifact
from modeldeploy_serving.settings import ModelFormat, VersionMismatchPolicy

SETOSA = [[5.1, 3.5, 1.4, 0.2]]
BIN = Path(sys.executable).parent


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if not path.name.startswith("."))


def predict_setosa(directory: Path) -> list[Any]:
    loaded = load_artifact(directory, ModelFormat.AUTO, None, False, VersionMismatchPolicy.REFUSE)
    return list(loaded.model.predict(np.array(SETOSA), ["predict"])["predict"].tolist())


@pytest.fixture
def model_file(tmp_path: Path, iris_classifier: Any) -> Path:
    path = tmp_path / "source" / "iris.skops"
    path.parent.mkdir()
    skops.io.dump(iris_classifier, path)
    return path


# --- local -----------------------------------------------------------------------------------


def test_a_local_file_is_copied_and_its_digest_returned(model_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert fetch(str(model_file), dest, sha256_of(model_file), {}) == sha256_of(model_file)
    assert visible(dest) == ["iris.skops"]
    assert predict_setosa(dest) == [0]


def test_a_file_uri_and_a_directory(model_file: Path, tmp_path: Path) -> None:
    (model_file.parent / "README").write_text("notes")
    dest = tmp_path / "dest"
    fetch(model_file.parent.as_uri(), dest, None, {})
    assert visible(dest) == ["README", "iris.skops"]


def test_a_digest_mismatch_fails_and_leaves_nothing_behind(model_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(
        FetchError, match=f"sha256 mismatch: expected {'0' * 64}, got {sha256_of(model_file)}"
    ):
        fetch(str(model_file), dest, "0" * 64, {})
    assert list(dest.iterdir()) == []


def test_fetching_again_replaces_the_previous_artifact(model_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch(str(model_file), dest, None, {})
    renamed = model_file.rename(model_file.with_name("other.skops"))
    fetch(str(renamed), dest, None, {})
    assert visible(dest) == ["other.skops"]
    assert (dest / FETCHED_MARKER).read_text().startswith(str(renamed))


def test_a_destination_with_foreign_files_is_refused(model_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(FetchError, match="not empty"):
        fetch(str(model_file), dest, None, {})
    assert (dest / "precious.txt").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/nonexistent/model.skops", "does not exist"),
        ("gs://bucket/model.skops", "unsupported model URI scheme 'gs'"),
        ("models:/iris/1", "MLFLOW_TRACKING_URI"),
        ("s3:///key", "names no bucket"),
    ],
)
def test_unfetchable_uris_give_clear_errors(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        fetch(uri, tmp_path / "dest", None, {})


def test_the_cli_prints_one_line_and_fails_on_error(model_file: Path, tmp_path: Path) -> None:
    command = [
        str(BIN / "modeldeploy-server"),
        "fetch",
        "--uri",
        str(model_file),
        "--dest",
        str(tmp_path / "d"),
    ]
    done = subprocess.run([*command, "--sha256", "0" * 64], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("modeldeploy-server fetch: error:")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert sha256_of(model_file) in done.stdout
    done = subprocess.run([*command, "--sha256", "abc"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "expected 64 hexadecimal digits" in done.stderr


# --- http ------------------------------------------------------------------------------------


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, answering 503 to the first `failures` requests."""

    failures = 0

    def do_GET(self) -> None:
        if FlakyHandler.failures > 0:
            FlakyHandler.failures -= 1
            self.send_error(503)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_base(model_file: Path) -> Iterator[str]:
    handler = lambda *args: FlakyHandler(*args, directory=str(model_file.parent))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_retries_transient_errors(http_base: str, model_file: Path, tmp_path: Path) -> None:
    FlakyHandler.failures = 2
    dest = tmp_path / "dest"
    assert fetch(f"{http_base}/iris.skops?token=secret", dest, sha256_of(model_file), {}) == sha256_of(
        model_file
    )
    assert visible(dest) == ["iris.skops"]
    assert FlakyHandler.failures == 0


def test_http_not_found_fails_at_once_without_leaking_the_query(http_base: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"HTTP 404") as raised:
        fetch(f"{http_base}/missing.skops?token=secret", tmp_path / "dest", None, {})
    assert "secret" not in str(raised.value)
    assert time.monotonic() - started < 2


def test_an_unreachable_server_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"ConnectError.*gave up after 4 attempts"):
        fetch(f"http://127.0.0.1:{free_port()}/model.skops", tmp_path / "dest", None, {})


def test_an_http_uri_without_a_file_name_is_refused(http_base: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="does not end in a file name"):
        fetch(f"{http_base}/", tmp_path / "dest", None, {})


# --- s3 (moto's server mode) -------------------------------------------------------------------


def wait_for_http(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server for {url} exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds}s")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(endpoint, process, 30)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, model_file: Path) -> str:
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    client = boto3.client("s3")
    bucket = f"models-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(model_file), bucket, "iris/v1/iris.skops")
    client.put_object(Bucket=bucket, Key="mlflow/model/MLmodel", Body=b"flavors: {}\n")
    client.put_object(Bucket=bucket, Key="mlflow/model/data/model.skops", Body=model_file.read_bytes())
    return bucket


def test_an_s3_object(s3_bucket: str, model_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch(f"s3://{s3_bucket}/iris/v1/iris.skops", dest, sha256_of(model_file), dict(os.environ))
    assert visible(dest) == ["iris.skops"]
    assert predict_setosa(dest) == [0]


def test_an_s3_prefix_keeps_the_tree(s3_bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch(f"s3://{s3_bucket}/mlflow/model", dest, None, dict(os.environ))
    assert visible(dest) == ["MLmodel", "data"]
    assert (dest / "data" / "model.skops").is_file()


def test_a_missing_s3_key_is_a_clear_error(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="no such object, and no objects under that prefix"):
        fetch(f"s3://{s3_bucket}/absent/model.skops", tmp_path / "dest", None, dict(os.environ))
    with pytest.raises(FetchError, match="NoSuchBucket"):
        fetch("s3://no-such-bucket/model.skops", tmp_path / "dest", None, dict(os.environ))


# --- MLflow (a real tracking server) ------------------------------------------------------------

LOG_MODEL_LIKE_MLFLOWS_EXAMPLE = """
import sys
import mlflow
from mlflow.models import infer_signature
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

mlflow.set_tracking_uri(sys.argv[1])
X, y = datasets.load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
params = {"solver": "lbfgs", "max_iter": 1000, "random_state": 8888}
lr = LogisticRegression(**params).fit(X_train, y_train)
mlflow.set_experiment("MLflow Quickstart")
with mlflow.start_run() as run:
    mlflow.log_params(params)
    mlflow.log_metric("accuracy", lr.score(X_test, y_test))
    signature = infer_signature(X_train, lr.predict(X_train))
    mlflow.sklearn.log_model(
        sk_model=lr,
        name="iris_model",
        signature=signature,
        input_example=X_train,
        registered_model_name="tracking-quickstart",
    )
    # A plain run artifact as well, the way models were stored before MLflow 3.
    import skops.io
    skops.io.dump(lr, "exported.skops")
    mlflow.log_artifact("exported.skops", artifact_path="exported")
mlflow.MlflowClient().set_registered_model_alias("tracking-quickstart", "champion", "1")
print(run.info.run_id)
"""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A tracking server with the quickstart's model registered; yields its URL and the run id."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", process, 120)
        logged = subprocess.run(
            [sys.executable, "-c", LOG_MODEL_LIKE_MLFLOWS_EXAMPLE, url],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=180,
        )
        yield url, logged.stdout.strip().splitlines()[-1]
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(
    "uri",
    ["models:/tracking-quickstart/1", "models:/tracking-quickstart@champion", "runs:/RUN/iris_model"],
)
def test_mlflow_uris_resolve_through_the_tracking_server(
    mlflow_server: tuple[str, str], tmp_path: Path, uri: str
) -> None:
    url, run_id = mlflow_server
    dest = tmp_path / "dest"
    fetch(uri.replace("RUN", run_id), dest, None, {"MLFLOW_TRACKING_URI": url})
    assert {"MLmodel", "model.skops"} <= set(visible(dest))
    assert predict_setosa(dest) == [0]


@pytest.mark.parametrize("path", ["exported", "exported/exported.skops"])
def test_plain_run_artifacts_download_through_the_proxy(
    mlflow_server: tuple[str, str], tmp_path: Path, path: str
) -> None:
    url, run_id = mlflow_server
    dest = tmp_path / "dest"
    fetch(f"runs:/{run_id}/{path}", dest, None, {"MLFLOW_TRACKING_URI": url})
    assert visible(dest) == ["exported.skops"]
    assert predict_setosa(dest) == [0]


def test_mlflow_errors_name_the_problem(mlflow_server: tuple[str, str], tmp_path: Path) -> None:
    environment = {"MLFLOW_TRACKING_URI": mlflow_server[0]}
    with pytest.raises(ArtifactError, match=r"MLflow tracking server: .*not found"):
        fetch("models:/no-such-model/1", tmp_path / "dest", None, environment)
    with pytest.raises(ArtifactError, match=r"MLflow tracking server: .*alias"):
        fetch("models:/tracking-quickstart@nobody", tmp_path / "dest", None, environment)
