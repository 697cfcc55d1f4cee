"""Small models made from scikit-learn's bundled data sets, and helpers shared by the server tests."""

from pathlib import Path
from typing import Any

import joblib
import pytest
import skops.io
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@pytest.fixture(scope="session")
def iris_classifier() -> Any:
    features, labels = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)


@pytest.fixture(scope="session")
def diabetes_regressor() -> Any:
    features, target = load_diabetes(return_X_y=True)
    return LinearRegression().fit(features, target)


@pytest.fixture
def iris_skops_dir(tmp_path: Path, iris_classifier: Any) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    skops.io.dump(iris_classifier, directory / "model.skops")
    return directory


@pytest.fixture
def iris_joblib_dir(tmp_path: Path, iris_classifier: Any) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    joblib.dump(iris_classifier, directory / "model.joblib")
    return directory
