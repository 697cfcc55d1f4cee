from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from kube_helpers import exists, wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import OperatorProcess, install_crd_and_rbac, service_account_kubeconfig


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
