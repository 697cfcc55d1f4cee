"""Prometheus, model-server processes and models for end-to-end tests (all on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modeldeploy_localcluster.standins import ModelServer, PrometheusProcess


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"))
    process.start()
    yield process
    process.stop()


def _saved(model: Any, directory: Path) -> Path:
    directory.mkdir(parents=True)
    skops.io.dump(model, directory / "model.skops")
    return directory


@pytest.fixture(scope="session")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1: a good classifier; v1-retrained: the same, fitted again with another solver (the same
    answers); v2-constant: one that answers `setosa` whatever it is asked; v2-lost-a-class: v1
    exported with its label table cut to two classes, so that every request with a row of the
    third class fails inside the model (a 500), and the others are answered as v1 would."""
    features, labels = load_iris(return_X_y=True)
    root = tmp_path_factory.mktemp("models")
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)
    retrained = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg")).fit(features, labels)
    constant = DummyClassifier(strategy="constant", constant=0).fit(features, labels)
    broken = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)
    broken[-1].classes_ = broken[-1].classes_[:2]
    return {
        "v1": _saved(good, root / "v1"),
        "v1-retrained": _saved(retrained, root / "v1-retrained"),
        "v2-constant": _saved(constant, root / "v2-constant"),
        "v2-lost-a-class": _saved(broken, root / "v2-lost-a-class"),
    }


@pytest.fixture
def start_model_server(prometheus: PrometheusProcess, tmp_path: Path) -> Iterator[Callable[..., ModelServer]]:
    servers: list[ModelServer] = []

    def start(model_dir: Path, *, name: str, namespace: str, variant: str, version: str) -> ModelServer:
        server = ModelServer.for_variant(
            model_dir,
            name=name,
            namespace=namespace,
            variant=variant,
            version=version,
            log=tmp_path / f"{name}-{variant}.log",
        )
        servers.append(server)
        server.start()
        prometheus.scrape(server.address)
        prometheus.wait_until_scraped(server.address)
        return server

    yield start
    for server in servers:
        server.stop()
