"""How fast the operator turns ModelDeployments into Ready workloads, and what it costs when idle.

Runs everything locally: the real control plane (kwok node), the operator as a subprocess.
Prints, as a table:
- apply -> stable Deployment exists, and apply -> Ready (p50, p95 over N objects applied one by one);
- for each burst size M: the time for M ModelDeployments created at once to all become Ready, next
  to the reference measured in the same run: the same Deployments and Services created directly,
  without the operator, until all are available (the control plane's own limit);
- per idle reconcile: API reads (the watch cache answers them) and writes, objects changed, and the
  operator's API requests per second at idle;
- the operator's resident memory after convergence (current and peak).

    .venv/bin/python benchmarks/operator_reconcile.py [--sequential 50] [--burst 250,1000] [--idle 320]

Not a test: numbers vary with the machine; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.local_operator import LocalOperator, install_crds, metric_total
from modeldeploy_operator.builders import Owner, build_deployment, build_service
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[1]
IDLE_WINDOW_SECONDS = 320.0  # longer than the resync interval (300 s): every object reconciles once
WRITE_REQUEST = re.compile(r"HTTP Request: (PATCH|POST|PUT|DELETE) (\S+)")
RESYNC = re.compile(r"Periodic resync of (\d+) ModelDeployments")


SERVER_IMAGE = "registry.invalid/modeldeploy-server:bench"
CREATE_CHUNK = 200
POLL_SECONDS = 2.0


def model_deployment(name: str, namespace: str = "bench") -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"uri": f"s3://models/{name}/model.skops", "version": "1"}, "replicas": 1},
    }


def reference_children(name: str, namespace: str) -> list[dict[str, Any]]:
    """What the operator would create for `model_deployment(name)`, built by its own builders,
    without the owner reference (there is no owner here, and the garbage collector would delete them)."""
    spec = ModelDeploymentSpec.model_validate(model_deployment(name)["spec"])
    owner = Owner("modeldeploy.io/v1alpha1", "ModelDeployment", name, namespace, "reference")
    settings = OperatorSettings(server_image=SERVER_IMAGE)
    children = [
        build_deployment(owner, spec, settings),
        build_service(owner),
        build_service(owner, "stable"),
        build_service(owner, "canary"),
    ]
    for child in children:
        child["metadata"].pop("ownerReferences", None)
    return children


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.operator = LocalOperator(cluster, workdir / "operator.log", SERVER_IMAGE)
        self.log = self.operator.log

    def start_operator(self) -> None:
        self.operator.start()
        self.fresh_namespace("bench")

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(manifests))

    def create(self, manifests: list[dict[str, Any]]) -> None:
        # One POST per object (apply would first GET each one): the same for the reference and the
        # operator; in chunks, so one kubectl call stays within the cluster helper's timeout.
        for start in range(0, len(manifests), CREATE_CHUNK):
            chunk = manifests[start : start + CREATE_CHUNK]
            self.cluster.kubectl("create", "-f", "-", input_text=yaml.safe_dump_all(chunk))

    def fresh_namespace(self, namespace: str) -> None:
        self.cluster.kubectl("create", "namespace", namespace)
        self.cluster.kubectl(
            "wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=60s"
        )

    def reference(self, count: int) -> float:
        """Seconds until `count` servers' Deployments and Services, created directly, are all available."""
        namespace = f"reference-{count}"
        self.fresh_namespace(namespace)
        started = time.monotonic()
        self.create([c for i in range(count) for c in reference_children(f"ref-{i}", namespace)])
        elapsed = self.until_rows(
            "deployments",
            namespace,
            lambda row: int(row[3]) >= 1,
            count,
            started,
            "reference Deployments available",
        )
        print(f"reference: {count} servers available in {elapsed:.1f} s", file=sys.stderr, flush=True)
        # Out of the way before the operator's turn: the node and the controllers carry only one load.
        self.delete_namespace(namespace)
        return elapsed

    def delete_namespace(self, namespace: str) -> None:
        """Deletes the namespace and waits until it is gone (by polling: deleting a thousand servers'
        objects outlasts kubectl's own timeout). The kwok node holds 1,000 pods: each measurement
        must find it empty, or a burst of 1,000 never becomes Ready."""
        self.cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        deadline = time.monotonic() + 1800
        while self.cluster.kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name").strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {namespace} was not deleted within 30 minutes")
            time.sleep(2)

    def until_rows(
        self,
        resource: str,
        namespace: str,
        counts: Callable[[list[str]], bool],
        count: int,
        started: float,
        what: str,
    ) -> float:
        """Seconds from `started` until `count` rows satisfy `counts` (at most 30 minutes)."""
        while True:
            found = self.count_rows(resource, namespace, counts)
            if found == count:
                return time.monotonic() - started
            if time.monotonic() - started > 1800:
                raise RuntimeError(f"only {found} of {count} {what} within 30 minutes")
            time.sleep(POLL_SECONDS)

    def count_rows(self, resource: str, namespace: str, counts: Callable[[list[str]], bool]) -> int:
        """How many rows of `kubectl get` (the API server's own table, not whole objects: polling
        a thousand objects as JSON loaded the control plane being measured) satisfy `counts`."""
        table = self.cluster.kubectl("get", resource, "-n", namespace, "--no-headers")
        return sum(1 for line in table.splitlines() if line.strip() and counts(line.split()))

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
        namespace = f"burst-{count}"
        self.fresh_namespace(namespace)
        started = time.monotonic()
        self.create([model_deployment(f"burst-{index}", namespace) for index in range(count)])
        # The Ready column (empty until there is a status: the next column moves left, and it never reads True).
        elapsed = self.until_rows(
            "modeldeployments", namespace, lambda row: row[1] == "True", count, started, "Ready"
        )
        print(f"operator: {count} Ready in {elapsed:.1f} s", file=sys.stderr, flush=True)
        return elapsed

    def operator_writes(self) -> dict[str, Any]:
        """What the operator last wrote: each ModelDeployment's resourceVersion (only the user and the
        operator write those) and, per child, the operator's managed-fields entry (controllers
        update the children's status on their own)."""
        kinds = "modeldeployments,deployments,services,poddisruptionbudgets"
        listed = json.loads(self.cluster.kubectl("get", kinds, "-A", "-o", "json", "--show-managed-fields"))[
            "items"
        ]
        writes: dict[str, Any] = {}
        for item in listed:
            key = f"{item['kind']}/{item['metadata'].get('namespace')}/{item['metadata']['name']}"
            if item["kind"] == "ModelDeployment":
                writes[key] = item["metadata"]["resourceVersion"]
            else:
                writes[key] = [
                    e for e in item["metadata"].get("managedFields", []) if e["manager"] == "modeldeploy"
                ]
        return writes

    def idle(self, seconds: float) -> dict[str, float]:
        """What the operator does over an idle window of `seconds`: reconciles (the resync's), API
        reads and writes it sends (leases apart), objects it changed."""
        time.sleep(5)
        before = self.operator_writes()
        metrics_before = self.operator.metrics()
        offset = len(self.log.read_text(errors="replace"))
        started = time.monotonic()
        time.sleep(seconds)
        window = self.log.read_text(errors="replace")[offset:]
        metrics_after = self.operator.metrics()
        elapsed = time.monotonic() - started
        after = self.operator_writes()

        def grew(metric: str, **labels: str) -> float:
            return metric_total(metrics_after, metric, **labels) - metric_total(
                metrics_before, metric, **labels
            )

        writes = [
            match
            for match in WRITE_REQUEST.finditer(window)
            if "/leases" not in match.group(2) and "/events" not in match.group(2)
        ]
        lease_writes = grew("modeldeploy_operator_kubernetes_writes_total", kind="Lease")
        return {
            "resync": sum(int(count) for count in RESYNC.findall(window)),
            "reconciles": grew("modeldeploy_operator_reconciles_total"),
            "api_reads": grew("modeldeploy_operator_kubernetes_reads_total", source="api"),
            "cache_reads": grew("modeldeploy_operator_kubernetes_reads_total", source="cache"),
            "writes": len(writes),
            # The watch cache's full lists (a dropped or expired watch): requests too, and large ones.
            "lists": grew("modeldeploy_operator_watch_cache_lists_total"),
            "lease_writes": lease_writes,
            "seconds": elapsed,
            "changed": sum(1 for key, value in after.items() if before.get(key) != value),
        }

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
    parser.add_argument("--burst", default="250,1000", help="comma-separated sizes of bursts created at once")
    parser.add_argument("--idle", type=float, default=IDLE_WINDOW_SECONDS, help="seconds of the idle window")
    args = parser.parse_args()
    sizes = [int(size) for size in args.burst.split(",") if size.strip()]
    bursts: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as workdir, LocalCluster() as cluster:
        bench = Bench(cluster, Path(workdir))
        install_crds(cluster, REPO)
        # The references first, while no operator runs: each measures the control plane alone.
        references = {size: bench.reference(size) for size in sizes}
        bench.start_operator()
        try:
            to_deployment, to_ready = bench.sequential(args.sequential)
            bench.delete_namespace("bench")
            for index, size in enumerate(sizes):
                bursts.append((size, references[size], bench.burst(size)))
                if index < len(sizes) - 1:
                    bench.delete_namespace(f"burst-{size}")
            # The idle window and the memory with the last burst's ModelDeployments in place.
            idle = bench.idle(args.idle)
            rss, peak = bench.operator_memory()
        finally:
            bench.operator.stop()
    total = sizes[-1]
    reconciles = max(idle["reconciles"], 1)
    rows = [
        (
            f"apply -> stable Deployment exists (n={len(to_deployment)})",
            f"p50 {statistics.median(to_deployment):.2f} s, p95 {percentile(to_deployment, 0.95):.2f} s",
        ),
        (
            f"apply -> Ready (n={len(to_ready)})",
            f"p50 {statistics.median(to_ready):.2f} s, p95 {percentile(to_ready, 0.95):.2f} s",
        ),
    ]
    for size, reference, converged in bursts:
        rows.append(
            (
                f"{size} created at once -> all Ready",
                f"{converged:.1f} s ({1000 * converged / size:.0f} ms each); reference without the operator"
                f" {reference:.1f} s; ratio {converged / reference:.2f}",
            )
        )
    rows += [
        (f"idle window {idle['seconds']:.0f} s",
         f"{idle['reconciles']:.0f} reconciles ({idle['resync']:.0f} from the periodic resync)"),
        ("API reads per idle reconcile",
         f"{idle['api_reads'] / reconciles:.3f} ({idle['api_reads']:.0f} in all; {idle['cache_reads']:.0f}"
         " answered by the watch cache)"),
        ("write requests per idle reconcile", f"{idle['writes'] / reconciles:.3f} ({idle['writes']} in all)"),
        ("watch cache lists while idle", f"{idle['lists']:.0f}"),
        ("operator API requests per second at idle",
         f"{(idle['api_reads'] + idle['writes'] + idle['lists']) / idle['seconds']:.3f}"
         f" (plus {idle['lease_writes'] / idle['seconds']:.2f}/s of Lease renewals)"),
        ("objects the operator changed while idle", f"{idle['changed']:.0f}"),
        (f"operator RSS with {total} ModelDeployments", f"{rss:.0f} MiB (peak over the run {peak:.0f} MiB)"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
