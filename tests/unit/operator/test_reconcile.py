"""The reconcile service over an in-memory store: what it writes, and when it writes nothing.

The real API server is exercised by tests/integration; these tests pin the service's own
decisions (which writes, which Events) where a cluster would only make them slower.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from memory_storage import NOW, MemoryStorage, model_deployment, reconciler
from modeldeploy_operator.announce import transition_events
from modeldeploy_operator.children import holds_fields
from modeldeploy_operator.kube import KubernetesError, KubeStorage
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.reconcile import Reconciler, retry_delay
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.status import merge_patch

SPEC = {"model": {"uri": "s3://models/iris/1.skops", "version": "1"}, "replicas": 2}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_spec_the_operator_cannot_act_on_is_reported_not_applied() -> None:
    storage = MemoryStorage()
    body = model_deployment(storage, {"model": {"uri": "ftp://nowhere/model"}, "replicas": 1})

    outcome = run(reconciler(storage).reconcile(body))

    # The status with its InvalidSpec Event pending, then the Event posted and the list cleared.
    assert storage.writes == ["status iris", "status iris"]
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

    stale = copy.deepcopy(storage.objects[("ModelDeployment", "ml", "iris")])
    storage.objects[("ModelDeployment", "ml", "iris")]["spec"] = SPEC
    storage.edit_model_deployment()
    run(service.reconcile(stale))  # the body handed over is old: the stored spec counts

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

    async def scenario() -> None:
        service = reconciler(storage)
        service.requeue("iris", "ml", 30)
        service.requeue("iris", "ml", 0.05)
        service.requeue("iris", "ml", 10)  # later than the one waiting: ignored
        await asyncio.sleep(2)
        service.close()

    run(scenario())
    # Only the 0.05 s request could have run within two seconds, and it ran once.
    assert storage.model_deployment_reads == 1


def test_triggers_while_an_object_waits_or_runs_cost_one_more_reconcile_not_one_each() -> None:
    # Before: a request left the queue's table once its delay ended, so each trigger of a burst
    # (child events, the status write's echo) queued a reconcile of its own: 1,000 objects cost
    # several thousand reconciles, and an object waited behind all of them to become Ready.
    storage = MemoryStorage()
    model_deployment(storage, SPEC)

    async def scenario() -> None:
        service = reconciler(storage)
        for _ in range(5):
            service.requeue("iris", "ml")
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        service.close()

    run(scenario())
    assert storage.model_deployment_reads == 2


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


def test_a_stale_body_is_never_acted_on() -> None:
    # kopf once handed a reconcile the body of an earlier event: it re-created what the stored
    # object no longer asked for. Whatever body a trigger carries, the stored object counts.
    storage = MemoryStorage()
    service = reconciler(storage)
    stale = copy.deepcopy(model_deployment(storage, {**SPEC, "podDisruptionBudget": {"maxUnavailable": 1}}))
    storage.objects[("ModelDeployment", "ml", "iris")]["spec"] = SPEC
    storage.edit_model_deployment()

    run(service.reconcile(stale))

    assert ("PodDisruptionBudget", "ml", "iris") not in storage.objects


class ConflictOnce(MemoryStorage):
    """Another writer changes the object between the reconcile's read and its status write, once."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0

    async def patch_status(
        self, name: str, namespace: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        if self.conflicts == 0:
            self.conflicts += 1
            self.edit_model_deployment(replicas=3)
        await super().patch_status(name, namespace, status, resource_version)


def test_a_status_decided_from_an_object_that_changed_meanwhile_is_decided_again() -> None:
    storage = ConflictOnce()
    model_deployment(storage, SPEC)

    outcome = run(reconciler(storage).reconcile({"metadata": {"name": "iris", "namespace": "ml"}}))

    assert storage.conflicts == 1
    assert outcome.status_written
    # One status decided and written, then the pending Ready Event cleared once posted.
    assert storage.writes.count("status iris") == 2
    stored = storage.objects[("ModelDeployment", "ml", "iris")]
    # Decided from the object as changed: its generation and its three replicas.
    assert stored["status"]["observedGeneration"] == 2
    assert storage.objects[("Deployment", "ml", "iris-stable")]["spec"]["replicas"] == 3
    assert [reason for _, reason, _ in storage.events] == ["Ready"]


class FailingApplies(MemoryStorage):
    """An apply that raises something that is not a KubernetesError (an address httpx cannot parse,
    a bug), until `healed`."""

    healed = False

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if not self.healed:
            raise ValueError("Invalid port: '9O90'")
        return await super().apply(manifest)


def conditions(storage: MemoryStorage) -> dict[str, dict[str, Any]]:
    status = storage.objects[("ModelDeployment", "ml", "iris")].get("status", {})
    return {condition["type"]: condition for condition in status.get("conditions", [])}


def test_any_failure_becomes_a_condition_an_event_and_a_retry_never_a_silent_stop() -> None:
    storage = FailingApplies()
    model_deployment(storage, SPEC)

    async def scenario() -> None:
        service = reconciler(storage)
        assert await service.reconcile_key("iris", "ml") is None  # reported, not raised
        failed = conditions(storage)["ReconcileFailed"]
        assert failed["status"] == "True" and failed["reason"] == "UnexpectedError"
        assert "ValueError: Invalid port: '9O90'" in failed["message"]
        assert storage.events == [("Warning", "UnexpectedError", "ValueError: Invalid port: '9O90'")]
        # The same failure again: the condition says so already, and no second Event is posted.
        await service.reconcile_key("iris", "ml")
        assert len(storage.events) == 1
        assert storage.writes.count("status iris") == 1
        # A retry is scheduled by itself; once the cause is gone it succeeds and the condition goes.
        storage.healed = True
        for _ in range(60):
            await asyncio.sleep(0.1)
            if "ReconcileFailed" not in conditions(storage):
                break
        service.close()

    run(scenario())
    assert "ReconcileFailed" not in conditions(storage)
    assert conditions(storage)["Ready"]["status"] == "True"


def test_retries_back_off_from_a_second_to_five_minutes() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(9) == 256.0
    assert retry_delay(10) == retry_delay(10_000) == 300.0


def refuse_events(operation: str, phase: str) -> None:
    if operation == "post_event":
        raise KubernetesError("create Event: forbidden", status=403)


def test_an_event_that_cannot_be_posted_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage()
    storage.interpose = refuse_events
    model_deployment(storage, SPEC)
    registry = CollectorRegistry()
    typed: KubeStorage = storage  # type: ignore[assignment]
    service = Reconciler(
        typed,
        OperatorSettings(server_image="registry.invalid/server:1"),
        PrometheusClient(httpx.AsyncClient()),
        clock=lambda: NOW,
        metrics=OperatorMetrics(registry),
    )

    run(service.reconcile({"metadata": {"name": "iris", "namespace": "ml"}}))

    assert "Could not post the Normal Event Ready about ModelDeployment ml/iris" in caplog.text
    failed = registry.get_sample_value(
        "modeldeploy_operator_events_total", {"type": "Normal", "reason": "Ready", "result": "failed"}
    )
    assert failed == 1


def test_only_children_this_model_deployment_controls_are_deleted() -> None:
    storage = MemoryStorage()
    service = reconciler(storage)
    run(service.reconcile(model_deployment(storage, SPEC)))
    labels = copy.deepcopy(storage.objects[("Deployment", "ml", "iris-stable")]["metadata"]["labels"])

    def labelled_like_a_child(name: str, owner_references: list[dict[str, Any]]) -> None:
        storage.objects[("Deployment", "ml", name)] = {
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": "ml",
                "labels": labels,
                "ownerReferences": owner_references,
            },
        }

    labelled_like_a_child("iris-canary", [])  # a user's own Deployment, labelled by hand
    earlier = [{"uid": "u-0", "controller": True, "kind": "ModelDeployment", "name": "iris"}]
    labelled_like_a_child("iris-old", earlier)  # the child of an earlier ModelDeployment named iris
    ours = [{"uid": "u-1", "controller": True, "kind": "ModelDeployment", "name": "iris"}]
    labelled_like_a_child("iris-leftover", ours)

    storage.edit_model_deployment()
    run(service.reconcile({"metadata": {"name": "iris", "namespace": "ml"}}))

    assert ("Deployment", "ml", "iris-canary") in storage.objects
    assert ("Deployment", "ml", "iris-old") in storage.objects
    assert ("Deployment", "ml", "iris-leftover") not in storage.objects


V2_MODEL = {"uri": "s3://models/iris/2.skops", "version": "2"}
GATEWAY_TRAFFIC = {"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}}


def route_weight(storage: MemoryStorage) -> int:
    backends = storage.objects[("HTTPRoute", "ml", "iris")]["spec"]["rules"][0]["backendRefs"]
    return int(next(b["weight"] for b in backends if b["name"] == "iris-canary"))


def canary_status(storage: MemoryStorage) -> dict[str, Any]:
    return dict(storage.objects[("ModelDeployment", "ml", "iris")]["status"].get("canary") or {})


def reconcile_stored(service: Reconciler) -> None:
    run(service.reconcile_key("iris", "ml"))


def test_a_router_sends_the_canary_traffic_only_once_its_pods_are_ready_and_drains_it_before_it_goes() -> (
    None
):
    # Before: the canary's weight and Deployment were applied at once, so the step's share of
    # requests met a Service without ready endpoints; at rollback the canary went with the weight.
    storage = MemoryStorage()
    service = reconciler(storage)
    model_deployment(storage, {**SPEC, "traffic": GATEWAY_TRAFFIC, "rollout": {"steps": [50]}})
    reconcile_stored(service)
    reconcile_stored(service)
    assert route_weight(storage) == 0

    storage.starting.add("iris-canary")
    storage.edit_model_deployment(model=V2_MODEL)
    reconcile_stored(service)
    reconcile_stored(service)
    assert ("Deployment", "ml", "iris-canary") in storage.objects
    assert route_weight(storage) == 0
    assert canary_status(storage)["weight"] == 50
    assert canary_status(storage)["effectiveWeight"] == 0

    storage.pods_ready("iris-canary")
    reconcile_stored(service)
    assert route_weight(storage) == 50
    assert canary_status(storage)["effectiveWeight"] == 50

    storage.annotate(**{"modeldeploy.io/abort": "now"})
    written = len(storage.writes)
    reconcile_stored(service)
    assert route_weight(storage) == 0
    assert ("Deployment", "ml", "iris-canary") in storage.objects  # still there while the route drains
    reconcile_stored(service)
    assert ("Deployment", "ml", "iris-canary") not in storage.objects
    later = storage.writes[written:]
    assert later.index("apply HTTPRoute/iris") < later.index("delete Deployment/iris-canary")


def test_a_promotion_keeps_the_canary_until_the_stable_deployment_serves_the_new_model_at_full_size() -> None:
    # Before: the canary went at promotion while the stable Deployment changed its template and
    # grew at once, so for a while the old model's pods served everything.
    storage = MemoryStorage()
    service = reconciler(storage)
    model_deployment(storage, {**SPEC, "rollout": {"steps": [50]}})
    reconcile_stored(service)
    reconcile_stored(service)
    storage.edit_model_deployment(model=V2_MODEL)
    reconcile_stored(service)
    reconcile_stored(service)
    stable = storage.objects[("Deployment", "ml", "iris-stable")]
    assert stable["spec"]["replicas"] == 1  # one of two pods for the canary at 50 %

    storage.starting.add("iris-stable")
    storage.annotate(**{"modeldeploy.io/promote": "full"})
    reconcile_stored(service)
    stable = storage.objects[("Deployment", "ml", "iris-stable")]
    revision = stable["spec"]["template"]["metadata"]["annotations"]["modeldeploy.io/model-revision"]
    canary = storage.objects[("Deployment", "ml", "iris-canary")]
    assert revision == canary["spec"]["template"]["metadata"]["annotations"]["modeldeploy.io/model-revision"]
    assert stable["spec"]["replicas"] == 1  # the new model at the current size first
    reconcile_stored(service)
    assert ("Deployment", "ml", "iris-canary") in storage.objects

    storage.pods_ready("iris-stable")
    storage.starting.add("iris-stable")
    reconcile_stored(service)
    assert storage.objects[("Deployment", "ml", "iris-stable")]["spec"]["replicas"] == 2  # then it grows
    assert ("Deployment", "ml", "iris-canary") in storage.objects

    storage.pods_ready("iris-stable")
    reconcile_stored(service)
    assert ("Deployment", "ml", "iris-canary") not in storage.objects


class Crash(BaseException):
    """The operator process dies here (not an error a reconcile could catch and report)."""


def crash_at_first_event_post(storage: MemoryStorage) -> None:
    crashes = [Crash()]

    def interpose(operation: str, phase: str) -> None:
        if operation == "post_event" and crashes:
            raise crashes.pop()

    storage.interpose = interpose


def test_a_transition_is_announced_once_even_when_the_operator_dies_between_status_and_event() -> None:
    # Before: the Event was posted after the status write from memory only, so a crash in between
    # lost it (an e2e run under load saw one StepAdvanced instead of two).
    storage = MemoryStorage()
    crash_at_first_event_post(storage)
    model_deployment(storage, SPEC)
    with pytest.raises(Crash):
        run(reconciler(storage).reconcile_key("iris", "ml"))
    status = storage.objects[("ModelDeployment", "ml", "iris")]["status"]
    assert status["phase"] == "Ready"
    assert [event["reason"] for event in status["pendingEvents"]] == ["Ready"]
    assert storage.events == []

    restarted = reconciler(storage)
    run(restarted.reconcile_key("iris", "ml"))
    run(restarted.reconcile_key("iris", "ml"))
    run(reconciler(storage).reconcile_key("iris", "ml"))

    assert [reason for _, reason, _ in storage.events] == ["Ready"]
    assert "pendingEvents" not in storage.objects[("ModelDeployment", "ml", "iris")]["status"]


def test_an_event_posted_twice_under_its_name_is_stored_once() -> None:
    # The crash may also come after the post but before the pending list is cleared.
    storage = MemoryStorage()
    model_deployment(storage, SPEC)
    service = reconciler(storage)
    run(service.reconcile_key("iris", "ml"))
    (posted,) = storage.event_names
    status = storage.objects[("ModelDeployment", "ml", "iris")]["status"]
    status["pendingEvents"] = [{"name": posted, "type": "Normal", "reason": "Ready", "message": "again"}]

    run(reconciler(storage).reconcile_key("iris", "ml"))

    assert len(storage.events) == 1
    assert "pendingEvents" not in storage.objects[("ModelDeployment", "ml", "iris")]["status"]


def test_a_rollback_whose_status_write_conflicts_is_not_lost_with_its_canary() -> None:
    # Found by the adversarial harness: the first attempt decided to roll back (canary pods that
    # cannot run) and deleted the canary before its status write got a 409; the second attempt,
    # reading the status as it was, saw no canary pods and created the rejected canary again.
    storage = MemoryStorage()
    service = reconciler(storage)
    model_deployment(storage, {**SPEC, "rollout": {"steps": [50]}})
    reconcile_stored(service)
    reconcile_stored(service)
    storage.edit_model_deployment(model=V2_MODEL)
    reconcile_stored(service)
    assert ("Deployment", "ml", "iris-canary") in storage.objects
    storage.objects[("Pod", "ml", "iris-canary-1")] = {
        "kind": "Pod",
        "metadata": {
            "name": "iris-canary-1",
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/name": "modeldeploy-server",
                "app.kubernetes.io/instance": "iris",
                "app.kubernetes.io/managed-by": "modeldeploy",
                "modeldeploy.io/variant": "canary",
            },
        },
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "404 Not Found"}},
                }
            ]
        },
    }
    conflicts = [KubernetesError("patch status: the object has been modified", status=409)]

    def conflict_once(operation: str, phase: str) -> None:
        if operation == "patch_status" and phase == "before" and conflicts:
            raise conflicts.pop()

    storage.interpose = conflict_once
    reconcile_stored(service)

    status = storage.objects[("ModelDeployment", "ml", "iris")]["status"]
    assert status["rejected"]["reason"] == "CanaryPodsFailing"
    assert "canary" not in status
    assert ("Deployment", "ml", "iris-canary") not in storage.objects


def test_an_object_in_a_namespace_being_deleted_is_left_alone() -> None:
    # Before: every reconcile of the 250 ModelDeployments of a namespace being deleted failed (the
    # API server refuses new children there), and each failure was retried and reported.
    storage = MemoryStorage()
    model_deployment(storage, SPEC)

    def terminating(operation: str, phase: str) -> None:
        if operation in ("apply", "post_event") and phase == "before":
            raise KubernetesError(
                'apply Deployment iris-stable: deployments.apps "iris-stable" is forbidden: unable to create'
                " new content in namespace ml because it is being terminated",
                status=403,
                causes=("NamespaceTerminating",),
            )

    storage.interpose = terminating

    async def scenario() -> bool:
        service = reconciler(storage)
        await service.reconcile_key("iris", "ml")
        retry_waiting = bool(service._queue._timers)
        service.close()
        return retry_waiting

    assert run(scenario()) is False
    assert storage.writes == []  # no ReconcileFailed status
    assert storage.events == []
