"""Prometheus on the real node, finding the model-server pods through Kubernetes service discovery.

It scrapes what the chart's PodMonitor describes, translated into a scrape configuration the way
prometheus-operator does it (`role: pod`, the PodMonitor's label selector and namespaces, its port,
path, `honorLabels` and relabelings), so the chart's monitoring is what the rollout tests rely on.
Prometheus runs inside the node's network namespace, where pod IPs exist, and watches the API
server there; a forwarder makes its HTTP API reachable on the host's 127.0.0.1, where the operator
under test sends its queries.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster import versions
from modeldeploy_localcluster.build import Progress, ensure_prometheus_binary
from modeldeploy_localcluster.cluster import (
    ClusterError,
    Component,
    free_port,
    launch_component,
    stop_components,
)
from modeldeploy_localcluster.node import NODE_IP, RealNode

START_TIMEOUT_SECONDS = 60.0


def _meta_label(label: str) -> str:
    """The discovery label of a pod label (`app.kubernetes.io/name` -> `…_app_kubernetes_io_name`)."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)


def scrape_config_from_pod_monitor(
    pod_monitor: dict[str, Any], kubeconfig: Path, scrape_interval: str
) -> dict[str, Any]:
    """The scrape job prometheus-operator would make of a PodMonitor's first metrics endpoint.

    The interval is the caller's, not the PodMonitor's (the chart's 15 s is too slow for
    analysis windows of seconds).

    Selection by the PodMonitor's matchLabels (as discovery selectors and as `keep` rules), its
    namespaces, the named port, the pods' phase (finished pods are dropped), the job from
    `jobLabel`, then the PodMonitor's own relabelings.
    """
    spec = pod_monitor["spec"]
    match_labels: dict[str, str] = spec["selector"]["matchLabels"]
    (endpoint,) = spec["podMetricsEndpoints"][:1]
    namespaces = spec.get("namespaceSelector", {})
    discovery: dict[str, Any] = {
        "role": "pod",
        "kubeconfig_file": str(kubeconfig),
        "selectors": [
            {"role": "pod", "label": ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))}
        ],
    }
    if not namespaces.get("any", False):
        discovery["namespaces"] = {
            "names": namespaces.get("matchNames", [pod_monitor["metadata"]["namespace"]])
        }
    relabel: list[dict[str, Any]] = [
        {
            "action": "keep",
            "source_labels": [_meta_label(label) for label in sorted(match_labels)],
            "regex": ";".join(match_labels[label] for label in sorted(match_labels)),
        },
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": endpoint["port"],
        },
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    if "jobLabel" in spec:
        relabel.append({"source_labels": [_meta_label(spec["jobLabel"])], "target_label": "job"})
    for rule in endpoint.get("relabelings", []):
        relabel.append(
            {
                "source_labels": rule["sourceLabels"],
                "target_label": rule["targetLabel"],
                **({"regex": rule["regex"]} if "regex" in rule else {}),
            }
        )
    return {
        "job_name": f"podMonitor/{pod_monitor['metadata']['namespace']}/{pod_monitor['metadata']['name']}/0",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "kubernetes_sd_configs": [discovery],
        "relabel_configs": relabel,
    }


class PodPrometheus:
    """Prometheus (Kubernetes discovery) in the node's namespace, its API on the host's loopback."""

    def __init__(
        self,
        node: RealNode,
        pod_monitor: dict[str, Any],
        scrape_interval: str = "1s",
        binary: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._progress: Progress = progress or (lambda message: None)
        self.node = node
        self.binary = binary or ensure_prometheus_binary(self._progress)
        self.pod_monitor = pod_monitor
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.workdir = node.workdir / "prometheus"
        self.components: list[Component] = []

    @property
    def url(self) -> str:
        """Where the operator (on the host) reaches Prometheus' HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        job = scrape_config_from_pod_monitor(
            self.pod_monitor, self.node.node_kubeconfig, self.scrape_interval
        )
        return {"global": {"scrape_interval": self.scrape_interval}, "scrape_configs": [job]}

    def start(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        logs = self.node.workdir / "logs"
        command = [
            str(self.binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={NODE_IP}:{self.port}",
        ]
        _, prometheus = launch_component(
            "prometheus", self.node.in_netns(*command), logs / "prometheus.log", self.workdir
        )
        self.components.append(prometheus)
        forward = [
            sys.executable, "-m", "modeldeploy_localcluster.netns_forward", "--into",
            self.node.netns_path, NODE_IP, str(self.port), str(self.port),
        ]  # fmt: skip
        _, forwarder = launch_component(
            "prometheus-forward", forward, logs / "prometheus-forward.log", self.workdir
        )
        self.components.append(forwarder)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._progress(f"prometheus answers at {self.url} after {time.monotonic() - started:.1f}s")

    def stop(self) -> None:
        stop_components(self.components, self._progress)
        self.components.clear()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.node.check_alive(self.components)
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection.request("GET", "/-/ready")
                if connection.getresponse().status == 200:
                    return
            connection.close()
            time.sleep(0.3)
        raise ClusterError(
            f"prometheus not ready within {START_TIMEOUT_SECONDS:.0f}s; log: {self.components[0].log}"
        )


def rendered_pod_monitor(helm: Path, chart: Path, namespace: str) -> dict[str, Any]:
    """The chart's server PodMonitor as `helm template` renders it with monitoring enabled."""
    result = subprocess.run(
        [
            str(helm),
            "template",
            "modeldeploy",
            str(chart),
            "--namespace",
            namespace,
            # Offline, helm assumes an old Kubernetes, which the chart's kubeVersion refuses.
            "--kube-version",
            versions.KUBERNETES,
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--show-only",
            "templates/podmonitor.yaml",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise ClusterError(f"helm template of the PodMonitor failed: {result.stderr.strip()}")
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document
