"""HTTP transfers with timeouts and retries, shared by the fetch sources."""

import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

from modeldeploy_serving.errors import FetchError

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
ATTEMPTS = 4
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

T = TypeVar("T")


def with_retries(action: Callable[[], T], describe: str) -> T:
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
        if attempt == ATTEMPTS:
            raise FetchError(f"{failure} (gave up after {ATTEMPTS} attempts)")
        time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def download_http(url: str, destination: Path, headers: Mapping[str, str] | None = None) -> None:
    """Stream `url` into `destination`, with timeouts and retries."""
    timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)

    def attempt() -> None:
        with (
            httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as reply,
        ):
            reply.raise_for_status()
            with destination.open("wb") as stream:
                for chunk in reply.iter_bytes(1024 * 1024):
                    stream.write(chunk)

    destination.parent.mkdir(parents=True, exist_ok=True)
    with_retries(attempt, f"downloading {_redacted(url)}")


def _redacted(url: str) -> str:
    """The URL without query string or credentials, which may hold secrets (presigned URLs)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
