"""The reconcile service over an in-memory store: what it writes, and when it writes nothing.

The real API server is exercised by tests/integration; these tests pin the service's own
decisions (which writes, which Events) where a cluster would only make them slower.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from modeldeploy_operator.kube import KubeStorage
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.reconcile import Reconciler, holds_fields, transition_events
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.status import merge_patch

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class MemoryStorage:
    """Stores objects by (kind, namespace, name) and counts every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self._version = 0

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        self.writes.append(f"apply {key[0]}/{key[2]}")
        stored = copy.deepcopy(manifest)
        stored["metadata"]["resourceVersion"] = self._next_version()
        if manifest["kind"] == "Deployment":
            replicas = manifest["spec"].get("replicas", 1)
            stored["metadata"]["generation"] = 1
            stored["status"] = {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True"}],
            }
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        self.writes.append(f"delete {kind}/{name}")
        return self.objects.pop((kind, namespace, name), None) is not None

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind and ns == namespace and labels.items() <= obj["metadata"].get("labels", {}).items()
        ]

    async def get_model_deployment(self, name: str, namespace: str) -> dict[str, Any] | None:
        return await self.get("modeldeploy.io/v1alpha1", "ModelDeployment", name, namespace)

    async def patch_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> None:
        self.writes.append(f"status {name}")
        body = self.objects[("ModelDeployment", namespace, name)]
        merged = {**body.get("status", {}), **status}
        body["status"] = {key: value for key, value in merged.items() if value is not None}


def model_deployment(storage: MemoryStorage, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }
    storage.objects[("ModelDeployment", "ml", "iris")] = body
    return body


def reconciler(storage: MemoryStorage) -> Reconciler:
    # The service only calls the storage's public methods; the in-memory store has them all.
    typed: KubeStorage = storage  # type: ignore[assignment]
    # No rollout runs in these tests, so no analysis ever asks Prometheus anything.
    prometheus = PrometheusClient(httpx.AsyncClient())
    return Reconciler(
        typed, OperatorSettings(server_image="registry.invalid/server:1"), prometheus, clock=lambda: NOW
    )


SPEC = {"model": {"uri": "s3://models/iris/1.skops", "version": "1"}, "replicas": 2}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_spec_the_operator_cannot_act_on_is_reported_not_applied() -> None:
    storage = MemoryStorage()
    body = model_deployment(storage, {"model": {"uri": "ftp://nowhere/model"}, "replicas": 1})

    outcome = run(reconciler(storage).reconcile(body))

    assert storage.writes == ["status iris"]
    status = storage.objects[("ModelDeployment", "ml", "iris")]["status"]
    assert status["phase"] == "Failed"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "InvalidSpec"
    assert "spec.model.uri" in stalled["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "InvalidSpec")]


def test_an_idle_reconcile_writes_nothing() -> None:
    storage = MemoryStorage()
    service = reconciler(storage)
    run(service.reconcile(model_deployment(storage, SPEC)))
    assert "status iris" in storage.writes
    first_round = len(storage.writes)

    stored = storage.objects[("ModelDeployment", "ml", "iris")]
    outcome = run(service.reconcile(copy.deepcopy(stored)))

    assert storage.writes[first_round:] == []
    assert outcome.events == []


def test_a_changed_child_is_applied_again() -> None:
    storage = MemoryStorage()
    service = reconciler(storage)
    run(service.reconcile(model_deployment(storage, SPEC)))
    edited = storage.objects[("Service", "ml", "iris")]
    edited["metadata"]["resourceVersion"] = "edited-by-hand"
    edited["spec"]["ports"][0]["port"] = 8080
    first_round = len(storage.writes)

    run(service.reconcile(copy.deepcopy(storage.objects[("ModelDeployment", "ml", "iris")])))

    assert storage.writes[first_round:] == ["apply Service/iris"]


def test_becoming_ready_posts_one_event() -> None:
    storage = MemoryStorage()
    outcome = run(reconciler(storage).reconcile(model_deployment(storage, SPEC)))
    assert [(e.type, e.reason) for e in outcome.events] == [("Normal", "Ready")]
    assert "s3://models/iris/1.skops" in outcome.events[0].message


def test_children_the_spec_no_longer_asks_for_are_deleted() -> None:
    storage = MemoryStorage()
    service = reconciler(storage)
    with_extras = {
        **SPEC,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "podDisruptionBudget": {"maxUnavailable": 1},
    }
    run(service.reconcile(model_deployment(storage, with_extras)))
    assert {kind for kind, _, _ in storage.objects} >= {"HorizontalPodAutoscaler", "PodDisruptionBudget"}

    body = copy.deepcopy(storage.objects[("ModelDeployment", "ml", "iris")])
    body["spec"] = SPEC
    body["metadata"]["generation"] = 2
    run(service.reconcile(body))

    assert "delete HorizontalPodAutoscaler/iris" in storage.writes
    assert "delete PodDisruptionBudget/iris" in storage.writes
    assert {kind for kind, _, _ in storage.objects}.isdisjoint(
        {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    )


def test_a_model_deployment_being_deleted_is_left_to_the_garbage_collector() -> None:
    storage = MemoryStorage()
    body = model_deployment(storage, SPEC)
    body["metadata"]["deletionTimestamp"] = "2026-11-27T12:00:00Z"

    run(reconciler(storage).reconcile(body))

    assert storage.writes == []


def test_the_example_reconciles_to_ready() -> None:
    storage = MemoryStorage()
    spec = yaml.safe_load((Path(__file__).parents[3] / "examples" / "iris.yaml").read_text())["spec"]
    run(reconciler(storage).reconcile(model_deployment(storage, spec)))
    assert storage.objects[("ModelDeployment", "ml", "iris")]["status"]["phase"] == "Ready"


def test_status_patches_remove_keys_dropped_inside_nested_objects() -> None:
    before = {"canary": {"weight": 25, "pausedAt": "2026-11-27T12:00:00Z"}, "phase": "Ready", "url": "u"}
    after = {"canary": {"weight": 25}, "phase": "Ready"}
    assert merge_patch(before, after) == {"canary": {"pausedAt": None}, "url": None}
    assert merge_patch(after, after) == {}


def test_an_earlier_requeue_replaces_a_later_one_still_waiting() -> None:
    storage = MemoryStorage()
    model_deployment(storage, SPEC)
    reconciled: list[str] = []

    async def scenario() -> None:
        typed: KubeStorage = storage  # type: ignore[assignment]
        service = Reconciler(
            typed,
            OperatorSettings(server_image="registry.invalid/server:1"),
            PrometheusClient(httpx.AsyncClient()),
            clock=lambda: NOW,
            on_outcome=lambda body, outcome: reconciled.append(body["metadata"]["name"]),
        )
        service.requeue("iris", "ml", 30)
        service.requeue("iris", "ml", 0.05)
        service.requeue("iris", "ml", 10)  # later than the one waiting: ignored
        await asyncio.sleep(2)
        service.close()

    run(scenario())
    # Only the 0.05 s request could have run within two seconds, and it ran once.
    assert reconciled == ["iris"]


def test_ready_again_after_a_resize_is_no_news_but_a_new_model_or_a_recovery_is() -> None:
    stable = {"uri": "s3://models/iris/1.skops", "version": "1"}

    def status(ready: str, reason: str, model: dict[str, str] = stable) -> dict[str, Any]:
        return {"stable": model, "conditions": [{"type": "Ready", "status": ready, "reason": reason}]}

    ready = status("True", "Available")
    assert transition_events(status("False", "RollingOut"), ready) == []
    assert transition_events(status("False", "DeploymentUpdating"), ready) == []
    recovered = transition_events(status("False", "PodsFailing"), ready)
    assert [event.reason for event in recovered] == ["Ready"]
    newer = transition_events(status("False", "RollingOut", {"uri": "s3://models/iris/0.skops"}), ready)
    assert [event.reason for event in newer] == ["Ready"]
    assert [event.reason for event in transition_events(None, ready)] == ["Ready"]


def test_a_child_holds_our_fields_whatever_the_server_and_controllers_added() -> None:
    wanted = {
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "server", "image": "a"}]}}}
    }
    stored = {
        "metadata": {"resourceVersion": "9"},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 3,
            "template": {
                "spec": {"containers": [{"name": "server", "image": "a", "imagePullPolicy": "Always"}]}
            },
        },
        "status": {"readyReplicas": 1},
    }
    assert holds_fields(stored, wanted)
    edited = copy.deepcopy(stored)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "tampered"
    assert not holds_fields(edited, wanted)
    extra_container = copy.deepcopy(stored)
    extra_container["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not holds_fields(extra_container, wanted)
    assert not holds_fields({"spec": {}}, wanted)


def test_a_status_change_of_a_child_is_no_reason_to_apply_it_again() -> None:
    storage = MemoryStorage()
    service = reconciler(storage)
    run(service.reconcile(model_deployment(storage, SPEC)))
    # The Deployment controller writes the status: a new resourceVersion, our fields as they were.
    deployment = storage.objects[("Deployment", "ml", "iris-stable")]
    deployment["status"]["observedGeneration"] = 2
    deployment["metadata"]["resourceVersion"] = "999"
    written = len(storage.writes)

    run(service.reconcile(copy.deepcopy(storage.objects[("ModelDeployment", "ml", "iris")])))

    assert storage.writes[written:] == []
