"""Tallied metrics: the series they flush are those of recording each observation in prometheus_client."""

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from serving_helpers import make_settings

from modeldeploy_serving import metric_names as names
from modeldeploy_serving.metrics import LATENCY_BUCKETS, ServerMetrics, prediction_value_buckets

LABELS = {"model": "iris", "namespace": "ml", "model_version": "v1", "variant": "stable"}

# Bucket bounds themselves, and values around them, are where sorting into buckets can go wrong.
_latencies = st.one_of(
    st.sampled_from(LATENCY_BUCKETS),
    st.floats(min_value=0, max_value=20, allow_nan=False),
)
_values = st.one_of(
    st.sampled_from([*prediction_value_buckets(), math.nan, math.inf, -math.inf]),
    st.floats(min_value=-1e7, max_value=1e7),
)
_requests = st.lists(
    st.tuples(
        st.sampled_from(["v1", "v2"]),
        st.sampled_from(["infer", "health"]),
        st.sampled_from([200, 400]),
        _latencies,
    ),
    max_size=30,
)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _reference(registry: CollectorRegistry) -> dict[str, Any]:
    """The series recorded one observation at a time, as prometheus_client does."""
    common = names.COMMON_LABELS
    return {
        "requests": Counter(
            names.REQUESTS_TOTAL, "x", (*common, "protocol", "endpoint", "code"), registry=registry
        ),
        "duration": Histogram(
            names.REQUEST_DURATION_SECONDS,
            "x",
            (*common, "protocol", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        "rows": Counter(names.PREDICTED_ROWS_TOTAL, "x", common, registry=registry),
        "classes": Counter(names.PREDICTION_CLASS_TOTAL, "x", (*common, "class"), registry=registry),
        "values": Histogram(
            names.PREDICTION_VALUE, "x", common, buckets=prediction_value_buckets(), registry=registry
        ),
    }


def _assert_same(tallied: CollectorRegistry, reference: CollectorRegistry) -> None:
    ours, theirs = _samples(tallied), _samples(reference)
    ours = {key: value for key, value in ours.items() if not key[0].startswith("modeldeploy_model_")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            # Sums are added up in another order: equal up to rounding.
            assert math.isclose(ours[key], value, rel_tol=1e-9, abs_tol=1e-9), (key, ours[key], value)


@settings(max_examples=60, deadline=None)
@given(
    requests=_requests,
    values=st.lists(st.lists(_values, min_size=1, max_size=20), max_size=5),
    classes=st.lists(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=20), max_size=5),
    flush_between=st.booleans(),
)
def test_flushed_tallies_equal_recording_each_observation(
    requests: list[tuple[str, str, int, float]],
    values: list[list[float]],
    classes: list[list[int]],
    flush_between: bool,
) -> None:
    tallied, reference = CollectorRegistry(), CollectorRegistry()
    metrics = ServerMetrics(make_settings(Path("/nonexistent")), tallied)
    series = _reference(reference)
    # The server shows its rows and values series from the start, at zero.
    series["rows"].labels(**LABELS)
    series["values"].labels(**LABELS)
    for protocol, endpoint, code, seconds in requests:
        metrics.observe_request(protocol, endpoint, code, seconds)
        if flush_between:
            metrics.flush()
        route = {**LABELS, "protocol": protocol, "endpoint": endpoint}
        series["requests"].labels(**route, code=str(code)).inc()
        series["duration"].labels(**route).observe(seconds)
    for batch in classes:
        metrics.observe_predictions(np.array(batch), (0, 1, 2))
        series["rows"].labels(**LABELS).inc(len(batch))
        for label in batch:
            series["classes"].labels(**LABELS, **{"class": str(label)}).inc()
    for batch in values:
        metrics.observe_predictions(np.array(batch), None)
        series["rows"].labels(**LABELS).inc(len(batch))
        for value in batch:
            series["values"].labels(**LABELS).observe(value)
    _assert_same(tallied, reference)


def test_predictions_counted_on_threads_and_the_loop_all_reach_the_series() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(make_settings(Path("/nonexistent")), registry)

    def record() -> None:
        for _ in range(2_000):
            metrics.observe_predictions(np.array([0, 1]), (0, 1, 2))
            metrics.observe_request("v2", "infer", 200, 0.002)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        metrics.flush()  # while the threads record
    for thread in threads:
        thread.join()
    assert registry.get_sample_value(names.PREDICTED_ROWS_TOTAL, LABELS) == 16_000
    assert registry.get_sample_value(names.PREDICTION_CLASS_TOTAL, {**LABELS, "class": "1"}) == 8_000
    route = {**LABELS, "protocol": "v2", "endpoint": "infer"}
    assert registry.get_sample_value(names.REQUESTS_TOTAL, {**route, "code": "200"}) == 8_000
    assert (
        registry.get_sample_value(names.REQUEST_DURATION_SECONDS + "_bucket", {**route, "le": "0.0025"})
        == 8_000
    )
