"""The `modeldeploy` command against the real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import REPO, OperatorProcess

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
