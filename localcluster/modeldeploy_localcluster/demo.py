"""The README's demo: a model deployed, then a good and a bad new version rolled out under traffic.

Everything runs on 127.0.0.1: the real control plane (kwok plays the node), the operator,
Debian's Prometheus, and model-server processes standing in for the pods kwok only simulates
(`standins`). The demo narrates what happens as it happens with the `modeldeploy status` view,
the Events and the request counts.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.cluster import ClusterError, LocalCluster
from modeldeploy_localcluster.iris_models import v2_inference_payloads, write_iris_models
from modeldeploy_localcluster.local_operator import LocalOperator, install_crds
from modeldeploy_localcluster.standins import (
    LoadReport,
    PrometheusProcess,
    ServerStandIns,
    WeightedLoad,
    canary_weight,
)
from modeldeploy_operator.presentation import detail, history_table

Say = Callable[[str], None]
DEMO_IMAGE = "modeldeploy-server:demo"
NAME = "iris"
NAMESPACE = "default"
STEP_SECONDS = 10
REQUESTS_PER_SECOND = 40


def demo_manifest(repo: Path, model_dir: Path, version: str, prometheus: PrometheusProcess) -> dict[str, Any]:
    """examples/iris.yaml, with the model on local disk, short steps and Prometheus on 127.0.0.1."""
    manifest: dict[str, Any] = yaml.safe_load((repo / "examples" / "iris.yaml").read_text())
    spec = manifest["spec"]
    spec["model"] = {"uri": model_dir.as_uri(), "format": "sklearn", "version": version}
    spec["replicas"] = 4
    spec["rollout"] = {
        "steps": [25, 50],
        "stepDuration": f"{STEP_SECONDS}s",
        "progressDeadline": "3m",
        "analysis": {
            "prometheusAddress": prometheus.url,
            "minSamples": 20,
            "errorRate": {"maxRatio": 0.05, "maxIncrease": 0.02},
            # Answers take milliseconds here and their tail is the machine's noise (the default
            # maxIncreaseRatio of 1.5 would reject a good model now and then): the bounds catch a
            # model ten times slower than the stable one, or slower than a quarter second.
            "latency": {"quantile": 0.9, "maxSeconds": 0.25, "maxIncreaseRatio": 10},
            "predictionShift": {"maxShift": 0.2},
        },
    }
    return manifest


def _view_key(body: dict[str, Any]) -> str:
    """What a person watching would call a change: phase, step, weight, verdicts (not ages)."""
    status = body.get("status", {})
    canary = status.get("canary") or {}
    return json.dumps(
        [
            status.get("phase"),
            (status.get("stable") or {}).get("version"),
            canary.get("version"),
            canary.get("step"),
            canary.get("weight"),
            [(check["name"], check["verdict"]) for check in canary.get("checks", [])],
            canary.get("inconclusive"),
            len(status.get("history", [])),
        ]
    )


class LiveView:
    """Prints the `modeldeploy status` view whenever the rollout changes, and each new Event."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._last_key = ""
        self._seen_events: set[str] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", "md", NAME, "-n", NAMESPACE, "-o", "json")
        )
        return body

    def _new_events(self) -> list[str]:
        events = json.loads(
            self.cluster.kubectl(
                "get",
                "events",
                "-n",
                NAMESPACE,
                "--field-selector",
                f"involvedObject.kind=ModelDeployment,involvedObject.name={NAME}",
                "-o",
                "json",
            )
        )["items"]
        lines = []
        for event in sorted(events, key=lambda item: item.get("lastTimestamp") or ""):
            key = f"{event['metadata']['uid']}/{event.get('count', 1)}"
            if key not in self._seen_events:
                self._seen_events.add(key)
                lines.append(f"  event {event['type']:7} {event['reason']}: {event['message']}")
        return lines

    def show_once(self) -> None:
        body = self._body()
        key = _view_key(body)
        events = self._new_events()
        if key != self._last_key:
            self._last_key = key
            print(f"\n--- {datetime.now():%H:%M:%S}  modeldeploy status {NAME}", flush=True)
            print(detail(body, datetime.now(UTC)), flush=True)
        for line in events:
            print(line, flush=True)

    def _run(self) -> None:
        while not self._stopped.wait(0.5):
            try:
                self.show_once()
            except ClusterError:
                continue  # a busy API server for a moment: the next look catches up

    def __enter__(self) -> LiveView:
        self._new_events()  # what happened before is not news
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        self.show_once()


class Demo:
    def __init__(self, cluster: LocalCluster, repo: Path, workdir: Path, say: Say) -> None:
        self.cluster = cluster
        self.repo = repo
        self.say = say
        self.models = write_iris_models(workdir / "models")
        self.prometheus = PrometheusProcess(workdir / "prometheus")
        self.operator = LocalOperator(cluster, workdir / "logs" / "operator.log", DEMO_IMAGE)
        self.stand_ins = ServerStandIns(cluster, NAMESPACE, NAME, self.prometheus, workdir / "servers", say)
        self.load = WeightedLoad(cluster, self.stand_ins, v2_inference_payloads(), REQUESTS_PER_SECOND)

    def show(self, *args: str) -> None:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
        print(self.cluster.kubectl(*args), end="", flush=True)

    def apply(self, model: str, version: str) -> None:
        manifest = demo_manifest(self.repo, self.models[model], version, self.prometheus)
        self.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input_text=yaml.safe_dump(manifest))

    def status(self) -> dict[str, Any]:
        return self.load.status()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterError(f"demo: timed out waiting for {what}; operator log: {self.operator.log}")
            time.sleep(0.3)

    def traffic_since(self, before: LoadReport) -> str:
        parts = []
        for variant, counts in sorted(self.load.report.codes.items()):
            earlier = before.codes.get(variant, {})
            delta = {code: count - earlier.get(code, 0) for code, count in counts.items()}
            answered = ", ".join(f"{count} x {code}" for code, count in sorted(delta.items()) if count)
            if answered:
                parts.append(f"{variant}: {answered}")
        return "; ".join(parts) or "none"

    def snapshot(self) -> LoadReport:
        copy = LoadReport()
        copy.add(self.load.report)
        return copy

    def roll_out(self, model: str, version: str, story: str) -> dict[str, Any]:
        before = self.snapshot()
        self.say(story)
        print(
            f"\n$ kubectl apply -f -   # iris.yaml with spec.model: {self.models[model].as_uri()}, version {version}"
        )
        with LiveView(self.cluster):
            self.apply(model, version)
            self.wait_for(lambda: "canary" in self.status(), "the rollout to start")
            self.wait_for(lambda: "canary" not in self.status(), "the rollout to end", timeout=180)
        self.wait_for(lambda: canary_weight(self.status()) == 0, "traffic back on one model")
        self.say(f"requests during this rollout, by variant and status code: {self.traffic_since(before)}")
        return self.status()

    def expect_outcome(self, status: dict[str, Any], expected: str) -> None:
        last = status["history"][0]
        self.say(f"outcome: {last['outcome']}: {last.get('message', '')}")
        if last["outcome"] != expected:
            raise ClusterError(
                f"demo: expected this rollout to end {expected}, it ended {last['outcome']} ({last.get('message', '')});"
                f" operator log: {self.operator.log}"
            )

    def run(self) -> None:
        install_crds(self.cluster, self.repo)
        self.prometheus.start()
        self.say(f"Prometheus on {self.prometheus.url}; the operator's log: {self.operator.log}")
        self.operator.start()
        self.stand_ins.start()

        self.say(
            "1. an ML engineer applies examples/iris.yaml (model 1.0.0 from local disk, 10 s canary steps)"
        )
        self.apply("v1", "1.0.0")
        started = time.monotonic()
        self.cluster.kubectl("wait", "--for=condition=Ready", f"md/{NAME}", "-n", NAMESPACE, "--timeout=120s")
        self.say(f"Ready {time.monotonic() - started:.1f}s after apply")
        self.show("get", "modeldeployments")
        self.show("get", "deployments,services,pods", "-l", f"app.kubernetes.io/instance={NAME}")
        self.wait_for(lambda: "stable" in self.stand_ins.urls(), "the stable model's server process")
        self.say(
            f"kwok runs no containers: a server process plays the pods; {REQUESTS_PER_SECOND} requests a second"
            " go to it, split between stable and canary by the weight the operator sets"
        )
        self.load.start()
        time.sleep(3)

        promoted = self.roll_out(
            "v1-retrained",
            "1.1.0",
            "2. version 1.1.0, the same classifier retrained: every check passes, step after step",
        )
        self.expect_outcome(promoted, "promoted")
        self.wait_for(
            lambda: self.stand_ins.running_version("stable") == "1.1.0",
            "the stable pods to run 1.1.0",
        )

        rejected = self.roll_out(
            "v2-lost-a-class",
            "2.0.0",
            "3. version 2.0.0 lost a class when it was exported: it fails a third of its requests",
        )
        self.expect_outcome(rejected, "rolledBack")
        print(f"\n$ modeldeploy history {NAME}")
        print(
            history_table(json.loads(self.cluster.kubectl("get", "md", NAME, "-n", NAMESPACE, "-o", "json")))
        )
        self.show("get", "modeldeployments")

        self.say("4. a manifest with a mistake is refused by the API server, naming the field")
        bad = self.repo / "examples" / "invalid" / "negative-replicas.yaml"
        print(f"\n$ kubectl apply -f {bad.relative_to(self.repo)}")
        print(self.cluster.kubectl("apply", "-f", str(bad), check=False), end="")

        self.say("5. deleting the ModelDeployment removes everything it created")
        self.load.stop()
        self.show("delete", "modeldeployment", NAME)
        self.wait_for(
            lambda: not self.cluster.kubectl(
                "get", "deployments,services", "-l", f"app.kubernetes.io/instance={NAME}", "-o", "name"
            ).strip(),
            "the children to go",
        )

    def stop(self) -> None:
        self.load.stop()
        self.stand_ins.stop()
        self.operator.stop()
        self.prometheus.stop()


def run_demo(workdir: Path, repo: Path, say: Say) -> None:
    started = time.monotonic()
    # A previous run's cluster state (etcd), servers and Prometheus data would only confuse this one.
    shutil.rmtree(workdir, ignore_errors=True)
    with LocalCluster(workdir=workdir / "cluster", progress=say) as cluster:
        demo = Demo(cluster, repo, workdir, say)
        try:
            demo.run()
        finally:
            demo.stop()
    say(
        f"demo finished in {time.monotonic() - started:.0f}s; `modeldeploy-localcluster up` starts a control"
        " plane to explore by hand"
    )
