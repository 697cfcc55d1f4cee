"""Prometheus, model-server processes and models for end-to-end tests (all on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_canary import Rollouts, running_rollouts

from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.iris_models import write_iris_models
from modeldeploy_localcluster.standins import ModelServer, PrometheusProcess
from operator_harness import OperatorProcess


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_iris_models(tmp_path_factory.mktemp("models"))


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


@pytest.fixture
def rollouts(
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    prometheus: PrometheusProcess,
    tmp_path: Path,
) -> Iterator[Rollouts]:
    """A ModelDeployment's stand-in server processes and the load split by its status' weight."""
    with running_rollouts(cluster, namespace, prometheus, tmp_path) as running:
        yield running
