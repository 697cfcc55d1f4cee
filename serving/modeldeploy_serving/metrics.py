"""The server's Prometheus series (names in metric_names), labelled with the deployment's identity."""

import platform
from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt
import sklearn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modeldeploy_serving import metric_names as names
from modeldeploy_serving.settings import ServerSettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def prediction_value_buckets() -> tuple[float, ...]:
    """1-2-5 steps per decade from 0.01 to 500,000, mirrored below zero.

    Regression targets come in any unit, so the buckets cover many decades coarsely: enough to
    compare the canary's distribution with the stable model's.
    """
    positive = [mantissa * 10.0**exponent for exponent in range(-2, 6) for mantissa in (1, 2, 5)]
    return (*sorted(-value for value in positive), 0.0, *positive)


class ServerMetrics:
    """Records requests, predictions and the loaded model's identity."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry) -> None:
        self._common = {
            names.LABEL_MODEL: settings.model_name,
            names.LABEL_NAMESPACE: settings.namespace,
            names.LABEL_MODEL_VERSION: settings.model_version,
            names.LABEL_VARIANT: settings.variant.value,
        }
        common = names.COMMON_LABELS
        self._requests = Counter(
            names.REQUESTS_TOTAL,
            "HTTP requests by protocol, endpoint and status code.",
            (*common, names.LABEL_PROTOCOL, names.LABEL_ENDPOINT, names.LABEL_CODE),
            registry=registry,
        )
        self._duration = Histogram(
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
        self._values = Histogram(
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

        self._rows_child = self._rows.labels(**self._common)
        self._values_child = self._values.labels(**self._common)
        self._class_children: dict[Any, Counter] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, protocol: str, endpoint: str, code: int, seconds: float) -> None:
        """Count a finished request and its latency."""
        key = (protocol, endpoint, code)
        children = self._request_children.get(key)
        if children is None:
            # Looking children up by label values costs more than a prediction's bookkeeping should.
            labels = {**self._common, names.LABEL_PROTOCOL: protocol, names.LABEL_ENDPOINT: endpoint}
            children = (self._requests.labels(**labels, code=str(code)), self._duration.labels(**labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_predictions(self, predictions: npt.NDArray[Any], classes: Sequence[Any] | None) -> None:
        """Count rows and record the distribution of predicted classes or values."""
        self._rows_child.inc(len(predictions))
        if classes is not None:
            for label, count in Tally(predictions.reshape(-1).tolist()).items():
                child = self._class_children.get(label)
                if child is None:
                    child = self._classes.labels(**self._common, **{names.LABEL_CLASS: str(label)})
                    self._class_children[label] = child
                child.inc(count)
        elif predictions.dtype.kind in "biuf":
            for value in predictions.reshape(-1).tolist():
                self._values_child.observe(value)

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
