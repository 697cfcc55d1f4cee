"""Flux waits on kstatus: the statuses the operator writes read as InProgress while a model or a
canary rolls out, Current once it is done, and Failed when it cannot finish."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kstatus import kstatus
from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import OperatorProcess, steered_rollout_manifest

pytestmark = pytest.mark.cluster


def model_deployment(cluster: LocalCluster, namespace: str, name: str = "iris") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(cluster.kubectl("get", "md", name, "-n", namespace, "-o", "json"))
    return body


def test_kstatus_follows_a_model_and_its_canary_rollout(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v1"))
    cluster.kubectl("wait", "--for=condition=Ready", "md/iris", "-n", namespace, "--timeout=90s")
    wait_until(lambda: kstatus(model_deployment(cluster, namespace))[0] == "Current", "Current once Ready")

    # A new model: the canary runs for ten minutes a step, and all that time the object is in progress.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v2"))
    wait_until(lambda: "canary" in model_deployment(cluster, namespace)["status"], "the rollout to start")
    wait_until(
        lambda: kstatus(model_deployment(cluster, namespace))[0] == "InProgress",
        "InProgress during the rollout",
    )
    status, message = kstatus(model_deployment(cluster, namespace))
    assert "as a canary: step 1 of 2, 25% of traffic" in message, (status, message)

    cluster.kubectl("annotate", "md/iris", "-n", namespace, "modeldeploy.io/promote=full")
    wait_until(
        lambda: model_deployment(cluster, namespace)["status"].get("stable", {}).get("version") == "v2",
        "the promotion",
    )
    wait_until(lambda: kstatus(model_deployment(cluster, namespace))[0] == "Current", "Current once promoted")


def test_kstatus_fails_a_model_that_cannot_start(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    stuck = json.loads(steered_rollout_manifest("v1"))
    stuck["spec"].update(nodeSelector={"no-such-label": "x"}, progressDeadline="5s")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(stuck))
    wait_until(
        lambda: kstatus(model_deployment(cluster, namespace))[0] == "Failed",
        "Failed once Stalled",
        timeout=90,
    )
    # The reason Flux shows is the Deployment's own: its progress deadline passed.
    assert "timed out progressing" in kstatus(model_deployment(cluster, namespace))[1]
