"""The server's Prometheus series (names in metric_names), labelled with the deployment's identity.

Recording a request in prometheus_client costs several microseconds: each counter and histogram
bucket is a value behind its own lock, and with several workers each increment is also written
to a memory-mapped file. A request on the fast path recorded five of them, as much as the rest of
its bookkeeping. So requests and predictions are tallied in plain Python numbers first (behind
one lock, as predictions of large requests are counted on threads) and added to the series in a
batch by `flush`: whenever the series are collected (a /metrics scrape, or a test reading the
registry) and every `FLUSH_SECONDS`, so a scrape answered by another worker sees them too. The
series, their labels and their values are those of recording each observation at once.
"""

import platform
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import sklearn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from modeldeploy_serving import metric_names as names
from modeldeploy_serving.settings import ServerSettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

FLUSH_SECONDS = 0.5
"""How long tallies wait at most before they reach the series (and the other workers' scrapes)."""


def prediction_value_buckets() -> tuple[float, ...]:
    """1-2-5 steps per decade from 0.01 to 500,000, mirrored below zero.

    Regression targets come in any unit, so the buckets cover many decades coarsely: enough to
    compare the canary's distribution with the stable model's.
    """
    positive = [mantissa * 10.0**exponent for exponent in range(-2, 6) for mantissa in (1, 2, 5)]
    return (*sorted(-value for value in positive), 0.0, *positive)


class _BatchedHistogram(Histogram):
    """A histogram that also takes observations already sorted into its buckets."""

    def add(self, bucket_counts: Sequence[int], total: float) -> None:
        """As many observations as `bucket_counts` says per bucket, adding up to `total`."""
        self._sum.inc(total)
        for value, count in zip(self._buckets, bucket_counts, strict=True):
            if count:
                value.inc(count)


@dataclass
class _Observations:
    """Observations of one histogram not yet added to it: a count per bucket and their sum."""

    counts: list[int]
    total: float = 0.0


@dataclass
class _Tallies:
    """What was recorded since the last flush."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    durations: dict[tuple[str, str], _Observations] = field(default_factory=dict)
    rows: int = 0
    classes: Tally[Any] = field(default_factory=Tally)
    values: _Observations | None = None


def bucket_counts(values: npt.NDArray[np.float64], upper_bounds: npt.NDArray[np.float64]) -> list[int]:
    """How many of `values` fall in each bucket: the first whose upper bound is at least the
    value, as prometheus_client sorts one observation; NaN is in none (and only in the sum)."""
    indices = np.searchsorted(upper_bounds, values, side="left")  # NaN sorts past every bound
    counts: list[int] = np.bincount(indices, minlength=len(upper_bounds) + 1)[: len(upper_bounds)].tolist()
    return counts


class _FlushOnCollect:
    """Registered before the series, so collecting the registry first flushes the tallies."""

    def __init__(self, metrics: "ServerMetrics") -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return []


class ServerMetrics:
    """Records requests, predictions and the loaded model's identity."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry) -> None:
        self._common = {
            names.LABEL_MODEL: settings.model_name,
            names.LABEL_NAMESPACE: settings.namespace,
            names.LABEL_MODEL_VERSION: settings.model_version,
            names.LABEL_VARIANT: settings.variant.value,
        }
        registry.register(_FlushOnCollect(self))
        common = names.COMMON_LABELS
        self._requests = Counter(
            names.REQUESTS_TOTAL,
            "HTTP requests by protocol, endpoint and status code.",
            (*common, names.LABEL_PROTOCOL, names.LABEL_ENDPOINT, names.LABEL_CODE),
            registry=registry,
        )
        self._duration = _BatchedHistogram(
            names.REQUEST_DURATION_SECONDS,
            "Time from receiving a request to sending its response.",
            (*common, names.LABEL_PROTOCOL, names.LABEL_ENDPOINT),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._rows = Counter(
            names.PREDICTED_ROWS_TOTAL, "Rows the model predicted.", common, registry=registry
        )
        self._classes = Counter(
            names.PREDICTION_CLASS_TOTAL,
            "Predicted rows per class (classifiers).",
            (*common, names.LABEL_CLASS),
            registry=registry,
        )
        self._values = _BatchedHistogram(
            names.PREDICTION_VALUE,
            "Predicted values (regressors).",
            common,
            buckets=prediction_value_buckets(),
            registry=registry,
        )
        self._load_seconds = Gauge(
            names.MODEL_LOAD_SECONDS,
            "Seconds spent loading and warming up the model.",
            common,
            registry=registry,
            multiprocess_mode="max",
        )
        self._info = Gauge(
            names.MODEL_INFO,
            "The served artifact: always 1, its identity in the labels.",
            (
                *common,
                names.LABEL_DIGEST,
                names.LABEL_FORMAT,
                names.LABEL_SKLEARN_VERSION,
                names.LABEL_PYTHON_VERSION,
            ),
            registry=registry,
            multiprocess_mode="max",
        )
        # The histograms' upper bounds, +Inf included, as prometheus_client sorts observations.
        self._latency_bounds = (*LATENCY_BUCKETS, float("inf"))
        self._value_bounds = np.array([*prediction_value_buckets(), float("inf")])

        self._rows_child = self._rows.labels(**self._common)
        self._values_child = self._values.labels(**self._common)
        self._class_children: dict[Any, Counter] = {}
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[tuple[str, str], _BatchedHistogram] = {}
        self._lock = threading.Lock()
        self._tallies = _Tallies()

    def observe_request(self, protocol: str, endpoint: str, code: int, seconds: float) -> None:
        """Count a finished request and its latency."""
        bucket = bisect_left(self._latency_bounds, seconds)
        with self._lock:
            tallies = self._tallies
            key = (protocol, endpoint, code)
            tallies.requests[key] = tallies.requests.get(key, 0) + 1
            route = (protocol, endpoint)
            durations = tallies.durations.get(route)
            if durations is None:
                durations = tallies.durations[route] = _Observations([0] * len(self._latency_bounds))
            durations.counts[bucket] += 1
            durations.total += seconds

    def observe_predictions(self, predictions: npt.NDArray[Any], classes: Sequence[Any] | None) -> None:
        """Count rows and record the distribution of predicted classes or values."""
        rows = len(predictions)
        if classes is not None:
            labels = predictions.reshape(-1).tolist()
            with self._lock:
                self._tallies.rows += rows
                self._tallies.classes.update(labels)
        elif predictions.dtype.kind in "biuf":
            values = predictions.reshape(-1).astype(np.float64)
            counts = bucket_counts(values, self._value_bounds)
            total = float(values.sum())
            with self._lock:
                tallies = self._tallies
                tallies.rows += rows
                if tallies.values is None:
                    tallies.values = _Observations(counts, total)
                else:
                    tallies.values.counts = [
                        a + b for a, b in zip(tallies.values.counts, counts, strict=True)
                    ]
                    tallies.values.total += total
        else:
            with self._lock:
                self._tallies.rows += rows

    def flush(self) -> None:
        """Add what was recorded since the last flush to the series."""
        with self._lock:
            tallies, self._tallies = self._tallies, _Tallies()
        for (protocol, endpoint, code), count in tallies.requests.items():
            self._request_child(protocol, endpoint, code).inc(count)
        for route, durations in tallies.durations.items():
            self._duration_child(*route).add(durations.counts, durations.total)
        if tallies.rows:
            self._rows_child.inc(tallies.rows)
        for label, count in tallies.classes.items():
            child = self._class_children.get(label)
            if child is None:
                child = self._classes.labels(**self._common, **{names.LABEL_CLASS: str(label)})
                self._class_children[label] = child
            child.inc(count)
        if tallies.values is not None:
            self._values_child.add(tallies.values.counts, tallies.values.total)

    def observe_model_loaded(self, seconds: float, digest: str, artifact_format: str) -> None:
        """Record the load time and the identity of the served artifact."""
        self._load_seconds.labels(**self._common).set(seconds)
        self._info.labels(
            **self._common,
            **{
                names.LABEL_DIGEST: digest,
                names.LABEL_FORMAT: artifact_format,
                names.LABEL_SKLEARN_VERSION: sklearn.__version__,
                names.LABEL_PYTHON_VERSION: platform.python_version(),
            },
        ).set(1)

    def _request_child(self, protocol: str, endpoint: str, code: int) -> Counter:
        key = (protocol, endpoint, code)
        child = self._request_children.get(key)
        if child is None:
            labels = {**self._common, names.LABEL_PROTOCOL: protocol, names.LABEL_ENDPOINT: endpoint}
            child = self._request_children[key] = self._requests.labels(**labels, code=str(code))
        return child

    def _duration_child(self, protocol: str, endpoint: str) -> _BatchedHistogram:
        key = (protocol, endpoint)
        child = self._duration_children.get(key)
        if child is None:
            labels = {**self._common, names.LABEL_PROTOCOL: protocol, names.LABEL_ENDPOINT: endpoint}
            child = self._duration_children[key] = self._duration.labels(**labels)
        return child
