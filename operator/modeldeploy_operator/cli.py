"""`modeldeploy-operator`: runs the kopf operator with the settings from the environment.

With leader election on (the default), the process first waits for the Lease, answering
its liveness probe meanwhile, and runs kopf only while it holds the Lease. A leader that loses
the Lease (another replica took it, or the API server was away for longer than the renew
deadline) stops kopf and waits for the Lease again, in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import kopf
from lightkube import AsyncClient, KubeConfig

from modeldeploy_operator import handlers  # noqa: F401 - importing registers the kopf handlers
from modeldeploy_operator.kube import LeaseStore
from modeldeploy_operator.leadership import LeaderElector
from modeldeploy_operator.metrics import METRICS, serve
from modeldeploy_operator.settings import OperatorSettings

KEEPER_JOIN_SECONDS = 10.0


class _AliveHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"standby": true}')

    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds are not worth a log line."""


@contextmanager
def standby_liveness(endpoint: str) -> Iterator[None]:
    """Answers the liveness probe while waiting for the Lease (kopf serves it once running)."""
    address = urlsplit(endpoint)
    server = ThreadingHTTPServer((address.hostname or "0.0.0.0", address.port or 80), _AliveHandler)  # noqa: S104 - pods listen on all interfaces
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _elector(client: AsyncClient, settings: OperatorSettings, identity: str) -> LeaderElector:
    store = LeaseStore(client, settings.leader_election_lease_name, settings.leader_election_namespace)
    return LeaderElector(store, identity, timedelta(seconds=settings.leader_election_lease_seconds))


async def acquire_unless_stopped(elector: LeaderElector) -> bool:
    """Waits for the Lease; False when SIGTERM or SIGINT comes first.

    As PID 1 of a container, the process would otherwise ignore SIGTERM (the kernel drops signals
    that PID 1 does not handle), and a standby would hold up a `helm upgrade` until it is killed.
    """
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stopped.set)
    acquiring = asyncio.create_task(elector.acquire())
    stopping = asyncio.create_task(stopped.wait())
    try:
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        for task in (acquiring, stopping):
            task.cancel()
    if acquiring.done() and not acquiring.cancelled():
        acquiring.result()  # what acquire() raised, if anything
        return True
    return False


async def _acquire(settings: OperatorSettings, identity: str) -> bool:
    client = AsyncClient(config=KubeConfig.from_env())
    try:
        return await acquire_unless_stopped(_elector(client, settings, identity))
    finally:
        await client.close()


async def _keep(
    settings: OperatorSettings,
    identity: str,
    stop: threading.Event,
    lost: threading.Event,
) -> None:
    client = AsyncClient(config=KubeConfig.from_env())

    def give_up() -> None:
        lost.set()
        # kopf stops gracefully on SIGTERM; its stop_flag would leave a thread blocking its exit.
        os.kill(os.getpid(), signal.SIGTERM)

    elector = _elector(client, settings, identity)
    try:
        await elector.keep(stop, give_up)
        if not lost.is_set():
            await elector.release()
    finally:
        await client.close()


def _run_kopf(settings: OperatorSettings, liveness: str) -> None:
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
        standalone=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modeldeploy-operator", description=__doc__)
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint (default: %(default)s)"
    )
    parser.add_argument(
        "--metrics",
        default="0.0.0.0:8080",
        help="host:port to serve Prometheus metrics on; empty turns them off (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every handler run")
    args = parser.parse_args(argv)
    settings = OperatorSettings()
    if args.metrics:
        serve(args.metrics)
    kopf.configure(
        verbose=args.verbose,
        log_prefix=True,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not settings.leader_election:
        METRICS.leader.set(1)
        _run_kopf(settings, args.liveness)
        return

    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    while True:
        with standby_liveness(args.liveness):
            if not asyncio.run(_acquire(settings, identity)):
                print(
                    "modeldeploy-operator: stopped while waiting for the leader-election Lease",
                    file=sys.stderr,
                )
                return
        if not _lead(settings, identity, args.liveness):
            return
        # Not an exit: an API server that was away for longer than the renew deadline is back, or a
        # standby leads now; waiting for the Lease again needs no restart by the kubelet (a restart
        # would count against the pod, and a single replica would be CrashLoopBackOff'd for nothing).
        print("modeldeploy-operator: lost the leader-election Lease; waiting for it again", file=sys.stderr)


def _lead(settings: OperatorSettings, identity: str, liveness: str) -> bool:
    """Runs kopf while this replica holds the Lease; True when it lost the Lease, False when stopped."""
    stop, lost = threading.Event(), threading.Event()
    keeper = threading.Thread(target=lambda: asyncio.run(_keep(settings, identity, stop, lost)), daemon=True)
    keeper.start()
    METRICS.leader.set(1)
    try:
        _run_kopf(settings, liveness)
    finally:
        METRICS.leader.set(0)
        stop.set()
        keeper.join(timeout=KEEPER_JOIN_SECONDS)
    return lost.is_set()
