"""Fixtures for tests on the images built here (podman) and on a real node (kubelet, containerd).

They need root and Debian packages (scripts/install-realnode-deps.sh, which
`modeldeploy-localcluster images` runs); images and binaries are cached under ~/.cache/modeldeploy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from side_by_side import RunningScenario, SideBySide, scenario_of

from crds import crd_documents, go_module_dir, install_crds
from modeldeploy_localcluster.build import ensure_binaries
from modeldeploy_localcluster.cluster import LocalCluster, free_port
from modeldeploy_localcluster.gateway import CONTROLLER_NAME, NAMESPACE, TraefikGateway
from modeldeploy_localcluster.images import BuiltImage, ensure_images
from modeldeploy_localcluster.iris_models import write_iris_models
from modeldeploy_localcluster.node import NODE_IP, RealNode
from modeldeploy_localcluster.pod_prometheus import PodPrometheus, rendered_pod_monitor
from operator_harness import OperatorProcess, install_crd_and_rbac, service_account_kubeconfig

REPOSITORY = Path(__file__).resolve().parents[2]

GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.6.3", "config/crd/standard")
# What Traefik's kubernetesGateway provider watches on the standard channel.
GATEWAY_KINDS = {"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant", "BackendTLSPolicy"}
GATEWAY_CLASS = "modeldeploy-traefik"
GATEWAY = "public"


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
def real_cluster(
    built_images: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealCluster]:
    """A control plane of its own (no kwok) and one real node, for the whole session."""
    cluster = LocalCluster(progress=_progress, advertise_address=NODE_IP, kwok=False)
    cluster.start()
    node = RealNode(cluster, built_images, progress=_progress)
    try:
        node.start()
        yield RealCluster(cluster, node, built_images)
    finally:
        node.stop()
        # The components' logs (kubelet, containerd, API server...) outlive the cluster's folder, in
        # pytest's temporary directory, for a failure to be read afterwards.
        shutil.copytree(cluster.workdir / "logs", tmp_path_factory.mktemp("cluster-logs"), dirs_exist_ok=True)
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


@pytest.fixture(scope="session")
def gateway_api_crds(real_cluster: RealCluster) -> None:
    """The Gateway API's standard CRDs, which the operator looks for when it starts."""
    documents: list[dict[str, Any]] = []
    module, version, folder = GATEWAY_API
    for path in sorted((go_module_dir(module, version) / folder).glob("*.yaml")):
        documents += crd_documents(path, GATEWAY_KINDS)
    assert {document["spec"]["names"]["kind"] for document in documents} == GATEWAY_KINDS
    install_crds(real_cluster.cluster, documents)


@pytest.fixture(scope="session")
def local_operator(
    real_cluster: RealCluster, gateway_api_crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator from the source tree, for the whole session: the side-by-side scenarios share it
    as a cluster's models share their operator."""
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def traefik(real_cluster: RealCluster, gateway_api_crds: None) -> Iterator[TraefikGateway]:
    gateway = TraefikGateway(real_cluster.node, progress=lambda message: print(f"[gateway] {message}"))
    gateway.start()
    yield gateway
    gateway.stop()
    assert "panic" not in gateway.log_text(), gateway.log_text()[-4000:]


@pytest.fixture(scope="session")
def public_gateway(real_cluster: RealCluster, traefik: TraefikGateway) -> dict[str, Any]:
    """A GatewayClass for Traefik and a Gateway on its entry point, admitting routes from anywhere."""
    cluster = real_cluster.cluster
    objects = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": traefik.web_port,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input_text="\n---\n".join(json.dumps(o) for o in objects))
    cluster.kubectl(
        "wait", "--for=condition=Programmed", f"gateway/{GATEWAY}", "-n", NAMESPACE, "--timeout=60s"
    )
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "gateway", GATEWAY, "-n", NAMESPACE, "-o", "json")
    )
    return found


@pytest.fixture(scope="session")
def side_by_side(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideBySide]:
    """The selected tests' scenarios, all started at once (see side_by_side.py)."""
    runner = SideBySide(
        lambda: restricted_namespace(real_cluster),
        lambda name: real_cluster.cluster.kubectl("delete", "namespace", name, "--wait=false"),
        tmp_path_factory.mktemp("side-by-side"),
    )
    yield runner
    runner.close()
    _progress(
        f"side-by-side scenarios took {', '.join(f'{k} {v:.0f}s' for k, v in runner.durations.items())}"
    )


@pytest.fixture
def scenario(request: pytest.FixtureRequest, side_by_side: SideBySide) -> RunningScenario:
    """This test's scenario, running; the first test to ask starts every selected scenario."""
    own = scenario_of(request.node)
    assert own is not None, f"{request.node.name} takes the scenario fixture without a side_by_side mark"
    selected = [s for s in (scenario_of(item) for item in request.session.items) if s is not None]
    side_by_side.start(list(dict.fromkeys(selected)), request.getfixturevalue)
    return side_by_side.running(own)


@pytest.fixture
def alone_on_the_node(request: pytest.FixtureRequest, real_cluster: RealCluster) -> None:
    """Waits until no side-by-side scenario runs, for a test that disturbs the whole node."""
    if any(scenario_of(item) is not None for item in request.session.items):
        request.getfixturevalue("side_by_side").wait_all()


@pytest.fixture
def without_local_operator(alone_on_the_node: None, local_operator: OperatorProcess) -> Iterator[None]:
    """The session's operator stopped, for a test that brings its own (two would act on the same
    objects); started again afterwards for the tests that follow."""
    local_operator.stop()
    yield
    local_operator.start()


@pytest.fixture(scope="session")
def models_on_the_node(models: dict[str, Path]) -> Iterator[Path]:
    """The models in a folder the pods' user (uid 65532) may read, for a hostPath volume."""
    folder = Path(tempfile.mkdtemp(prefix="modeldeploy-pv-"))
    try:
        for name, source in models.items():
            shutil.copytree(source, folder / name)
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
