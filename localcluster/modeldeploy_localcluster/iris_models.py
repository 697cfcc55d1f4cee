"""Iris classifiers saved as the model server loads them (skops), for the demo, tests and benchmarks.

Each stands for a kind of new model version a rollout meets in practice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import skops.io
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

# One row of each iris class: a good model spreads its answers over all three.
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


def v2_inference_payloads(rows: list[list[float]] = IRIS_ROWS) -> list[dict[str, Any]]:
    """One Open Inference Protocol request per row."""
    return [
        {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": [row]}]}
        for row in rows
    ]


def _logistic(solver: str = "lbfgs") -> Pipeline:
    features, labels = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(solver=solver, max_iter=500)).fit(
        features, labels
    )


def _save(model: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, directory / "model.skops")
    return directory


def write_iris_models(root: Path) -> dict[str, Path]:
    """Writes, under `root`, one directory per model:

    - `v1`: a good classifier;
    - `v1-retrained`: the same, fitted again with another solver (the same answers);
    - `v2-constant`: answers `setosa` whatever it is asked (errors and latency as good as v1's,
      predictions far off);
    - `v2-lost-a-class`: v1 exported with its label table cut to two classes, so every request
      with a row of the third class fails inside the model (a 500) and the others are answered
      as v1 would.
    """
    features, labels = load_iris(return_X_y=True)
    broken = _logistic()
    broken[-1].classes_ = broken[-1].classes_[:2]
    return {
        "v1": _save(_logistic(), root / "v1"),
        "v1-retrained": _save(_logistic("newton-cg"), root / "v1-retrained"),
        "v2-constant": _save(
            DummyClassifier(strategy="constant", constant=0).fit(features, labels), root / "v2-constant"
        ),
        "v2-lost-a-class": _save(broken, root / "v2-lost-a-class"),
    }
