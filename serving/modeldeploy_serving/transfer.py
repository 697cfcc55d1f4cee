"""HTTP transfers with timeouts, retries and limits, shared by the fetch sources."""

import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import httpx

from modeldeploy_serving.errors import FetchError

CONNECT_TIMEOUT_SECONDS = 10.0
ATTEMPTS = 4
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_RAW_CHUNK_BYTES = 64 * 1024
_DECODED_CHUNK_BYTES = 1024 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS

MAX_BYTES_VARIABLE = "MODELDEPLOY_FETCH_MAX_BYTES"
READ_TIMEOUT_VARIABLE = "MODELDEPLOY_FETCH_READ_TIMEOUT_SECONDS"
DEADLINE_VARIABLE = "MODELDEPLOY_FETCH_DEADLINE_SECONDS"
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_READ_TIMEOUT_SECONDS = 60.0
DEFAULT_DEADLINE_SECONDS = 3600.0

T = TypeVar("T")


@dataclass(frozen=True)
class FetchLimits:
    """How much one fetch may write (after decompression) and how long it may take."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """The most bytes the artifact may have on disk, all files together."""
    read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_SECONDS
    """The longest a connection may stay silent."""
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    """The longest the whole fetch may take, retries included."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "FetchLimits":
        """The limits set by the `MODELDEPLOY_FETCH_*` variables, defaults for the rest."""
        return cls(
            max_bytes=int(_positive(environ, MAX_BYTES_VARIABLE, DEFAULT_MAX_BYTES)),
            read_timeout_seconds=_positive(environ, READ_TIMEOUT_VARIABLE, DEFAULT_READ_TIMEOUT_SECONDS),
            deadline_seconds=_positive(environ, DEADLINE_VARIABLE, DEFAULT_DEADLINE_SECONDS),
        )


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise FetchError(f"{name}={text!r} is not a number") from None
    if not value > 0:
        raise FetchError(f"{name}={text!r} must be positive")
    return value


@dataclass
class Budget:
    """What is left of a fetch's limits: bytes still allowed and the moment it must end."""

    limits: FetchLimits
    written: int = 0
    ends_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.ends_at = time.monotonic() + self.limits.deadline_seconds

    def take(self, count: int, describe: str) -> None:
        """Account for `count` more bytes; FetchError as soon as the cap is passed."""
        self.written += count
        if self.written > self.limits.max_bytes:
            raise FetchError(
                f"{describe}: the artifact is larger than {self.limits.max_bytes} bytes "
                f"(raise {MAX_BYTES_VARIABLE} to allow it)"
            )
        self.check_deadline(describe)

    def check_deadline(self, describe: str) -> None:
        """FetchError once the fetch has run longer than its deadline."""
        if time.monotonic() > self.ends_at:
            raise FetchError(
                f"{describe}: the fetch took longer than {self.limits.deadline_seconds:g} s "
                f"(raise {DEADLINE_VARIABLE} to allow it)"
            )


def with_retries(action: Callable[[], T], describe: str, budget: Budget | None = None) -> T:
    """Run `action`, retrying transient network failures with exponential backoff."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except httpx.TransportError as error:
            failure = f"{describe}: {type(error).__name__} {error}".rstrip()
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            failure = f"{describe}: HTTP {status}"
            if status not in _RETRYABLE_STATUS:
                raise FetchError(failure) from None
        except httpx.TooManyRedirects:
            raise FetchError(f"{describe}: too many redirects (a redirect loop?)") from None
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise FetchError(f"{describe}: {type(error).__name__} {error}".rstrip()) from None
        if attempt == ATTEMPTS:
            raise FetchError(f"{failure} (gave up after {ATTEMPTS} attempts)")
        if budget is not None:
            budget.check_deadline(failure)
        time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def download_http(url: str, destination: Path, headers: Mapping[str, str] | None, budget: Budget) -> None:
    """Stream `url` into `destination` within the budget, with timeouts and retries."""
    timeout = httpx.Timeout(budget.limits.read_timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS)
    describe = f"downloading {redacted(url)}"
    request_headers = {**(headers or {}), "Accept-Encoding": "gzip, identity"}
    written_before = budget.written

    def attempt() -> None:
        budget.written = written_before  # a retry starts the file again
        with httpx.stream(
            "GET", url, headers=request_headers, timeout=timeout, follow_redirects=True
        ) as reply:
            reply.raise_for_status()
            encoding = reply.headers.get("Content-Encoding", "identity").strip().lower()
            with destination.open("wb") as stream:
                _write_decoded(reply.iter_raw(_RAW_CHUNK_BYTES), encoding, stream, budget, describe)

    _refuse_invalid_url(url)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with_retries(attempt, describe, budget)


def _write_decoded(
    raw: Iterator[bytes], encoding: str, stream: BinaryIO, budget: Budget, describe: str
) -> None:
    """Write the body, decompressed in bounded pieces so a gzip bomb stops at the byte cap."""
    if encoding in ("", "identity"):
        for chunk in raw:
            budget.take(len(chunk), describe)
            stream.write(chunk)
        return
    if encoding not in ("gzip", "x-gzip"):
        raise FetchError(f"{describe}: unsupported Content-Encoding {encoding!r}")
    decoder = zlib.decompressobj(_GZIP_WBITS)
    try:
        for chunk in raw:
            pending = chunk
            while pending and not decoder.eof:
                piece = decoder.decompress(pending, _DECODED_CHUNK_BYTES)
                budget.take(len(piece), describe)
                stream.write(piece)
                pending = decoder.unconsumed_tail
            budget.check_deadline(describe)
    except zlib.error as error:
        raise FetchError(f"{describe}: the gzip-encoded body is corrupt ({error})") from None
    if not decoder.eof:
        raise FetchError(f"{describe}: the gzip-encoded body is truncated")


def redacted(url: str) -> str:
    """The URL without query string or credentials, which may hold secrets (presigned URLs)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{host}{slash}{path}".partition("?")[0].partition("#")[0]


def _refuse_invalid_url(url: str) -> None:
    """A URL httpx would misread (a port out of range) is refused before any connection."""
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 (parsing the port is the check)
    except ValueError as error:
        raise FetchError(f"{redacted(url)} is not a valid URL: {error}") from None
