"""Running the HTTP server: one process, or several workers sharing the port and the metrics."""

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, multiprocess
from starlette.types import ASGIApp
from uvicorn.supervisors.multiprocess import Multiprocess

from modeldeploy_serving.app import ServerState, create_app
from modeldeploy_serving.connections import (
    ConnectionLimits,
    ServerConfig,
    raise_file_limit,
    usable_connections,
)
from modeldeploy_serving.dataplane import DataPlane, WorkerGroup
from modeldeploy_serving.lifecycle import DrainSignal, ReadinessGate
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)

_MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_READY_DIR_VARIABLE = "MODELDEPLOY_WORKERS_READY_DIR"
# Created in the workers' shared directory when the supervisor begins to drain.
_DRAIN_MARKER = "draining"


def app_from_environment() -> ASGIApp:
    """The application of one worker process, configured from the environment."""
    settings = ServerSettings()
    shared = os.environ.get(_MULTIPROCESS_DIR_VARIABLE)
    if not shared:
        return ReadinessGate(create_app(settings), DrainSignal())
    # Every worker writes its samples to files in the shared directory; any worker's /metrics
    # answers with all of them added up.
    exposition = CollectorRegistry()
    multiprocess.MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
    ready_dir = Path(os.environ[_READY_DIR_VARIABLE])
    peers = WorkerGroup(ready_dir, settings.workers)
    app = create_app(settings, exposition_registry=exposition, peers=peers)
    return ReadinessGate(app, DrainSignal(ready_dir / _DRAIN_MARKER))


def connection_limits(settings: ServerSettings) -> ConnectionLimits:
    """The settings' connection limits, the bound lowered to fit the open-file limit if needed."""
    file_limit = raise_file_limit()
    bound = usable_connections(settings.max_connections, file_limit)
    if bound < settings.max_connections:
        logger.warning("At most %d open connections: the open-file limit is %d", bound, file_limit)
    return ConnectionLimits(
        idle_timeout=settings.idle_connection_timeout_seconds,
        request_read_timeout=settings.request_read_timeout_seconds,
        max_connections=bound,
        max_requests=settings.max_requests_per_connection,
        max_age=settings.max_connection_age_seconds,
    )


def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM (drain, then stop) or SIGINT (stop); the process's exit code."""
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.http_port,
        "timeout_graceful_shutdown": int(settings.graceful_shutdown_seconds),
        "access_log": False,
        "log_level": "info",
        "loop": "auto",
    }
    limits = connection_limits(settings)
    if settings.workers == 1:
        state = ServerState()
        drain = DrainSignal()
        app = ReadinessGate(create_app(settings, state=state), drain)
        server = DrainingServer(
            ServerConfig(app, limits, drain, **common), drain, settings.drain_delay_seconds
        )
        state.request_shutdown = server.stop_now
        server.run()
        return 1 if state.load_error is not None else 0
    # Workers that cannot load the model would be restarted forever: find out once, up front.
    try:
        DataPlane(settings).load()
    except Exception as error:
        logger.error("Could not load the model: %s", error)
        return 1
    os.environ.setdefault(_MULTIPROCESS_DIR_VARIABLE, tempfile.mkdtemp(prefix="modeldeploy-metrics-"))
    ready_dir = Path(tempfile.mkdtemp(prefix="modeldeploy-ready-"))
    os.environ[_READY_DIR_VARIABLE] = str(ready_dir)
    drain = DrainSignal(ready_dir / _DRAIN_MARKER)
    config = ServerConfig(
        "modeldeploy_serving.server:app_from_environment",
        limits,
        drain,
        factory=True,
        workers=settings.workers,
        **common,
    )
    DrainingSupervisor(config, [config.bind_socket()], drain, settings.drain_delay_seconds).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM drains first and the process then exits normally.

    uvicorn stops accepting at SIGTERM and re-raises the signal once it has stopped, so the exit
    code said 143 and connections still routed to the pod were refused.
    """

    def __init__(self, config: uvicorn.Config, drain: DrainSignal, drain_delay: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_delay = drain_delay
        self._stop_at: float | None = None
        self._announced = False

    def stop_now(self) -> None:
        """Shut down without a drain delay (the model failed to load: nothing to drain)."""
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only set flags; the main loop acts on them.
        if sig == signal.SIGTERM and self._stop_at is None and not self.should_exit:
            self._drain.begin()
            self._stop_at = time.monotonic() + self._drain_delay
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None:
            if not self._announced:
                self._announced = True
                logger.info("SIGTERM: not ready; serving for %.1fs more, then stopping", self._drain_delay)
            if time.monotonic() >= self._stop_at:
                self.should_exit = True
        return await super().on_tick(counter)


class DrainingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGTERM marks the workers draining and stops them later."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], drain: DrainSignal, drain_delay: float
    ) -> None:
        super().__init__(config, sockets)
        self._drain = drain
        self._drain_delay = drain_delay
        self._stopping: threading.Timer | None = None

    def handle_term(self) -> None:
        if self._stopping is not None:
            return
        logger.info("SIGTERM: not ready; serving for %.1fs more, then stopping", self._drain_delay)
        self._drain.begin()
        self._stopping = threading.Timer(self._drain_delay, self.should_exit.set)
        self._stopping.daemon = True
        self._stopping.start()


def configure_logging() -> None:
    """Plain one-line log records on stderr, which the container runtime collects."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
