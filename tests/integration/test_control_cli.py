"""The `modeldeploy` command against the real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import REPO, OperatorProcess, steered_rollout_manifest

pytestmark = pytest.mark.cluster
COMMAND = str(Path(sys.executable).parent / "modeldeploy")


def modeldeploy(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, *args],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_and_history_of_a_ready_model(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "iris.yaml"))
    cluster.kubectl("wait", "--for=condition=Ready", "modeldeployment/iris", "-n", namespace, "--timeout=90s")

    listed = modeldeploy(cluster, "status", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1].split()
    assert row[:5] == [namespace, "iris", "True", "Ready", "1.0.0"]

    everywhere = modeldeploy(cluster, "status", "-A")
    assert any(line.split()[:2] == [namespace, "iris"] for line in everywhere.stdout.splitlines())

    one = modeldeploy(cluster, "status", "iris", "-n", namespace)
    assert one.returncode == 0, one.stderr
    assert f"{namespace}/iris: Ready" in one.stdout
    stable = json.loads(cluster.kubectl("get", "md", "iris", "-n", namespace, "-o", "json"))["status"][
        "stable"
    ]
    assert f"Stable:   {stable['uri']} (1.0.0)" in one.stdout

    assert modeldeploy(cluster, "history", "iris", "-n", namespace).stdout.strip() == "no finished rollouts"


def test_an_unknown_name_is_a_clear_error(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    missing = modeldeploy(cluster, "status", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert "ModelDeployment nope not found" in missing.stderr


def test_rollouts_are_steered_through_annotations(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    def status() -> dict[str, Any]:
        body = json.loads(cluster.kubectl("get", "md", "iris", "-n", namespace, "-o", "json"))
        found: dict[str, Any] = body.get("status", {})
        return found

    def steer(*args: str) -> None:
        result = modeldeploy(cluster, *args, "iris", "-n", namespace)
        assert result.returncode == 0, result.stderr

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v1"))
    cluster.kubectl("wait", "--for=condition=Ready", "md/iris", "-n", namespace, "--timeout=90s")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v2"))
    wait_until(lambda: (status().get("canary") or {}).get("version") == "v2", "the v2 canary")
    assert status()["canary"]["weight"] == 25

    steer("pause")
    wait_until(lambda: bool(status()["canary"].get("pausedAt")), "the rollout to pause")
    assert "PAUSED" in modeldeploy(cluster, "status", "iris", "-n", namespace).stdout
    steer("resume")
    wait_until(lambda: not status()["canary"].get("pausedAt"), "the rollout to resume")

    steer("promote")
    wait_until(lambda: status()["canary"]["weight"] == 50, "the next step")
    steer("promote", "--full")
    wait_until(lambda: "canary" not in status(), "the full promotion")
    assert status()["stable"]["version"] == "v2"
    assert status()["history"][0]["outcome"] == "promoted"

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v3"))
    wait_until(lambda: (status().get("canary") or {}).get("version") == "v3", "the v3 canary")
    steer("abort")
    wait_until(lambda: "canary" not in status(), "the rollback")
    assert status()["rejected"]["version"] == "v3"
    assert status()["stable"]["version"] == "v2"
    assert "aborted" in modeldeploy(cluster, "history", "iris", "-n", namespace).stdout
    wait_until(
        lambda: not cluster.kubectl(
            "get", "deployment", "iris-canary", "-n", namespace, "--ignore-not-found"
        ),
        "the canary Deployment to go",
    )

    steer("retry")
    wait_until(lambda: (status().get("canary") or {}).get("version") == "v3", "the retried canary")
