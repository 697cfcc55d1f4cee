"""Fuzzing every endpoint from the server's own OpenAPI document: bad input never gives a 5xx."""

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from serving_helpers import RunningServer
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modeldeploy_serving.app import create_app
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.model import SklearnModel
from modeldeploy_serving.settings import ServerSettings


def _ready_app() -> Any:
    features, labels = load_iris(return_X_y=True)
    server_settings = ServerSettings(model_name="iris", model_version="v1", model_dir=Path("/nonexistent"))
    plane = DataPlane(server_settings)
    plane.serve_model(SklearnModel(LogisticRegression(max_iter=300).fit(features, labels)))
    return create_app(server_settings, data_plane=plane, load_model=False)


# The server's address space, a ceiling for the tests that could otherwise allocate without
# bound: the idle server maps well under this (its thread stacks and libraries).
_ADDRESS_SPACE_LIMIT = 3 * 2**30

schema = schemathesis.openapi.from_asgi("/openapi.json", _ready_app())


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.content:
        assert isinstance(response.json()["error"], str)


def _mixed_bodies() -> list[tuple[str, bytes]]:
    """Bodies of about 1 MB whose data mixes one long string with many numbers.

    Before the fix numpy turned each into a fixed-width unicode array as wide as the string for
    every element: 60,000 elements x 4,000 characters x 4 bytes, about 1 GB for each 250 kB.
    """
    numbers: list[Any] = [1.5] * 60_000
    long_string = "x" * 4_000
    v2_numeric = {
        "inputs": [
            {"name": "x", "shape": [15_001, 4], "datatype": "FP64", "data": [*numbers, long_string, 1, 2, 3]}
        ]
    }
    v2_bytes = {
        "inputs": [
            {"name": "x", "shape": [15_001, 4], "datatype": "BYTES", "data": [long_string, *numbers, 1, 2, 3]}
        ]
    }
    rows = [[1.5, 2.5, 3.5, 4.5]] * 15_000 + [[long_string, 1, 2, 3]]
    v1 = {"instances": rows}
    return [
        ("/v2/models/iris/infer", json.dumps(v2_numeric).encode()),
        ("/v2/models/iris/infer", json.dumps(v2_bytes).encode()),
        ("/v1/models/iris:predict", json.dumps(v1).encode()),
    ]


def test_mixed_strings_and_numbers_are_a_client_error_with_bounded_memory(iris_skops_dir: Path) -> None:
    server = RunningServer(iris_skops_dir, memory_limit_bytes=_ADDRESS_SPACE_LIMIT)
    try:
        server.wait_ready()
        before = server.peak_rss_bytes()
        for path, body in _mixed_bodies():
            for _ in range(3):
                reply = httpx.post(
                    server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60
                )
                assert reply.status_code == 400, reply.text
                assert isinstance(reply.json()["error"], str)
        growth = server.peak_rss_bytes() - before
        largest = max(len(body) for _, body in _mixed_bodies())
    finally:
        server.stop()
    # Parsing the JSON into Python objects costs some tens of bytes per value; the old decoder
    # needed about 4,000 times the body.
    assert growth < 64 * largest, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for {largest / 2**20:.1f} MiB bodies"
    )


def _large_valid_body(rows: int) -> bytes:
    """A valid V2 body of `rows` iris rows: several MB of JSON numbers to parse and decode."""
    data = [5.1, 3.5, 1.4, 0.2] * rows
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP64", "data": data}]}
    ).encode()


def test_liveness_answers_promptly_while_large_requests_are_decoded(iris_skops_dir: Path) -> None:
    """Parsing and decoding large bodies runs off the event loop: before, one 2 MB request held
    /v2/health/live for 2.4 s; now several of 4 MB at once leave it answering within a second,
    and decoding them a few at a time keeps the peak memory a small multiple of the bodies."""
    body = _large_valid_body(200_000)
    server = RunningServer(iris_skops_dir, memory_limit_bytes=_ADDRESS_SPACE_LIMIT)
    try:
        server.wait_ready()
        before = server.peak_rss_bytes()
        statuses: list[int] = []

        def post() -> None:
            reply = httpx.post(
                server.url + "/v2/models/iris/infer",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            statuses.append(reply.status_code)

        senders = [threading.Thread(target=post) for _ in range(4)]
        for sender in senders:
            sender.start()
        slowest = 0.0
        with httpx.Client(base_url=server.url, timeout=30) as probe:
            while any(sender.is_alive() for sender in senders):
                started = time.monotonic()
                assert probe.get("/v2/health/live").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
        for sender in senders:
            sender.join()
        growth = server.peak_rss_bytes() - before
    finally:
        server.stop()
    assert statuses == [200] * 4
    assert slowest < 1.0, f"/v2/health/live took {slowest:.2f} s while large requests were decoded"
    # Four bodies arrive at once but only two are decoded at a time (large_requests_at_once);
    # a parsed JSON number costs several times its text (measured here: 44 times one body in
    # all, with the four bodies themselves and the threads' allocator arenas).
    assert growth < 64 * len(body), (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for 4 x {len(body) / 2**20:.1f} MiB"
    )
