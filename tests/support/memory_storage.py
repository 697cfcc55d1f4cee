"""An in-memory stand-in for the operator's storage layer (`kube.KubeStorage`), for unit tests.

`MemoryStorage` keeps objects by (kind, namespace, name) with resourceVersion preconditions on
status writes and recursive merge patches, as the API server does; a Deployment it applies is
available at once unless its name is in `starting`. `SimulatedCluster` adds what the controllers
of a cluster do over time: Deployments roll their pods out under the default RollingUpdate
strategy, pods become ready or fail when a test says so, and every child records when the
operator last applied it. Both let a test interpose on every storage call (`interpose`), to
inject API errors, conflicts, concurrent changes or a crash of the operator at that call.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from modeldeploy_operator.builders import MODEL_REVISION_ANNOTATION
from modeldeploy_operator.kube import KubernetesError, KubeStorage
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.reconcile import Reconciler
from modeldeploy_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NAMESPACE = "ml"
NAME = "iris"
FIELD_MANAGER = "modeldeploy"

Phase = Literal["before", "after"]
Interposer = Callable[[str, Phase], None]
"""Called with the storage operation's name before it takes effect and after (before it returns)."""


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386) as the API server applies one: nested objects merge, null removes."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = apply_merge_patch(merged.get(key), value)
    return merged


@dataclass(frozen=True)
class StoredEvent:
    type: str
    reason: str
    message: str
    name: str | None


class MemoryStorage:
    """Stores objects by (kind, namespace, name) and counts every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        """Every Event posted, as (type, reason, message)."""
        self.posted: list[StoredEvent] = []
        """Every Event stored, with its name; a second Event of the same name is refused."""
        self.event_names: set[str] = set()
        self.model_deployment_reads = 0
        # Deployments whose pods are still starting after an apply (ready once `pods_ready` says so).
        self.starting: set[str] = set()
        self.interpose: Interposer | None = None
        self.committed_statuses: list[dict[str, Any]] = []
        """The ModelDeployment's status after every status write that took effect, in order."""
        self._version = 0

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    @property
    def version(self) -> int:
        """Grows with every change to any object: what a watch would report."""
        return self._version

    def _enter(self, operation: str) -> None:
        if self.interpose is not None:
            self.interpose(operation, "before")

    def _leave(self, operation: str) -> None:
        if self.interpose is not None:
            self.interpose(operation, "after")

    def _store_deployment_status(self, stored: dict[str, Any], name: str) -> None:
        replicas = stored["spec"].get("replicas", 1)
        available = 0 if name in self.starting else replicas
        stored["metadata"]["generation"] = 1
        stored["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
            "conditions": [{"type": "Available", "status": "True"}],
        }

    def _store_applied(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        stored = copy.deepcopy(manifest)
        stored["metadata"]["resourceVersion"] = self._next_version()
        if manifest["kind"] == "Deployment":
            self._store_deployment_status(stored, key[2])
        self.objects[key] = stored
        return stored

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self._enter("apply")
        self.writes.append(f"apply {manifest['kind']}/{manifest['metadata']['name']}")
        stored = copy.deepcopy(self._store_applied(manifest))
        self._leave("apply")
        return stored

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        self._enter("get")
        found = self.objects.get((kind, namespace, name))
        self._leave("get")
        return copy.deepcopy(found) if found else None

    def _remove(self, kind: str, name: str, namespace: str) -> bool:
        removed = self.objects.pop((kind, namespace, name), None) is not None
        if removed:
            self._next_version()
        return removed

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        self._enter("delete")
        self.writes.append(f"delete {kind}/{name}")
        removed = self._remove(kind, name, namespace)
        self._leave("delete")
        return removed

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        self._enter("list")
        found = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind and ns == namespace and labels.items() <= obj["metadata"].get("labels", {}).items()
        ]
        self._leave("list")
        return found

    async def list_model_deployments(self, namespace: str | None) -> list[dict[str, Any]]:
        self._enter("list")
        found = [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind == "ModelDeployment" and namespace in (None, ns)
        ]
        self._leave("list")
        return found

    async def get_model_deployment(self, name: str, namespace: str) -> dict[str, Any] | None:
        self._enter("get")
        self.model_deployment_reads += 1
        found = self.objects.get(("ModelDeployment", namespace, name))
        self._leave("get")
        return copy.deepcopy(found) if found else None

    async def patch_status(
        self, name: str, namespace: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        self._enter("patch_status")
        body = self.objects[("ModelDeployment", namespace, name)]
        if resource_version is not None and resource_version != body["metadata"].get("resourceVersion"):
            raise KubernetesError("patch status: the object has been modified", status=409)
        self.writes.append(f"status {name}")
        body["status"] = apply_merge_patch(body.get("status", {}), status)
        body["metadata"]["resourceVersion"] = self._next_version()
        self.committed_statuses.append(copy.deepcopy(body["status"]))
        self._leave("patch_status")

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str,
        name: str | None = None,
    ) -> bool:
        self._enter("post_event")
        if name is not None and name in self.event_names:
            self._leave("post_event")
            return False  # the API server refuses a second Event of that name (AlreadyExists)
        if name is not None:
            self.event_names.add(name)
        self.events.append((type_, reason, message))
        self.posted.append(StoredEvent(type_, reason, message, name))
        self._leave("post_event")
        return True

    def pods_ready(self, deployment: str) -> None:
        """The Deployment's pods became ready, as the controllers would report it."""
        self.starting.discard(deployment)
        status = self.objects[("Deployment", NAMESPACE, deployment)]["status"]
        status["readyReplicas"] = status["availableReplicas"] = status["replicas"]
        self.objects[("Deployment", NAMESPACE, deployment)]["metadata"]["resourceVersion"] = (
            self._next_version()
        )

    def model_deployment_body(self) -> dict[str, Any]:
        return self.objects[("ModelDeployment", NAMESPACE, NAME)]

    def annotate(self, **annotations: str) -> None:
        """A user's annotation on the ModelDeployment (no new generation)."""
        body = self.model_deployment_body()
        body["metadata"].setdefault("annotations", {}).update(annotations)
        body["metadata"]["resourceVersion"] = self._next_version()

    def remove_annotation(self, key: str) -> None:
        """A user removes an annotation from the ModelDeployment (no new generation)."""
        body = self.model_deployment_body()
        if key in (body["metadata"].get("annotations") or {}):
            del body["metadata"]["annotations"][key]
            body["metadata"]["resourceVersion"] = self._next_version()

    def edit_model_deployment(self, **spec: Any) -> None:
        """A user's change of the spec, as the API server stores it: new generation and resourceVersion."""
        body = self.model_deployment_body()
        body["spec"] = {**body["spec"], **spec}
        body["metadata"]["generation"] += 1
        body["metadata"]["resourceVersion"] = self._next_version()


@dataclass
class SimulatedPod:
    name: str
    template: str
    """A hash of the pod template it was created from."""
    revision: str
    """The model revision of that template."""
    labels: dict[str, str]
    state: Literal["starting", "ready", "failed"] = "starting"


def _template_hash(deployment: Mapping[str, Any]) -> str:
    template = deployment["spec"].get("template", {})
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _revision(deployment: Mapping[str, Any]) -> str:
    annotations = deployment["spec"].get("template", {}).get("metadata", {}).get("annotations") or {}
    return str(annotations.get(MODEL_REVISION_ANNOTATION, ""))


class SimulatedCluster(MemoryStorage):
    """The store plus the controllers: a Deployment's status and pods change only when `sync` runs
    (the Deployment controller catching up), its pods become ready or fail only when `pod_ready`
    or `pod_fails` says so, and children carry the managedFields time of the operator's last
    apply, read from `clock`.

    Rolling updates follow the default strategy (maxSurge 25 % rounded up, maxUnavailable 25 %
    rounded down); a scale-down removes pods that are not ready first.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.clock = clock
        self.pods: dict[str, list[SimulatedPod]] = {}
        """The pods of each Deployment (by name), as the controllers keep them."""
        self.model_changes: list[tuple[str, str]] = []
        """(Deployment, model revision) each time a Deployment was created or its model changed."""
        self._pod_serial = 0

    def _store_applied(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        before = self.objects.get(key)
        stored = copy.deepcopy(manifest)
        if before is not None:
            unchanged = all(before.get(part) == stored.get(part) for part in ("spec", "data")) and all(
                before["metadata"].get(part) == stored["metadata"].get(part)
                for part in ("labels", "annotations", "ownerReferences")
            )
            if unchanged:
                return before  # a no-op apply changes nothing, not even the resourceVersion
        applied_at = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        stored["metadata"]["managedFields"] = [
            {"manager": FIELD_MANAGER, "operation": "Apply", "time": applied_at}
        ]
        stored["metadata"]["resourceVersion"] = self._next_version()
        if manifest["kind"] == "Deployment":
            generation = 1 if before is None else before["metadata"]["generation"]
            if before is not None and before["spec"] != stored["spec"]:
                generation += 1
            stored["metadata"]["generation"] = generation
            stored["status"] = copy.deepcopy(before.get("status", {})) if before is not None else {}
            if before is None or _revision(before) != _revision(stored):
                self.model_changes.append((key[2], _revision(stored)))
            self.pods.setdefault(key[2], [])
        self.objects[key] = stored
        return stored

    def _remove(self, kind: str, name: str, namespace: str) -> bool:
        if kind == "Deployment":
            for pod in self.pods.pop(name, []):
                self.objects.pop(("Pod", namespace, pod.name), None)
        return super()._remove(kind, name, namespace)

    def sync(self) -> None:
        """Every Deployment controller catches up with its Deployment."""
        for name in list(self.pods):
            self._sync(name)

    def _sync(self, name: str) -> None:
        deployment = self.objects[("Deployment", NAMESPACE, name)]
        wanted = int(deployment["spec"].get("replicas", 1))
        template = _template_hash(deployment)
        pods = self.pods[name]
        surge, unavailable = math.ceil(wanted / 4), math.floor(wanted / 4)

        def current() -> list[SimulatedPod]:
            return [pod for pod in pods if pod.template == template]

        def worst_first(candidates: list[SimulatedPod]) -> list[SimulatedPod]:
            return sorted(candidates, key=lambda pod: pod.state == "ready")

        while len(current()) > wanted:
            pods.remove(worst_first(current())[0])
        changed = True
        while changed:
            changed = False
            if len(current()) < wanted and len(pods) < wanted + surge:
                self._pod_serial += 1
                labels = dict(deployment["spec"]["template"]["metadata"]["labels"])
                pods.append(
                    SimulatedPod(
                        f"{name}-{template[:6]}-{self._pod_serial}", template, _revision(deployment), labels
                    )
                )
                changed = True
            older = worst_first([pod for pod in pods if pod.template != template])
            if older:
                ready = sum(pod.state == "ready" for pod in pods)
                if older[0].state != "ready" or ready - 1 >= wanted - unavailable:
                    pods.remove(older[0])
                    changed = True
        updated = current()
        ready = sum(pod.state == "ready" for pod in pods)
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": "True" if ready >= wanted - unavailable else "False"}
            ],
        }
        pod_objects = {("Pod", NAMESPACE, pod.name): _pod_object(pod) for pod in pods}
        stored_pods = {
            key: obj for key, obj in self.objects.items() if key[0] == "Pod" and key[2].startswith(f"{name}-")
        }
        if status == deployment["status"] and pod_objects == stored_pods:
            return  # nothing to catch up with: no watch event either
        deployment["status"] = status
        deployment["metadata"]["resourceVersion"] = self._next_version()
        for key in stored_pods:
            del self.objects[key]
        self.objects.update(pod_objects)

    def _starting_pod(self, deployment: str) -> SimulatedPod | None:
        return next((pod for pod in self.pods.get(deployment, []) if pod.state == "starting"), None)

    def pod_ready(self, deployment: str) -> bool:
        """One starting pod of the Deployment becomes ready (False: none is starting)."""
        return self._settle_pod(deployment, "ready")

    def pod_fails(self, deployment: str) -> bool:
        """One starting pod of the Deployment cannot start: its container crash-loops."""
        return self._settle_pod(deployment, "failed")

    def _settle_pod(self, deployment: str, state: Literal["ready", "failed"]) -> bool:
        if deployment not in self.pods:
            return False
        self._sync(deployment)  # the controller has created the pods by the time one starts
        pod = self._starting_pod(deployment)
        if pod is None:
            return False
        pod.state = state
        self._sync(deployment)
        return True

    def ready_pods(self, deployment: str) -> list[SimulatedPod]:
        return [pod for pod in self.pods.get(deployment, []) if pod.state == "ready"]


def _pod_object(pod: SimulatedPod) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "ready": pod.state == "ready"}
    if pod.state == "failed":
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
    else:
        container["state"] = (
            {"running": {}} if pod.state == "ready" else {"waiting": {"reason": "PodInitializing"}}
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": NAMESPACE, "labels": pod.labels},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if pod.state == "ready" else "False"}],
            "containerStatuses": [container],
        },
    }


def model_deployment(storage: MemoryStorage, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": "u-1",
            "generation": 1,
            "resourceVersion": "0",
        },
        "spec": spec,
    }
    storage.objects[("ModelDeployment", NAMESPACE, NAME)] = body
    return body


def reconciler(storage: MemoryStorage) -> Reconciler:
    # The service only calls the storage's public methods; the in-memory store has them all.
    typed: KubeStorage = storage  # type: ignore[assignment]
    # No rollout runs in these tests, so no analysis ever asks Prometheus anything.
    prometheus = PrometheusClient(httpx.AsyncClient())
    return Reconciler(
        typed, OperatorSettings(server_image="registry.invalid/server:1"), prometheus, clock=lambda: NOW
    )
