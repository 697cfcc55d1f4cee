"""Session fixtures shared by every test folder.

The control plane is real (etcd, kube-apiserver, controller-manager, scheduler, kwok),
built once per version into ~/.cache/modeldeploy and started once per test session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from lightkube import Client, KubeConfig

from modeldeploy_localcluster.cluster import LocalCluster


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
