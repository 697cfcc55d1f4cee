"""Forwards one TCP port from inside a network namespace to 127.0.0.1 on the host.

The control plane listens on the host's loopback only; the real node (kubelet, kube-proxy,
CoreDNS, pods) lives in a network namespace the run created. This process binds its listening
socket inside that namespace, switches back, and connects every accepted connection to the host's
loopback, so neither the host's addresses nor its iptables change.

    python -m modeldeploy_localcluster.netns_forward NETNS_PATH LISTEN_IP PORT TARGET_PORT
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading

_CLONE_NEWNET = 0x40000000
_CHUNK = 65536


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def listen_in_namespace(netns_path: str, address: str, port: int) -> socket.socket:
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            listener = socket.create_server((address, port), backlog=128)
        finally:
            _setns(host)
    finally:
        os.close(host)
        os.close(target)
    return listener


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


def _serve(client: socket.socket, target_port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)


def main(argv: list[str]) -> None:
    netns_path, address, port, target_port = argv
    listener = listen_in_namespace(netns_path, address, int(port))
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, int(target_port)), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
