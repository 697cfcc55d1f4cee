"""The scrape job made of the chart's PodMonitor, and Prometheus' release from its module tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeldeploy_localcluster.build import prometheus_release
from modeldeploy_localcluster.pod_prometheus import scrape_config_from_pod_monitor

# What `helm template --set monitoring.podMonitor.enabled=true` renders (charts/modeldeploy).
POD_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "modeldeploy-server", "namespace": "modeldeploy-system"},
    "spec": {
        "jobLabel": "app.kubernetes.io/name",
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "modeldeploy-server",
                "app.kubernetes.io/managed-by": "modeldeploy",
            }
        },
        "namespaceSelector": {"any": True},
        "podMetricsEndpoints": [
            {
                "port": "http",
                "path": "/metrics",
                "honorLabels": True,
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                        "targetLabel": "model",
                    },
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_modeldeploy_io_variant"],
                        "targetLabel": "variant",
                    },
                ],
            }
        ],
    },
}


def test_the_job_selects_the_pod_monitors_pods_on_its_port_and_keeps_the_servers_labels() -> None:
    job = scrape_config_from_pod_monitor(POD_MONITOR, Path("/k/kubeconfig"), "1s")
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod" and discovery["kubeconfig_file"] == "/k/kubeconfig"
    assert "namespaces" not in discovery  # `any: true` is every namespace
    assert discovery["selectors"] == [
        {
            "role": "pod",
            "label": "app.kubernetes.io/managed-by=modeldeploy,app.kubernetes.io/name=modeldeploy-server",
        }
    ]
    assert job["honor_labels"] is True and job["metrics_path"] == "/metrics"
    keep, port, phase, *rest = job["relabel_configs"]
    assert keep == {
        "action": "keep",
        "source_labels": [
            "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by",
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
        ],
        "regex": "modeldeploy;modeldeploy-server",
    }
    assert port == {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": "http",
    }
    assert phase["action"] == "drop" and phase["regex"] == "(Failed|Succeeded)"
    targets = {rule["target_label"]: rule["source_labels"] for rule in rest}
    assert targets["job"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert targets["model"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"]
    assert targets["variant"] == ["__meta_kubernetes_pod_label_modeldeploy_io_variant"]
    # The PodMonitor's own relabelings come last, as prometheus-operator orders them.
    assert [rule["target_label"] for rule in rest][-2:] == ["model", "variant"]


def test_named_namespaces_limit_discovery_and_honor_labels_follows_the_endpoint() -> None:
    monitor: dict[str, Any] = {
        **POD_MONITOR,
        "spec": {
            **POD_MONITOR["spec"],
            "namespaceSelector": {"matchNames": ["team-a", "team-b"]},
            "podMetricsEndpoints": [{"port": "http", "honorLabels": False}],
        },
    }
    job = scrape_config_from_pod_monitor(monitor, Path("/k"), "5s")
    assert job["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["team-a", "team-b"]}
    assert job["honor_labels"] is False and job["scrape_interval"] == "5s"


def test_the_module_tag_names_the_release_its_version_file_says() -> None:
    assert prometheus_release("v0.316.0") == "3.16.0"
    assert prometheus_release("v0.300.1") == "3.0.1"
