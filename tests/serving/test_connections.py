"""Connection timeouts, the connection bound and keep-alive rotation, on real server processes."""

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_helpers import RunningServer

from modeldeploy_serving.connections import (
    RESERVED_FILE_DESCRIPTORS,
    ConnectionLimits,
    should_close_after,
    usable_connections,
)

LIMITS = ConnectionLimits(
    idle_timeout=60, request_read_timeout=30, max_connections=100, max_requests=3, max_age=10
)


def test_a_connection_closes_after_its_share_of_requests_or_its_age_or_while_draining() -> None:
    assert not should_close_after(2, 1.0, LIMITS, draining=False)
    assert should_close_after(3, 1.0, LIMITS, draining=False)
    assert should_close_after(1, 10.0, LIMITS, draining=False)
    assert should_close_after(1, 0.0, LIMITS, draining=True)
    unlimited = ConnectionLimits(60, 30, 100, max_requests=0, max_age=0)
    assert not should_close_after(10**6, 10.0**6, unlimited, draining=False)


def test_the_connection_bound_fits_in_the_file_limit() -> None:
    assert usable_connections(2048, 1 << 20) == 2048
    assert usable_connections(2048, 1024) == 1024 - RESERVED_FILE_DESCRIPTORS
    assert usable_connections(2048, 10) == 1


@pytest.fixture
def server(iris_skops_dir: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    options: dict[str, Any] = getattr(request, "param", {})
    running = RunningServer(iris_skops_dir, **options)
    try:
        running.wait_ready(120)
        yield running
    finally:
        running.stop()


def _connect(server: RunningServer) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return connection


def _closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (reading what it sends)."""
    connection.settimeout(within)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize("server", [{"request_read_timeout_seconds": "1"}], indirect=True)
def test_a_request_header_that_never_ends_is_dropped(server: RunningServer) -> None:
    with _connect(server) as connection:
        connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: server\r\nX-Slow: ")
        started = time.monotonic()
        assert _closed_by_server(connection, within=10)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("server", [{"request_read_timeout_seconds": "1"}], indirect=True)
def test_a_request_body_that_never_ends_is_dropped(server: RunningServer) -> None:
    with _connect(server) as connection:
        connection.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: server\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inputs": ['
        )
        assert _closed_by_server(connection, within=10)


@pytest.mark.parametrize("server", [{"idle_connection_timeout_seconds": "1"}], indirect=True)
def test_a_connection_that_never_sends_anything_is_closed(server: RunningServer) -> None:
    with _connect(server) as connection:
        assert _closed_by_server(connection, within=10)


@pytest.mark.parametrize("server", [{"idle_connection_timeout_seconds": "1"}], indirect=True)
def test_an_idle_keep_alive_connection_is_closed(server: RunningServer) -> None:
    with _connect(server) as connection:
        connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: server\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(connection, within=10)


def test_a_slow_but_steady_connection_is_kept(server: RunningServer) -> None:
    """Requests arriving at a normal pace on one connection are all answered on it."""
    with _connect(server) as connection:
        for _ in range(3):
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: server\r\n\r\n")
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)


def _open_file_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_held_sockets_cannot_exhaust_the_file_limit_and_health_keeps_answering(
    iris_skops_dir: Path,
) -> None:
    # A file limit of 256 leaves a bound of 128 connections; 300 idle and half-sent sockets
    # would take every descriptor without the bound.
    server = RunningServer(iris_skops_dir, file_limit=256)
    held: list[socket.socket] = []
    try:
        server.wait_ready(120)
        for index in range(300):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if index % 2:
                connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: s")
            held.append(connection)
        time.sleep(0.5)
        assert _open_file_count(server.process.pid) < 256
        for _ in range(5):
            answer = httpx.get(f"{server.url}/v2/health/live", timeout=5)
            assert answer.status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        for connection in held:
            connection.close()
        server.stop()


@pytest.mark.parametrize(
    "server", [{"max_requests_per_connection": "3", "max_connection_age_seconds": "0"}], indirect=True
)
def test_a_connection_is_closed_after_its_share_of_requests(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        answers = [client.get("/v2/health/live") for _ in range(4)]
    assert [answer.headers.get("connection") for answer in answers] == [None, None, "close", None]


@pytest.mark.parametrize(
    "server", [{"max_requests_per_connection": "0", "max_connection_age_seconds": "1"}], indirect=True
)
def test_a_connection_is_closed_once_it_is_old_enough(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        young = client.get("/v2/health/live")
        time.sleep(1.2)
        old = client.get("/v2/health/live")
        renewed = client.get("/v2/health/live")
    assert young.headers.get("connection") is None
    assert old.headers.get("connection") == "close"
    assert renewed.headers.get("connection") is None
