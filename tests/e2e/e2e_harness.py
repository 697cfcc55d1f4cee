"""Real processes for end-to-end tests: Prometheus (Debian's package) scraping model servers.

Everything listens on 127.0.0.1 and is stopped by the fixtures; load stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SERVER = str(Path(sys.executable).parent / "modeldeploy-server")
SCRAPE_INTERVAL_SECONDS = 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(url: str, what: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}; log {log}:\n{log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {seconds:.0f}s; log {log}:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PrometheusProcess:
    """Prometheus scraping the targets listed in a file it watches, every second."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.log = workdir / "prometheus.log"
        self.targets: list[dict[str, Any]] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets_file.write_text("[]")
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
        with self.log.open("wb") as log:
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
        wait_for(f"{self.url}/-/ready", "prometheus", self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def scrape(self, address: str, labels: Mapping[str, str] | None = None) -> None:
        self.targets.append({"targets": [address], "labels": dict(labels or {})})
        self.targets_file.write_text(json.dumps(self.targets))

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        reply.raise_for_status()
        body = reply.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_until_scraped(self, address: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.query(f'up{{instance="{address}"}} == 1'):
                return
            time.sleep(0.5)
        raise RuntimeError(f"prometheus never scraped {address}; log {self.log}")


@dataclass
class ModelServer:
    """`modeldeploy-server serve` for one variant of a ModelDeployment, as the operator's pod runs it."""

    model_dir: Path
    name: str
    namespace: str
    variant: str
    version: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        environment = {
            **os.environ,
            "MODELDEPLOY_SERVER_MODEL_NAME": self.name,
            "MODELDEPLOY_SERVER_NAMESPACE": self.namespace,
            "MODELDEPLOY_SERVER_VARIANT": self.variant,
            "MODELDEPLOY_SERVER_MODEL_VERSION": self.version,
            "MODELDEPLOY_SERVER_MODEL_DIR": str(self.model_dir),
            "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
            "MODELDEPLOY_SERVER_HTTP_PORT": str(self.port),
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [SERVER, "serve"], env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(f"{self.url}/v2/health/ready", f"model server {self.variant}", self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass
class LoadReport:
    sent: dict[str, int] = field(default_factory=dict)
    status_codes: dict[int, int] = field(default_factory=dict)


async def _send(client: httpx.AsyncClient, url: str, payload: dict[str, Any], report: LoadReport) -> None:
    try:
        reply = await client.post(url, json=payload)
        report.status_codes[reply.status_code] = report.status_codes.get(reply.status_code, 0) + 1
    except httpx.TransportError:
        report.status_codes[0] = report.status_codes.get(0, 0) + 1


async def _load(
    targets: Mapping[str, tuple[str, float]], payload: dict[str, Any], rate: float, seconds: float
) -> LoadReport:
    """Sends `rate` requests a second for `seconds`, to each target its share of the weight."""
    report = LoadReport(sent={name: 0 for name in targets})
    total = sum(weight for _, weight in targets.values())
    credit = dict.fromkeys(targets, 0.0)
    async with httpx.AsyncClient(timeout=10) as client:
        pending: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        tick = 1 / rate
        ticks = 0
        while time.monotonic() - started < seconds:
            ticks += 1
            # Weighted round robin with credits: exact shares without randomness.
            for name, (_, weight) in targets.items():
                credit[name] += weight / total
            chosen = max(credit, key=lambda name: credit[name])
            credit[chosen] -= 1
            report.sent[chosen] += 1
            task = asyncio.create_task(_send(client, targets[chosen][0], payload, report))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, started + ticks * tick - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)
    return report


def send_load(
    targets: Mapping[str, tuple[str, float]], payload: dict[str, Any], rate: float, seconds: float
) -> LoadReport:
    """Load on 127.0.0.1 only, for a fixed time: `targets` maps a name to (URL, weight)."""
    for url, _ in targets.values():
        assert url.startswith("http://127.0.0.1:"), url
    return asyncio.run(_load(targets, payload, rate, seconds))
