"""`helm install` of the chart with the operator image built here: the operator runs in the
cluster as the chart's service account with the chart's RBAC, reaches the API server through
`kubernetes.default.svc` (cluster DNS), takes its Lease and reconciles a ModelDeployment to
Ready; every namespace involved enforces the restricted pod security standard."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import REPOSITORY, RealCluster
from test_real_pods import (
    _infer_through_cluster_ip,
    _model_deployment,
    _predictions,
    _restricted_namespace,
    _wait_ready,
)

from modeldeploy_localcluster.iris_models import IRIS_ROWS

pytestmark = pytest.mark.realnode

RELEASE = "modeldeploy"


def _helm(real_cluster: RealCluster, *args: str) -> str:
    result = subprocess.run(
        [
            str(real_cluster.cluster.binaries.helm),
            "--kubeconfig",
            str(real_cluster.cluster.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_chart_runs_the_operator_in_the_cluster(
    real_cluster: RealCluster, without_local_operator: None, model_http_server: str
) -> None:
    cluster = real_cluster.cluster
    operator_namespace = _restricted_namespace(real_cluster)
    operator_image, operator_tag = real_cluster.images["operator"].name.rsplit(":", 1)
    server_image, server_tag = real_cluster.images["server"].name.rsplit(":", 1)
    _helm(
        real_cluster, "install", RELEASE, str(REPOSITORY / "charts" / "modeldeploy"),
        "--namespace", operator_namespace, "--wait", "--timeout", "300s",
        "--set", f"image.repository={operator_image}", "--set", f"image.tag={operator_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"serverImage.repository={server_image}", "--set", f"serverImage.tag={server_tag}",
        "--set", "prometheusAllowedAddresses={http://127.0.0.1:*}",
    )  # fmt: skip
    try:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", operator_namespace, "-o", "json"))["items"]
        names = {pod["metadata"]["name"] for pod in pods}
        assert pods and all(pod["spec"]["serviceAccountName"].startswith(RELEASE) for pod in pods)
        # helm --wait returns once the pods are Ready, and a standby is Ready before it holds the
        # Lease: under load (CI at stop 18) the Lease had no holder yet when it was first read.
        deadline = time.monotonic() + 120
        while True:
            leases = json.loads(cluster.kubectl("get", "leases", "-n", operator_namespace, "-o", "json"))[
                "items"
            ]
            holders = {lease["spec"].get("holderIdentity", "") for lease in leases}
            if any(name in holder for holder in holders for name in names) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert any(name in holder for holder in holders for name in names), (holders, names)

        namespace = _restricted_namespace(real_cluster)
        manifest = _model_deployment(f"{model_http_server}/v1/model.skops", replicas=1)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))
        latency = _wait_ready(real_cluster, namespace)
        print(f"\nchart's operator in the cluster: apply -> Ready in {latency:.1f}s")
        assert len(_predictions(_infer_through_cluster_ip(real_cluster, namespace))) == len(IRIS_ROWS)
        logs = cluster.kubectl("logs", "-n", operator_namespace, "-l", "app.kubernetes.io/name=modeldeploy",
                               "--tail=200", "--prefix", check=False)  # fmt: skip
        assert "Traceback" not in logs, logs[-4000:]
    finally:
        _helm(real_cluster, "uninstall", RELEASE, "--namespace", operator_namespace, "--wait")
