"""The operator's Prometheus client against a real Prometheus, and against failures on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from modeldeploy_localcluster.cluster import free_port
from modeldeploy_localcluster.standins import PrometheusProcess
from modeldeploy_operator.prometheus import PrometheusClient, PrometheusError, Sample

pytestmark = pytest.mark.e2e


def query(address: str, promql: str, timeout: float = 5.0) -> list[Sample]:
    async def run() -> list[Sample]:
        async with httpx.AsyncClient() as client:
            return await PrometheusClient(client, timeout=timeout).query(address, promql)

    return asyncio.run(run())


def failure_kind(address: str, promql: str = "up", timeout: float = 5.0) -> str:
    with pytest.raises(PrometheusError) as raised:
        query(address, promql, timeout)
    return raised.value.kind


def test_queries_return_samples_and_special_values(prometheus: PrometheusProcess) -> None:
    assert query(prometheus.url, 'label_replace(vector(2), "variant", "canary", "", "")') == [
        Sample({"variant": "canary"}, 2.0)
    ]
    assert query(prometheus.url, 'up{job="no-such-job"}') == []
    (not_a_number,) = query(prometheus.url, "vector(0) / vector(0)")
    assert not_a_number.value != not_a_number.value


def test_a_bad_query_is_reported_as_such(prometheus: PrometheusProcess) -> None:
    assert failure_kind(prometheus.url, "sum(rate(") == "bad-query"


def test_nothing_listening_is_unreachable() -> None:
    assert failure_kind(f"http://127.0.0.1:{free_port()}") == "unreachable"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_prometheus_that_never_answers_times_out(silent_server: str) -> None:
    assert failure_kind(silent_server, timeout=0.5) == "timeout"


class _Unavailable(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "error", "error": "overloaded"}')

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_error_is_reported_with_its_status(unavailable_server: str) -> None:
    with pytest.raises(PrometheusError) as raised:
        query(unavailable_server, "up")
    assert raised.value.kind == "http"
    assert "503" in str(raised.value) and "overloaded" in str(raised.value)
