"""How fast the operator turns ModelDeployments into Ready workloads, and what it costs when idle.

Runs everything locally: the real control plane (kwok node), the operator as a subprocess.
Prints, as a table:
- apply -> stable Deployment exists, and apply -> Ready (p50, p95 over N objects applied one by one);
- time for M ModelDeployments applied at once to all become Ready;
- API writes per idle reconcile (requests the operator sends, and objects that changed);
- the operator's resident memory after convergence (current and peak).

    .venv/bin/python benchmarks/operator_reconcile.py [--sequential 50] [--burst 300]

Not a test: numbers vary with the machine; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.local_operator import LocalOperator, install_crds

REPO = Path(__file__).resolve().parents[1]
IDLE_WINDOW_SECONDS = 320.0  # longer than the resync interval (300 s): every object reconciles once
WRITE_REQUEST = re.compile(r"HTTP Request: (PATCH|POST|PUT|DELETE) (\S+)")
RESYNC = re.compile(r"Periodic resync of (\d+) ModelDeployments")


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"model": {"uri": f"s3://models/{name}/model.skops", "version": "1"}, "replicas": 1},
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.operator = LocalOperator(
            cluster, workdir / "operator.log", "registry.invalid/modeldeploy-server:bench"
        )
        self.log = self.operator.log

    def start_operator(self) -> None:
        install_crds(self.cluster, REPO)
        self.operator.start()
        self.cluster.kubectl("create", "namespace", "bench")
        self.cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", "bench", "--timeout=60s")

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(manifests))

    def model_deployments(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.cluster.kubectl("get", "modeldeployments", "-n", "bench", "-o", "json")
        )["items"]
        return items

    def sequential(self, count: int) -> tuple[list[float], list[float]]:
        to_deployment, to_ready = [], []
        for index in range(count):
            name = f"seq-{index}"
            started = time.monotonic()
            self.apply([model_deployment(name)])
            deployment_seen = None
            while True:
                if deployment_seen is None:
                    found = self.cluster.kubectl(
                        "get",
                        "deployment",
                        f"{name}-stable",
                        "-n",
                        "bench",
                        "--ignore-not-found",
                        "-o",
                        "name",
                    )
                    if found.strip():
                        deployment_seen = time.monotonic() - started
                body = json.loads(
                    self.cluster.kubectl("get", "modeldeployment", name, "-n", "bench", "-o", "json")
                )
                conditions = body.get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    to_ready.append(time.monotonic() - started)
                    to_deployment.append(deployment_seen or to_ready[-1])
                    break
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"{name} did not become Ready")
        return to_deployment, to_ready

    def burst(self, count: int) -> float:
        started = time.monotonic()
        self.apply([model_deployment(f"burst-{index}") for index in range(count)])
        while True:
            ready = sum(
                1
                for body in self.model_deployments()
                if body["metadata"]["name"].startswith("burst-")
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in body.get("status", {}).get("conditions", [])
                )
            )
            if ready == count:
                return time.monotonic() - started
            if time.monotonic() - started > 1800:
                raise RuntimeError(f"only {ready} of {count} became Ready")
            time.sleep(1)

    def operator_writes(self) -> dict[str, Any]:
        """What the operator last wrote: each ModelDeployment's resourceVersion (only the user and the
        operator write those) and, per child, the operator's managed-fields entry (controllers
        update the children's status on their own)."""
        kinds = "modeldeployments,deployments,services,poddisruptionbudgets"
        listed = json.loads(
            self.cluster.kubectl("get", kinds, "-n", "bench", "-o", "json", "--show-managed-fields")
        )["items"]
        writes: dict[str, Any] = {}
        for item in listed:
            key = f"{item['kind']}/{item['metadata']['name']}"
            if item["kind"] == "ModelDeployment":
                writes[key] = item["metadata"]["resourceVersion"]
            else:
                writes[key] = [
                    e for e in item["metadata"].get("managedFields", []) if e["manager"] == "modeldeploy"
                ]
        return writes

    def idle(self) -> tuple[int, int, int]:
        """(reconciles, write requests, objects the operator changed) over an idle window."""
        time.sleep(5)
        before = self.operator_writes()
        offset = len(self.log.read_text(errors="replace"))
        time.sleep(IDLE_WINDOW_SECONDS)
        window = self.log.read_text(errors="replace")[offset:]
        after = self.operator_writes()
        reconciles = sum(int(count) for count in RESYNC.findall(window))
        writes = [
            match
            for match in WRITE_REQUEST.finditer(window)
            if "/leases" not in match.group(2) and "/events" not in match.group(2)
        ]
        changed = sum(1 for key, value in after.items() if before.get(key) != value)
        return reconciles, len(writes), changed

    def operator_memory(self) -> tuple[float, float]:
        assert self.operator.process is not None
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.operator.process.pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=50, help="objects applied one by one")
    parser.add_argument("--burst", type=int, default=300, help="objects applied at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as workdir, LocalCluster() as cluster:
        bench = Bench(cluster, Path(workdir))
        bench.start_operator()
        try:
            to_deployment, to_ready = bench.sequential(args.sequential)
            converge = bench.burst(args.burst)
            reconciles, writes, changed = bench.idle()
            rss, peak = bench.operator_memory()
        finally:
            bench.operator.stop()
    rows = [
        (f"apply -> stable Deployment exists (n={len(to_deployment)})",
         f"p50 {statistics.median(to_deployment):.2f} s, p95 {percentile(to_deployment, 0.95):.2f} s"),
        (f"apply -> Ready (n={len(to_ready)})",
         f"p50 {statistics.median(to_ready):.2f} s, p95 {percentile(to_ready, 0.95):.2f} s"),
        (f"{args.burst} applied at once -> all Ready", f"{converge:.1f} s"),
        (f"idle window {IDLE_WINDOW_SECONDS:.0f} s", f"{reconciles} reconciles from the periodic resync"),
        ("write requests per idle reconcile", f"{writes / max(reconciles, 1):.3f} ({writes} in all)"),
        ("objects the operator changed while idle", str(changed)),
        (f"operator RSS with {args.sequential + args.burst} objects", f"{rss:.0f} MiB (peak {peak:.0f} MiB)"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
