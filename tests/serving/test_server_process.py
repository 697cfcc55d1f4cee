"""The real `modeldeploy-server serve` process: readiness, graceful SIGTERM, load failures, workers."""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import skops.io
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import SERVER, RunningServer, v2_tensor
from sklearn.ensemble import RandomForestClassifier

SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def start_server() -> Iterator[Any]:
    servers: list[RunningServer] = []

    def start(model_dir: Path, **settings: str) -> RunningServer:
        servers.append(RunningServer(model_dir, **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forest big enough that predicting many rows takes a noticeable time."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 4))
    labels = (features[:, 0] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=150, random_state=0, n_jobs=1).fit(features, labels)
    directory = tmp_path_factory.mktemp("forest")
    skops.io.dump(forest, directory / "forest.skops")
    return directory


def test_sigterm_lets_in_flight_requests_finish(start_server: Any, slow_model_dir: Path) -> None:
    server = start_server(slow_model_dir)
    server.wait_ready()
    rows = np.random.default_rng(1).normal(size=(30000, 4)).round(3).tolist()
    replies: list[httpx.Response] = []

    def slow_request() -> None:
        body = {"inputs": [v2_tensor(rows)], "outputs": [{"name": "predict"}]}
        replies.append(httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=60))

    requester = threading.Thread(target=slow_request)
    requester.start()
    time.sleep(1.0)  # the request is being predicted: sending and decoding it takes a fraction of this
    server.process.send_signal(signal.SIGTERM)
    requester.join(60)
    assert server.process.wait(30) == 0
    assert replies and replies[0].status_code == 200
    assert len(replies[0].json()["outputs"][0]["data"]) == 30000


def test_a_model_that_cannot_load_stops_the_server_with_a_failure(
    start_server: Any, iris_joblib_dir: Path
) -> None:
    server = start_server(iris_joblib_dir)
    assert server.process.wait(60) == 1
    output = server.process.stdout.read()
    assert "Could not load the model" in output
    assert "ALLOW_PICKLE" in output


def test_invalid_settings_are_reported_in_one_line(tmp_path: Path) -> None:
    environment = {**os.environ, "MODELDEPLOY_SERVER_VARIANT": "blue"}
    done = subprocess.run([SERVER, "serve"], env=environment, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "variant" in done.stderr
    assert done.stderr.count("\n") == 1


def test_two_workers_with_batching_share_their_metrics(start_server: Any, iris_skops_dir: Path) -> None:
    server = start_server(iris_skops_dir, workers="2", batching_enabled="true", batch_window_ms="5")
    server.wait_ready()

    def post_many(count: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return [
                client.post("/v2/models/iris/infer", json={"inputs": [v2_tensor([SETOSA])]}).status_code
                for _ in range(count)
            ]

    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(post_many(25))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(code for codes in results for code in codes) == [200] * 100
    # Both workers must be ready before the counts are complete: ask until the scrape adds up.
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        values = {
            (sample.name, sample.labels.get("code"), sample.labels.get("endpoint")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in ("modeldeploy_requests_total", "modeldeploy_predicted_rows_total")
        }
        if values.get(("modeldeploy_predicted_rows_total", None, None)) == 100 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert values[("modeldeploy_requests_total", "200", "infer")] == 100
    assert values[("modeldeploy_predicted_rows_total", None, None)] == 100
    assert "modeldeploy_model_info{" in text
