"""The model interface the data plane serves, and its scikit-learn implementation."""

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_serving.errors import InvalidInput

OUTPUT_PREDICT = "predict"
OUTPUT_PREDICT_PROBA = "predict_proba"


@dataclass(frozen=True)
class TensorSpec:
    """A tensor in the model's metadata; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelDescription:
    """What a client may learn about the model."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    classes: tuple[Any, ...] | None = None
    """The class labels of a classifier, None for anything else."""
    feature_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WarmUpInput:
    """Rows for the warm-up prediction, and whether they came with the artifact or were made up."""

    rows: npt.NDArray[Any]
    from_artifact: bool


class Model(abc.ABC):
    """A loaded model: a description and a vectorised predict over rows of features."""

    @property
    @abc.abstractmethod
    def description(self) -> ModelDescription:
        """The model's inputs, outputs and classes."""

    @abc.abstractmethod
    def predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """The requested outputs for an [N, F] matrix of rows; InvalidInput if it does not fit."""

    @abc.abstractmethod
    def warm_up_input(self) -> "WarmUpInput | None":
        """A small input for the warm-up prediction; None if nothing is known about the input."""

    @property
    def default_outputs(self) -> tuple[str, ...]:
        """The outputs returned when a request names none."""
        return tuple(spec.name for spec in self.description.outputs)


class SklearnModel(Model):
    """A fitted scikit-learn estimator or pipeline."""

    def __init__(
        self,
        estimator: Any,
        feature_names: Sequence[str] | None = None,
        example_rows: npt.NDArray[Any] | None = None,
    ) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise TypeError(f"{type(estimator).__name__} has no predict method")
        self._estimator = estimator
        self._n_features: int | None = getattr(estimator, "n_features_in_", None)
        names = feature_names or getattr(estimator, "feature_names_in_", None)
        self._feature_names = tuple(str(name) for name in names) if names is not None else None
        if self._n_features is None and self._feature_names is not None:
            self._n_features = len(self._feature_names)
        self._example_rows = example_rows
        fitted_columns = getattr(estimator, "feature_names_in_", None)
        self._fitted_columns = (
            tuple(str(name) for name in fitted_columns) if fitted_columns is not None else None
        )
        classes = getattr(estimator, "classes_", None)
        self._classes = tuple(classes.tolist()) if isinstance(classes, np.ndarray) else None
        self._description = self._describe()

    def _describe(self) -> ModelDescription:
        width = self._n_features if self._n_features is not None else -1
        inputs = (TensorSpec("input-0", "FP64", (-1, width)),)
        if self._classes is None:
            outputs: tuple[TensorSpec, ...] = (TensorSpec(OUTPUT_PREDICT, "FP64", (-1,)),)
        else:
            label_type = _label_datatype(self._classes)
            outputs = (TensorSpec(OUTPUT_PREDICT, label_type, (-1,)),)
            if callable(getattr(self._estimator, "predict_proba", None)):
                outputs += (TensorSpec(OUTPUT_PREDICT_PROBA, "FP64", (-1, len(self._classes))),)
        return ModelDescription(
            platform="sklearn",
            inputs=inputs,
            outputs=outputs,
            classes=self._classes,
            feature_names=self._feature_names,
        )

    @property
    def description(self) -> ModelDescription:
        return self._description

    def predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        if rows.ndim != 2:
            raise InvalidInput(f"expected a matrix of rows and features, got shape {list(rows.shape)}")
        if rows.shape[0] == 0:
            raise InvalidInput("the request holds no rows")
        if self._n_features is not None and rows.shape[1] != self._n_features:
            raise InvalidInput(f"the model expects {self._n_features} features per row, got {rows.shape[1]}")
        available = {spec.name for spec in self._description.outputs}
        results: dict[str, npt.NDArray[Any]] = {}
        for name in outputs:
            if name not in available:
                offered = ", ".join(sorted(available))
                raise InvalidInput(f"unknown output '{name}'; this model offers {offered}")
            try:
                results[name] = np.asarray(getattr(self._estimator, name)(self._features(rows)))
            except (ValueError, TypeError) as error:
                # scikit-learn reports input it cannot use (NaN, strings in a numeric model) this way.
                raise InvalidInput(f"the model rejected the input: {error}") from None
        return results

    def warm_up_input(self) -> WarmUpInput | None:
        if self._example_rows is not None:
            return WarmUpInput(self._example_rows, from_artifact=True)
        if self._n_features is None:
            return None
        return WarmUpInput(np.zeros((1, self._n_features)), from_artifact=False)

    def _features(self, rows: npt.NDArray[Any]) -> Any:
        """What the estimator takes: a frame with the column names it was fitted with, if any.

        Pipelines that pick columns by name (a ColumnTransformer) only work on frames.
        """
        if self._fitted_columns is None:
            return rows
        import pandas

        return pandas.DataFrame(rows, columns=list(self._fitted_columns)).infer_objects()


def _label_datatype(classes: tuple[Any, ...]) -> str:
    if all(isinstance(label, bool) for label in classes):
        return "BOOL"
    if all(isinstance(label, int) for label in classes):
        return "INT64"
    if all(isinstance(label, (int, float)) for label in classes):
        return "FP64"
    return "BYTES"
