"""A model from a PersistentVolumeClaim (`pvc://`) on real pods, and `workers: 2` rolling them.

The test makes a PersistentVolume on the node (a folder of the host, which is the node's file
system here) holding the models, and a claim bound to it. The fetch step mounts the claim
read-only and copies the model like any other source, in a namespace enforcing the restricted
pod security standard. Then `spec.server.workers` goes from 1 to 2 under load through the
ClusterIP: the Deployment rolls its pods, the new ones serve, and no client request fails.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import skops.io
from conftest import RealCluster
from side_by_side import RunningScenario
from test_canary_on_real_pods import Load
from test_real_pods import _infer_through_cluster_ip, _predictions, _wait_ready

from modeldeploy_localcluster.iris_models import IRIS_ROWS
from operator_harness import OperatorProcess

pytestmark = pytest.mark.realnode

ROLL_TIMEOUT_SECONDS = 180.0


def _volume_and_claim(namespace: str, folder: Path) -> list[dict[str, Any]]:
    volume = f"models-{namespace}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


def _manifest(workers: int) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": {
            "model": {"uri": "pvc://models/v1/model.skops", "format": "sklearn", "version": "1.0.0"},
            "replicas": 2,
            "server": {
                "workers": workers,
                "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "600Mi"}},
            },
        },
    }


def _rolled_to(real_cluster: RealCluster, namespace: str, workers: int) -> bool:
    """Every pod of the stable Deployment is of its current template, available, and the old ones gone."""
    deployment = json.loads(
        real_cluster.cluster.kubectl("get", "deployment", "iris-stable", "-n", namespace, "-o", "json")
    )
    env = deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])
    status = deployment.get("status", {})
    wanted = deployment["spec"]["replicas"]
    return (
        any(item.get("value") == str(workers) for item in env if "WORKERS" in item["name"])
        and status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas") == wanted
        and status.get("availableReplicas") == wanted
        and status.get("replicas") == wanted
    )


@dataclass
class ClaimRecord:
    """Start-up latency, what the model predicted before and after the roll, the load's answers."""

    ready_seconds: float
    expected: list[int]
    predicted_before: list[int]
    predicted_after: list[int]
    rolled_seconds: float
    requests: list[dict[str, Any]]


def model_from_a_claim_then_two_workers(
    real_cluster: RealCluster,
    local_operator: OperatorProcess,
    models_on_the_node: Path,
    namespace: str,
    workdir: Path,
) -> ClaimRecord:
    cluster = real_cluster.cluster
    objects = _volume_and_claim(namespace, models_on_the_node)
    cluster.kubectl("apply", "-f", "-", input_text="\n---\n".join(json.dumps(o) for o in objects))
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(_manifest(workers=1)))
        latency = _wait_ready(real_cluster, namespace)
        model_file = models_on_the_node / "v1" / "model.skops"
        expected = skops.io.load(model_file, trusted=skops.io.get_untrusted_types(file=model_file)).predict(
            IRIS_ROWS
        )
        before = _predictions(_infer_through_cluster_ip(real_cluster, namespace))

        load = Load(real_cluster, namespace, workdir)
        try:
            time.sleep(3)
            started = time.monotonic()
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(_manifest(workers=2)))
            deadline = started + ROLL_TIMEOUT_SECONDS
            while not _rolled_to(real_cluster, namespace, workers=2):
                assert time.monotonic() < deadline, cluster.kubectl("get", "pods,rs", "-n", namespace)
                time.sleep(0.5)
            rolled_in = time.monotonic() - started
            time.sleep(3)
        finally:
            requests = load.finish()
        after = _predictions(_infer_through_cluster_ip(real_cluster, namespace))
    finally:
        cluster.kubectl("delete", "pv", objects[0]["metadata"]["name"], "--wait=false", check=False)
    return ClaimRecord(latency, [int(x) for x in expected], before, after, rolled_in, requests)


@pytest.mark.side_by_side(scenario=model_from_a_claim_then_two_workers)
def test_a_model_from_a_claim_is_served_and_two_workers_roll_the_pods_without_a_failed_request(
    scenario: RunningScenario,
) -> None:
    record: ClaimRecord = scenario.record()
    print(f"\nreal pods: apply -> Ready in {record.ready_seconds:.1f}s (2 replicas, model from a PVC)")
    outcomes: dict[str, int] = {}
    for request in record.requests:
        outcomes[request["outcome"]] = outcomes.get(request["outcome"], 0) + 1
    print(f"workers 1 -> 2 rolled in {record.rolled_seconds:.1f}s under load: {outcomes}")
    assert record.predicted_before == record.expected
    assert [r for r in record.requests if r["outcome"] != "ok"] == [], outcomes
    assert len(record.requests) > 100, outcomes
    assert record.predicted_after == record.expected
