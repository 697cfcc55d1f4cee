"""The server image as real pods: the operator (a local process, as the chart's service account)
reconciles a ModelDeployment, a kubelet runs its pods in a namespace that enforces the
restricted pod security standard, and V2 inference through the Service's ClusterIP (from inside
the node's network namespace) answers with the model's own predictions."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import skops.io
from conftest import RealCluster
from conftest import restricted_namespace as _restricted_namespace

from modeldeploy_localcluster.iris_models import IRIS_ROWS, v2_inference_payloads
from operator_harness import OperatorProcess

pytestmark = pytest.mark.realnode

READY_TIMEOUT_SECONDS = 300.0
# Sent from inside the node's namespace: the only place the ClusterIP exists.
V2_CLIENT = """
import json, sys, time, urllib.request
url, payloads = sys.argv[1], json.loads(sys.argv[2])
answers = []
for payload in payloads:
    for attempt in range(20):  # the first request may race kube-proxy's first sync
        try:
            request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as reply:
                answers.append(json.load(reply))
                break
        except OSError:
            time.sleep(0.5)
    else:
        sys.exit(f"no answer from {url}")
print(json.dumps(answers))
"""


def _model_deployment(uri: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": {
            "model": {"uri": uri, "format": "sklearn", "version": "1.0.0"},
            "replicas": replicas,
            "server": {
                "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}}
            },
        },
    }


def _wait_ready(real_cluster: RealCluster, namespace: str) -> float:
    started = time.monotonic()
    ready = '{.status.conditions[?(@.type=="Ready")].status}'
    while True:
        output = real_cluster.cluster.kubectl(
            "get", "md", "iris", "-n", namespace, "-o", f"jsonpath={ready}", check=False
        )
        if output.strip() == "True":
            return time.monotonic() - started
        if time.monotonic() - started > READY_TIMEOUT_SECONDS:
            pods = real_cluster.cluster.kubectl(
                "get", "pods,events", "-n", namespace, "-o", "wide", check=False
            )
            status = real_cluster.cluster.kubectl(
                "get", "md", "iris", "-n", namespace, "-o", "yaml", check=False
            )
            pytest.fail(f"iris never became Ready:\n{status}\n{pods}")
        time.sleep(0.5)


def _infer_through_cluster_ip(real_cluster: RealCluster, namespace: str) -> list[dict[str, Any]]:
    cluster_ip = real_cluster.cluster.kubectl(
        "get", "service", "iris", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).strip()
    url = f"http://{cluster_ip}:80/v2/models/iris/infer"
    result = subprocess.run(
        real_cluster.in_netns(sys.executable, "-c", V2_CLIENT, url, json.dumps(v2_inference_payloads())),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers: list[dict[str, Any]] = json.loads(result.stdout)
    return answers


def _predictions(answers: list[dict[str, Any]]) -> list[int]:
    labels = []
    for answer in answers:
        (predict,) = [output for output in answer["outputs"] if output["name"] == "predict"]
        labels += predict["data"]
    return labels


def _server_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The status of a server pod's one server container."""
    (server,) = [c for c in pod["status"].get("containerStatuses", []) if c["name"] == "server"]
    return server


def _server_containers(real_cluster: RealCluster, namespace: str) -> dict[str, tuple[str, int]]:
    """Each server pod's container, as (container id, restart count), by pod name."""
    pods = json.loads(real_cluster.cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    containers = {}
    for pod in pods:
        server = _server_container(pod)
        containers[pod["metadata"]["name"]] = (server.get("containerID", ""), server["restartCount"])
    return containers


def test_model_over_http_is_served_by_real_pods_through_the_cluster_ip(
    real_cluster: RealCluster,
    alone_on_the_node: None,
    local_operator: OperatorProcess,
    model_http_server: str,
    models: dict[str, Path],
) -> None:
    namespace = _restricted_namespace(real_cluster)
    manifest = _model_deployment(f"{model_http_server}/v1/model.skops", replicas=2)
    real_cluster.cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))
    latency = _wait_ready(real_cluster, namespace)
    print(f"\nreal pods: apply -> Ready in {latency:.1f}s (2 replicas, model over HTTP)")

    pods = json.loads(real_cluster.cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    running = [pod for pod in pods if pod["status"].get("phase") == "Running"]
    assert len(running) == 2, [pod["status"] for pod in pods]
    # Admitted under `restricted`, and run as the image's user, not root.
    assert all(pod["spec"]["securityContext"].get("runAsNonRoot") for pod in running)

    expected = skops.io.load(
        models["v1"] / "model.skops", trusted=skops.io.get_untrusted_types(file=models["v1"] / "model.skops")
    ).predict(IRIS_ROWS)
    assert _predictions(_infer_through_cluster_ip(real_cluster, namespace)) == [
        int(label) for label in expected
    ]
    # The model spreads its answers over the three classes: a broken pipeline would not.
    assert sorted(set(int(label) for label in expected)) == [0, 1, 2]

    # The node's kubelet restarted (an upgrade, a crash): the containers keep running, so no pod
    # and no container may be replaced, and the model serves again once the pods are ready.
    containers = _server_containers(real_cluster, namespace)
    stopped = time.monotonic()
    real_cluster.node.restart("kubelet")
    print(f"kubelet restarted: back (Lease renewed) {time.monotonic() - stopped:.1f}s after it was stopped")
    assert _server_containers(real_cluster, namespace) == containers
    _wait_ready(real_cluster, namespace)
    assert _predictions(_infer_through_cluster_ip(real_cluster, namespace)) == [
        int(label) for label in expected
    ]
