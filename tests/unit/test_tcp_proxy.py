"""The freezable proxy the leader-election test uses holds bytes while frozen and delivers them after."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tcp_proxy import FreezableProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            if data.startswith(b"slow"):
                time.sleep(0.5)
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        with FreezableProxy("127.0.0.1", echo.server_address[1]).running() as running:
            yield running
        echo.shutdown()


def _receive(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_frozen_proxy_holds_both_directions_and_delivers_once_thawed(proxy: FreezableProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        client.sendall(b"before")
        assert _receive(client, 6) == b"before"

        proxy.freeze()
        client.sendall(b"during")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv(16)

        proxy.thaw()
        client.settimeout(5)
        assert _receive(client, 6) == b"during"


def test_a_frozen_proxy_connects_nothing_until_thawed(proxy: FreezableProxy) -> None:
    proxy.freeze()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        client.sendall(b"hello")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv(16)
        proxy.thaw()
        client.settimeout(5)
        assert _receive(client, 5) == b"hello"


def test_freezing_waits_until_no_request_awaits_its_answer(proxy: FreezableProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        client.sendall(b"slow ping")
        time.sleep(0.2)  # the proxy has passed the request on; the answer takes half a second
        asked = time.monotonic()
        proxy.freeze(quiet_within=5)
        assert proxy.frozen
        assert time.monotonic() - asked > 0.2
        assert _receive(client, 9) == b"slow ping"
