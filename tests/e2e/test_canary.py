"""Canary rollouts end to end: the real control plane and operator, a real Prometheus, and real
model-server processes for the stable and the canary model.

kwok runs no containers, so the test plays the part of the pods: when the operator creates the
canary Deployment it starts a canary server process with that Deployment's model, and it sends
each variant the share of requests that the ModelDeployment's status says it receives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import ModelServer, PrometheusProcess, send_load

from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from operator_harness import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
PAYLOAD = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": ROWS}]}
REQUESTS_PER_SECOND = 30


def manifest(model_dir: Path, version: str, prometheus: PrometheusProcess) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": {
            "model": {"uri": model_dir.as_uri(), "format": "sklearn", "version": version},
            "replicas": 2,
            "rollout": {
                "steps": [25, 50],
                "stepDuration": "8s",
                "progressDeadline": "2m",
                "analysis": {
                    "prometheusAddress": prometheus.url,
                    "minSamples": 20,
                    "errorRate": {"maxRatio": 0.05},
                    # Latency on a shared 2-core machine is noise; the bound only catches the absurd.
                    "latency": {"maxSeconds": 2.0, "maxIncreaseRatio": 1000},
                    "predictionShift": {"maxShift": 0.2},
                },
            },
        },
    }


class Traffic:
    """Sends load to the variants in the shares the ModelDeployment's status reports, until stopped."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.servers: dict[str, ModelServer] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def status(self) -> dict[str, Any]:
        body = json.loads(self.cluster.kubectl("get", "md", "iris", "-n", self.namespace, "-o", "json"))
        status: dict[str, Any] = body.get("status", {})
        return status

    def _run(self) -> None:
        while not self.stopped.is_set():
            canary = self.status().get("canary")
            weight = float(canary.get("effectiveWeight", canary["weight"])) if canary else 0.0
            targets = {"stable": (f"{self.servers['stable'].url}/v2/models/iris/infer", 100 - weight)}
            if weight > 0 and "canary" in self.servers:
                targets["canary"] = (f"{self.servers['canary'].url}/v2/models/iris/infer", weight)
            send_load(targets, PAYLOAD, rate=REQUESTS_PER_SECOND, seconds=1)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


@pytest.fixture
def traffic(cluster: LocalCluster, namespace: str) -> Iterator[Traffic]:
    running = Traffic(cluster, namespace)
    yield running
    running.stop()


def deployment_model(cluster: LocalCluster, namespace: str, name: str) -> str | None:
    found = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", "--ignore-not-found")
    if not found.strip():
        return None
    args = json.loads(found)["spec"]["template"]["spec"]["initContainers"][0]["args"]
    return str(args[args.index("--uri") + 1])


def roll_out(
    cluster: LocalCluster,
    namespace: str,
    traffic: Traffic,
    start_model_server: Callable[..., ModelServer],
    model_dir: Path,
    version: str,
    prometheus: PrometheusProcess,
) -> dict[str, Any]:
    """Changes the spec's model, runs the canary the operator asks for, and waits for the outcome."""
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest(model_dir, version, prometheus))
    )
    wait_until(
        lambda: deployment_model(cluster, namespace, "iris-canary") == model_dir.as_uri(),
        "the operator to create the canary Deployment",
    )
    traffic.servers["canary"] = start_model_server(
        model_dir, name="iris", namespace=namespace, variant="canary", version=version
    )
    wait_until(lambda: "canary" not in traffic.status(), "the rollout to end", timeout=150)
    traffic.servers.pop("canary").stop()
    return traffic.status()


def test_a_good_model_is_promoted_and_a_bad_one_rolled_back(
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    prometheus: PrometheusProcess,
    start_model_server: Callable[..., ModelServer],
    iris_models: dict[str, Path],
    traffic: Traffic,
) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=json.dumps(manifest(iris_models["v1"], "v1", prometheus)),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "md/iris", "-n", namespace, "--timeout=90s")
    traffic.servers["stable"] = start_model_server(
        iris_models["v1"], name="iris", namespace=namespace, variant="stable", version="v1"
    )
    traffic.thread.start()

    # The same classifier retrained: its predictions match the stable model's.
    promoted = roll_out(
        cluster, namespace, traffic, start_model_server, iris_models["v1-retrained"], "v2", prometheus
    )
    assert promoted["stable"]["version"] == "v2", promoted
    assert promoted["history"][0]["outcome"] == "promoted", promoted["history"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    reasons = {event["reason"] for event in events}
    # 25 % passed, then 50 % passed: one step advanced, then the promotion.
    assert {"RolloutStarted", "StepAdvanced", "Promoted"} <= reasons, reasons
    assert deployment_model(cluster, namespace, "iris-stable") == iris_models["v1-retrained"].as_uri()
    wait_until(lambda: deployment_model(cluster, namespace, "iris-canary") is None, "the canary to go")
    # The test's stable process now plays the promoted model's pods.
    traffic.servers["stable"].stop()
    traffic.servers["stable"] = start_model_server(
        iris_models["v1-retrained"], name="iris", namespace=namespace, variant="stable", version="v2"
    )

    # A model that answers `setosa` to everything: its predictions shift far from the stable model's.
    rejected = roll_out(
        cluster, namespace, traffic, start_model_server, iris_models["v2-constant"], "v3", prometheus
    )
    assert rejected["stable"]["version"] == "v2", rejected
    assert rejected["history"][0]["outcome"] == "rolledBack", rejected["history"]
    assert rejected["rejected"]["version"] == "v3"
    assert "predictionShift" in rejected["history"][0]["message"], rejected["history"][0]
    assert deployment_model(cluster, namespace, "iris-stable") == iris_models["v1-retrained"].as_uri()
    warnings = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning")
    assert "iris" in warnings
