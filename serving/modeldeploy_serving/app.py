"""The HTTP layer: thin FastAPI endpoints that translate to and from the data plane."""

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import HTTPException as FastAPIHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modeldeploy_serving.dataplane import SERVER_VERSION, DataPlane, WorkerGroup
from modeldeploy_serving.errors import ServingError
from modeldeploy_serving.fastpath import FastPath
from modeldeploy_serving.metrics import FLUSH_SECONDS, ServerMetrics
from modeldeploy_serving.protocol import InferenceRequest, V1PredictRequest, describe_validation_errors
from modeldeploy_serving.routes import classify_path
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """The body of every error response, as the protocols define it."""

    error: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 503)
}


class ModelServerApp(FastAPI):
    """FastAPI with the fast path in front: inference and health requests never reach routing.

    The inference endpoints stay declared as FastAPI routes, for the OpenAPI document.
    """

    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.fast_path.handler(scope) if self.fast_path is not None else None
        if handler is not None:
            await handler(receive, send)
        else:
            await super().__call__(scope, receive, send)


class ServerState:
    """What the process knows beyond the data plane: whether loading failed, and how to stop."""

    def __init__(self) -> None:
        self.load_error: BaseException | None = None
        self.request_shutdown: Callable[[], None] = _signal_shutdown


def create_app(
    settings: ServerSettings,
    data_plane: DataPlane | None = None,
    registry: CollectorRegistry | None = None,
    load_model: bool = True,
    state: ServerState | None = None,
    exposition_registry: CollectorRegistry | None = None,
    peers: WorkerGroup | None = None,
) -> FastAPI:
    """The application; it loads the model in the background unless `load_model` is False.

    Metrics are recorded in `registry` and /metrics shows `exposition_registry` (by default the
    same; different when several worker processes share their metrics through files).
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServerMetrics(settings, registry)
    plane = data_plane if data_plane is not None else DataPlane(settings, metrics, peers)
    server_state = state if state is not None else ServerState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        loading = asyncio.create_task(_load(plane, server_state)) if load_model else None
        flushing = asyncio.create_task(_flush_periodically(metrics))
        yield
        if loading is not None:
            loading.cancel()
        flushing.cancel()
        await plane.stop()
        metrics.flush()

    app = ModelServerApp(
        title="modeldeploy model server",
        version=SERVER_VERSION,
        description="Open Inference Protocol (V2) and KServe V1 endpoints for one model.",
        lifespan=lifespan,
    )
    app.fast_path = FastPath(plane, metrics, settings)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, max_body_bytes=settings.max_request_bytes)
    _add_error_handlers(app)
    _add_routes(app, plane, metrics, exposition_registry if exposition_registry is not None else registry)
    return app


async def _flush_periodically(metrics: ServerMetrics) -> None:
    # With several workers a scrape reads every worker's files, not this worker's tallies.
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        metrics.flush()


async def _load(plane: DataPlane, state: ServerState) -> None:
    try:
        await asyncio.to_thread(plane.load)
    except Exception as error:
        state.load_error = error
        logger.error("Could not load the model: %s", error)
        state.request_shutdown()


def _signal_shutdown() -> None:
    """Shut down as on SIGTERM: the fallback when the server has no direct handle to stop."""
    os.kill(os.getpid(), signal.SIGTERM)


def _add_routes(app: FastAPI, plane: DataPlane, metrics: ServerMetrics, registry: CollectorRegistry) -> None:
    def health(ok: bool) -> Response:
        # The V2 protocol: 200 means true, a 4xx means false, and the body is empty.
        return Response(status_code=200 if ok else 400)

    @app.get("/v2/health/live", responses={400: {}}, tags=["v2"])
    async def server_live() -> Response:
        return health(plane.live())

    @app.get("/v2/health/ready", responses={400: {}}, tags=["v2"])
    async def server_ready() -> Response:
        return health(plane.ready())

    @app.get("/v2", responses=ERROR_RESPONSES, tags=["v2"])
    async def server_metadata() -> JSONResponse:
        return JSONResponse(plane.server_metadata())

    @app.get("/v2/models/{model_name}/ready", responses=ERROR_RESPONSES, tags=["v2"])
    async def model_ready(model_name: str) -> Response:
        return health(plane.model_ready(model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", responses=ERROR_RESPONSES, tags=["v2"])
    async def model_version_ready(model_name: str, model_version: str) -> Response:
        return health(plane.model_ready(model_name, model_version))

    @app.get("/v2/models/{model_name}", responses=ERROR_RESPONSES, tags=["v2"])
    async def model_metadata(model_name: str) -> JSONResponse:
        return JSONResponse(plane.model_metadata(model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}", responses=ERROR_RESPONSES, tags=["v2"])
    async def model_version_metadata(model_name: str, model_version: str) -> JSONResponse:
        return JSONResponse(plane.model_metadata(model_name, model_version))

    @app.post("/v2/models/{model_name}/infer", responses=ERROR_RESPONSES, tags=["v2"])
    async def infer(model_name: str, request: InferenceRequest) -> JSONResponse:
        return JSONResponse(await plane.infer(model_name, None, request))

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer", responses=ERROR_RESPONSES, tags=["v2"]
    )
    async def infer_version(model_name: str, model_version: str, request: InferenceRequest) -> JSONResponse:
        return JSONResponse(await plane.infer(model_name, model_version, request))

    @app.get("/v1/models", tags=["v1"])
    async def v1_models() -> JSONResponse:
        return JSONResponse(plane.v1_models())

    @app.get("/v1/models/{model_name}", responses=ERROR_RESPONSES, tags=["v1"])
    async def v1_model_status(model_name: str) -> JSONResponse:
        return JSONResponse(plane.v1_model_status(model_name))

    @app.post("/v1/models/{model_name}:predict", responses=ERROR_RESPONSES, tags=["v1"])
    async def v1_predict(model_name: str, request: V1PredictRequest) -> JSONResponse:
        return JSONResponse(await plane.predict_v1(model_name, request))

    @app.get("/metrics", include_in_schema=False)
    async def exposition() -> Response:
        metrics.flush()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(_: Request, error: ServingError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_validation_errors(error.errors())}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(error.detail)}
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)


class RequestMetricsMiddleware:
    """Counts and times protocol requests, and refuses bodies over the size limit with 413."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, max_body_bytes: int) -> None:
        self._app = app
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        route = classify_path(scope["path"])
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self._max_body_bytes:
                await _send_error(send_and_record_status, 413, self._too_large_message())
            else:
                await self._app(scope, self._limited(receive), send_and_record_status)
        finally:
            if route is not None:
                self._metrics.observe_request(*route, status, time.perf_counter() - started)

    def _too_large_message(self) -> str:
        return f"the request body exceeds the limit of {self._max_body_bytes} bytes"

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body_bytes:
                    # FastAPI turns other errors raised while reading the body into a 400.
                    raise FastAPIHTTPException(413, self._too_large_message())
            return message

        return limited_receive


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = JSONResponse({"error": message}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
