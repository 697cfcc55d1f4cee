"""How fast a failing canary is rolled back, and how many API writes a rollout step costs.

Everything runs locally: the real control plane (kwok node), the operator as a subprocess,
Debian's Prometheus, and model-server processes standing in for the pods (see
`modeldeploy_localcluster.standins`), with load split by the weight the operator sets.

Each round rolls out a good model (promoted step by step) and then a model that fails a third
of its requests (rolled back by the error-rate check). Printed:

- from the end of the first failing analysis window to: the rollback written in the status,
  and the canary Deployment deleted (with the replicas provider, the canary pods go with it
  and the entry Service sends everything to the stable pods). The reference in the same run
  is the analysis window itself (`--step-seconds`): the target is one window plus a few seconds;
- API writes the operator sent per rollout step (from its `kubernetes_writes_total` metric),
  with the Events it posted counted apart.

    .venv/bin/python benchmarks/canary_rollouts.py [--rounds 3] [--step-seconds 10]

Not a test: numbers vary with the machine; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.iris_models import v2_inference_payloads, write_iris_models
from modeldeploy_localcluster.local_operator import LocalOperator, install_crds, metric_total
from modeldeploy_localcluster.standins import PrometheusProcess, ServerStandIns, WeightedLoad

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
NAME = "iris"
STEPS = [25, 50]
REQUESTS_PER_SECOND = 30


def model_deployment(model_dir: Path, version: str, replicas: int, rollout: dict[str, Any]) -> str:
    """The benchmarks' iris ModelDeployment serving `model_dir` as `version`, with spec.rollout `rollout`."""
    return json.dumps(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "model": {"uri": model_dir.as_uri(), "format": "sklearn", "version": version},
                "replicas": replicas,
                "rollout": rollout,
            },
        }
    )


def manifest(model_dir: Path, version: str, prometheus: PrometheusProcess, step_seconds: int) -> str:
    return model_deployment(
        model_dir,
        version,
        4,
        {
            "steps": STEPS,
            "stepDuration": f"{step_seconds}s",
            "progressDeadline": "5m",
            "analysis": {
                "prometheusAddress": prometheus.url,
                "minSamples": 20,
                "errorRate": {"maxRatio": 0.05},
                "latency": {"maxSeconds": 2.0, "maxIncreaseRatio": 1000},
                "predictionShift": {"maxShift": 0.2},
            },
        },
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Watcher:
    """Polls the ModelDeployment's status and the canary Deployment as fast as kubectl allows,
    noting when each changes (wall clock, as the operator's timestamps are)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.last_canary: dict[str, Any] | None = None
        self.rolled_back_at: datetime | None = None
        self.canary_deleted_at: datetime | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            body = json.loads(self.cluster.kubectl("get", "md", NAME, "-n", NAMESPACE, "-o", "json"))
            now = datetime.now().astimezone()
            canary = body.get("status", {}).get("canary")
            if canary is not None:
                self.last_canary = canary
            elif self.last_canary is not None and self.rolled_back_at is None:
                self.rolled_back_at = now
            if self.rolled_back_at is not None and self.canary_deleted_at is None:
                found = self.cluster.kubectl(
                    "get", "deployment", f"{NAME}-canary", "-n", NAMESPACE, "--ignore-not-found", "-o", "name"
                )
                if not found.strip():
                    self.canary_deleted_at = datetime.now().astimezone()
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)


class Bench:
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        step_seconds: int,
        requests_per_second: float = REQUESTS_PER_SECOND,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.step_seconds = step_seconds
        self.models = write_iris_models(workdir / "models")
        self.prometheus = PrometheusProcess(workdir / "prometheus")
        self.operator = LocalOperator(cluster, workdir / "operator.log", "registry.invalid/server:bench")
        self.stand_ins = ServerStandIns(cluster, NAMESPACE, NAME, self.prometheus, workdir / "stand-ins")
        self.load = WeightedLoad(cluster, self.stand_ins, v2_inference_payloads(), requests_per_second)
        self.versions = 0
        self.last_rollout_writes: dict[str, float] = {}

    def __enter__(self) -> Bench:
        install_crds(self.cluster, REPO)
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        self.cluster.kubectl(
            "wait", "--for=create", "serviceaccount/default", "-n", NAMESPACE, "--timeout=60s"
        )
        self.prometheus.start()
        self.operator.start()
        self.stand_ins.start()
        self.load.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.load.stop()
        self.stand_ins.stop()
        self.operator.stop()
        self.prometheus.stop()

    def apply(self, model: str) -> None:
        """Rolls out a copy of a model under a new version (a new URI, so always a new rollout)."""
        self.versions += 1
        copy = self.workdir / "rollouts" / f"{model}-{self.versions}"
        shutil.copytree(self.models[model], copy)
        self.cluster.kubectl("apply", "-f", "-", input_text=self.manifest(copy, f"{self.versions}"))

    def manifest(self, model_dir: Path, version: str) -> str:
        """The ModelDeployment of one rollout; a benchmark with other rollout settings overrides it."""
        return manifest(model_dir, version, self.prometheus, self.step_seconds)

    def status(self) -> dict[str, Any]:
        return self.load.status()

    def wait(self, condition: Any, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; operator log {self.operator.log}")
            time.sleep(0.2)

    def writes_by_request(self) -> dict[str, float]:
        """Writes so far per verb and kind, e.g. `apply Deployment`."""
        counts: dict[str, float] = {}
        for line in self.operator.metrics().splitlines():
            if line.startswith("modeldeploy_operator_kubernetes_writes_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                counts[f"{labels['verb']} {labels['kind']}"] = float(line.rsplit(" ", 1)[1])
        return counts

    def writes(self) -> tuple[float, float]:
        """Writes for ModelDeployments so far (the leader's Lease renewals left out), and Events."""
        metrics = self.operator.metrics()
        lease = metric_total(metrics, "modeldeploy_operator_kubernetes_writes_total", kind="Lease")
        return (
            metric_total(metrics, "modeldeploy_operator_kubernetes_writes_total") - lease,
            metric_total(metrics, "modeldeploy_operator_events_total"),
        )

    def deploy_stable(self) -> None:
        self.apply("v1")
        self.wait(lambda: self.status().get("phase") == "Ready", "the stable model to be Ready")
        self.wait(lambda: "stable" in self.stand_ins.urls(), "the stable server process")

    def good_rollout(self) -> tuple[float, float, float]:
        """Writes and Events per step of a promoted rollout, and how long it took."""
        writes, events = self.writes()
        by_request = self.writes_by_request()
        started = time.monotonic()
        self.apply("v1-retrained")
        self.wait(lambda: "canary" in self.status(), "the rollout to start")
        self.wait(lambda: "canary" not in self.status(), "the rollout to end")
        duration = time.monotonic() - started
        outcome = self.status()["history"][0]["outcome"]
        if outcome != "promoted":
            raise RuntimeError(f"the good model was {outcome}: {self.status()['history'][0]}")
        # The stand-ins follow the promotion before the next rollout starts.
        self.wait(lambda: self.stand_ins.running_version("canary") is None, "the canary process to stop")
        after_writes, after_events = self.writes()
        self.last_rollout_writes = {
            key: count - by_request.get(key, 0)
            for key, count in self.writes_by_request().items()
            if count > by_request.get(key, 0)
        }
        # Start, one transition per further step, and the promotion.
        transitions = len(STEPS) + 1
        return (after_writes - writes) / transitions, (after_events - events) / transitions, duration

    def bad_rollout(self) -> tuple[float, float]:
        """Seconds from the end of the failing window to the rollback in status and the canary gone."""
        watcher = Watcher(self.cluster)
        self.apply("v2-lost-a-class")
        self.wait(
            lambda: watcher.rolled_back_at is not None and watcher.canary_deleted_at is not None,
            "the rollback",
        )
        watcher.stop()
        outcome = self.status()["history"][0]
        if outcome["outcome"] != "rolledBack":
            raise RuntimeError(f"the failing model was {outcome['outcome']}: {outcome}")
        canary = watcher.last_canary
        assert canary is not None and watcher.rolled_back_at and watcher.canary_deleted_at
        window_start = parse_time(canary.get("analysisStartedAt") or canary["stepStartedAt"])
        window_end = window_start + timedelta(seconds=self.step_seconds)
        return (
            (watcher.rolled_back_at - window_end).total_seconds(),
            (watcher.canary_deleted_at - window_end).total_seconds(),
        )


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):5.2f}  min {min(values):5.2f}  max {max(values):5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-seconds", type=int, default=10, help="each step's analysis window")
    args = parser.parse_args()

    def say(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as temporary:
        workdir = Path(temporary)
        with (
            LocalCluster(workdir=workdir / "cluster", progress=say) as cluster,
            Bench(cluster, workdir, args.step_seconds) as bench,
        ):
            bench.deploy_stable()
            per_step_writes, per_step_events, durations, to_status, to_deleted = [], [], [], [], []
            for round_number in range(1, args.rounds + 1):
                writes, events, duration = bench.good_rollout()
                per_step_writes.append(writes)
                per_step_events.append(events)
                durations.append(duration)
                status_seconds, deleted_seconds = bench.bad_rollout()
                to_status.append(status_seconds)
                to_deleted.append(deleted_seconds)
                say(
                    f"round {round_number}: promoted in {duration:.1f}s, {writes:.1f} writes/step;"
                    f" rollback {status_seconds:.2f}s / canary gone {deleted_seconds:.2f}s after the failing window"
                )
            report = bench.load.report
            last_writes = bench.last_rollout_writes

    print(
        f"\nrounds: {args.rounds}, steps {STEPS}, analysis window {args.step_seconds}s, {REQUESTS_PER_SECOND} req/s"
    )
    print(f"{'measure':58} result (seconds, or count)")
    print(f"{'failing window end -> rollback written in status':58} {describe(to_status)}")
    print(f"{'failing window end -> canary Deployment deleted':58} {describe(to_deleted)}")
    print(f"{'reference: the analysis window':58} {args.step_seconds:5d}")
    print(f"{'good rollout, start to promoted':58} {describe(durations)}")
    print(f"{'API writes per rollout step (apply, delete, status; no Lease)':58} {describe(per_step_writes)}")
    print(f"{'Events per rollout step':58} {describe(per_step_events)}")
    print(f"{'writes of the last promoted rollout, by request':58} {last_writes}")
    print(f"{'requests sent (by variant: status code -> count)':58} {report.codes}")


if __name__ == "__main__":
    main()
