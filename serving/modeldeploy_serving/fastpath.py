"""The hot path: inference requests and health checks answered straight from ASGI.

FastAPI's routing, dependency solving, request and response objects and pydantic models cost
more than predicting one row of a small model, so the protocol's inference endpoints (V2 and V1,
JSON and binary bodies) and the server's health checks are answered here, before FastAPI sees
them; FastAPI serves the rest of the API and the OpenAPI document. Small requests are handled on
the event loop (a thread hop costs more than they do); large bodies are parsed, decoded, predicted
and encoded on threads, a few at a time, so the loop keeps answering health checks and memory
stays bounded.
"""

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from modeldeploy_serving import codec, piecewise_json, protocol
from modeldeploy_serving.dataplane import DataPlane, V2Answer
from modeldeploy_serving.errors import InvalidInput, RequestTooLarge, ServingError
from modeldeploy_serving.metrics import ServerMetrics
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)

# The header of the binary tensor data extension: the length of the JSON part of the body.
BINARY_HEADER = b"inference-header-content-length"

_V2_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
_V1_PREDICT = re.compile(r"/v1/models/(?P<name>[^/]+):predict")
_JSON_HEADERS = [(b"content-type", b"application/json")]

# Elements per row of a typical output (a few classes' probabilities): answers of more rows than
# a piece's elements over this may hold a list long enough to be encoded in pieces.
_OUTPUT_WIDTH_GUESS = 16

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
Handler = Callable[[Receive, Send], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


class FastPath:
    """Answers inference and health requests of one data plane; `handler` says which."""

    def __init__(self, plane: DataPlane, metrics: ServerMetrics, settings: ServerSettings) -> None:
        self._plane = plane
        self._metrics = metrics
        self._settings = settings
        self._large_slots: asyncio.Semaphore | None = None

    def handler(self, scope: Scope) -> Handler | None:
        """The handler for this request, or None for anything FastAPI answers."""
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "GET":
            if path == "/v2/health/live":
                return self._answer(("v2", "health"), self._live)
            if path == "/v2/health/ready":
                return self._answer(("v2", "health"), self._ready)
            return None
        if method != "POST":
            return None
        match = _V2_INFER.fullmatch(path)
        if match is not None:
            name, version = match["name"], match["version"]

            async def infer(receive: Receive) -> Response:
                return await self._infer(scope, receive, name, version)

            return self._answer(("v2", "infer"), infer)
        match = _V1_PREDICT.fullmatch(path)
        if match is not None:
            model_name = match["name"]

            async def predict(receive: Receive) -> Response:
                return await self._predict_v1(scope, receive, model_name)

            return self._answer(("v1", "predict"), predict)
        return None

    def _answer(self, route: tuple[str, str], respond: Callable[[Receive], Awaitable[Response]]) -> Handler:
        async def handle(receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            try:
                status, headers, body = await respond(receive)
            except ClientGone:
                return
            except ServingError as error:
                status, headers, body = error_response(error.status_code, str(error))
            except Exception:
                logger.exception("An inference request failed")
                status, headers, body = error_response(500, "internal server error")
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            finally:
                self._metrics.observe_request(*route, status, time.perf_counter() - started)

        return handle

    async def _live(self, _: Receive) -> Response:
        # The V2 protocol: 200 means true, a 4xx means false, and the body is empty.
        return (200 if self._plane.live() else 400), [], b""

    async def _ready(self, _: Receive) -> Response:
        return (200 if self._plane.ready() else 400), [], b""

    async def _infer(self, scope: Scope, receive: Receive, name: str, version: str | None) -> Response:
        body = await self._read_body(scope, receive)
        header_length = _header(scope, BINARY_HEADER)
        if len(body) <= self._settings.inline_body_max_bytes:
            request = parse_v2(body, header_length)
            answer = await self._plane.infer_v2(name, version, request)
            if answer.rows > self._settings.inline_max_rows:
                return await asyncio.to_thread(v2_response, answer)
            return v2_response(answer)
        async with self._large():
            request = await asyncio.to_thread(parse_v2, body, header_length)
            del body  # the decoded request replaces it
            try:
                answer = await self._plane.infer_v2(name, version, request, offload=True)
            finally:
                await asyncio.to_thread(piecewise_json.release, [item.data for item in request.inputs])
            return await asyncio.to_thread(_encode_and_release, v2_response, answer.body, answer)

    async def _predict_v1(self, scope: Scope, receive: Receive, name: str) -> Response:
        body = await self._read_body(scope, receive)
        if len(body) <= self._settings.inline_body_max_bytes:
            answer = await self._plane.predict_v1(name, parse_v1(body))
            return 200, _JSON_HEADERS, orjson.dumps(answer)
        async with self._large():
            request = await asyncio.to_thread(parse_v1, body)
            del body
            try:
                answer = await self._plane.predict_v1(name, request, offload=True)
            finally:
                await asyncio.to_thread(piecewise_json.release, [request.instances, request.inputs])
            return await asyncio.to_thread(_encode_and_release, _v1_response, answer, answer)

    def _large(self) -> asyncio.Semaphore:
        # Made on first use, on the loop that serves (a semaphore binds to the loop that waits on it).
        if self._large_slots is None:
            self._large_slots = asyncio.Semaphore(self._settings.large_requests_at_once)
        return self._large_slots

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._settings.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"the request body exceeds the limit of {limit} bytes")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_v2(body: bytes, header_length: bytes | None) -> protocol.V2Request:
    """A V2 request from its body: JSON, or a JSON header and binary tensors after it."""
    if header_length is None:
        return protocol.v2_request(_json(body))
    try:
        split = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"the JSON header of a binary request cannot be read (bad length {header_length!r})"
        ) from None
    if not 0 <= split <= len(body):
        raise InvalidInput("Inference-Header-Content-Length is larger than the body")
    try:
        header = piecewise_json.loads(body[:split])
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the JSON header of a binary request cannot be read ({error})") from None
    return protocol.v2_request(codec.inline_binary_tensors(header, body[split:]))


def parse_v1(body: bytes) -> protocol.V1Request:
    """A V1 request from its JSON body."""
    return protocol.v1_request(_json(body))


def v2_response(answer: V2Answer) -> Response:
    """The HTTP response of a V2 answer: JSON, or a JSON header and the binary outputs after it."""
    # Large answers are encoded (on a thread) in pieces, so other threads get the GIL between
    # them; walking a small answer for long lists would cost more than encoding it.
    large = answer.rows * _OUTPUT_WIDTH_GUESS > codec.PIECE_ELEMENTS
    header = piecewise_json.dumps(answer.body) if large else orjson.dumps(answer.body)
    if not answer.binary:
        return 200, _JSON_HEADERS, header
    headers = [
        (b"content-type", b"application/octet-stream"),
        (BINARY_HEADER, str(len(header)).encode()),
    ]
    return 200, headers, b"".join((header, *answer.binary))


def _v1_response(answer: dict[str, Any]) -> Response:
    return 200, _JSON_HEADERS, piecewise_json.dumps(answer)


def _encode_and_release(encode: Callable[[Any], Response], body: Any, answer: Any) -> Response:
    """`encode(answer)`, then the answer's lists freed a piece at a time, on this thread."""
    response = encode(answer)
    piecewise_json.release(body)
    return response


def error_response(status: int, message: str) -> Response:
    """The protocols' error body, `{"error": message}`."""
    return status, _JSON_HEADERS, orjson.dumps({"error": message})


def _json(body: bytes) -> Any:
    try:
        return piecewise_json.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"body: malformed JSON at character {error.pos} ({error.msg})") from None


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None
