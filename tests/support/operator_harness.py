"""Runs the operator as a subprocess with exactly the chart's RBAC rules, as its service account."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.cluster import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modeldeploy.io_modeldeployments.yaml"
RULES = REPO / "charts" / "modeldeploy" / "files"
NAMESPACED_RULES = RULES / "operator-rules.yaml"
CLUSTER_RULES = RULES / "operator-cluster-rules.yaml"
LEADER_ELECTION_RULES = RULES / "operator-leader-election-rules.yaml"
LEASE_SECONDS = 3
OPERATOR_NAMESPACE = "modeldeploy-system"
SERVICE_ACCOUNT = "modeldeploy-operator"
TEST_SERVER_IMAGE = "registry.invalid/modeldeploy-server:test"


def role_and_binding(
    name: str,
    rules: list[dict[str, Any]],
    namespace: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> list[dict[str, Any]]:
    """A (Cluster)Role with these rules, bound to an operator service account."""
    kind = "Role" if namespace else "ClusterRole"
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{kind}Binding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": OPERATOR_NAMESPACE}
            ],
        },
    ]


def service_account(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
    }


def rules(path: Path) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    return loaded


def install_crd_and_rbac(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_for_crds("crd/modeldeployments.modeldeploy.io")
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        service_account(SERVICE_ACCOUNT),
        *role_and_binding("modeldeploy-operator", [*rules(NAMESPACED_RULES), *rules(CLUSTER_RULES)]),
        *role_and_binding("modeldeploy-leader-election", rules(LEADER_ELECTION_RULES), OPERATOR_NAMESPACE),
    ]
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(objects))


def install_namespaced_rbac(cluster: LocalCluster, name: str, watched_namespace: str) -> None:
    """RBAC of an operator that watches one namespace: a Role there, only discovery cluster-wide."""
    objects = [
        service_account(name),
        *role_and_binding(name, rules(NAMESPACED_RULES), watched_namespace, service_account=name),
        *role_and_binding(name, rules(CLUSTER_RULES), service_account=name),
        *role_and_binding(name, rules(LEADER_ELECTION_RULES), OPERATOR_NAMESPACE, service_account=name),
    ]
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(objects))


def service_account_kubeconfig(cluster: LocalCluster, path: Path, account: str = SERVICE_ACCOUNT) -> Path:
    """A kubeconfig that authenticates as an operator service account, with a real token."""
    token = cluster.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=2h").strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(admin))
    return path


class OperatorProcess:
    """`modeldeploy-operator` in a subprocess; its log is kept for assertions and failures."""

    def __init__(self, kubeconfig: Path, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.port = free_port()
        self.metrics_port = free_port()
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELDEPLOY_OPERATOR_SERVER_IMAGE": TEST_SERVER_IMAGE,
            "MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
            "MODELDEPLOY_OPERATOR_LEADER_ELECTION_LEASE_SECONDS": str(LEASE_SECONDS),
            # The tests' and the demo's Prometheus servers listen on free ports of this machine.
            "MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES": "http://127.0.0.1:*",
            **self.extra_env,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "modeldeploy-operator"),
                    f"--liveness=http://127.0.0.1:{self.port}/healthz",
                    f"--metrics=127.0.0.1:{self.metrics_port}",
                    "--verbose",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited at start-up:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the operator never became live:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> str:
        """The operator's Prometheus metrics, as text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text: str = reply.read().decode()
            return text

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def steered_rollout_manifest(version: str, traffic: dict[str, Any] | None = None) -> str:
    """An iris ModelDeployment whose rollouts only manual requests move: long steps, no Prometheus."""
    spec: dict[str, Any] = {
        "model": {"uri": f"s3://models/iris/{version}/model.skops", "version": version},
        "replicas": 2,
        "rollout": {
            "steps": [25, 50],
            "stepDuration": "10m",
            "analysis": {"prometheusAddress": "http://127.0.0.1:9"},
        },
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return json.dumps(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "iris"},
            "spec": spec,
        }
    )
