"""Shutting down without failing a request: readiness turns false first, then the server drains.

On SIGTERM the server reports not-ready at once but keeps accepting and serving for a drain
delay, the time load balancers (kube-proxy, a Gateway) take to stop sending it new connections;
every response meanwhile closes its connection, so keep-alive clients reconnect elsewhere. Then
it stops accepting, lets in-flight requests finish (within the graceful timeout) and exits 0.

With several workers the supervisor receives SIGTERM: it creates a marker file the workers
watch, waits the drain delay, then stops them as uvicorn does.
"""

import re
import time
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How often a worker looks for the supervisor's marker file.
_MARKER_POLL_SECONDS = 0.1

_READINESS_PATH = re.compile(r"/v2/health/ready|/v2/models/[^/]+(?:/versions/[^/]+)?/ready|/v1/models/[^/:]+")


class DrainSignal:
    """Whether this process drains: begun in-process, or by the supervisor's marker file."""

    def __init__(self, marker: Path | None = None) -> None:
        self._marker = marker
        self._active = False
        self._checked_at = 0.0

    def begin(self) -> None:
        """Start draining (safe in a signal handler: no locks, no I/O without a marker)."""
        self._active = True
        if self._marker is not None:
            self._marker.touch()

    def active(self) -> bool:
        """Whether draining has begun (the marker file is looked at most every 0.1 s)."""
        if self._active or self._marker is None:
            return self._active
        now = time.monotonic()
        if now - self._checked_at >= _MARKER_POLL_SECONDS:
            self._checked_at = now
            self._active = self._marker.exists()
        return self._active


def not_ready_answer(path: str, status: int, body: bytes) -> tuple[int, bytes]:
    """A readiness answer turned into "not ready": V2 says so by a 4xx, V1 by `ready: false`.

    Answers other than a 200 (an unknown model's 404) stay as they are.
    """
    if status != 200:
        return status, body
    if path.startswith("/v1/"):
        status_object = orjson.loads(body)
        status_object["ready"] = False
        return status, orjson.dumps(status_object)
    return 400, b""


class ReadinessGate:
    """ASGI middleware: while draining, every readiness endpoint answers "not ready"."""

    def __init__(self, app: ASGIApp, drain: DrainSignal) -> None:
        self._app = app
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not self._drain.active()
            or not _READINESS_PATH.fullmatch(scope["path"])
        ):
            await self._app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def rewrite(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            status, new_body = not_ready_answer(scope["path"], start["status"], body)
            headers = [(name, value) for name, value in start.get("headers", []) if name != b"content-length"]
            headers.append((b"content-length", str(len(new_body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": new_body})

        await self._app(scope, receive, rewrite)
