"""The HTTP layer: thin FastAPI endpoints that translate to and from the data plane."""

import asyncio
import json
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

from modeldeploy_serving import codec
from modeldeploy_serving.dataplane import SERVER_VERSION, DataPlane, WorkerGroup
from modeldeploy_serving.errors import InvalidInput, ServingError
from modeldeploy_serving.metrics import ServerMetrics
from modeldeploy_serving.protocol import InferenceRequest, V1PredictRequest
from modeldeploy_serving.routes import classify_path
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """The body of every error response, as the protocols define it."""

    error: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 503)
}


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
        yield
        if loading is not None:
            loading.cancel()
        await plane.stop()

    app = FastAPI(
        title="modeldeploy model server",
        version=SERVER_VERSION,
        description="Open Inference Protocol (V2) and KServe V1 endpoints for one model.",
        lifespan=lifespan,
    )
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, max_body_bytes=settings.max_request_bytes)
    _add_error_handlers(app)
    _add_routes(app, plane, exposition_registry if exposition_registry is not None else registry)
    return app


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


def _add_routes(app: FastAPI, plane: DataPlane, registry: CollectorRegistry) -> None:
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
    async def metrics() -> Response:
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


def describe_validation_errors(errors: Any) -> str:
    """One line naming each invalid field of a request, e.g. `body.inputs.0.shape: ...`."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            position = error.get("loc", ("body", "?"))[-1]
            location = "body"
            message = f"malformed JSON at character {position} ({error.get('ctx', {}).get('error', '')})"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


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


# The header of the binary tensor data extension: the length of the JSON part of the body.
BINARY_HEADER = b"inference-header-content-length"


class JsonBodyMiddleware:
    """Hands the endpoints every protocol request body as JSON.

    The protocols' bodies are JSON, but some clients (Triton's) send no or another content type,
    for which FastAPI would pass raw bytes; and bodies of the binary tensor data extension (a JSON
    header, then raw tensors) are turned into plain JSON requests here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and classify_path(scope["path"])):
            await self._app(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
        header_length = next((value for name, value in headers if name == BINARY_HEADER), None)
        if header_length is not None:
            try:
                body = await _json_from_binary_request(header_length, receive)
            except (InvalidInput, StarletteHTTPException) as error:
                status = error.status_code if isinstance(error, StarletteHTTPException) else 400
                detail = error.detail if isinstance(error, StarletteHTTPException) else str(error)
                await _send_error(send, status, str(detail))
                return
            receive = _replay(body, receive)
            headers = [
                (name, value) for name, value in headers if name not in (BINARY_HEADER, b"content-length")
            ]
            headers.append((b"content-length", str(len(body)).encode()))
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self._app(scope, receive, send)


async def _json_from_binary_request(header_length: bytes, receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        split = int(header_length)
        header = json.loads(body[:split])
    except ValueError as error:
        raise InvalidInput(f"the JSON header of a binary request cannot be read ({error})") from None
    if not 0 <= split <= len(body):
        raise InvalidInput("Inference-Header-Content-Length is larger than the body")
    return json.dumps(codec.inline_binary_tensors(header, body[split:])).encode()


def _replay(body: bytes, original: Receive) -> Receive:
    """A receive channel that delivers `body` once, then whatever the client does next."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


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
