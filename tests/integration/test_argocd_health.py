"""The Argo CD health check (docs/argocd-health.lua) in Debian's Lua, on statuses the operator wrote."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import REPO, OperatorProcess

HEALTH_SCRIPT = REPO / "docs" / "argocd-health.lua"
RUNNER = Path(__file__).with_name("argocd_health_runner.lua")
LUA = shutil.which("lua5.4") or "lua5.4"


def argocd_health(body: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD shows them for this ModelDeployment."""
    result = subprocess.run(
        [LUA, str(RUNNER), str(HEALTH_SCRIPT)],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    status, _, message = result.stdout.partition("\t")
    return status, message


def model_deployment(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        cluster.kubectl("get", "modeldeployment", name, "-n", namespace, "-o", "json")
    )
    return body


def test_a_new_object_without_status_is_progressing() -> None:
    assert argocd_health({"metadata": {"name": "iris", "generation": 1}})[0] == "Progressing"


def manifest(name: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"uri": f"s3://models/{name}/model.skops", "version": "1"}, **spec},
        }
    )


@pytest.mark.cluster
def test_health_follows_the_status_the_operator_writes(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=manifest("good"))
    cluster.kubectl("wait", "--for=condition=Ready", "modeldeployment/good", "-n", namespace, "--timeout=90s")
    ready = model_deployment(cluster, namespace, "good")
    assert argocd_health(ready)[0] == "Healthy"

    # A spec change the operator has not acted on yet is not healthy yet.
    newer = copy.deepcopy(ready)
    newer["metadata"]["generation"] += 1
    assert argocd_health(newer)[0] == "Progressing"

    stuck = manifest("stuck", nodeSelector={"no-such-label": "x"}, progressDeadline="5s")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=stuck)
    wait_until(
        lambda: "status" in model_deployment(cluster, namespace, "stuck"), "the operator to write a status"
    )
    status, _ = argocd_health(model_deployment(cluster, namespace, "stuck"))
    assert status in {"Progressing", "Degraded"}
    wait_until(
        lambda: argocd_health(model_deployment(cluster, namespace, "stuck"))[0] == "Degraded",
        "the stuck ModelDeployment to be Degraded",
        timeout=90,
    )
    _, message = argocd_health(model_deployment(cluster, namespace, "stuck"))
    assert message
