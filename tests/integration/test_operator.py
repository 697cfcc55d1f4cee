"""The operator against the real control plane: reconcile, status, drift, deletion, restarts."""

from __future__ import annotations

import copy
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.local_operator import metric_total
from operator_harness import (
    REPO,
    TEST_SERVER_IMAGE,
    OperatorProcess,
    install_namespaced_rbac,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.cluster

IRIS = yaml.safe_load((REPO / "examples" / "iris.yaml").read_text())
OWNED = (
    ("deployment", "iris-stable"),
    ("service", "iris"),
    ("service", "iris-stable"),
    ("service", "iris-canary"),
    ("poddisruptionbudget", "iris"),
)


def apply(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))


def get(cluster: LocalCluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl(
        "get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", "--show-managed-fields"
    )
    return json.loads(found) if found.strip() else None


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in (body or {}).get("status", {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    return {}


def iris(**spec_changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(IRIS)
    manifest["spec"].update(spec_changes)
    return manifest


def wait_ready(cluster: LocalCluster, namespace: str, name: str = "iris") -> dict[str, Any]:
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"modeldeployment/{name}", "-n", namespace, "--timeout=90s"
    )
    body = get(cluster, namespace, "modeldeployment", name)
    assert body is not None
    return body


def test_create_builds_children_and_becomes_ready(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, namespace, iris())

    wait_until(lambda: get(cluster, namespace, "deployment", "iris-stable") is not None, "iris-stable")
    md = get(cluster, namespace, "modeldeployment", "iris")
    assert md is not None
    for kind, name in OWNED:
        child = get(cluster, namespace, kind, name)
        assert child is not None, f"{kind} {name} missing"
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "ModelDeployment",
            "iris",
            md["metadata"]["uid"],
        )
        assert owner["controller"] is True
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "iris"
        assert labels["app.kubernetes.io/managed-by"] == "modeldeploy"
        managers = {entry["manager"] for entry in child["metadata"]["managedFields"]}
        assert "modeldeploy" in managers

    deployment = get(cluster, namespace, "deployment", "iris-stable")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["containers"][0]["image"] == TEST_SERVER_IMAGE
    assert pod["initContainers"][0]["args"][:3] == ["fetch", "--uri", IRIS["spec"]["model"]["uri"]]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["MODELDEPLOY_SERVER_MODEL_NAME"] == "iris"
    assert env["MODELDEPLOY_SERVER_VARIANT"] == "stable"

    ready = wait_ready(cluster, namespace)
    status = ready["status"]
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert status["phase"] == "Ready"
    assert condition(ready, "Stalled")["status"] == "False"
    assert condition(ready, "Progressing")["status"] == "False"
    assert status["readyReplicas"] == 2
    assert status["stable"]["uri"] == IRIS["spec"]["model"]["uri"]
    assert status["url"] == f"http://iris.{namespace}.svc.cluster.local"
    assert status["selector"] == "app.kubernetes.io/instance=iris,app.kubernetes.io/name=modeldeploy-server"
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Ready")
    assert "ModelDeployment/iris" in events or "modeldeployment/iris" in events


def test_update_follows_and_hand_edits_are_put_back(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, namespace, iris())
    first = wait_ready(cluster, namespace)

    changed = iris(replicas=3)
    changed["spec"]["server"]["resources"]["requests"]["cpu"] = "250m"
    apply(cluster, namespace, changed)

    def updated() -> bool:
        deployment = get(cluster, namespace, "deployment", "iris-stable") or {}
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return deployment["spec"]["replicas"] == 3 and container["resources"]["requests"]["cpu"] == "250m"

    wait_until(updated, "the Deployment to follow replicas and resources")
    wait_until(
        lambda: (get(cluster, namespace, "modeldeployment", "iris") or {})["status"]["observedGeneration"]
        == first["metadata"]["generation"] + 1,
        "observedGeneration to follow the new generation",
    )
    wait_ready(cluster, namespace)

    # Hand edits of owned objects are reverted on the next reconcile (triggered by the edit).
    cluster.kubectl(
        "set", "image", "deployment/iris-stable", "server=registry.invalid/tampered:1", "-n", namespace
    )
    cluster.kubectl(
        "patch", "service", "iris", "-n", namespace, "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9999}]',
    )  # fmt: skip

    def reverted() -> bool:
        deployment = get(cluster, namespace, "deployment", "iris-stable") or {}
        service = get(cluster, namespace, "service", "iris") or {}
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        return image == TEST_SERVER_IMAGE and service["spec"]["ports"][0]["targetPort"] != 9999

    wait_until(reverted, "the hand edits to be put back", timeout=30)


def test_autoscaler_owns_replicas_and_optional_children_follow_the_spec(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, namespace, iris(autoscaling={"minReplicas": 2, "maxReplicas": 5}))
    wait_until(lambda: get(cluster, namespace, "hpa", "iris") is not None, "the HPA")
    wait_ready(cluster, namespace)

    # What the HPA controller would do: scale the Deployment under its own field manager.
    cluster.kubectl("scale", "deployment/iris-stable", "--replicas=4", "-n", namespace)
    # A change elsewhere in the spec triggers a full reconcile; the replica count must survive it.
    apply(cluster, namespace, iris(autoscaling={"minReplicas": 2, "maxReplicas": 6}))
    wait_until(
        lambda: (get(cluster, namespace, "hpa", "iris") or {})["spec"]["maxReplicas"] == 6,
        "the HPA to follow the spec",
    )
    deployment = get(cluster, namespace, "deployment", "iris-stable")
    assert deployment is not None and deployment["spec"]["replicas"] == 4

    without = iris()
    del without["spec"]["podDisruptionBudget"]
    apply(cluster, namespace, without)
    wait_until(lambda: get(cluster, namespace, "hpa", "iris") is None, "the HPA to be deleted")
    wait_until(lambda: get(cluster, namespace, "pdb", "iris") is None, "the PDB to be deleted")


def test_delete_removes_every_child(cluster: LocalCluster, operator: OperatorProcess, namespace: str) -> None:
    apply(cluster, namespace, iris())
    wait_ready(cluster, namespace)

    cluster.kubectl("delete", "modeldeployment", "iris", "-n", namespace, "--wait=true")

    for kind, name in OWNED:
        wait_until(
            lambda k=kind, n=name: get(cluster, namespace, k, n) is None, f"{kind} {name} to be collected"
        )
    wait_until(
        lambda: cluster.kubectl("get", "pods", "-n", namespace, "--no-headers").strip() == "",
        "the server pods to go",
    )


def test_pods_that_cannot_start_are_reported_stalled(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    stuck = iris(nodeSelector={"no-such-label": "x"}, progressDeadline="5s")
    apply(cluster, namespace, stuck)

    def stalled() -> bool:
        return (
            condition(get(cluster, namespace, "modeldeployment", "iris"), "Stalled").get("status") == "True"
        )

    wait_until(stalled, "the ModelDeployment to be Stalled", timeout=90)
    body = get(cluster, namespace, "modeldeployment", "iris")
    assert body is not None
    assert body["status"]["phase"] == "Stalled"
    assert condition(body, "Ready")["status"] == "False"
    assert condition(body, "Stalled")["message"]


INVALID = sorted((REPO / "examples" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("manifest", INVALID, ids=[path.stem for path in INVALID])
def test_invalid_manifests_are_rejected_by_the_api_server_naming_the_field(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, manifest: Path
) -> None:
    text = manifest.read_text()
    expected = text.splitlines()[0].removeprefix("# expect:").strip()
    assert expected, f"{manifest.name} must start with '# expect: <text of the error>'"

    rejected = cluster.kubectl("apply", "-n", namespace, "-f", str(manifest), check=False)

    assert "is invalid" in rejected or "error" in rejected.lower(), rejected
    assert expected in rejected, rejected
    name = yaml.safe_load(text)["metadata"]["name"]
    assert get(cluster, namespace, "modeldeployment", name) is None


def operator_writes(cluster: LocalCluster, namespace: str, with_version: bool = True) -> dict[str, Any]:
    """What the operator last wrote about iris: the ModelDeployment's version (only the user and the
    operator write it; `with_version` False when the test itself changes it) and status, and, per
    child, the operator's managed-fields entry (controllers update the children's status on their
    own, so their resourceVersion may move)."""
    writes: dict[str, Any] = {}
    md = get(cluster, namespace, "modeldeployment", "iris") or {}
    writes["modeldeployment/iris"] = {
        "resourceVersion": md["metadata"]["resourceVersion"] if with_version else None,
        "annotations": md["metadata"].get("annotations"),
        "status": md.get("status"),
    }
    for kind, name in OWNED:
        child = get(cluster, namespace, kind, name) or {}
        ours = [entry for entry in child["metadata"]["managedFields"] if entry["manager"] == "modeldeploy"]
        writes[f"{kind}/{name}"] = ours
    return writes


def test_restart_resumes_without_writing_anything(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, namespace, iris())
    wait_ready(cluster, namespace)

    # Pod and Deployment status settle for a while after Ready; start from a quiet state.
    before = operator_writes(cluster, namespace)
    quiet_since = time.monotonic()
    deadline = quiet_since + 60
    while time.monotonic() - quiet_since < 5 and time.monotonic() < deadline:
        time.sleep(1)
        now = operator_writes(cluster, namespace)
        if now != before:
            before, quiet_since = now, time.monotonic()
    operator.stop()
    log_size = len(operator.log_text())
    operator.start()
    wait_until(
        lambda: f"[{namespace}/iris]" in operator.log_text()[log_size:]
        and "succeeded" in operator.log_text()[log_size:],
        "the restarted operator to resume iris",
    )
    time.sleep(3)

    assert operator_writes(cluster, namespace) == before


def test_only_the_lease_holder_reconciles_and_a_standby_takes_over(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    standby = OperatorProcess(operator.kubeconfig, tmp_path / "standby.log")
    standby.start()
    try:
        wait_until(lambda: "Waiting to become the leader" in standby.log_text(), "the second replica to wait")
        apply(cluster, namespace, iris())
        wait_ready(cluster, namespace)
        assert f"[{namespace}/iris]" not in standby.log_text()

        # The leader dies without giving the Lease up; the standby takes over once it expires.
        operator.stop(signal.SIGKILL)
        wait_until(lambda: "Became the leader" in standby.log_text(), "the standby to take over", timeout=30)
        apply(cluster, namespace, iris(replicas=3))
        wait_until(
            lambda: (get(cluster, namespace, "deployment", "iris-stable") or {})["spec"]["replicas"] == 3,
            "the new leader to reconcile",
        )
    finally:
        standby.stop()
        operator.start()
    wait_until(lambda: "Became the leader" in operator.log_text(), "the first replica to lead again")


def test_a_namespaced_operator_needs_only_a_role_and_ignores_other_namespaces(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    install_namespaced_rbac(cluster, "modeldeploy-namespaced", namespace)
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "kubeconfig", "modeldeploy-namespaced")
    namespaced = OperatorProcess(
        kubeconfig,
        tmp_path / "namespaced.log",
        {
            "MODELDEPLOY_OPERATOR_NAMESPACES": namespace,
            "MODELDEPLOY_OPERATOR_LEADER_ELECTION_LEASE_NAME": "modeldeploy-namespaced",
        },
    )
    operator.stop()  # the cluster-wide operator would reconcile both namespaces
    try:
        namespaced.start()
        apply(cluster, namespace, iris())
        apply(cluster, other, iris())
        wait_ready(cluster, namespace)
        time.sleep(3)
        assert get(cluster, other, "deployment", "iris-stable") is None
        assert "status" not in (get(cluster, other, "modeldeployment", "iris") or {})
        assert "forbidden" not in namespaced.log_text().lower()
    finally:
        namespaced.stop()
        operator.start()
        cluster.kubectl("delete", "namespace", other, "--wait=false")


FETCH_FAILED = {
    "status": {
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "ContainersReady", "status": "False"}],
        "initContainerStatuses": [
            {
                "name": "fetch-model",
                "image": TEST_SERVER_IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 4,
                "started": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "403 Forbidden from s3://models/iris",
                    }
                },
            }
        ],
    }
}


def test_a_model_that_cannot_be_fetched_is_reported_stalled_with_the_error(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    """kwok runs no containers, so the test writes what a kubelet reports for a failing fetch step."""
    apply(cluster, namespace, iris())
    wait_ready(cluster, namespace)
    pod = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").split()[0]

    cluster.kubectl(
        "patch", pod, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(FETCH_FAILED)
    )

    def stalled() -> bool:
        return (
            condition(get(cluster, namespace, "modeldeployment", "iris"), "Stalled").get("status") == "True"
        )

    wait_until(stalled, "the ModelDeployment to be Stalled")
    body = get(cluster, namespace, "modeldeployment", "iris")
    assert condition(body, "Ready")["status"] == "False"
    message = condition(body, "Stalled")["message"]
    assert "fetch-model" in message and "403 Forbidden from s3://models/iris" in message
    warnings = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning")
    assert "403 Forbidden" in warnings


def test_a_canary_whose_model_cannot_be_fetched_is_rolled_back_with_the_fetch_error(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    """The rollout waits for the canary's pods; the fetch failure a kubelet would report on one of
    them ends the rollout at once, with the error in the status."""
    rollout = {
        "steps": [25, 50],
        "stepDuration": "10m",
        "analysis": {"prometheusAddress": "http://127.0.0.1:9"},
    }
    apply(cluster, namespace, iris(rollout=rollout))
    wait_ready(cluster, namespace)
    canary_model = {"uri": "s3://models/iris/2.0.0/model.skops", "version": "2.0.0"}
    apply(cluster, namespace, iris(rollout=rollout, model=canary_model))

    def canary_pods() -> list[str]:
        found = cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "modeldeploy.io/variant=canary", "-o", "name"
        )
        return found.split()

    wait_until(lambda: bool(canary_pods()), "a canary pod")
    # The status is written after the children are applied: the pods may be there first.
    wait_until(
        lambda: "canary" in (get(cluster, namespace, "modeldeployment", "iris") or {})["status"],
        "the rollout in the status",
    )
    wait_until(
        lambda: "podsReadyAt"
        in (get(cluster, namespace, "modeldeployment", "iris") or {})["status"]["canary"],
        "the operator to see the canary's pods ready",
    )

    cluster.kubectl(
        "patch",
        canary_pods()[0],
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(FETCH_FAILED),
    )

    wait_until(
        lambda: "canary" not in (get(cluster, namespace, "modeldeployment", "iris") or {})["status"],
        "the rollback",
    )
    status = (get(cluster, namespace, "modeldeployment", "iris") or {})["status"]
    assert status["rejected"]["reason"] == "CanaryPodsFailing"
    assert "403 Forbidden from s3://models/iris" in status["rejected"]["message"]
    assert status["stable"]["version"] == "1.0.0"
    wait_until(lambda: not canary_pods(), "the canary pods to go")
    # The stable Deployment grows back to its full size.
    wait_ready(cluster, namespace)


def test_an_idle_reconcile_reads_only_the_watch_cache(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    # Before the watch cache, an idle reconcile sent about 12 GETs and LISTs to the API server.
    apply(cluster, namespace, iris())
    wait_ready(cluster, namespace)
    reads, reconciles = "modeldeploy_operator_kubernetes_reads_total", "modeldeploy_operator_reconciles_total"
    wait_until(
        lambda: metric_total(operator.metrics(), reads, source="cache") > 0, "reads from the watch cache"
    )
    time.sleep(3)  # let the Deployment's and pods' status settle
    before = operator.metrics()
    written = operator_writes(cluster, namespace, with_version=False)
    for number in range(5):
        # A label is a change kopf reports, but nothing the reconcile acts on.
        cluster.kubectl(
            "label", "modeldeployment", "iris", "-n", namespace, f"touched={number}", "--overwrite"
        )
        time.sleep(0.3)
    wait_until(
        lambda: metric_total(operator.metrics(), reconciles, result="ok")
        >= metric_total(before, reconciles, result="ok") + 5,
        "five more reconciles",
    )
    after = operator.metrics()

    api_reads = [line for line in after.splitlines() if line.startswith(reads) and 'source="api"' in line]
    assert metric_total(after, reads, source="api") == metric_total(before, reads, source="api"), api_reads
    assert metric_total(after, reads, source="cache") > metric_total(before, reads, source="cache")
    # Other tests' ModelDeployments share this operator, so its write counters are not this one's.
    assert operator_writes(cluster, namespace, with_version=False) == written
