"""A canary container that dies mid-step, on real pods: what docs/canary-analysis.md promises.

"A canary pod that stops being ready mid-window (killed, restarted, failing its readiness probe)
starts the window again once the pods are back." Two faults hit the canary's server container
through the node's runtime while its step is being analysed: its process killed (SIGKILL, as the
kernel's OOM killer would), then, in the window that follows, a node-level restart (SIGTERM from
the runtime, as a failed liveness probe does). Each time the kubelet restarts the container in
the same pod; the operator must open a fresh window once the pod is ready again. The rollout then
promotes as usual (neither is a failed analysis). A restart of the kubelet itself is
tests/realnode/test_real_pods.py's: it would disturb the scenarios running beside this one. Load goes to the ClusterIP meanwhile,
since the analysis needs the canary's requests; the requests the kill breaks are reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import RealCluster
from side_by_side import RunningScenario
from test_canary_on_real_pods import Load, Observer, _manifest, _wait
from test_real_pods import _server_container, _wait_ready

from modeldeploy_localcluster.pod_prometheus import PodPrometheus
from modeldeploy_operator.builders import label_selector
from operator_harness import OperatorProcess

pytestmark = pytest.mark.realnode

STEP_SECONDS = 20


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _canary_pod(observer: Observer) -> dict[str, Any]:
    pods = observer.get("pods", "-l", f"{label_selector('iris')},modeldeploy.io/variant=canary")["items"]
    running = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [pod["metadata"]["name"] for pod in pods]
    return running[0]


def _window_started_after(observer: Observer, moment: float) -> bool:
    canary = observer.status().get("canary") or {}
    started = canary.get("analysisStartedAt")
    return bool(started) and _timestamp(started) > moment and observer.canary_pods_ready()


@dataclass
class FaultsRecord:
    """The faults hit and when a fresh window began after each, the load's answers, the end state."""

    restarts: list[tuple[str, float, float]]  # fault, when it hit, when the fresh window began
    requests: list[dict[str, Any]]
    status: dict[str, Any]
    judged_against: list[str]  # Events that judged the canary for the faults


def canary_container_faults(
    real_cluster: RealCluster,
    local_operator: OperatorProcess,
    pod_prometheus: PodPrometheus,
    model_http_server: str,
    namespace: str,
    workdir: Path,
) -> FaultsRecord:
    cluster = real_cluster.cluster
    observer = Observer(real_cluster, namespace)

    def apply(model: str, version: str) -> None:
        manifest = _manifest(f"{model_http_server}/{model}/model.skops", version, pod_prometheus)
        manifest["spec"]["replicas"] = 2
        manifest["spec"]["rollout"]["steps"] = [50]
        manifest["spec"]["rollout"]["stepDuration"] = f"{STEP_SECONDS}s"
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))

    apply("v1", "1.0.0")
    _wait_ready(real_cluster, namespace)
    load = Load(real_cluster, namespace, workdir)
    restarts: list[tuple[str, float, float]] = []
    try:
        apply("v1-retrained", "2.0.0")
        _wait(lambda: _window_started_after(observer, 0.0), "the canary's first analysis window")
        for fault, signal in (("killed", "SIGKILL"), ("restarted by the node", "SIGTERM")):
            time.sleep(STEP_SECONDS / 4)  # well inside the window
            status = observer.status()
            assert status.get("canary", {}).get("step") == 0, status
            pod = _canary_pod(observer)
            before = _server_container(pod)
            container_id = before["containerID"].removeprefix("containerd://")
            hit = time.time()
            real_cluster.node.ctr("tasks", "kill", "--signal", signal, container_id)
            _wait(
                lambda count=before["restartCount"]: _server_container(_canary_pod(observer))["restartCount"]
                > count,
                f"the kubelet to restart the {fault} container",
                60.0,
            )
            _wait(
                lambda moment=hit: _window_started_after(observer, moment),
                f"a fresh window after the container was {fault}",
            )
            canary = observer.status()["canary"]
            # Not a failed or inconclusive window: the window was started again.
            assert (canary.get("failures", 0), canary.get("inconclusive", 0)) == (0, 0), canary
            window_started = _timestamp(canary["analysisStartedAt"])
            restarts.append((fault, hit, window_started))
            # The same pod, restarted in place: the fault is the container's, not the pod's.
            assert _canary_pod(observer)["metadata"]["name"] == pod["metadata"]["name"]
        _wait(
            lambda: observer.status().get("stable", {}).get("version") == "2.0.0",
            "the promotion after the faults",
            240.0,
        )
    finally:
        requests = load.finish()
    judged_against = [
        event["reason"]
        for event in observer.get("events").get("items", [])
        if event.get("reason") in {"StepFailed", "StepInconclusive", "CanaryPodsFailing"}
    ]
    return FaultsRecord(restarts, requests, observer.status(), judged_against)


@pytest.mark.side_by_side(scenario=canary_container_faults)
def test_a_killed_and_a_restarted_canary_container_each_restart_the_window_and_the_rollout_goes_on(
    scenario: RunningScenario,
) -> None:
    record: FaultsRecord = scenario.record()
    outcomes: dict[str, int] = {}
    for request in record.requests:
        outcomes[request["outcome"]] = outcomes.get(request["outcome"], 0) + 1
    print()
    for fault, hit, window_started in record.restarts:
        print(f"canary container {fault}: a fresh window began {window_started - hit:.1f}s after the fault")
    print(f"client outcomes over the rollout: {outcomes}")

    history = record.status["history"][0]
    assert history["outcome"] == "promoted", history
    assert not record.judged_against, record.judged_against
    assert [fault for fault, _, _ in record.restarts] == ["killed", "restarted by the node"]
    assert all(window_started > hit for _, hit, window_started in record.restarts)
