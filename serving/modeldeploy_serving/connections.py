"""HTTP connections: read and idle timeouts, a bound on how many are open, and when to close one.

uvicorn's HTTP protocol (httptools) times out an idle keep-alive connection only after a response,
holds a partial request forever, and accepts any number of connections, each holding a file
descriptor. `LimitedHttpProtocol` adds what a server on the open network needs:
- a connection that sends nothing after it opens is closed after the idle timeout, as one that
  sends nothing after a response is;
- a request whose header and body are not all in within the read timeout from its first byte is
  dropped (slowloris);
- past the connection bound, a new connection closes the connection that has been quiet longest
  among those not running a request (idle, or still sending its header), so idle or slow sockets
  cannot keep a health probe out; only when every connection is running a request is the new one
  closed instead;
- a response carries `Connection: close` once its connection has served its share of requests or
  lived long enough (so keep-alive clients spread over the pods behind a Service, as a proxy
  rotating its upstream connections would), and every response does while the server drains.
"""

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, Protocol

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# Descriptors kept for what is not a client connection: the model files, the listening socket,
# threads' pipes, the metrics files of several workers, logs.
RESERVED_FILE_DESCRIPTORS = 128


class Draining(Protocol):
    """Whether the server has begun to shut down."""

    def active(self) -> bool: ...


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits every connection of one server process obeys (0 means no limit where noted)."""

    idle_timeout: float
    request_read_timeout: float
    max_connections: int
    max_requests: int
    """Requests a connection serves before its response says `Connection: close`; 0: no limit."""
    max_age: float
    """Seconds after which a connection's next response says `Connection: close`; 0: no limit."""


def should_close_after(
    requests_served: int, age_seconds: float, limits: ConnectionLimits, draining: bool
) -> bool:
    """Whether the response to a connection's latest request closes the connection."""
    if draining:
        return True
    if limits.max_requests and requests_served >= limits.max_requests:
        return True
    return bool(limits.max_age) and age_seconds >= limits.max_age


def usable_connections(wanted: int, file_limit: int) -> int:
    """The connection bound that fits in the process's file-descriptor limit."""
    return max(1, min(wanted, file_limit - RESERVED_FILE_DESCRIPTORS))


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go programs do); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus what `LimitedHttpProtocol` reads; picklable for the workers."""

    def __init__(self, app: Any, limits: ConnectionLimits, drain: Draining, **options: Any) -> None:
        super().__init__(
            app, http=LimitedHttpProtocol, timeout_keep_alive=int(limits.idle_timeout), **options
        )
        self.connection_limits = limits
        self.drain = drain


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the timeouts and bounds described in the module."""

    def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._limits = config.connection_limits
        self._drain = config.drain
        self._opened_at = 0.0
        self._last_active = 0.0
        self._requests_served = 0
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened_at = self._last_active = self.loop.time()
        self.timeout_keep_alive_task = self.loop.call_later(
            self._limits.idle_timeout, self.timeout_keep_alive_handler
        )
        if len(self.connections) > self._limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._last_active = self.loop.time()
        self._cancel_read_deadline()
        self._read_deadline = self.loop.call_later(self._limits.request_read_timeout, self._read_timed_out)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is previous:  # an upgrade: no request cycle of ours
            return
        self._requests_served += 1
        age = self.loop.time() - self._opened_at
        if should_close_after(self._requests_served, age, self._limits, self._drain.active()):
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._cancel_read_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._last_active = self.loop.time()
        super().on_response_complete()

    @property
    def running_request(self) -> bool:
        """Whether the application is answering a request on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            logger.debug("Dropping a connection whose request took too long to arrive")
            self.transport.close()

    def _make_room(self) -> None:
        quiet = [
            connection
            for connection in self.connections
            if connection is not self
            and isinstance(connection, LimitedHttpProtocol)
            and not connection.running_request
            and not connection.transport.is_closing()
        ]
        if quiet:
            min(quiet, key=lambda connection: connection._last_active).transport.close()
        else:
            logger.warning(
                "%d connections are running requests, the most allowed: closing a new one",
                len(self.connections) - 1,
            )
            self.transport.close()
