"""Canary rollouts on real pods, judged by a Prometheus that found the pods itself.

The replicas provider: the entry Service `iris` spreads requests over the ready pods of both
Deployments, through kube-proxy. Load goes to its ClusterIP from inside the node's namespace, new
connections and keep-alive ones. Prometheus (built from its Go module) discovers the server pods
through `role: pod` against the API server, with the selection and relabelling of the chart's
PodMonitor, and the operator's analysis queries it. The test reads each pod's own /metrics and
asserts, at every step, that the share of new connections the canary pods answered is
`status.canary.effectiveWeight` within TOLERANCE, and that no client request failed (a model's
500 is the bad model's answer and is counted apart), through the steps, the promotion of a good
model and the rollback of one that fails a third of its requests.

kube-proxy balances connections, not requests: a keep-alive connection stays on one pod until the
server rotates it (after 30 s or 1,000 requests), so the two keep-alive clients move as two blocks
and their share in an 8 s window is 0, 1/2 or 1 whatever the weight. Their answers are reported,
not held to the weight (docs/canary-analysis.md says so); with the `gateway-api` provider the
split is per request (tests/realnode/test_gateway.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RealCluster
from side_by_side import RunningScenario
from test_real_pods import _wait_ready

from modeldeploy_localcluster.cluster import ClusterError
from modeldeploy_localcluster.gateway import get_in_netns
from modeldeploy_localcluster.iris_models import v2_inference_payloads
from modeldeploy_localcluster.pod_prometheus import PodPrometheus
from modeldeploy_operator.builders import HTTP_PORT, label_selector
from modeldeploy_serving import metric_names
from operator_harness import OperatorProcess

pytestmark = pytest.mark.realnode

REPLICAS = 4
STEPS = [25, 50]
STEP_SECONDS = 20
WINDOW_SECONDS = 8.0
# kube-proxy picks a pod at random per connection: over a window of about 150 new connections a
# 25 % share has a standard deviation of 3.5 points (4.1 at 50 %).
TOLERANCE = 0.12
MIN_NEW_CONNECTIONS_PER_WINDOW = 60
MIN_REQUESTS_PER_WINDOW = 100
LOAD_MAX_SECONDS = 600
LOAD_SCRIPT = Path(__file__).with_name("service_load.py")
CLIENT_FAILURES_ALLOWED = {"ok", "http 500"}
SAMPLE = re.compile(rf"^{metric_names.REQUESTS_TOTAL}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$", re.MULTILINE)


def _manifest(model_url: str, version: str, prometheus: PodPrometheus) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": {
            "model": {"uri": model_url, "format": "sklearn", "version": version},
            "replicas": REPLICAS,
            "server": {
                "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}}
            },
            "rollout": {
                "steps": STEPS,
                "stepDuration": f"{STEP_SECONDS}s",
                "progressDeadline": "3m",
                "analysis": {
                    "prometheusAddress": prometheus.url,
                    "minSamples": 20,
                    "errorRate": {"maxRatio": 0.05},
                    # Latency on a shared 2-core machine is noise; the bound only catches the absurd.
                    "latency": {"maxSeconds": 2.0, "maxIncreaseRatio": 1000},
                },
            },
        },
    }


@dataclass
class Window:
    """A stretch of constant effective weight: what the status said and what the pods answered."""

    name: str
    effective_weight: float
    started: float
    ended: float
    by_variant: dict[str, int]
    by_version: dict[str, int]

    by_version_stable: set[str]

    @property
    def canary_share(self) -> float:
        total = sum(self.by_variant.values())
        return self.by_variant.get("canary", 0) / total if total else 0.0


class Observer:
    """Reads the ModelDeployment's status and every server pod's own request counters."""

    def __init__(self, real_cluster: RealCluster, namespace: str) -> None:
        self.cluster = real_cluster.cluster
        self.netns = real_cluster.node.netns_path
        self.namespace = namespace

    def get(self, *what: str) -> dict[str, Any]:
        text = self.cluster.kubectl("get", *what, "-n", self.namespace, "-o", "json", "--ignore-not-found")
        found: dict[str, Any] = json.loads(text) if text.strip() else {}
        return found

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get("md", "iris").get("status", {})
        return status

    def pod_counters(self) -> dict[str, tuple[str, str, float]]:
        """Inference requests each running server pod answered so far: pod -> (variant, version, n)."""
        counters = {}
        for pod in self.get("pods", "-l", label_selector("iris")).get("items", []):
            address = pod["status"].get("podIP")
            if pod["status"].get("phase") != "Running" or not address:
                continue
            try:
                status, body = get_in_netns(self.netns, f"http://{address}:{HTTP_PORT}/metrics")
            except ClusterError:  # a terminating pod may stop answering between listing and scrape
                continue
            if status != 200:
                continue
            variant, version, count = "", "", 0.0
            for sample in SAMPLE.finditer(body.decode()):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
                if labels.get(metric_names.LABEL_ENDPOINT) == "infer":
                    variant = labels[metric_names.LABEL_VARIANT]
                    version = labels[metric_names.LABEL_MODEL_VERSION]
                    count += float(sample["value"])
            counters[pod["metadata"]["name"]] = (variant, version, count)
        return counters

    def measure(self, name: str) -> Window:
        """Counts what the pods answer over one window; the status' weight must hold meanwhile."""
        weight_before = _effective_weight(self.status())
        started, before = time.time(), self.pod_counters()
        time.sleep(WINDOW_SECONDS)
        ended, after = time.time(), self.pod_counters()
        weight_after = _effective_weight(self.status())
        assert weight_after == weight_before, (
            f"{name}: effectiveWeight moved from {weight_before} to {weight_after}"
        )
        by_variant: dict[str, int] = {}
        by_version: dict[str, int] = {}
        for pod, (variant, version, count) in after.items():
            answered = int(count - before.get(pod, (variant, version, 0.0))[2])
            if not answered:
                continue  # a pod that has not answered an inference yet has no version to show
            by_variant[variant] = by_variant.get(variant, 0) + answered
            by_version[version] = by_version.get(version, 0) + answered
        stable_versions = {version for variant, version, _ in after.values() if variant == "stable"}
        return Window(name, weight_before, started, ended, by_variant, by_version, stable_versions)

    def canary_gone(self) -> bool:
        """No canary Deployment and no canary pod: a terminating pod still answers the keep-alive
        connections it has through its preStop sleep and drain."""
        pods = self.get("pods", "-l", f"{label_selector('iris')},modeldeploy.io/variant=canary")
        return not self.get("deployment", "iris-canary") and not pods.get("items")

    def canary_pods_ready(self) -> bool:
        deployment = self.get("deployment", "iris-canary")
        wanted = deployment.get("spec", {}).get("replicas", 0)
        return bool(wanted) and deployment.get("status", {}).get("readyReplicas", 0) == wanted


def _effective_weight(status: dict[str, Any]) -> float:
    canary = status.get("canary") or {}
    return float(canary.get("effectiveWeight", 0))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


class Load:
    """service_load.py inside the node's namespace, sending to the entry Service's ClusterIP."""

    def __init__(self, real_cluster: RealCluster, namespace: str, workdir: Path) -> None:
        cluster_ip = real_cluster.cluster.kubectl(
            "get", "service", "iris", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).strip()
        self.output, self.stop_file = workdir / "load.jsonl", workdir / "stop"
        self.process = subprocess.Popen(
            real_cluster.in_netns(
                sys.executable,
                str(LOAD_SCRIPT),
                f"http://{cluster_ip}:80/v2/models/iris/infer",
                json.dumps(v2_inference_payloads()),
                str(self.output),
                str(self.stop_file),
                str(LOAD_MAX_SECONDS),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self) -> list[dict[str, Any]]:
        self.stop_file.touch()
        _, stderr = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, stderr.decode()[-3000:]
        return [json.loads(line) for line in self.output.read_text().splitlines()]


def _canary_answers(window: Window, requests: list[dict[str, Any]], client: str) -> tuple[int, int]:
    """Of the window's answers to one kind of client, how many a canary pod gave, and how many in all.

    A canary answer is a model version the stable pods do not serve, or the bad model's 500.
    """
    answered = [
        r
        for r in requests
        if window.started <= r["t"] < window.ended
        and r["client"] == client
        and r["outcome"] in CLIENT_FAILURES_ALLOWED
    ]
    canary = [
        r for r in answered if r["outcome"] == "http 500" or r["version"] not in window.by_version_stable
    ]
    return len(canary), len(answered)


def _report(name: str, windows: list[Window], requests: list[dict[str, Any]]) -> None:
    span = requests[-1]["t"] - requests[0]["t"] if requests else 0.0
    print(f"\n{name}: {len(requests)} requests to the ClusterIP in {span:.0f}s")
    for window in windows:
        by_client = {
            kind: "{}/{}".format(*_canary_answers(window, requests, kind)) for kind in ("keepalive", "new")
        }
        print(
            f"  {window.name}: effectiveWeight {window.effective_weight:.1f}%, canary pods answered "
            f"{window.by_variant.get('canary', 0)} of {sum(window.by_variant.values())} = "
            f"{window.canary_share:.1%} (by version {window.by_version}; canary answers per client kind {by_client})"
        )
    outcomes: dict[str, int] = {}
    for request in requests:
        outcomes[request["outcome"]] = outcomes.get(request["outcome"], 0) + 1
    print(f"  outcomes: {outcomes}")


def _assert_split(windows: list[Window], requests: list[dict[str, Any]]) -> None:
    for window in windows:
        assert sum(window.by_variant.values()) >= MIN_REQUESTS_PER_WINDOW, window
        canary, count = _canary_answers(window, requests, "new")
        assert count >= MIN_NEW_CONNECTIONS_PER_WINDOW, (window, count)
        share = canary / count
        assert abs(share - window.effective_weight / 100) <= TOLERANCE, (window, share, count)


def _client_failures(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["outcome"] not in CLIENT_FAILURES_ALLOWED]


def _rollout_windows(observer: Observer, done: Callable[[dict[str, Any]], bool]) -> list[Window]:
    """One window per step, measured once the step's canary pods are all ready, until ``done``."""
    windows: list[Window] = []
    measured: set[int] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = observer.status()
        if done(status):
            return windows
        canary = status.get("canary") or {}
        step = canary.get("step")
        full_weight = _effective_weight(status) == float(canary.get("weight", -1))
        if step is not None and step not in measured and full_weight and observer.canary_pods_ready():
            measured.add(step)
            windows.append(observer.measure(f"step {step + 1} ({canary['weight']}%)"))
            continue
        time.sleep(0.3)
    pytest.fail(f"the rollout did not finish within 300s: {observer.status()}")


def _start(
    real_cluster: RealCluster, namespace: str, prometheus: PodPrometheus, model_http_server: str
) -> tuple[Observer, Callable[[str, str], None]]:
    observer = Observer(real_cluster, namespace)

    def apply(model: str, version: str) -> None:
        manifest = _manifest(f"{model_http_server}/{model}/model.skops", version, prometheus)
        real_cluster.cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))

    apply("v1", "1.0.0")
    _wait_ready(real_cluster, namespace)
    return observer, apply


@dataclass
class RolloutRecord:
    """What a rollout scenario measured, for its test to judge."""

    windows: list[Window]
    requests: list[dict[str, Any]]
    status: dict[str, Any]
    seconds: float  # from the new model's apply to the canary's pods gone


def good_model_rollout(
    real_cluster: RealCluster,
    local_operator: OperatorProcess,
    pod_prometheus: PodPrometheus,
    model_http_server: str,
    namespace: str,
    workdir: Path,
) -> RolloutRecord:
    observer, apply = _start(real_cluster, namespace, pod_prometheus, model_http_server)
    load = Load(real_cluster, namespace, workdir)
    try:
        windows = [observer.measure("before the rollout")]
        started = time.monotonic()
        apply("v1-retrained", "2.0.0")
        windows += _rollout_windows(
            observer,
            lambda status: status.get("stable", {}).get("version") == "2.0.0" and not status.get("canary"),
        )
        _wait(observer.canary_gone, "the canary Deployment and its pods to go")
        promoted_after = time.monotonic() - started
        windows.append(observer.measure("after promotion"))
    finally:
        requests = load.finish()
    return RolloutRecord(windows, requests, observer.status(), promoted_after)


def bad_model_rollout(
    real_cluster: RealCluster,
    local_operator: OperatorProcess,
    pod_prometheus: PodPrometheus,
    model_http_server: str,
    namespace: str,
    workdir: Path,
) -> RolloutRecord:
    observer, apply = _start(real_cluster, namespace, pod_prometheus, model_http_server)
    load = Load(real_cluster, namespace, workdir)
    try:
        windows = [observer.measure("before the rollout")]
        started = time.monotonic()
        apply("v2-lost-a-class", "3.0.0")
        windows += _rollout_windows(
            observer, lambda status: bool(status.get("rejected")) and not status.get("canary")
        )
        _wait(observer.canary_gone, "the canary Deployment and its pods to go")
        rolled_back_after = time.monotonic() - started
        windows.append(observer.measure("after rollback"))
    finally:
        requests = load.finish()
    return RolloutRecord(windows, requests, observer.status(), rolled_back_after)


@pytest.mark.side_by_side(scenario=good_model_rollout)
def test_a_good_model_is_promoted_step_by_step_without_a_failed_request(scenario: RunningScenario) -> None:
    record: RolloutRecord = scenario.record()
    windows, requests = record.windows, record.requests
    _report(f"good model promoted in {record.seconds:.0f}s", windows, requests)
    history = record.status["history"][0]
    assert history["outcome"] == "promoted", history

    assert not _client_failures(requests), _client_failures(requests)[:20]
    assert not [r for r in requests if r["outcome"] != "ok"], "the good model answered an error"
    assert {r["client"] for r in requests} == {"keepalive", "new"}
    assert [w.name for w in windows[1:-1]] == [f"step {i + 1} ({w}%)" for i, w in enumerate(STEPS)], windows
    _assert_split(windows, requests)
    assert set(windows[0].by_version) == {"1.0.0"}, windows[0]
    assert set(windows[-1].by_version) == {"2.0.0"}, windows[-1]


@pytest.mark.side_by_side(scenario=bad_model_rollout)
def test_a_model_failing_a_third_of_its_requests_is_rolled_back_without_a_failed_connection(
    scenario: RunningScenario,
) -> None:
    record: RolloutRecord = scenario.record()
    windows, requests = record.windows, record.requests
    _report(f"bad model rolled back in {record.seconds:.0f}s", windows, requests)
    history = record.status["history"][0]
    assert history["outcome"] == "rolledBack" and history["reason"] == "AnalysisFailed", history

    assert not _client_failures(requests), _client_failures(requests)[:20]
    model_errors = [r for r in requests if r["outcome"] == "http 500"]
    assert model_errors, "the bad model never answered: the canary got no traffic"
    assert windows[1].name == "step 1 (25%)", windows
    _assert_split(windows, requests)
    # Once rolled back, only the stable model answers, and it answers everything.
    assert set(windows[-1].by_version) == {"1.0.0"}, windows[-1]
    assert not [r for r in model_errors if r["t"] >= windows[-1].started], "500s after the rollback"
