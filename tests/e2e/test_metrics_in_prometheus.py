"""The server's metrics, scraped by a real Prometheus, tell the canary from the stable model.

This pins the coupling the canary analysis depends on: metric names and labels as Prometheus
stores them, with traffic split between two real server processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modeldeploy_localcluster.iris_models import IRIS_ROWS
from modeldeploy_localcluster.standins import ModelServer, PrometheusProcess, send_load
from modeldeploy_serving import metric_names as names

pytestmark = pytest.mark.e2e

# Rows that a good iris classifier spreads over all three classes.
PAYLOAD = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": IRIS_ROWS}]}


def test_prometheus_sees_each_variant_with_its_traffic_and_predictions(
    prometheus: PrometheusProcess,
    start_model_server: Callable[..., ModelServer],
    iris_models: dict[str, Path],
) -> None:
    stable = start_model_server(
        iris_models["v1"], name="iris", namespace="ml", variant="stable", version="v1"
    )
    canary = start_model_server(
        iris_models["v2-constant"], name="iris", namespace="ml", variant="canary", version="v2"
    )

    report = send_load(
        {
            "stable": (f"{stable.url}/v2/models/iris/infer", 3.0),
            "canary": (f"{canary.url}/v2/models/iris/infer", 1.0),
        },
        [PAYLOAD],
        rate=40,
        seconds=6,
    )
    assert report.codes == {"stable": {200: report.sent["stable"]}, "canary": {200: report.sent["canary"]}}
    time.sleep(3)  # two more scrapes

    selector = 'model="iris", namespace="ml"'
    requests = {
        (series["metric"]["variant"], series["metric"]["model_version"]): float(series["value"][1])
        for series in prometheus.query(
            f'sum by (variant, model_version) ({names.REQUESTS_TOTAL}{{{selector}, endpoint="infer", code="200"}})'
        )
    }
    assert requests == {("stable", "v1"): report.sent["stable"], ("canary", "v2"): report.sent["canary"]}

    classes = {
        (series["metric"]["variant"], series["metric"]["class"]): float(series["value"][1])
        for series in prometheus.query(
            f"sum by (variant, class) ({names.PREDICTION_CLASS_TOTAL}{{{selector}}})"
        )
    }
    # The stable model spreads its answers over three classes; the constant canary does not.
    assert {cls for variant, cls in classes if variant == "stable"} == {"0", "1", "2"}
    assert {cls for variant, cls in classes if variant == "canary"} == {"0"}
    assert classes[("canary", "0")] == 3 * report.sent["canary"]

    latency = prometheus.query(
        f"histogram_quantile(0.99, sum by (variant, le) "
        f'(rate({names.REQUEST_DURATION_SECONDS}_bucket{{{selector}, endpoint="infer"}}[30s])))'
    )
    assert {series["metric"]["variant"] for series in latency} == {"stable", "canary"}
    assert all(0 < float(series["value"][1]) < 5 for series in latency)
