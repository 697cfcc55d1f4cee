"""The Helm chart against the real control plane: lint, render, dry-run apply, install, uninstall.

helm is the binary the local control plane's build made from its Go module; the Prometheus
operator's CRDs, needed to apply the monitoring objects, come from their published Go module
at test time and are never committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crds import go_module_dir, install_crds
from modeldeploy_localcluster.build import ensure_binaries
from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.settings import ENV_PREFIX, OperatorSettings
from modeldeploy_serving import metric_names
from operator_harness import (
    CLUSTER_RULES,
    LEADER_ELECTION_RULES,
    NAMESPACED_RULES,
    REPO,
    OperatorProcess,
    rules,
)

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "modeldeploy"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
# Only the kinds the chart renders; the others are large and unused.
PROMETHEUS_OPERATOR_CRDS = ("podmonitors", "prometheusrules")
TEST_IMAGE_REPOSITORY = "registry.invalid/modeldeploy-operator"
TEST_IMAGE_TAG = "test"

Helm = Callable[..., str]
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Runs the cached helm with its own empty config, cache and data folders."""
    binary = ensure_binaries().helm
    home = tmp_path_factory.mktemp("helm")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, kubeconfig: Path | None = None) -> str:
        command = [str(binary), *args]
        if kubeconfig is not None:
            command += ["--kubeconfig", str(kubeconfig)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    return run


@pytest.fixture(scope="module")
def kube_version(cluster: LocalCluster) -> str:
    """The control plane's version, for rendering without asking the cluster.

    helm built with `go install` carries no default Kubernetes version of its own (it
    assumes v1.20), which the chart's kubeVersion constraint refuses.
    """
    version: str = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    return version


@pytest.fixture(scope="module")
def prometheus_operator_crds(cluster: LocalCluster) -> Iterator[None]:
    """The Prometheus operator's CRDs for PodMonitor and PrometheusRule."""
    crd_dir = (
        go_module_dir(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION)
        / "example"
        / "prometheus-operator-crd"
    )
    documents = [
        yaml.safe_load((crd_dir / f"monitoring.coreos.com_{kind}.yaml").read_text())
        for kind in PROMETHEUS_OPERATOR_CRDS
    ]
    names = install_crds(cluster, documents)
    yield
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", *names)


def template(helm: Helm, kube_version: str, namespace: str, *args: str, release: str = "md") -> str:
    return helm(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version, *args
    )


def documents(rendered: str) -> list[Manifest]:
    return [document for document in yaml.safe_load_all(rendered) if document]


def find(manifests: list[Manifest], kind: str, name: str, namespace: str | None = None) -> Manifest:
    for manifest in manifests:
        metadata = manifest["metadata"]
        if manifest["kind"] == kind and metadata["name"] == name and metadata.get("namespace") == namespace:
            return manifest
    raise AssertionError(f"no {kind} {namespace}/{name} among {[m['kind'] for m in manifests]}")


def kinds(manifests: list[Manifest]) -> set[str]:
    return {manifest["kind"] for manifest in manifests}


def create_namespaces(cluster: LocalCluster, count: int) -> list[str]:
    names = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    return names


# -- lint and render ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), ("-f", str(ALL_ON)), ("-f", str(NAMESPACED))], ids=str)
def test_helm_lint_passes(helm: Helm, kube_version: str, values: tuple[str, ...]) -> None:
    output = helm("lint", "--strict", "--kube-version", kube_version, str(CHART), *values)
    assert "0 chart(s) failed" in output


def test_chart_crds_are_the_generated_crds() -> None:
    chart_crds = sorted(path.name for path in (CHART / "crds").iterdir())
    assert chart_crds == sorted(path.name for path in (REPO / "crds").iterdir())
    for name in chart_crds:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_defaults_render_the_operator_and_its_rbac_only(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops"))
    assert kinds(manifests) == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "modeldeploy"
        assert labels["app.kubernetes.io/instance"] == "md"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "modeldeploy-0.1.0"
    roles = {m["metadata"]["name"] for m in manifests if m["kind"] == "ClusterRole"}
    assert roles == {"md-modeldeploy", "md-modeldeploy-admin", "md-modeldeploy-edit", "md-modeldeploy-view"}
    for suffix in ("admin", "edit", "view"):
        role = find(manifests, "ClusterRole", f"md-modeldeploy-{suffix}")
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{suffix}"] == "true"


def test_default_release_name_gives_plain_names(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops", release="modeldeploy"))
    roles = {m["metadata"]["name"] for m in manifests if m["kind"] == "ClusterRole"}
    assert roles == {"modeldeploy", "modeldeploy-admin", "modeldeploy-edit", "modeldeploy-view"}


def test_operator_deployment(helm: Helm, kube_version: str) -> None:
    deployment = find(documents(template(helm, kube_version, "ops")), "Deployment", "md-modeldeploy", "ops")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "md-modeldeploy"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/modeldeploy/modeldeploy-operator:0.1.0"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8081/healthz", "--metrics=0.0.0.0:8080"]
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    anti_affinity = pod["affinity"]["podAntiAffinity"]
    assert set(anti_affinity) == {"preferredDuringSchedulingIgnoredDuringExecution"}

    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[ENV_PREFIX + "LEADER_ELECTION_NAMESPACE"] == "ops"
    assert env[ENV_PREFIX + "LEADER_ELECTION"] == "true"
    assert env[ENV_PREFIX + "LEADER_ELECTION_LEASE_NAME"] == "md-modeldeploy"
    assert env[ENV_PREFIX + "SERVER_IMAGE"] == "ghcr.io/modeldeploy/modeldeploy-server:0.1.0"
    assert env[ENV_PREFIX + "NAMESPACES"] == ""
    assert env[ENV_PREFIX + "ALLOW_PICKLE"] == "false"
    # Every variable the chart sets is a setting the operator reads, and the values parse.
    settings_fields = {ENV_PREFIX + field.upper() for field in OperatorSettings.model_fields}
    assert set(env) <= settings_fields
    parsed = OperatorSettings.model_validate(
        {name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items()}
    )
    assert parsed.leader_election_namespace == "ops"
    assert parsed.namespaces == []


def test_every_switch_renders(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops", "-f", str(ALL_ON)))
    assert {"PodDisruptionBudget", "PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds(manifests)
    pod = find(manifests, "Deployment", "md-modeldeploy", "ops")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert set(pod["affinity"]["podAntiAffinity"]) == {"requiredDuringSchedulingIgnoredDuringExecution"}
    assert (
        pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"]
        == "md"
    )
    (container,) = pod["containers"]
    assert container["image"].startswith("ghcr.io/modeldeploy/modeldeploy-operator@sha256:")
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[ENV_PREFIX + "LOG_FORMAT"] == "json"
    assert env[ENV_PREFIX + "ALLOW_PICKLE"] == "true"
    assert env[ENV_PREFIX + "FIELD_MANAGER"] == "modeldeploy"
    monitor = find(manifests, "PodMonitor", "md-modeldeploy-server", "ops")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "modeldeploy-server"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("http", "/metrics", True)
    # The operator's rollout series carry the ModelDeployment's namespace: honorLabels keeps it.
    operator_monitor = find(manifests, "PodMonitor", "md-modeldeploy-operator", "ops")
    assert operator_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "modeldeploy",
        "app.kubernetes.io/instance": "md",
        "app.kubernetes.io/component": "operator",
    }
    assert operator_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert operator_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = operator_monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("metrics", "/metrics", True)
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "ops/md-modeldeploy-operator"}]
    assert "metrics" in {port["name"] for port in container["ports"]}
    dashboard = find(manifests, "ConfigMap", "md-modeldeploy-dashboard", "ops")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["modeldeploy-models.json"])["panels"]
    titles = [panel["title"] for panel in panels]
    assert {"Request rate", "5xx ratio", "Canary weight", "Rollout step", "Rollouts finished"} <= set(titles)
    assert "Analysis verdicts" in titles
    assert len({panel["id"] for panel in panels}) == len(panels)
    # No two panels share a grid cell (Grafana would shove one aside).
    cells = [
        (panel["gridPos"]["x"] + dx, panel["gridPos"]["y"] + dy)
        for panel in panels
        for dx in range(panel["gridPos"]["w"])
        for dy in range(panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))


def test_metrics_off_passes_an_empty_address_and_declares_no_port(helm: Helm, kube_version: str) -> None:
    """The flag's default serves metrics, so turning them off must pass the empty address."""
    manifests = documents(template(helm, kube_version, "ops", "--set", "metrics.enabled=false"))
    (container,) = find(manifests, "Deployment", "md-modeldeploy", "ops")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["args"] == ["--liveness=http://0.0.0.0:8081/healthz", "--metrics="]
    assert [port["name"] for port in container["ports"]] == ["health"]
    with pytest.raises(pytest.fail.Exception, match=r"metrics\.port and livenessProbe\.port must differ"):
        template(helm, kube_version, "ops", "--set", "metrics.port=8081")
    with pytest.raises(pytest.fail.Exception, match=r"operatorPodMonitor\.enabled needs metrics\.enabled"):
        template(
            helm,
            kube_version,
            "ops",
            "--set",
            "metrics.enabled=false",
            "--set",
            "monitoring.operatorPodMonitor.enabled=true",
        )


def test_leader_election_off_needs_one_replica(helm: Helm, kube_version: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="needs replicaCount 1"):
        template(helm, kube_version, "ops", "--set", "leaderElection.enabled=false")
    manifests = documents(
        template(
            helm, kube_version, "ops", "--set", "leaderElection.enabled=false", "--set", "replicaCount=1"
        )
    )
    assert "Role" not in kinds(manifests)


def test_schema_refuses_unknown_and_wrong_values(helm: Helm, kube_version: str) -> None:
    for bad in ("replicaCount=two", "logFormat=xml", "podAntiAffinity=maybe", "rbac.creat=true"):
        with pytest.raises(pytest.fail.Exception, match="schema"):
            template(helm, kube_version, "ops", "--set", bad)


def test_switches_leave_out_service_account_and_rbac(helm: Helm, kube_version: str) -> None:
    manifests = documents(
        template(
            helm,
            kube_version,
            "ops",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=existing",
            "--set",
            "rbac.create=false",
        )
    )
    assert kinds(manifests) == {"Deployment"}
    assert manifests[0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    with pytest.raises(pytest.fail.Exception, match=r"serviceAccount\.name must name"):
        template(helm, kube_version, "ops", "--set", "serviceAccount.create=false")


# -- RBAC: exactly the rule files the operator's integration tests run with ---------------------


def test_cluster_wide_rbac_is_the_rule_files(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops"))
    cluster_role = find(manifests, "ClusterRole", "md-modeldeploy")
    assert cluster_role["rules"] == rules(NAMESPACED_RULES) + rules(CLUSTER_RULES)
    leader_role = find(manifests, "Role", "md-modeldeploy-leader-election", "ops")
    assert leader_role["rules"] == rules(LEADER_ELECTION_RULES)
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Role"] == [
        "md-modeldeploy-leader-election"
    ]
    subject = {"kind": "ServiceAccount", "name": "md-modeldeploy", "namespace": "ops"}
    binding = find(manifests, "ClusterRoleBinding", "md-modeldeploy")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "md-modeldeploy",
    }
    assert binding["subjects"] == [subject]
    leader_binding = find(manifests, "RoleBinding", "md-modeldeploy-leader-election", "ops")
    assert leader_binding["roleRef"]["name"] == "md-modeldeploy-leader-election"
    assert leader_binding["subjects"] == [subject]


def test_namespaced_rbac_is_the_rule_files(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops", "-f", str(NAMESPACED)))
    assert find(manifests, "ClusterRole", "md-modeldeploy")["rules"] == rules(CLUSTER_RULES)
    subject = {"kind": "ServiceAccount", "name": "md-modeldeploy", "namespace": "ops"}
    for watched in ("team-a", "team-b"):
        assert find(manifests, "Role", "md-modeldeploy", watched)["rules"] == rules(NAMESPACED_RULES)
        binding = find(manifests, "RoleBinding", "md-modeldeploy", watched)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "md-modeldeploy",
        }
        assert binding["subjects"] == [subject]
    assert find(manifests, "Role", "md-modeldeploy-leader-election", "ops")["rules"] == rules(
        LEADER_ELECTION_RULES
    )
    namespaced_roles = {
        (m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests if m["kind"] == "Role"
    }
    assert namespaced_roles == {
        ("team-a", "md-modeldeploy"),
        ("team-b", "md-modeldeploy"),
        ("ops", "md-modeldeploy-leader-election"),
    }
    container = find(manifests, "Deployment", "md-modeldeploy", "ops")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[ENV_PREFIX + "NAMESPACES"] == "team-a,team-b"


# -- monitoring ------------------------------------------------------------------------------


def monitoring_queries(helm: Helm, kube_version: str) -> list[str]:
    manifests = documents(template(helm, kube_version, "ops", "-f", str(ALL_ON)))
    rule = find(manifests, "PrometheusRule", "md-modeldeploy", "ops")
    queries = [item["expr"] for group in rule["spec"]["groups"] for item in group["rules"]]
    dashboard = json.loads(
        find(manifests, "ConfigMap", "md-modeldeploy-dashboard", "ops")["data"]["modeldeploy-models.json"]
    )
    for panel in dashboard["panels"]:
        queries += [target["expr"] for target in panel["targets"]]
    queries += [
        variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable
    ]
    return queries


def operator_series() -> tuple[set[str], set[str]]:
    """The names of the operator's series and their labels, from a registry of its own."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    names = {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}
    collectors = [value for value in vars(metrics).values() if isinstance(value, Counter | Gauge | Histogram)]
    # prometheus_client has no public accessor for a metric's label names.
    labels = {label for collector in collectors for label in collector._labelnames}
    return names, labels


def test_monitoring_uses_the_metric_names_the_server_and_operator_export(
    helm: Helm, kube_version: str
) -> None:
    known = {
        value
        for name, value in vars(metric_names).items()
        if name.isupper() and isinstance(value, str) and value.startswith("modeldeploy_")
    }
    histograms = {metric_names.REQUEST_DURATION_SECONDS, metric_names.PREDICTION_VALUE}
    known |= {f"{name}_{suffix}" for name in histograms for suffix in ("bucket", "sum", "count")}
    operator_names, operator_labels = operator_series()
    known |= operator_names
    queries = monitoring_queries(helm, kube_version)
    used = {name for query in queries for name in re.findall(r"\bmodeldeploy_[a-z_]+\b", query)}
    assert used, queries
    assert used <= known, used - known
    known_labels = {
        value
        for name, value in vars(metric_names).items()
        if name.startswith("LABEL_") and isinstance(value, str)
    } | {"le"}
    # job is a target label: the operator's alerts select this release's operator by it.
    known_labels |= operator_labels | {"job"}
    groupings = [grouping for query in queries for grouping in re.findall(r"by \(([^)]*)\)", query)]
    matchers = [
        matcher for query in queries for matcher in re.findall(r"\bmodeldeploy_[a-z_]+\{([^}]*)\}", query)
    ]
    used_labels = {label.strip() for grouping in groupings for label in grouping.split(",")}
    used_labels |= {label for matcher in matchers for label in re.findall(r"([a-z_]+)=~?\"", matcher)}
    assert used_labels <= known_labels, used_labels - known_labels


def alerts(manifests: list[Manifest]) -> dict[str, Manifest]:
    rule = find(manifests, "PrometheusRule", "md-modeldeploy", "ops")
    return {
        item["alert"]: item for group in rule["spec"]["groups"] for item in group["rules"] if "alert" in item
    }


def test_prometheus_rule_alerts_on_the_operator_from_its_own_job(helm: Helm, kube_version: str) -> None:
    manifests = documents(template(helm, kube_version, "ops", "-f", str(ALL_ON)))
    by_name = alerts(manifests)
    assert set(by_name) == {
        "ModelDeployHighErrorRatio",
        "ModelDeploySlowRequests",
        "ModelDeployServerDown",
        "ModelDeployRolledBack",
        "ModelDeployOperatorNoLeader",
    }
    job = find(manifests, "PodMonitor", "md-modeldeploy-operator", "ops")["spec"]["podMetricsEndpoints"][0][
        "relabelings"
    ][0]["replacement"]
    rolled_back = by_name["ModelDeployRolledBack"]
    assert (
        f'modeldeploy_operator_rollouts_finished_total{{job="{job}",outcome="rolledBack"}}'
        in rolled_back["expr"]
    )
    assert "increase(" in rolled_back["expr"]
    assert rolled_back["expr"].startswith("sum by (namespace, name) (")
    assert "[30m]" in rolled_back["expr"]
    assert "for" not in rolled_back  # a rollback is news at once; the window decides how long it stays
    assert rolled_back["labels"] == {"severity": "warning", "team": "ml-platform"}
    no_leader = by_name["ModelDeployOperatorNoLeader"]
    assert f'max by (job) (modeldeploy_operator_leader{{job="{job}"}}) < 1' in no_leader["expr"]
    assert f'absent(modeldeploy_operator_leader{{job="{job}"}})' in no_leader["expr"]
    assert no_leader["for"] == "5m"
    assert no_leader["labels"] == {"severity": "warning", "team": "ml-platform"}
    assert "md-modeldeploy" in no_leader["annotations"]["description"]

    changed = alerts(
        documents(
            template(
                helm,
                kube_version,
                "ops",
                "-f",
                str(ALL_ON),
                "--set",
                "monitoring.prometheusRule.rolledBackWindow=2h,monitoring.prometheusRule.noLeaderFor=15m",
                "--set",
                "monitoring.prometheusRule.severity=critical",
            )
        )
    )
    assert "[2h]" in changed["ModelDeployRolledBack"]["expr"]
    assert "offset 2h" in changed["ModelDeployRolledBack"]["expr"]
    assert changed["ModelDeployOperatorNoLeader"]["for"] == "15m"
    assert changed["ModelDeployRolledBack"]["labels"]["severity"] == "critical"
    # Without metrics the operator's alerts would only ever say that nothing leads.
    without_metrics = alerts(
        documents(
            template(
                helm,
                kube_version,
                "ops",
                "-f",
                str(ALL_ON),
                "--set",
                "metrics.enabled=false,monitoring.operatorPodMonitor.enabled=false",
            )
        )
    )
    assert set(without_metrics) == {
        "ModelDeployHighErrorRatio",
        "ModelDeploySlowRequests",
        "ModelDeployServerDown",
    }


PROMTOOL_TEST = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # iris's canary answers 10% of its predictions with 500; its stable variant none.
      - series: 'modeldeploy_requests_total{namespace="ml",model="iris",model_version="2",variant="canary",protocol="v2",endpoint="infer",code="200"}'
        values: '0+54x40'
      - series: 'modeldeploy_requests_total{namespace="ml",model="iris",model_version="2",variant="canary",protocol="v2",endpoint="infer",code="500"}'
        values: '0+6x40'
      - series: 'modeldeploy_requests_total{namespace="ml",model="iris",model_version="1",variant="stable",protocol="v1",endpoint="predict",code="200"}'
        values: '0+60x40'
      # Health probes do not count: thousands of them would hide the canary's errors.
      - series: 'modeldeploy_requests_total{namespace="ml",model="iris",model_version="2",variant="canary",protocol="v2",endpoint="health",code="200"}'
        values: '0+6000x40'
      # A model that sees one failed request in ten minutes is too quiet to judge.
      - series: 'modeldeploy_requests_total{namespace="ml",model="quiet",model_version="1",variant="stable",protocol="v2",endpoint="infer",code="500"}'
        values: '0+0.1x40'
      # wine's stable variant answers slowly: every request between 1 and 2.5 seconds.
      - series: 'modeldeploy_requests_total{namespace="ml",model="wine",model_version="1",variant="stable",protocol="v2",endpoint="infer",code="200"}'
        values: '0+60x40'
      - series: 'modeldeploy_request_duration_seconds_bucket{namespace="ml",model="wine",model_version="1",variant="stable",protocol="v2",endpoint="infer",le="1.0"}'
        values: '0x40'
      - series: 'modeldeploy_request_duration_seconds_bucket{namespace="ml",model="wine",model_version="1",variant="stable",protocol="v2",endpoint="infer",le="2.5"}'
        values: '0+60x40'
      - series: 'modeldeploy_request_duration_seconds_bucket{namespace="ml",model="wine",model_version="1",variant="stable",protocol="v2",endpoint="infer",le="+Inf"}'
        values: '0+60x40'
      # Every scrape of iris's pods fails; one of wine's two pods still answers.
      - series: 'up{job="modeldeploy-server",namespace="ml",model="iris",variant="stable",pod="iris-stable-a"}'
        values: '0x40'
      - series: 'up{job="modeldeploy-server",namespace="ml",model="wine",variant="stable",pod="wine-stable-a"}'
        values: '0x40'
      - series: 'up{job="modeldeploy-server",namespace="ml",model="wine",variant="stable",pod="wine-stable-b"}'
        values: '1x40'
    alert_rule_test:
      - eval_time: 5m
        alertname: ModelDeployHighErrorRatio
        exp_alerts: []
      - eval_time: 20m
        alertname: ModelDeployHighErrorRatio
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, namespace: ml, model: iris, variant: canary}
            exp_annotations:
              summary: Model ml/iris (canary) answers many predictions with 5xx errors
              description: 10% of prediction requests to the canary variant of ModelDeployment iris in namespace ml failed with a 5xx status over the last 5 minutes (threshold 0.05).
      - eval_time: 20m
        alertname: ModelDeploySlowRequests
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, namespace: ml, model: wine, variant: stable}
            exp_annotations:
              summary: Model ml/wine (stable) answers predictions slowly
              description: The p99 latency of prediction requests to the stable variant of ModelDeployment wine in namespace ml is 2.485s (threshold 1s).
      - eval_time: 10m
        alertname: ModelDeployServerDown
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, namespace: ml, model: iris}
            exp_annotations:
              summary: No model-server pod of ml/iris answers scrapes
              description: "Prometheus has scraped none of the model-server pods of ModelDeployment iris in namespace ml for 5m: the model is likely not serving. See `kubectl describe modeldeployment` and the pods' events."
  # The operator's alerts; its job is the one the operator PodMonitor of release md in ops gives.
  - interval: 1m
    input_series:
      # iris's first rollback, at 10m: the operator creates the series already at 1.
      - series: 'modeldeploy_operator_rollouts_finished_total{job="ops/md-modeldeploy-operator",pod="md-modeldeploy-a",namespace="ml",name="iris",outcome="rolledBack"}'
        values: '_x10 1x70'
      # wine was rolled back before the test began, and again at 41m.
      - series: 'modeldeploy_operator_rollouts_finished_total{job="ops/md-modeldeploy-operator",pod="md-modeldeploy-a",namespace="ml",name="wine",outcome="rolledBack"}'
        values: '1x40 2x40'
      # A promoted rollout is no alert, nor is a rollback another release's operator reports.
      - series: 'modeldeploy_operator_rollouts_finished_total{job="ops/md-modeldeploy-operator",pod="md-modeldeploy-a",namespace="ml",name="mnist",outcome="promoted"}'
        values: '_x10 1x70'
      - series: 'modeldeploy_operator_rollouts_finished_total{job="other/md-modeldeploy-operator",pod="md-modeldeploy-x",namespace="ml",name="mnist",outcome="rolledBack"}'
        values: '_x10 1x70'
      # Pod a leads until 20m, then neither pod does; another release's leader changes nothing.
      - series: 'modeldeploy_operator_leader{job="ops/md-modeldeploy-operator",namespace="ops",pod="md-modeldeploy-a"}'
        values: '1x20 0x60'
      - series: 'modeldeploy_operator_leader{job="ops/md-modeldeploy-operator",namespace="ops",pod="md-modeldeploy-b"}'
        values: '0x80'
      - series: 'modeldeploy_operator_leader{job="other/md-modeldeploy-operator",namespace="other",pod="md-modeldeploy-x"}'
        values: '1x80'
    alert_rule_test:
      # increase() alone sees no rise in iris's series, which began at 1.
      - eval_time: 35m
        alertname: ModelDeployRolledBack
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, namespace: ml, name: iris}
            exp_annotations:
              summary: The rollout of ml/iris was rolled back
              description: "A canary rollout of ModelDeployment iris in namespace ml was rolled back within the last 30m: a step's analysis failed, found no verdict too often or outlived the progress deadline, or the canary's pods could not run. The stable model serves all traffic again; the rejected one is not rolled out again until the spec names another model or `modeldeploy retry iris` asks for it. `kubectl describe modeldeployment` shows why (status.history and the Events)."
      - eval_time: 45m
        alertname: ModelDeployRolledBack
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, namespace: ml, name: wine}
            exp_annotations:
              summary: The rollout of ml/wine was rolled back
              description: "A canary rollout of ModelDeployment wine in namespace ml was rolled back within the last 30m: a step's analysis failed, found no verdict too often or outlived the progress deadline, or the canary's pods could not run. The stable model serves all traffic again; the rejected one is not rolled out again until the spec names another model or `modeldeploy retry wine` asks for it. `kubectl describe modeldeployment` shows why (status.history and the Events)."
      - eval_time: 75m
        alertname: ModelDeployRolledBack
        exp_alerts: []
      - eval_time: 24m
        alertname: ModelDeployOperatorNoLeader
        exp_alerts: []
      - eval_time: 30m
        alertname: ModelDeployOperatorNoLeader
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, job: ops/md-modeldeploy-operator}
            exp_annotations: &no-leader
              summary: "No pod of the modeldeploy operator ops/md-modeldeploy leads: nothing is reconciled"
              description: "For 5m no operator pod scraped as job ops/md-modeldeploy-operator has reported holding the Lease ops/md-modeldeploy, or Prometheus scrapes none: no ModelDeployment is reconciled and no rollout advances or rolls back. See `kubectl -n ops get pods,leases` and the operator's logs."
  # No operator pod of this release is scraped at all: nothing leads.
  - interval: 1m
    input_series:
      - series: 'modeldeploy_operator_leader{job="other/md-modeldeploy-operator",namespace="other",pod="md-modeldeploy-x"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 10m
        alertname: ModelDeployOperatorNoLeader
        exp_alerts:
          - exp_labels: {severity: warning, team: ml-platform, job: ops/md-modeldeploy-operator}
            exp_annotations: *no-leader
"""


def test_alerts_fire_when_they_should(helm: Helm, kube_version: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    # `make test` installs it, so a missing promtool is a broken setup, not a reason to skip.
    assert promtool is not None, (
        "promtool is not installed: install the Debian package prometheus (scripts/install-system-deps.sh)"
    )
    manifests = documents(template(helm, kube_version, "ops", "-f", str(ALL_ON)))
    rule = find(manifests, "PrometheusRule", "md-modeldeploy", "ops")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "test.yaml").write_text(PROMTOOL_TEST)
    # The dashboard's queries, with Grafana's variables filled in, must parse as PromQL too.
    dashboard = json.loads(
        find(manifests, "ConfigMap", "md-modeldeploy-dashboard", "ops")["data"]["modeldeploy-models.json"]
    )
    grafana_variables = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*", "$model": ".*"}
    panel_queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable, value in grafana_variables.items():
        panel_queries = [query.replace(variable, value) for query in panel_queries]
    records = [
        {"record": f"dashboard:panel:{index}", "expr": query} for index, query in enumerate(panel_queries)
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]})
    )
    for command in (
        ["check", "rules", "rules.yaml"],
        ["check", "rules", "dashboard.yaml"],
        ["test", "rules", "test.yaml"],
    ):
        result = subprocess.run(
            [promtool, *command], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


# -- against the API server ----------------------------------------------------------------------


def dry_run(cluster: LocalCluster, rendered: str) -> str:
    """Applies with --dry-run=server: the API server validates, admits and persists nothing."""
    output = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered)
    assert "(server dry run)" in output, output
    return output


def test_defaults_pass_the_api_server(
    cluster: LocalCluster, helm: Helm, kube_version: str, namespace: str
) -> None:
    output = dry_run(cluster, template(helm, kube_version, namespace, "--include-crds"))
    assert "customresourcedefinition.apiextensions.k8s.io/modeldeployments.modeldeploy.io" in output
    assert "deployment.apps/md-modeldeploy" in output


@pytest.mark.usefixtures("prometheus_operator_crds")
def test_every_switch_passes_the_api_server(
    cluster: LocalCluster, helm: Helm, kube_version: str, namespace: str
) -> None:
    output = dry_run(cluster, template(helm, kube_version, namespace, "--include-crds", "-f", str(ALL_ON)))
    for created in (
        "podmonitor.monitoring.coreos.com/md-modeldeploy-server",
        "podmonitor.monitoring.coreos.com/md-modeldeploy-operator",
        "prometheusrule",
        "poddisruptionbudget",
        "configmap/md-modeldeploy-dashboard",
    ):
        assert created in output, output


@pytest.mark.usefixtures("prometheus_operator_crds")
def test_namespaced_mode_passes_the_api_server(
    cluster: LocalCluster, helm: Helm, kube_version: str, namespace: str
) -> None:
    watched = create_namespaces(cluster, 2)
    try:
        rendered = template(
            helm,
            kube_version,
            namespace,
            "-f",
            str(ALL_ON),
            "-f",
            str(NAMESPACED),
            "--set-json",
            f"watchNamespaces={json.dumps(watched)}",
        )
        output = dry_run(cluster, rendered)
        roles = output.splitlines().count(
            "role.rbac.authorization.k8s.io/md-modeldeploy created (server dry run)"
        )
        assert roles == 2, output
    finally:
        cluster.kubectl("delete", "namespace", "--wait=false", *watched)


def test_install_makes_the_operator_available_and_uninstall_cleans_up(
    cluster: LocalCluster, helm: Helm, namespace: str
) -> None:
    release = f"md-{uuid.uuid4().hex[:6]}"
    fullname = f"{release}-modeldeploy"
    helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"image.repository={TEST_IMAGE_REPOSITORY}",
        "--set",
        f"image.tag={TEST_IMAGE_TAG}",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--wait",
        "--timeout=120s",
        kubeconfig=cluster.kubeconfig,
    )
    try:
        cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Available", f"deployment/{fullname}", "--timeout=60s"
        )
        deployment = json.loads(cluster.kubectl("get", "-n", namespace, "deployment", fullname, "-o", "json"))
        assert deployment["status"]["readyReplicas"] == 2
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"{TEST_IMAGE_REPOSITORY}:{TEST_IMAGE_TAG}"
        # The operator's service account may do what the rule files say, and no more.
        account = f"system:serviceaccount:{namespace}:{fullname}"
        for verb, resource, allowed in (
            ("patch", "modeldeployments.modeldeploy.io", "yes"),
            ("create", "deployments.apps", "yes"),
            ("delete", "secrets", "no"),
        ):
            answer = cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", "default", "--as", account, check=False
            )
            assert answer.strip().splitlines()[0] == allowed, (verb, resource, answer)
        lease = cluster.kubectl(
            "auth",
            "can-i",
            "update",
            "leases.coordination.k8s.io",
            "-n",
            namespace,
            "--as",
            account,
            check=False,
        )
        assert lease.strip().splitlines()[0] == "yes", lease
        status = json.loads(
            helm("status", release, "--namespace", namespace, "-o", "json", kubeconfig=cluster.kubeconfig)
        )
        assert status["info"]["status"] == "deployed"
        assert "helm upgrade" in status["info"]["notes"]
    finally:
        helm(
            "uninstall",
            release,
            "--namespace",
            namespace,
            "--wait",
            "--timeout=120s",
            kubeconfig=cluster.kubeconfig,
        )

    left = cluster.kubectl(
        "get",
        "deployments,serviceaccounts,roles,rolebindings,poddisruptionbudgets,secrets",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "name",
    )
    assert left.strip() == ""
    cluster_wide = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
    )
    assert cluster_wide.strip() == ""
    # Helm never deletes CRDs: the ModelDeployments outlive the release.
    cluster.kubectl("get", "crd", "modeldeployments.modeldeploy.io")


def test_the_operator_runs_as_the_installed_service_account_with_the_charts_environment(
    cluster: LocalCluster, helm: Helm, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """kwok runs no containers, so the operator runs as a process with the installed pod's identity.

    Namespaced mode, the least privilege the chart grants: the process authenticates as the
    chart's ServiceAccount, with the environment of the chart's Deployment, and must win the
    Lease and bring a ModelDeployment in the watched namespace to Ready.
    """
    (watched,) = create_namespaces(cluster, 1)
    release = f"md-{uuid.uuid4().hex[:6]}"
    fullname = f"{release}-modeldeploy"
    helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set-json",
        f"watchNamespaces={json.dumps([watched])}",
        "--set",
        "leaderElection.leaseSeconds=3",
        "--set",
        f"image.repository={TEST_IMAGE_REPOSITORY},image.tag={TEST_IMAGE_TAG}",
        "--wait",
        "--timeout=120s",
        kubeconfig=cluster.kubeconfig,
    )
    deployment = json.loads(cluster.kubectl("get", "-n", namespace, "deployment", fullname, "-o", "json"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The API server leaves out an empty value (no allowed Prometheus addresses beside the default).
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    token = cluster.kubectl("create", "token", fullname, "-n", namespace, "--duration=1h").strip()
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": "admin", "user": {"token": token}}]
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    chart_operator = OperatorProcess(tmp_path / "kubeconfig", tmp_path / "operator.log", env)
    operator.stop()  # the session's cluster-wide operator would reconcile the watched namespace too
    try:
        chart_operator.start()
        cluster.kubectl("apply", "-n", watched, "-f", str(REPO / "examples" / "iris.yaml"))
        waited = cluster.kubectl(
            "wait",
            "--for=condition=Ready",
            "modeldeployment/iris",
            "-n",
            watched,
            "--timeout=60s",
            check=False,
        )
        assert "condition met" in waited, f"{waited}\n{chart_operator.log_text()[-5000:]}"
        lease = json.loads(cluster.kubectl("get", "lease", fullname, "-n", namespace, "-o", "json"))
        assert lease["spec"]["holderIdentity"], lease
        log = chart_operator.log_text()
        assert "forbidden" not in log.lower(), log[-5000:]
        assert "Traceback" not in log, log[-5000:]
    finally:
        chart_operator.stop()
        operator.start()
        helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=cluster.kubeconfig)
        cluster.kubectl("delete", "namespace", watched, "--wait=false")


# -- values documentation ------------------------------------------------------------------------


def documented_values() -> tuple[dict[str, str], list[str]]:
    """Each key path in values.yaml with the first line of the comment just above it ('' if none)."""
    comments: dict[str, str] = {}
    order: list[str] = []
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        key = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if key:
            indent = len(key.group(1))
            stack = [(level, name) for level, name in stack if level < indent]
            stack.append((indent, key.group(2)))
            path = ".".join(name for _, name in stack)
            comments[path] = block[0] if block else ""
            order.append(path)
        block = []
    return comments, order


def test_every_value_is_documented_and_in_the_schema() -> None:
    """A value's comment starts with its name; a value without one groups documented values."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    comments, order = documented_values()
    exempt: list[str] = []
    for path in order:
        if any(path.startswith(parent + ".") for parent in exempt):
            continue
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path} is not in values.schema.json"
            node = node["properties"][part]
        if comments[path].startswith(f"# {path} "):
            exempt.append(path)
        else:
            assert "properties" in node, f"{path} has no comment starting with its name"
    top_level = {path for path in order if "." not in path}
    assert set(schema["properties"]) - top_level <= {"global"}
