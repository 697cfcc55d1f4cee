"""The one layer that talks to Prometheus: instant queries over its HTTP API.

Failures come back as :class:`PrometheusError` with a kind the analysis can judge
(unreachable, timeout, an HTTP error, a bad query, a response it cannot read); the
analysis turns every one of them into an inconclusive check, never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx

ErrorKind = Literal["unreachable", "timeout", "http", "bad-query", "bad-response", "not-allowed"]
# How much of Prometheus' own error text reaches status and Events.
ERROR_TEXT_LIMIT = 200
DEFAULT_TIMEOUT_SECONDS = 10.0


class PrometheusError(RuntimeError):
    """A query that produced no usable result; `kind` says why."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and its value (NaN and ±Inf are kept)."""

    labels: dict[str, str]
    value: float


def _value(raw: Any) -> float:
    # Prometheus sends values as strings: "1.5", "NaN", "+Inf", "-Inf".
    if not isinstance(raw, list) or len(raw) != 2:
        raise PrometheusError("bad-response", "a sample is not [time, value]")
    try:
        return float(raw[1])
    except (TypeError, ValueError) as error:
        raise PrometheusError("bad-response", "a sample value is not a number") from error


def decode_query_response(body: Any) -> list[Sample]:
    """The samples of a successful /api/v1/query answer (vector or scalar)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError("bad-response", "not a successful query answer")
    data = body.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("bad-response", "the answer has no data")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return [Sample({}, _value(result))]
    if result_type != "vector" or not isinstance(result, list):
        raise PrometheusError("bad-response", f"expected an instant vector, got {result_type}")
    samples = []
    for series in result:
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            raise PrometheusError("bad-response", "a series without labels")
        samples.append(
            Sample({str(k): str(v) for k, v in series["metric"].items()}, _value(series.get("value")))
        )
    return samples


def is_number(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


class PrometheusClient:
    """Instant queries against one Prometheus, with a timeout per query."""

    def __init__(self, client: httpx.AsyncClient, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._client = client
        self._timeout = timeout

    async def query(self, address: str, promql: str, at: datetime | None = None) -> list[Sample]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        url = address.rstrip("/") + "/api/v1/query"
        try:
            reply = await self._client.post(url, data=params, timeout=self._timeout)
        except httpx.TimeoutException as error:
            raise PrometheusError("timeout", f"no answer from {address} in {self._timeout:.0f}s") from error
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise PrometheusError("unreachable", f"{address}: {type(error).__name__}") from error
        if reply.status_code in (400, 422):
            raise PrometheusError("bad-query", _error_text(reply))
        if reply.status_code != 200:
            raise PrometheusError("http", f"HTTP {reply.status_code} from {address}: {_error_text(reply)}")
        try:
            body = reply.json()
        except ValueError as error:
            raise PrometheusError("bad-response", "Prometheus answered something that is not JSON") from error
        return decode_query_response(body)


def sanitized(text: str) -> str:
    """Printable ASCII only, one line, at most ERROR_TEXT_LIMIT characters: text from a server ends up
    in status and Events, where control characters, markup or a page of HTML have no place."""
    printable = "".join(char if " " <= char <= "~" else " " for char in text)
    return " ".join(printable.split())[:ERROR_TEXT_LIMIT]


def _error_text(reply: httpx.Response) -> str:
    """Prometheus' own error message (its JSON error field); nothing of any other answer's body."""
    try:
        body = reply.json()
    except ValueError:
        return "the answer is not a Prometheus error"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return sanitized(body["error"])
    return "the answer is not a Prometheus error"
