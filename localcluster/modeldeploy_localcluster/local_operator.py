"""The operator as a local process against a LocalCluster, for the demo and the benchmarks.

(The integration tests run it as its service account with the chart's RBAC instead; here it
uses the cluster's admin kubeconfig.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from modeldeploy_localcluster.cluster import ClusterError, LocalCluster, free_port

CRD_NAME = "crd/modeldeployments.modeldeploy.io"


def install_crds(cluster: LocalCluster, repo: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(repo / "crds"))
    cluster.wait_for_crds(CRD_NAME)


class LocalOperator:
    """`modeldeploy-operator` in a subprocess, with its log and metrics on 127.0.0.1."""

    def __init__(
        self, cluster: LocalCluster, log: Path, server_image: str, namespace: str = "modeldeploy-system"
    ):
        self.cluster = cluster
        self.log = log
        self.server_image = server_image
        self.namespace = namespace
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.cluster.kubectl("create", "namespace", self.namespace, check=False)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "MODELDEPLOY_OPERATOR_SERVER_IMAGE": self.server_image,
            "MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE": self.namespace,
            # The tests' and the demo's Prometheus servers listen on free ports of this machine.
            "MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES": "http://127.0.0.1:*",
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "modeldeploy-operator"),
                    f"--liveness=http://127.0.0.1:{free_port()}/healthz",
                    f"--metrics=127.0.0.1:{self.metrics_port}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "Became the leader" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"the operator did not start; log: {self.log}")
            time.sleep(0.2)

    def metrics(self) -> str:
        """The operator's Prometheus metrics, as text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text: str = reply.read().decode()
            return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def metric_total(metrics: str, metric: str, **labels: str) -> float:
    """The sum of a metric's series (in Prometheus' text format) whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        series = line.startswith(metric + "{") or line.startswith(metric + " ")
        if series and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
