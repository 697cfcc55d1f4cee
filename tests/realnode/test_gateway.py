"""The gateway-api provider through a real Gateway API implementation, on real pods.

Traefik (built from its Go module, a plain process in the node's network namespace, with the
RBAC it documents) serves a Gateway this test creates. A ModelDeployment with
`traffic.provider: gateway-api` attaches its HTTPRoute to it; load goes **to the Gateway**, new
connections and keep-alive ones, throughout a rollout steered by hand (steps 25 and 50, then
promotion). At every step the pods' own request counters, read from each pod's /metrics, give
the share the canary answered, which must follow the HTTPRoute's weight; and no client request
may fail, at any step or at promotion.
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
from conftest import GATEWAY, RealCluster
from side_by_side import RunningScenario
from test_real_pods import _wait_ready

from modeldeploy_localcluster.cluster import ClusterError
from modeldeploy_localcluster.gateway import CONTROLLER_NAME, NAMESPACE, TraefikGateway, get_in_netns
from modeldeploy_localcluster.iris_models import v2_inference_payloads
from modeldeploy_operator.builders import HTTP_PORT, label_selector
from operator_harness import OperatorProcess

pytestmark = pytest.mark.realnode

# Traefik's weighted round robin is deterministic; the tolerance covers requests in flight while
# a window opens and closes, and the few a window of about 10 s holds.
TOLERANCE = 0.07
WINDOW_SECONDS = 10.0
MIN_REQUESTS_PER_WINDOW = 100
LOAD_MAX_SECONDS = 420
LOAD_SCRIPT = Path(__file__).with_name("service_load.py")
SAMPLE = re.compile(r"^modeldeploy_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def _manifest(model_url: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": {
            "model": {"uri": model_url, "format": "sklearn", "version": version},
            "replicas": 2,
            "server": {
                "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}}
            },
            "traffic": {
                "provider": "gateway-api",
                "gateway": {"parentRefs": [{"name": GATEWAY, "namespace": NAMESPACE}]},
            },
            # Steered by hand: steps long enough that only the test's promotions move them.
            "rollout": {
                "steps": [25, 50],
                "stepDuration": "10m",
                "analysis": {"prometheusAddress": "http://127.0.0.1:9"},
            },
        },
    }


@dataclass
class Window:
    """One stretch of constant weight: what the route said, what the pods and clients saw."""

    name: str
    canary_weight: int
    started: float
    ended: float
    pod_counts: dict[str, int]  # requests answered, by the pods' variant label
    pod_versions: dict[str, int]  # the same, by the pods' model_version label

    @property
    def measured_canary_share(self) -> float:
        total = sum(self.pod_counts.values())
        return self.pod_counts.get("canary", 0) / total if total else 0.0


class Rollout:
    """Reads the cluster for the test: route weights, what Traefik applied, the pods' counters."""

    def __init__(self, real_cluster: RealCluster, traefik: TraefikGateway, namespace: str) -> None:
        self.cluster = real_cluster.cluster
        self.netns = real_cluster.node.netns_path
        self.traefik = traefik
        self.namespace = namespace

    def get(self, *what: str) -> dict[str, Any]:
        text = self.cluster.kubectl("get", *what, "-n", self.namespace, "-o", "json", "--ignore-not-found")
        found: dict[str, Any] = json.loads(text) if text.strip() else {}
        return found

    def route_weights(self) -> dict[str, int]:
        route = self.get("httproute", "iris")
        if not route:
            return {}
        return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}

    def route_accepted_by_traefik(self) -> bool:
        parents = self.get("httproute", "iris").get("status", {}).get("parents", [])
        return any(
            parent.get("controllerName") == CONTROLLER_NAME
            and any(c["type"] == "Accepted" and c["status"] == "True" for c in parent.get("conditions", []))
            for parent in parents
        )

    def traefik_weights(self) -> dict[str, int]:
        """The weights of Traefik's weighted service for the route, by backend Service name."""
        weights: dict[str, int] = {}
        for service in self.traefik.api("/api/http/services"):
            for backend in service.get("weighted", {}).get("services", []):
                for variant in ("iris-stable", "iris-canary"):
                    if f"{self.namespace}-{variant}-" in backend["name"]:
                        weights[variant] = backend.get("weight", 1)
        return weights

    def pod_counters(self) -> dict[str, tuple[str, str, float]]:
        """Inference requests each server pod answered so far: pod name -> (variant, version, count)."""
        pods = self.get("pods", "-l", label_selector("iris")).get("items", [])
        counters = {}
        for pod in pods:
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
                if labels.get("endpoint") == "infer":
                    variant, version = labels["variant"], labels["model_version"]
                    count += float(sample["value"])
            counters[pod["metadata"]["name"]] = (variant, version, count)
        return counters

    def measure(self, name: str, canary_weight: int) -> Window:
        """Counts what the pods answer over one window; the route must not change meanwhile."""
        route_before = self.get("httproute", "iris")["metadata"]["generation"]
        canary_status = self.get("md", "iris").get("status", {}).get("canary") or {}
        assert canary_status.get("effectiveWeight", 0) == canary_weight, (
            f"{name}: status.canary.effectiveWeight {canary_status.get('effectiveWeight')} "
            f"but the HTTPRoute gives the canary {canary_weight}"
        )
        started, before = time.time(), self.pod_counters()
        time.sleep(WINDOW_SECONDS)
        ended, after = time.time(), self.pod_counters()
        assert self.get("httproute", "iris")["metadata"]["generation"] == route_before, (
            f"{name}: the HTTPRoute changed during the measuring window"
        )
        by_variant: dict[str, int] = {}
        by_version: dict[str, int] = {}
        for pod, (variant, version, count) in after.items():
            answered = int(count - before.get(pod, (variant, version, 0.0))[2])
            by_variant[variant] = by_variant.get(variant, 0) + answered
            by_version[version] = by_version.get(version, 0) + answered
        return Window(name, canary_weight, started, ended, by_variant, by_version)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _wait_for_weights(rollout: Rollout, canary_weight: int, timeout: float = 180.0) -> None:
    """Until the HTTPRoute has this weight and Traefik has applied it."""
    wanted = {"iris-stable": 100 - canary_weight, "iris-canary": canary_weight}
    _wait(lambda: rollout.route_weights() == wanted, f"HTTPRoute weights {wanted}", timeout)
    applied = {k: v for k, v in wanted.items() if v > 0}
    _wait(
        lambda: {k: v for k, v in rollout.traefik_weights().items() if v > 0} == applied,
        f"Traefik to apply {applied} (it has {rollout.traefik_weights()})",
        30.0,
    )


@dataclass
class GatewayRecord:
    """The windows measured, the clients' answers, and an account of any that failed."""

    windows: list[Window]
    requests: list[dict[str, Any]]
    failures_explained: str


def gateway_rollout(
    real_cluster: RealCluster,
    traefik: TraefikGateway,
    public_gateway: dict[str, Any],
    local_operator: OperatorProcess,
    model_http_server: str,
    namespace: str,
    workdir: Path,
) -> GatewayRecord:
    cluster = real_cluster.cluster
    rollout = Rollout(real_cluster, traefik, namespace)

    def apply(model: str, version: str) -> None:
        manifest = _manifest(f"{model_http_server}/{model}/model.skops", version)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))

    def promote(value: str) -> None:
        cluster.kubectl(
            "annotate", "--overwrite", "md/iris", "-n", namespace, f"modeldeploy.io/promote={value}"
        )

    apply("v1", "1.0.0")
    _wait_ready(real_cluster, namespace)
    _wait(rollout.route_accepted_by_traefik, "Traefik to accept the HTTPRoute", 60.0)
    _wait_for_weights(rollout, 0)
    infer_url = f"{traefik.url}/v2/models/iris/infer"
    _wait(lambda: _answers_through_gateway(real_cluster, infer_url), "an answer through the Gateway", 60.0)

    output, stop = workdir / "load.jsonl", workdir / "stop"
    # One payload: the gateway test judges the split, not a model that fails one class.
    payload = json.dumps(v2_inference_payloads()[:1])
    load = subprocess.Popen(
        real_cluster.in_netns(
            sys.executable,
            str(LOAD_SCRIPT),
            infer_url,
            payload,
            str(output),
            str(stop),
            str(LOAD_MAX_SECONDS),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    windows: list[Window] = []
    try:
        windows.append(rollout.measure("before the rollout", 0))

        apply("v1-retrained", "2.0.0")
        _wait_for_weights(rollout, 25)
        windows.append(rollout.measure("step 1", 25))

        promote("step:1")
        _wait_for_weights(rollout, 50)
        windows.append(rollout.measure("step 2", 50))

        promote("full:1")
        _wait(
            lambda: rollout.get("md", "iris").get("status", {}).get("stable", {}).get("version") == "2.0.0"
            and not rollout.get("deployment", "iris-canary"),
            "the promoted model to be the stable one and the canary Deployment gone",
        )
        _wait_for_weights(rollout, 0)
        windows.append(rollout.measure("after promotion", 0))
    finally:
        stop.touch()
        _, stderr = load.communicate(timeout=60)
    assert load.returncode == 0, stderr.decode()[-3000:]
    requests = [json.loads(line) for line in output.read_text().splitlines()]
    failed = [r for r in requests if r["outcome"] != "ok"]
    # Explained now: the namespace and its Events go with the scenario.
    return GatewayRecord(
        windows, requests, _explain(failed, len(requests), windows, traefik, rollout) if failed else ""
    )


@pytest.mark.side_by_side(scenario=gateway_rollout)
def test_gateway_split_follows_the_http_route_weights_on_real_pods(scenario: RunningScenario) -> None:
    record: GatewayRecord = scenario.record()
    windows, requests = record.windows, record.requests
    print(f"\n{len(requests)} requests through the Gateway in {requests[-1]['t'] - requests[0]['t']:.0f}s")
    client_shares = []
    for window in windows:
        answered = [r for r in requests if window.started <= r["t"] < window.ended and r["outcome"] == "ok"]
        client_shares.append(sum(r["version"] == "2.0.0" for r in answered) / max(len(answered), 1))
        print(
            f"{window.name}: weight {window.canary_weight}%, the canary pods answered "
            f"{window.pod_counts.get('canary', 0)} of {sum(window.pod_counts.values())} = "
            f"{window.measured_canary_share:.1%} (by model version: {window.pod_versions}); "
            f"clients got 2.0.0 in {client_shares[-1]:.1%} of {len(answered)}"
        )
    assert {r["client"] for r in requests} == {"keepalive", "new"}
    for window in windows:
        assert sum(window.pod_counts.values()) >= MIN_REQUESTS_PER_WINDOW, window
        assert abs(window.measured_canary_share - window.canary_weight / 100) <= TOLERANCE, window
    # The clients' view agrees: during the steps the new model answers the canary's share, and
    # after promotion the stable pods run it, so it answers everything.
    *steps, promoted = windows
    for window, share in zip(steps, client_shares, strict=False):
        assert abs(share - window.canary_weight / 100) <= TOLERANCE, (window.name, share)
    assert client_shares[-1] == 1.0
    assert set(promoted.pod_versions) - {""} == {"2.0.0"}, promoted
    assert set(windows[0].pod_versions) - {""} == {"1.0.0"}, windows[0]

    assert not [r for r in requests if r["outcome"] != "ok"], record.failures_explained


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 10)}"


def _explain(
    failed: list[dict[str, Any]], total: int, windows: list[Window], traefik: TraefikGateway, rollout: Rollout
) -> str:
    """Which requests failed when, beside the windows, what Traefik says of them and the pods' events."""
    outcomes: dict[str, int] = {}
    for request in failed:
        outcomes[request["outcome"]] = outcomes.get(request["outcome"], 0) + 1
    lines = [
        f"{len(failed)} of {total} client requests failed ({outcomes}), "
        f"from {_utc(min(r['t'] for r in failed))} to {_utc(max(r['t'] for r in failed))} UTC",
        "windows: " + ", ".join(f"{w.name} {_utc(w.started)}-{_utc(w.ended)}" for w in windows),
        "Traefik's 5xx answers (time, backend, status, duration):",
    ]
    for entry in traefik.failed_requests()[:30]:
        lines.append(
            f"  {entry.get('StartUTC')} {entry.get('ServiceAddr')} {entry.get('OriginStatus')} "
            f"{entry.get('Duration', 0) / 1e9:.2f}s"
        )
    events = rollout.cluster.kubectl(
        "get", "events", "-n", rollout.namespace, "--sort-by=.lastTimestamp", check=False
    )
    lines.append("events:\n" + "\n".join(line for line in events.splitlines() if "iris" in line)[-4000:])
    return "\n".join(lines)


def _answers_through_gateway(real_cluster: RealCluster, url: str) -> bool:
    """One V2 request through the Gateway answered 200 (Traefik may still be loading the route)."""
    script = (
        "import http.client, json, sys, urllib.parse as u\n"
        "p = u.urlsplit(sys.argv[1]); c = http.client.HTTPConnection(p.hostname, p.port, timeout=5)\n"
        "c.request('POST', p.path, sys.argv[2], {'Content-Type': 'application/json'})\n"
        "sys.exit(0 if c.getresponse().status == 200 else 1)\n"
    )
    payload = json.dumps(v2_inference_payloads()[0])
    result = subprocess.run(
        real_cluster.in_netns(sys.executable, "-c", script, url, payload),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0
