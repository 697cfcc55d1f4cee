"""Session fixtures shared by every test folder.

The control plane is real (etcd, kube-apiserver, controller-manager, scheduler, kwok),
built once per version into ~/.cache/modeldeploy and started once per test session.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from modeldeploy_localcluster.cluster import LocalCluster

# Helpers shared by the integration and end-to-end tests.
sys.path.insert(0, str(Path(__file__).parent / "support"))

from kube_helpers import exists, wait_until
from operator_harness import (
    OperatorProcess,
    install_crd_and_rbac,
    service_account_kubeconfig,
)


def _progress(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(progress=_progress) as running:
        yield running


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster) -> Client:
    """The Python client the operator uses, authenticated as cluster admin."""
    return Client(config=KubeConfig.from_file(cluster.kubeconfig), field_manager="modeldeploy-tests")


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    """A namespace of the test's own, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name)))
    # Pods are refused until the service-account controller has made `default` here.
    wait_until(lambda: exists(kube, ServiceAccount, "default", name), f"service account default in {name}")
    yield name
    kube.delete(Namespace, name)


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, running as its service account with exactly the chart's RBAC rules."""
    install_crd_and_rbac(cluster)
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        service_account_kubeconfig(cluster, workdir / "kubeconfig"), workdir / "operator.log"
    )
    process.start()
    yield process
    process.stop()
    # A handler that crashed is a bug even when the test that triggered it passed.
    assert "Traceback" not in process.log_text(), process.log_text()[-5000:]
