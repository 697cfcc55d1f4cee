"""Forwards one TCP port between a network namespace and 127.0.0.1 on the host.

The control plane listens on the host's loopback only; the real node (kubelet, kube-proxy,
CoreDNS, pods) lives in a network namespace the run created. By default this process binds its
listening socket inside that namespace, switches back, and connects every accepted connection to
the host's loopback (the API server, for the node). With ``--into`` it is the other way round: it
listens on the host's 127.0.0.1 and connects inside the namespace (Prometheus, for the operator
on the host). A socket stays in the namespace it was made in, so neither the host's addresses nor
its iptables change.

    python -m modeldeploy_localcluster.netns_forward [--into] NETNS_PATH IP PORT TARGET_PORT
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading
from collections.abc import Callable

_CLONE_NEWNET = 0x40000000
_CHUNK = 65536


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def _in_namespace(netns_path: str, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket made inside the namespace; only the calling thread switches, and back at once."""
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return make()
        finally:
            _setns(host)
    finally:
        os.close(host)
        os.close(target)


def listen_in_namespace(netns_path: str, address: str, port: int) -> socket.socket:
    return _in_namespace(netns_path, lambda: socket.create_server((address, port), backlog=128))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def _serve(client: socket.socket, connect: Callable[[], socket.socket]) -> None:
    try:
        upstream = connect()
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)


def main(argv: list[str]) -> None:
    into = argv[:1] == ["--into"]
    netns_path, address, port, target_port = argv[1:] if into else argv
    connect: Callable[[], socket.socket]
    if into:
        listener = socket.create_server(("127.0.0.1", int(port)), backlog=128)

        def connect() -> socket.socket:
            return _in_namespace(
                netns_path, lambda: socket.create_connection((address, int(target_port)), timeout=10)
            )
    else:
        listener = listen_in_namespace(netns_path, address, int(port))

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", int(target_port)), timeout=10)

    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, connect), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
