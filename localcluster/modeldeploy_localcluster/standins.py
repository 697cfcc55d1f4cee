"""Real processes standing in for what kwok only simulates: the model-server pods, and Prometheus.

kwok marks pods Running and Ready without running a container, so nothing would answer
requests or export metrics, and no canary could be judged. Here, on 127.0.0.1:

- `PrometheusProcess` is Debian's Prometheus, scraping the targets listed in a file it watches;
- `ServerStandIns` follows the Deployments of one ModelDeployment and runs, for each, one
  `modeldeploy-server` process with the commands and environment of the Deployment's pod
  template (the fetch step, then the server), registered with Prometheus;
- `WeightedLoad` sends requests to those processes in the shares the ModelDeployment's status
  gives each variant, as the Service or the route would.

Used by the end-to-end tests, the demo and the benchmarks. Load goes to 127.0.0.1 only and
stops by itself or when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from modeldeploy_localcluster.cluster import ClusterError, LocalCluster, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SERVER = str(Path(sys.executable).parent / "modeldeploy-server")
SCRAPE_INTERVAL_SECONDS = 1
VARIANTS = ("stable", "canary")
DRAIN_SECONDS = 1.5
# The environment the operator gives the server container, which a stand-in must replace.
SERVER_ENV_PREFIX = "MODELDEPLOY_SERVER_"

Say = Callable[[str], None]


class StandInError(RuntimeError):
    """A stand-in process could not be started."""


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def wait_until_answering(
    url: str, what: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StandInError(f"{what} exited with {process.returncode}; log {log}:\n{_log_tail(log)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise StandInError(f"{what} not ready after {seconds:.0f}s; log {log}:\n{_log_tail(log)}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PrometheusProcess:
    """Prometheus scraping the targets listed in a file it watches, every second.

    It can be stopped and started again on the same address and data, as an outage would.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.log = workdir / "prometheus.log"
        self._targets: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "model-servers",
                    # The servers' own `namespace` label must win over any target label.
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until_answering(f"{self.url}/-/ready", "prometheus", self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def scrape(self, address: str, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._targets[address] = dict(labels or {})
            self._write_targets()

    def forget(self, address: str) -> None:
        with self._lock:
            self._targets.pop(address, None)
            self._write_targets()

    def _write_targets(self) -> None:
        groups = [{"targets": [address], "labels": labels} for address, labels in self._targets.items()]
        # Written whole and renamed, so Prometheus never reads half a file.
        partial = self.targets_file.with_suffix(".partial")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets_file)

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        reply.raise_for_status()
        body = reply.json()
        if body["status"] != "success":
            raise StandInError(f"prometheus answered {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_until_scraped(self, address: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.query(f'up{{instance="{address}"}} == 1'):
                return
            time.sleep(0.5)
        raise StandInError(f"prometheus never scraped {address}; log {self.log}")


@dataclass
class ModelServer:
    """One `modeldeploy-server serve` process on 127.0.0.1 with the given server settings."""

    settings: Mapping[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_variant(
        cls, model_dir: Path, *, name: str, namespace: str, variant: str, version: str, log: Path
    ) -> ModelServer:
        """A server as the operator's pod for one variant runs it, for a model already on disk."""
        return cls(
            {
                "MODEL_NAME": name,
                "NAMESPACE": namespace,
                "VARIANT": variant,
                "MODEL_VERSION": version,
                "MODEL_DIR": str(model_dir),
            },
            log,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def variant(self) -> str:
        return self.settings.get("VARIANT", "")

    def start(self) -> None:
        environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        for key, value in self.settings.items():
            environment[SERVER_ENV_PREFIX + key] = value
        environment[SERVER_ENV_PREFIX + "HOST"] = "127.0.0.1"
        environment[SERVER_ENV_PREFIX + "HTTP_PORT"] = str(self.port)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SERVER, "serve"], env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until_answering(
            f"{self.url}/v2/health/ready", f"model server {self.variant}", self.process, self.log
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass(frozen=True)
class PodPlan:
    """What a Deployment's pod would run: the fetch step's arguments and the server's settings."""

    fetch_args: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.fetch_args, self.settings]).encode()).hexdigest()[:12]


def pod_plan(deployment: Mapping[str, Any]) -> PodPlan | None:
    """The plan of a Deployment's pods, or None when it asks for no pods.

    The server settings are the container's `MODELDEPLOY_SERVER_*` variables; the namespace,
    which a pod reads from its own metadata, is the Deployment's.
    """
    if deployment["spec"].get("replicas", 1) == 0:
        return None
    pod = deployment["spec"]["template"]["spec"]
    fetch = next(c for c in pod.get("initContainers", []) if c["name"] == "fetch-model")
    server = pod["containers"][0]
    settings: dict[str, str] = {}
    for variable in server.get("env", []):
        key = variable["name"]
        if not key.startswith(SERVER_ENV_PREFIX):
            continue
        if "value" in variable:
            settings[key.removeprefix(SERVER_ENV_PREFIX)] = variable["value"]
        elif variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            settings[key.removeprefix(SERVER_ENV_PREFIX)] = deployment["metadata"]["namespace"]
    return PodPlan(tuple(fetch["args"]), tuple(sorted(settings.items())))


class ServerStandIns:
    """One server process per Deployment of a ModelDeployment, following the Deployments' changes.

    A changed pod template starts a new process before the old one stops, as a rolling update
    with surge would; a Deployment gone or scaled to zero stops its process.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        name: str,
        prometheus: PrometheusProcess,
        workdir: Path,
        say: Say = lambda message: None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.prometheus = prometheus
        self.workdir = workdir
        self.say = say
        self._running: dict[str, tuple[str, ModelServer]] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def urls(self) -> dict[str, str]:
        """The base URL of each variant's running process."""
        with self._lock:
            return {variant: server.url for variant, (_, server) in self._running.items()}

    def running_version(self, variant: str) -> str | None:
        """The model version the variant's process serves, if one runs ("" for a model without one)."""
        with self._lock:
            entry = self._running.get(variant)
            return entry[1].settings.get("MODEL_VERSION", "") if entry else None

    def sync(self) -> None:
        """Starts and stops processes so that each Deployment with pods has exactly one."""
        found = json.loads(
            self.cluster.kubectl(
                "get",
                "deployments",
                "-n",
                self.namespace,
                "-l",
                f"app.kubernetes.io/instance={self.name}",
                "-o",
                "json",
            )
        )
        deployments = {item["metadata"]["name"]: item for item in found["items"]}
        for variant in VARIANTS:
            deployment = deployments.get(f"{self.name}-{variant}")
            plan = pod_plan(deployment) if deployment is not None else None
            current = self._running.get(variant)
            if plan is None:
                if current is not None:
                    self._replace(variant, None)
            elif (current is None or current[0] != plan.key) and self._failed.get(variant) != plan.key:
                self._start(variant, plan)

    def _start(self, variant: str, plan: PodPlan) -> None:
        directory = self.workdir / f"{variant}-{plan.key}"
        model_dir = directory / "model"
        log = directory / "server.log"
        directory.mkdir(parents=True, exist_ok=True)
        args = list(plan.fetch_args)
        args[args.index("--dest") + 1] = str(model_dir)
        try:
            if not model_dir.exists():
                with log.open("ab") as output:
                    subprocess.run(
                        [SERVER, *args], check=True, stdout=output, stderr=subprocess.STDOUT, timeout=300
                    )
            settings = {**dict(plan.settings), "MODEL_DIR": str(model_dir)}
            server = ModelServer(settings, log)
            server.start()
            # Not waiting for the first scrape: Prometheus may be down, as in an outage drill.
            self.prometheus.scrape(server.address)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, StandInError) as error:
            self._failed[variant] = plan.key
            self.say(f"the {variant} stand-in did not start ({error}); log {log}")
            return
        self._replace(variant, (plan.key, server))
        self.say(f"{variant} server process on {server.address} for {settings.get('MODEL_VERSION')}")

    def _replace(self, variant: str, entry: tuple[str, ModelServer] | None) -> None:
        with self._lock:
            old = self._running.pop(variant, None)
            if entry is not None:
                self._running[variant] = entry
        if old is not None:
            # Requests already on their way to the old process get their answers, as a pod's
            # grace period gives them; the load picks the new address up within a second.
            time.sleep(DRAIN_SECONDS)
            old[1].stop()
            self.prometheus.forget(old[1].address)

    def start(self, interval: float = 0.5) -> None:
        """Follows the Deployments in a background thread until `stop`."""

        def follow() -> None:
            while not self._stopped.wait(interval):
                try:
                    self.sync()
                except ClusterError as error:
                    # The API server is briefly busy or the object is being deleted: look again.
                    self.say(f"stand-ins: {error}")

        self._thread = threading.Thread(target=follow, name="stand-ins", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for variant in list(self._running):
            self._replace(variant, None)


@dataclass
class LoadReport:
    """Per target: the requests sent and the status codes they got (0: no answer)."""

    codes: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def sent(self) -> dict[str, int]:
        return {name: sum(counts.values()) for name, counts in self.codes.items()}

    def count(self, name: str, code: int, times: int = 1) -> None:
        counts = self.codes.setdefault(name, {})
        counts[code] = counts.get(code, 0) + times

    def add(self, other: LoadReport) -> None:
        for name, counts in other.codes.items():
            for code, times in counts.items():
                self.count(name, code, times)


async def _send(
    client: httpx.AsyncClient, name: str, url: str, payload: Mapping[str, Any], report: LoadReport
) -> None:
    try:
        reply = await client.post(url, json=payload)
        report.count(name, reply.status_code)
    except httpx.TransportError:
        report.count(name, 0)


@dataclass
class Rotation:
    """Which target gets the next request (a weighted round robin with credits: exact shares without
    randomness) and which payload each target gets next (every one in turn).

    Kept across a load's rounds: when each one-second round started afresh, a canary with a tenth of
    10 requests a second got the tenth request of every round, always the same iris row, and a good
    model was rolled back for predicting one class only.
    """

    payloads: Sequence[Mapping[str, Any]]
    credit: dict[str, float] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def choose(self, weights: Mapping[str, float]) -> tuple[str, Mapping[str, Any]]:
        total = sum(weights.values())
        for gone in set(self.credit) - set(weights):
            del self.credit[gone]
        for name, weight in weights.items():
            self.credit[name] = self.credit.get(name, 0.0) + weight / total
        chosen = max(self.credit, key=self.credit.__getitem__)
        self.credit[chosen] -= 1
        turn = self.sent.get(chosen, 0)
        self.sent[chosen] = turn + 1
        return chosen, self.payloads[turn % len(self.payloads)]


async def _load(
    targets: Mapping[str, tuple[str, float]],
    rotation: Rotation,
    rate: float,
    seconds: float,
) -> LoadReport:
    report = LoadReport()
    weights = {name: weight for name, (_, weight) in targets.items()}
    async with httpx.AsyncClient(timeout=10) as client:
        pending: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        ticks = 0
        while time.monotonic() - started < seconds:
            ticks += 1
            chosen, payload = rotation.choose(weights)
            task = asyncio.create_task(_send(client, chosen, targets[chosen][0], payload, report))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, started + ticks / rate - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)
    return report


def send_load(
    targets: Mapping[str, tuple[str, float]],
    payloads: Sequence[Mapping[str, Any]] | Rotation,
    rate: float,
    seconds: float,
) -> LoadReport:
    """`rate` requests a second for `seconds`, each target (name → (URL, weight)) its share.

    Each target gets the payloads in turn; a `Rotation` carries the turns over from an earlier call.
    Only addresses on 127.0.0.1 are accepted.
    """
    for url, _ in targets.values():
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"load goes to 127.0.0.1 only, not {url}")
    if not targets or sum(weight for _, weight in targets.values()) <= 0:
        time.sleep(seconds)
        return LoadReport()
    rotation = payloads if isinstance(payloads, Rotation) else Rotation(payloads)
    return asyncio.run(_load(targets, rotation, rate, seconds))


def canary_weight(status: Mapping[str, Any]) -> float:
    """The share of traffic (percent) the status says the canary receives."""
    canary = status.get("canary")
    if not canary:
        return 0.0
    return float(canary.get("effectiveWeight", canary["weight"]))


class WeightedLoad:
    """V2 inference requests to the stand-ins, split by the weight in the status, until stopped.

    The status is read in a thread of its own, twice a second: read between the load's rounds, each
    kubectl call (0.2-0.5 s on a busy machine) came on top of every second's requests, and "10 requests
    a second" were 8.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        stand_ins: ServerStandIns,
        payloads: Sequence[Mapping[str, Any]],
        rate: float,
    ) -> None:
        self.cluster = cluster
        self.stand_ins = stand_ins
        self.rotation = Rotation(payloads)
        self.rate = rate
        self.report = LoadReport()
        self.last_weight = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._follower = threading.Thread(target=self._follow_status, name="load-weight", daemon=True)

    def status(self) -> dict[str, Any]:
        body = json.loads(
            self.cluster.kubectl(
                "get", "modeldeployment", self.stand_ins.name, "-n", self.stand_ins.namespace, "-o", "json"
            )
        )
        status: dict[str, Any] = body.get("status", {})
        return status

    def _follow_status(self) -> None:
        while not self._stopped.wait(0.5):
            # Unknown for a moment (ClusterError): the last split is as good a guess as any.
            with contextlib.suppress(ClusterError):
                self.last_weight = canary_weight(self.status())

    def _run(self) -> None:
        path = f"/v2/models/{self.stand_ins.name}/infer"
        while not self._stopped.is_set():
            weight = self.last_weight
            urls = self.stand_ins.urls()
            targets = {}
            if "stable" in urls:
                targets["stable"] = (urls["stable"] + path, 100 - weight)
            if weight > 0 and "canary" in urls:
                targets["canary"] = (urls["canary"] + path, weight)
            self.report.add(send_load(targets, self.rotation, self.rate, seconds=1))

    def start(self) -> None:
        with contextlib.suppress(ClusterError):
            self.last_weight = canary_weight(self.status())
        self._follower.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        for thread in (self._thread, self._follower):
            if thread.is_alive():
                thread.join(timeout=30)
