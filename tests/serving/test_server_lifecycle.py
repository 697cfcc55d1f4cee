"""SIGTERM on a real server process: readiness false first, serve through the drain, exit 0."""

import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from serving_helpers import RunningServer, v2_tensor

from modeldeploy_operator.builders import SERVER_KEEP_ALIVE_FAREWELL_SECONDS
from modeldeploy_serving.lifecycle import DrainSignal, not_ready_answer

SETOSA = [5.1, 3.5, 1.4, 0.2]
INFER_BODY = {"inputs": [v2_tensor([SETOSA])]}
DRAIN_SECONDS = 5.0


def test_readiness_answers_become_not_ready() -> None:
    assert not_ready_answer("/v2/health/ready", 200, b"") == (400, b"")
    assert not_ready_answer("/v2/models/iris/ready", 200, b"") == (400, b"")
    status, body = not_ready_answer("/v1/models/iris", 200, b'{"name":"iris","ready":true}')
    assert status == 200 and orjson.loads(body) == {"name": "iris", "ready": False}
    assert not_ready_answer("/v2/models/other/ready", 404, b'{"error":"x"}') == (404, b'{"error":"x"}')


def test_workers_see_the_supervisors_drain_marker(tmp_path: Path) -> None:
    supervisor = DrainSignal(tmp_path / "draining")
    worker = DrainSignal(tmp_path / "draining")
    assert not worker.active()
    supervisor.begin()
    time.sleep(0.15)
    assert worker.active()


class Load:
    """Clients sending 1-row inferences until stopped: some open a connection per request, some
    keep theirs alive. Every failure (an exception or a status other than 200) is kept."""

    def __init__(self, url: str, fresh_clients: int = 2, keep_alive_clients: int = 2) -> None:
        self.url = url
        self.failures: list[str] = []
        self.answered_at: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._fresh) for _ in range(fresh_clients)]
        self._threads += [threading.Thread(target=self._keep_alive) for _ in range(keep_alive_clients)]
        for thread in self._threads:
            thread.start()

    def _record(self, send: Callable[[], httpx.Response]) -> None:
        try:
            answer = send()
        except httpx.HTTPError as error:
            self.failures.append(f"{type(error).__name__}: {error}")
        else:
            if answer.status_code == 200:
                self.answered_at.append(time.monotonic())
            else:
                self.failures.append(f"{answer.status_code} {answer.text}")
        time.sleep(0.005)

    def _fresh(self) -> None:
        while not self._stop.is_set():
            self._record(lambda: httpx.post(f"{self.url}/v2/models/iris/infer", json=INFER_BODY, timeout=10))

    def _keep_alive(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                self._record(lambda: client.post("/v2/models/iris/infer", json=INFER_BODY))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_without_a_failed_request_and_exits_0(iris_skops_dir: Path, workers: str) -> None:
    server = RunningServer(
        iris_skops_dir,
        workers=workers,
        drain_delay_seconds=str(DRAIN_SECONDS),
        graceful_shutdown_seconds="10",
    )
    try:
        server.wait_ready(120)
        load = Load(server.url)
        time.sleep(1.0)
        # A request sent in full just before SIGTERM, not yet read by the server.
        pending = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        pending.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: server\r\n\r\n")
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready_codes: list[tuple[float, int]] = []
        while time.monotonic() - signalled < 2.0:
            code = httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code
            ready_codes.append((time.monotonic() - signalled, code))
            time.sleep(0.1)
        live = httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code
        v1_status = httpx.get(f"{server.url}/v1/models/iris", timeout=5)
        # The load balancer stops sending new connections within the drain delay.
        time.sleep(max(0.0, signalled + DRAIN_SECONDS - 1.5 - time.monotonic()))
        load.stop()
        assert time.monotonic() < signalled + DRAIN_SECONDS, "the load stopped too late to judge"
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    assert pending.recv(4096).startswith(b"HTTP/1.1 200")
    pending.close()
    assert load.failures == []
    # uvicorn's worker supervisor looks at its signals every 0.5 s and the workers at its marker
    # every 0.1 s: under load a few probes in the first second may still see "ready" (the
    # kubelet probes every 5 s), none after it.
    after_a_second = [code for moment, code in ready_codes if moment >= 1.0]
    assert after_a_second and set(after_a_second) == {400}, ready_codes
    assert live == 200
    assert v1_status.status_code == 200 and v1_status.json()["ready"] is False
    assert v1_status.headers["connection"] == "close"
    served_after_sigterm = [moment for moment in load.answered_at if moment > signalled + 1.0]
    assert len(served_after_sigterm) > 20


def test_sigterm_stops_accepting_after_the_drain_delay(iris_skops_dir: Path) -> None:
    server = RunningServer(iris_skops_dir, drain_delay_seconds="1")
    try:
        server.wait_ready(120)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live", timeout=5)
    finally:
        server.stop()


class PausingKeepAliveClient:
    """A keep-alive client that, like many pooled clients, reuses its connection without first
    checking whether the server closed it, pausing between requests as a light client does
    (http.client: httpx would notice a closed idle connection and reconnect). It stops once the
    server refuses new connections, and keeps every failure on a connection it was reusing."""

    PAUSE_SECONDS = 0.08

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures_on_reused_connections: list[str] = []
        self.told_to_close = 0
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        body = orjson.dumps(INFER_BODY)
        deadline = time.monotonic() + 60
        connection: http.client.HTTPConnection | None = None
        served = 0
        while time.monotonic() < deadline:
            if connection is None:
                connection, served = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10), 0
            try:
                connection.request(
                    "POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"}
                )
                reply = connection.getresponse()
                reply.read()
                served += 1
                if reply.getheader("connection", "").lower() == "close":
                    self.told_to_close += 1
                    connection = None
            except ConnectionRefusedError:
                return  # the server has stopped accepting: in a cluster, other pods answer
            except (OSError, http.client.HTTPException) as error:
                if served:
                    self.failures_on_reused_connections.append(f"after {served}: {error!r}")
                connection.close()
                connection = None
            time.sleep(self.PAUSE_SECONDS)

    def join(self) -> None:
        self._thread.join(90)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_with_the_pods_drain_a_pausing_keep_alive_client_is_told_to_leave(
    iris_skops_dir: Path, workers: str
) -> None:
    # The operator's pods sleep in preStop, then give the server this drain delay. With 0 the
    # server closed idle keep-alive connections at SIGTERM, and such a client's next request
    # failed on its reused connection (seen on real pods, and here with the delay set to 0).
    server = RunningServer(
        iris_skops_dir,
        workers=workers,
        drain_delay_seconds=str(SERVER_KEEP_ALIVE_FAREWELL_SECONDS),
    )
    try:
        server.wait_ready(120)
        clients = [PausingKeepAliveClient(server.port) for _ in range(3)]
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        for client in clients:
            client.join()
    finally:
        server.stop()
    assert [client.failures_on_reused_connections for client in clients] == [[], [], []]
    assert all(client.told_to_close for client in clients)
