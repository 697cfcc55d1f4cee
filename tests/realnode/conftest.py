"""Fixtures for tests on the images built here (podman) and on a real node (kubelet, containerd).

They need root and Debian packages (scripts/install-realnode-deps.sh, which
`modeldeploy-localcluster images` runs); images and binaries are cached under ~/.cache/modeldeploy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeldeploy_localcluster.build import ensure_binaries
from modeldeploy_localcluster.cluster import LocalCluster, free_port
from modeldeploy_localcluster.images import BuiltImage, ensure_images
from modeldeploy_localcluster.iris_models import write_iris_models
from modeldeploy_localcluster.node import NODE_IP, RealNode
from modeldeploy_localcluster.pod_prometheus import PodPrometheus, rendered_pod_monitor
from operator_harness import OperatorProcess, install_crd_and_rbac, service_account_kubeconfig

REPOSITORY = Path(__file__).resolve().parents[2]


def _progress(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def built_images() -> dict[str, BuiltImage]:
    if os.geteuid() != 0:
        pytest.skip("the images are built with podman as root (see README: tests on real pods)")
    return ensure_images(REPOSITORY, _progress)


@dataclass
class RealCluster:
    cluster: LocalCluster
    node: RealNode
    images: dict[str, BuiltImage]

    def in_netns(self, *command: str) -> list[str]:
        return self.node.in_netns(*command)


@pytest.fixture(scope="session")
def real_cluster(built_images: dict[str, BuiltImage]) -> Iterator[RealCluster]:
    """A control plane of its own (no kwok) and one real node, for the whole session."""
    cluster = LocalCluster(progress=_progress, advertise_address=NODE_IP, kwok=False)
    cluster.start()
    node = RealNode(cluster, built_images, progress=_progress)
    try:
        node.start()
        yield RealCluster(cluster, node, built_images)
    finally:
        node.stop()
        cluster.stop()
        _progress(f"real node timings: {node.timings}")


def restricted_namespace(real_cluster: RealCluster) -> str:
    """A new namespace enforcing the restricted pod security standard, once its service account exists."""
    name = f"rp-{uuid.uuid4().hex[:6]}"
    cluster = real_cluster.cluster
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    deadline = time.monotonic() + 60
    while not cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).startswith("NAME"):
        assert time.monotonic() < deadline, f"no default service account in {name}"
        time.sleep(0.3)
    return name


@pytest.fixture
def namespace(real_cluster: RealCluster) -> Iterator[str]:
    """A restricted namespace for one test, deleted afterwards with its pods (the node is shared by
    the session's later tests)."""
    name = restricted_namespace(real_cluster)
    yield name
    real_cluster.cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_iris_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_http_server(real_cluster: RealCluster, models: dict[str, Path]) -> Iterator[str]:
    """A plain HTTP server inside the node's namespace, serving the models as files."""
    root = models["v1"].parent
    port = free_port()
    command = [sys.executable, "-m", "http.server", "--bind", NODE_IP, str(port), "--directory", str(root)]
    process = subprocess.Popen(
        real_cluster.in_netns(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        assert process.poll() is None, "the model HTTP server did not start"
        yield f"http://{NODE_IP}:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def local_operator(
    real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    cluster = real_cluster.cluster
    install_crd_and_rbac(cluster)
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        service_account_kubeconfig(cluster, workdir / "kubeconfig"),
        workdir / "operator.log",
        extra_env={"MODELDEPLOY_OPERATOR_SERVER_IMAGE": real_cluster.images["server"].name},
    )
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in process.log_text(), process.log_text()[-5000:]


@pytest.fixture(scope="module")
def pod_prometheus(real_cluster: RealCluster) -> Iterator[PodPrometheus]:
    """Prometheus discovering the server pods with the chart's PodMonitor (see pod_prometheus.py)."""
    binaries = ensure_binaries()
    pod_monitor = rendered_pod_monitor(
        binaries.helm, REPOSITORY / "charts" / "modeldeploy", "modeldeploy-system"
    )
    prometheus = PodPrometheus(real_cluster.node, pod_monitor, progress=lambda m: print(f"[prometheus] {m}"))
    prometheus.start()
    yield prometheus
    prometheus.stop()
