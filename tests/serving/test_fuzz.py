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


# The bound on liveness while large bodies are decoded (the issue asks for 100 ms). It applies
# to the 95th percentile of the probes (150 to 200 of them): on a shared two-core machine the
# scheduler alone delays a few probes by more, whatever the server does, while a server whose
# decoding holds the GIL for long delays many. Measured with this test's load on this machine
# (load average 6 to 10): before decoding and encoding were done in pieces the 95th
# percentile was 170-183 ms (slowest probe 350-500 ms), after 70 ms (slowest 190 ms).
_LIVENESS_P95_SECONDS = 0.1
# Every probe must still answer within the kubelet's default probe timeout.
_PROBE_TIMEOUT_SECONDS = 1.0


def _probe_liveness_during(server: RunningServer, bodies: list[bytes]) -> tuple[list[int], list[float]]:
    """The statuses of `bodies` posted at once, and the latencies of liveness probes meanwhile."""
    statuses: list[int] = []

    def post(body: bytes) -> None:
        reply = httpx.post(
            server.url + "/v2/models/iris/infer",
            content=body,
            headers={"content-type": "application/json"},
            timeout=120,
        )
        statuses.append(reply.status_code)

    latencies = []
    with httpx.Client(base_url=server.url, timeout=30) as probe:
        for _ in range(20):  # the client's first requests are slower than its others
            probe.get("/v2/health/live")
        senders = [threading.Thread(target=post, args=(body,)) for body in bodies]
        for sender in senders:
            sender.start()
        while any(sender.is_alive() for sender in senders):
            started = time.perf_counter()
            assert probe.get("/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    for sender in senders:
        sender.join()
    return statuses, sorted(latencies)


def _assert_prompt(latencies: list[float]) -> None:
    p95 = latencies[int(0.95 * len(latencies))]
    summary = (
        f"{len(latencies)} probes: 95% within {p95 * 1000:.0f} ms, slowest {latencies[-1] * 1000:.0f} ms"
    )
    assert len(latencies) >= 50, summary
    assert p95 < _LIVENESS_P95_SECONDS, summary
    assert latencies[-1] < _PROBE_TIMEOUT_SECONDS, summary


def test_liveness_answers_promptly_while_large_requests_are_decoded(iris_skops_dir: Path) -> None:
    """Parsing, decoding and encoding large bodies run on threads, in pieces short enough that
    the event loop gets the GIL between them: before, one 2 MB request held /v2/health/live for
    2.4 s, and four of 8 MB each, parsed and encoded in single steps, held it for up to half a
    second;
    decoding them a few at a time keeps the peak memory a small multiple of the bodies."""
    body = _large_valid_body(420_000)
    server = RunningServer(iris_skops_dir, memory_limit_bytes=_ADDRESS_SPACE_LIMIT)
    try:
        server.wait_ready()
        before = server.peak_rss_bytes()
        statuses, latencies = _probe_liveness_during(server, [body] * 4)
        growth = server.peak_rss_bytes() - before
    finally:
        server.stop()
    assert statuses == [200] * 4
    _assert_prompt(latencies)
    # Four bodies arrive at once but only two are decoded at a time (large_requests_at_once);
    # a parsed JSON number costs several times its text (measured here: 44 times one body in
    # all, with the four bodies themselves and the threads' allocator arenas).
    assert growth < 64 * len(body), (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for 4 x {len(body) / 2**20:.1f} MiB"
    )


def _strings_body(count: int) -> bytes:
    """A V2 body of `count` short BYTES strings with escapes: the iris model refuses it (400)."""
    data = ["ab", 'a\\"b,]', "[{,}]"] * (count // 3)
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    ).encode()


def test_liveness_answers_promptly_while_bodies_with_strings_escapes_or_errors_are_parsed(
    iris_skops_dir: Path,
) -> None:
    """Bodies with backslashes, with strings in their data, or malformed were parsed whole, one
    orjson call per body holding the GIL: 150 ms and more for each of these 8-12 MB bodies."""
    valid = _large_valid_body(420_000)
    with_backslash = valid[:-1] + b', "id": "a\\\\b"}'
    malformed = valid.replace(b"]}]}", b",]}]}")
    bodies = [_strings_body(1_500_000), with_backslash, malformed, _strings_body(1_500_000)[:-1]]
    server = RunningServer(iris_skops_dir, memory_limit_bytes=_ADDRESS_SPACE_LIMIT)
    try:
        server.wait_ready()
        statuses, latencies = _probe_liveness_during(server, bodies)
    finally:
        server.stop()
    assert sorted(statuses) == [200, 400, 400, 400]
    _assert_prompt(latencies)
