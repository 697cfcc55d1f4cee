"""Decoding Prometheus' query answers: what counts as a sample, what is a bad response."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from modeldeploy_operator.prometheus import (
    PrometheusClient,
    PrometheusError,
    Sample,
    decode_query_response,
    is_number,
)


def vector(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1764244800.0, v]} for m, v in series],
        },
    }


def test_a_vector_becomes_labelled_samples() -> None:
    decoded = decode_query_response(vector(({"variant": "canary"}, "0.25"), ({"variant": "stable"}, "1e-3")))
    assert decoded == [Sample({"variant": "canary"}, 0.25), Sample({"variant": "stable"}, 0.001)]


def test_an_empty_vector_is_no_samples() -> None:
    assert decode_query_response(vector()) == []


@pytest.mark.parametrize("text", ["NaN", "+Inf", "-Inf"])
def test_special_values_are_kept_but_are_not_numbers(text: str) -> None:
    (sample,) = decode_query_response(vector(({}, text)))
    assert not is_number(sample.value)
    assert math.isnan(sample.value) or math.isinf(sample.value)


def test_a_scalar_is_one_sample_without_labels() -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [1764244800.0, "3"]}}
    assert decode_query_response(body) == [Sample({}, 3.0)]


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "errorType": "bad_data", "error": "parse error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1]}]}},
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]},
        },
        "not json object",
    ],
)
def test_answers_that_cannot_be_read_are_bad_responses(body: Any) -> None:
    with pytest.raises(PrometheusError) as raised:
        decode_query_response(body)
    assert raised.value.kind == "bad-response"


def query_through(handler: Callable[[httpx.Request], httpx.Response], address: str) -> PrometheusError:
    async def run() -> PrometheusError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(PrometheusError) as caught:
                await PrometheusClient(client).query(address, "up")
            return caught.value

    return asyncio.run(run())


SECRET = "<html>internal admin page: token=hunter2</html>"


@pytest.mark.parametrize("status", [200, 400, 500])
def test_nothing_of_a_foreign_answer_reaches_the_message(status: int) -> None:
    # Whoever may edit a ModelDeployment picks the address; its answer must not leak into status.
    error = query_through(lambda request: httpx.Response(status, text=SECRET), "http://intranet:80")
    assert "hunter2" not in str(error) and "html" not in str(error)


def test_prometheus_own_error_is_kept_on_one_printable_line() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error\n\x1b[31mat char 3" + "x" * 500}
    error = query_through(lambda request: httpx.Response(400, json=body), "http://prometheus:9090")
    assert error.kind == "bad-query"
    assert str(error).startswith("parse error ")
    assert "\n" not in str(error) and "\x1b" not in str(error) and len(str(error)) <= 200


def test_an_address_httpx_cannot_parse_is_an_unreachable_prometheus() -> None:
    # It once raised httpx.InvalidURL out of every reconcile, so the rollout never moved again.
    error = query_through(lambda request: httpx.Response(200), "http://prometheus:9O90")
    assert error.kind == "unreachable"
