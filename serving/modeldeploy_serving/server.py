"""Running the HTTP server: one process, or several workers sharing the port and the metrics."""

import logging
import os
import sys
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, multiprocess

from modeldeploy_serving.app import ServerState, create_app
from modeldeploy_serving.dataplane import DataPlane, WorkerGroup
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)

_MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_READY_DIR_VARIABLE = "MODELDEPLOY_WORKERS_READY_DIR"


def app_from_environment() -> FastAPI:
    """The application of one worker process, configured from the environment."""
    settings = ServerSettings()
    shared = os.environ.get(_MULTIPROCESS_DIR_VARIABLE)
    if not shared:
        return create_app(settings)
    # Every worker writes its samples to files in the shared directory; any worker's /metrics
    # answers with all of them added up.
    exposition = CollectorRegistry()
    multiprocess.MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
    peers = WorkerGroup(Path(os.environ[_READY_DIR_VARIABLE]), settings.workers)
    return create_app(settings, exposition_registry=exposition, peers=peers)


def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; in-flight requests finish first. The process's exit code."""
    common = {
        "host": settings.host,
        "port": settings.http_port,
        "timeout_graceful_shutdown": int(settings.graceful_shutdown_seconds),
        "access_log": False,
        "log_level": "info",
        "loop": "auto",
        "http": "auto",
    }
    if settings.workers == 1:
        state = ServerState()
        app = create_app(settings, state=state)
        server = uvicorn.Server(uvicorn.Config(app, **common))  # type: ignore[arg-type]
        state.request_shutdown = lambda: setattr(server, "should_exit", True)
        server.run()
        return 1 if state.load_error is not None else 0
    # Workers that cannot load the model would be restarted forever: find out once, up front.
    try:
        DataPlane(settings).load()
    except Exception as error:
        logger.error("Could not load the model: %s", error)
        return 1
    os.environ.setdefault(_MULTIPROCESS_DIR_VARIABLE, tempfile.mkdtemp(prefix="modeldeploy-metrics-"))
    os.environ[_READY_DIR_VARIABLE] = tempfile.mkdtemp(prefix="modeldeploy-ready-")
    uvicorn.run(
        "modeldeploy_serving.server:app_from_environment",
        factory=True,
        workers=settings.workers,
        **common,  # type: ignore[arg-type]
    )
    return 0


def configure_logging() -> None:
    """Plain one-line log records on stderr, which the container runtime collects."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
