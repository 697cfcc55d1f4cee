"""The reconcile of one ModelDeployment: desired children applied, status observed and written.

It runs for every trigger (create, update, resume, a child's change, the periodic timer)
and is idempotent: when nothing changed, it applies identical objects (which the API server
does not persist) and writes no status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from modeldeploy_operator.analysis import QueryFailure, QueryResult, evaluate, plan_analysis
from modeldeploy_operator.builders import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGER_NAME,
    Owner,
    Variant,
    deployment_name,
    selector_labels,
)
from modeldeploy_operator.desired import desired_children
from modeldeploy_operator.kube import KubernetesError, KubeStorage, Manifest
from modeldeploy_operator.metrics import METRICS, OperatorMetrics
from modeldeploy_operator.prometheus import PrometheusClient, PrometheusError
from modeldeploy_operator.rollout import (
    CanaryPods,
    EmitEvent,
    StepAnalysis,
    analysis_window,
    decide,
    next_analysis_at,
    placement,
)
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy_operator.status import (
    compute_status,
    invalid_spec_status,
    observe_canary_pods,
    status_patch,
    summarize_pod_problems,
)

# How long a child's event waits for the rest of its burst before the owner is reconciled.
COALESCE_SECONDS = 0.5
# While a canary runs, how often it is looked at at least (manual requests, deadline, pods);
# the end of each analysis window gets a wake-up of its own.
ROLLOUT_TICK_SECONDS = 5.0
# After a window's end, before it is queried: the last scrape of the window has to land.
WINDOW_SETTLE_SECONDS = 0.2
# After a failed reconcile that no event will repeat.
RETRY_SECONDS = 15.0
_logger = logging.getLogger("modeldeploy.reconcile")

# Children that exist only while the spec or a rollout asks for them (the stable Deployment
# is always wanted, so listing Deployments only ever finds a canary to delete).
OPTIONAL_CHILD_KINDS = {
    "Deployment": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "VirtualService": "networking.istio.io/v1",
}


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconcile did, for the handler layer to report."""

    status_written: bool = False
    events: list[Event] = field(default_factory=list)


def _parse_status(raw: Mapping[str, Any] | None) -> ModelDeploymentStatus:
    """The status as the rollout machine reads it; one it cannot read starts afresh."""
    try:
        return ModelDeploymentStatus.model_validate(raw or {})
    except ValidationError:
        return ModelDeploymentStatus()


def holds_fields(stored: Any, wanted: Any) -> bool:
    """Whether `stored` has every field of `wanted` with the same value; fields only `stored` has
    (defaults, status, other managers' fields) do not matter. Lists must match item by item."""
    if isinstance(wanted, Mapping):
        return isinstance(stored, Mapping) and all(
            key in stored and holds_fields(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(holds_fields(item, wanted_item) for item, wanted_item in zip(stored, wanted, strict=True))
        )
    return bool(stored == wanted)


def validation_message(error: ValidationError) -> str:
    """One line per problem, each naming the field as a path under spec."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in ("spec", *item["loc"]))
        problems.append(f"{path}: {item['msg']}")
    return "; ".join(problems)


def _condition(status: Mapping[str, Any] | None, kind: str, key: str = "status") -> str:
    for condition in (status or {}).get("conditions", []):
        if condition.get("type") == kind:
            return str(condition.get(key, ""))
    return ""


# Ready False for these reasons is the stable Deployment catching up with a change (a resize
# while a canary runs, say), not news when it is Ready again with the same model.
_ROUTINE_NOT_READY = frozenset({"DeploymentUpdating", "RollingOut"})


def transition_events(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[Event]:
    """Events for the changes people care about: a model became Ready (a new one, or one that
    was failing or missing), the ModelDeployment became Stalled."""
    events = []
    serving_again = (previous or {}).get("stable") == current.get("stable") and _condition(
        previous, "Ready", "reason"
    ) in _ROUTINE_NOT_READY
    if (
        _condition(current, "Ready") == "True"
        and _condition(previous, "Ready") != "True"
        and not serving_again
    ):
        stable = current.get("stable", {})
        events.append(
            Event(
                "Normal", "Ready", f"Model {stable.get('uri')} (version {stable.get('version')}) is serving"
            )
        )
    if _condition(current, "Stalled") == "True" and (
        _condition(previous, "Stalled") != "True"
        or _condition(previous, "Stalled", "message") != _condition(current, "Stalled", "message")
    ):
        events.append(
            Event(
                "Warning", _condition(current, "Stalled", "reason"), _condition(current, "Stalled", "message")
            )
        )
    return events


def rollout_wake_up(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> float:
    """Seconds until a running rollout should be looked at again: at the latest the tick, sooner
    when its analysis window ends first."""
    window_end = next_analysis_at(spec, status)
    if window_end is None:
        return ROLLOUT_TICK_SECONDS
    until_end = (window_end - now).total_seconds() + WINDOW_SETTLE_SECONDS
    return min(ROLLOUT_TICK_SECONDS, max(WINDOW_SETTLE_SECONDS, until_end))


class Reconciler:
    """Reconciles ModelDeployments one at a time per object (triggers may arrive concurrently)."""

    def __init__(
        self,
        storage: KubeStorage,
        settings: OperatorSettings,
        prometheus: PrometheusClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outcome: Callable[[Manifest, Outcome], None] = lambda body, outcome: None,
        metrics: OperatorMetrics = METRICS,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._prometheus = prometheus
        self._on_outcome = on_outcome
        # Per object: the requeue still waiting, and when (monotonic clock) it is due.
        self._requeued: dict[tuple[str, str], tuple[asyncio.Task[None], float]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._settings = settings
        self._clock = clock
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queued: set[tuple[str, str]] = set()
        # Per child: what we last applied and the resourceVersion it produced.
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}

    async def _apply(self, child: Manifest) -> Manifest:
        """Applies a child unless it is exactly as we last applied it and still holds every field
        we set (only its status, or fields of other managers, changed since).

        An idle reconcile then reads its children but writes nothing, not even a no-op apply, and
        neither does one after the controllers updated a Deployment's status. A child whose
        desired form changed is always applied, so fields we stopped setting are removed.
        """
        metadata = child["metadata"]
        key = (child["kind"], metadata["namespace"], metadata["name"])
        fingerprint = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        last = self._applied.get(key)
        if last is not None and last[0] == fingerprint:
            current = await self._storage.get(
                child["apiVersion"], child["kind"], metadata["name"], metadata["namespace"]
            )
            if current is not None and (
                current["metadata"]["resourceVersion"] == last[1] or holds_fields(current, child)
            ):
                return current
        applied = await self._storage.apply(child)
        self._applied[key] = (fingerprint, applied["metadata"]["resourceVersion"])
        return applied

    async def reconcile_by_name(self, name: str, namespace: str) -> tuple[Manifest, Outcome] | None:
        """Reconciles the ModelDeployment as stored when its turn comes.

        Child events arrive in bursts (every pod of a rollout changes several times); one
        reconcile already waiting covers them all, because it reads the object afresh.
        Returns None when the trigger was coalesced or the ModelDeployment is gone.
        """
        key = (namespace, name)
        if key in self._queued:
            return None
        self._queued.add(key)
        try:
            await asyncio.sleep(COALESCE_SECONDS)
            async with self._locks[key]:
                self._queued.discard(key)
                body = await self._storage.get_model_deployment(name, namespace)
                if body is None:
                    self._metrics.forget(namespace, name)
                    return None
                return body, await self._measured_reconcile(body)
        finally:
            self._queued.discard(key)

    def requeue(self, name: str, namespace: str, delay: float) -> None:
        """Reconciles again after `delay` seconds (once, however often it is asked meanwhile; an
        earlier request replaces a later one that is still waiting).

        A rollout's steps and analysis windows end on the clock rather than on an event; this
        replaces kopf timers, which would put a finalizer on every ModelDeployment.
        """
        key = (namespace, name)
        if self._closed:
            return
        due = time.monotonic() + delay
        waiting = self._requeued.get(key)
        if waiting is not None:
            if waiting[1] <= due:
                return
            # Still asleep (it leaves the table before it reconciles): safe to cancel.
            waiting[0].cancel()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._requeued.pop(key, None)
            try:
                reconciled = await self.reconcile_by_name(name, namespace)
            except KubernetesError as error:
                _logger.warning(
                    "Reconcile of ModelDeployment %s/%s failed, retrying: %s", namespace, name, error
                )
                self.requeue(name, namespace, RETRY_SECONDS)
                return
            if reconciled is not None:
                self._on_outcome(*reconciled)

        task = asyncio.create_task(later())
        self._requeued[key] = (task, due)
        # Kept until done (not only while waiting), so closing cancels a reconcile under way too.
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def resync(self, namespaces: list[str]) -> None:
        """Reconciles every ModelDeployment once: the safety net under the event-driven reconciles."""
        scopes: list[str | None] = list(namespaces) or [None]
        count = 0
        for namespace in scopes:
            for body in await self._storage.list_model_deployments(namespace):
                self.requeue(body["metadata"]["name"], body["metadata"]["namespace"], 0)
                count += 1
        _logger.info("Periodic resync of %d ModelDeployments", count)

    def close(self) -> None:
        """Cancels pending requeues and refuses new ones: the clients are about to close."""
        self._closed = True
        for task in self._running:
            task.cancel()
        self._requeued.clear()

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        metadata = body["metadata"]
        async with self._locks[(metadata["namespace"], metadata["name"])]:
            return await self._measured_reconcile(body)

    async def _measured_reconcile(self, body: Mapping[str, Any]) -> Outcome:
        started = time.perf_counter()
        result = "error"
        try:
            outcome = await self._reconcile(body)
            result = "ok"
            return outcome
        finally:
            self._metrics.reconciles.labels(result).inc()
            self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        if body["metadata"].get("deletionTimestamp"):
            # Being deleted: the garbage collector removes the children; recreating them would race it.
            return Outcome()
        owner = Owner.from_body(body)
        generation = int(body["metadata"].get("generation", 1))
        previous = body.get("status")
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec", {}))
        except ValidationError as error:
            # A spec the schema could not catch: report it and keep what runs, no retries.
            status = invalid_spec_status(
                generation=generation, message=validation_message(error), now=self._clock(), previous=previous
            )
            return await self._write_status(owner, previous, status)

        now = self._clock()
        current = _parse_status(previous)
        analysis = await self._analyse(owner, spec, current, now)
        annotations = body["metadata"].get("annotations") or {}
        canary_pods = await self._observe_canary(owner) if current.canary is not None else None
        decision = decide(
            spec, current, now, analysis=analysis, annotations=annotations, canary_pods=canary_pods
        )
        self._metrics.observe_rollout(owner.namespace, owner.name, current, decision.status, analysis)
        place = placement(spec, decision.status)

        # The children do not depend on each other: apply them at once.
        wanted = desired_children(owner, spec, self._settings, place)
        applied = list(await asyncio.gather(*(self._apply(child) for child in wanted)))
        await self._delete_unwanted_children(owner, applied)
        stable_name = deployment_name(owner.name, "stable")
        stable = next(
            c for c in applied if c["kind"] == "Deployment" and c["metadata"]["name"] == stable_name
        )
        pods = await self._server_pods(owner, "stable")
        status = compute_status(
            name=owner.name,
            namespace=owner.namespace,
            generation=generation,
            spec=spec,
            deployment=stable,
            pod_problems=summarize_pod_problems(pods),
            now=now,
            previous=decision.status.model_dump(mode="json", by_alias=True, exclude_none=True),
            served_model=place.stable_model if place is not None else None,
        )
        if decision.status.canary is not None:
            self.requeue(owner.name, owner.namespace, rollout_wake_up(spec, decision.status, now))
        outcome = await self._write_status(owner, previous, status)
        rollout_events = [
            Event(action.type, action.reason, action.message)
            for action in decision.actions
            if isinstance(action, EmitEvent)
        ]
        outcome.events[:0] = rollout_events
        return outcome

    async def _observe_canary(self, owner: Owner) -> CanaryPods | None:
        deployment = await self._storage.get(
            "apps/v1", "Deployment", deployment_name(owner.name, "canary"), owner.namespace
        )
        if deployment is None:
            return None
        return observe_canary_pods(deployment, await self._server_pods(owner, "canary"))

    async def _server_pods(self, owner: Owner, variant: Variant) -> list[Manifest]:
        return await self._storage.list_objects(
            "v1", "Pod", owner.namespace, selector_labels(owner.name, variant)
        )

    async def _analyse(
        self, owner: Owner, spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
    ) -> StepAnalysis | None:
        """The checks of the analysis window that is due, or None when none is."""
        window = analysis_window(spec, status, now)
        if window is None:
            return None
        plan = plan_analysis(owner.name, owner.namespace, spec.rollout.analysis, window.end - window.start)
        address = spec.rollout.analysis.prometheus_address or self._settings.prometheus_address
        allowed = self._settings.allows_prometheus(address)

        async def answer(query: str) -> QueryResult:
            if not allowed:
                self._metrics.prometheus_queries.labels("not-allowed").inc()
                return QueryFailure(
                    "not-allowed",
                    f"{address} is neither the operator's Prometheus nor in its"
                    " MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES",
                )
            started = time.perf_counter()
            result = "ok"
            try:
                return await self._prometheus.query(address, query, at=window.end)
            except PrometheusError as error:
                result = error.kind
                return QueryFailure(error.kind, str(error))
            finally:
                self._metrics.prometheus_queries.labels(result).inc()
                self._metrics.prometheus_query_seconds.observe(time.perf_counter() - started)

        keys = list(plan.queries)
        answers = await asyncio.gather(*(answer(plan.queries[key]) for key in keys))
        return StepAnalysis(
            window=window, checks=tuple(evaluate(plan, dict(zip(keys, answers, strict=True))))
        )

    async def _delete_unwanted_children(self, owner: Owner, applied: list[Manifest]) -> None:
        wanted = {(child["kind"], child["metadata"]["name"]) for child in applied}
        owned = {LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGER_NAME}
        for kind, api_version in OPTIONAL_CHILD_KINDS.items():
            try:
                existing_children = await self._storage.list_objects(
                    api_version, kind, owner.namespace, owned
                )
            except KubernetesError as error:
                if error.is_not_found:  # the kind's CRD is not installed (no Gateway API, no Istio)
                    continue
                raise
            for existing in existing_children:
                name = existing["metadata"]["name"]
                if (kind, name) not in wanted:
                    await self._storage.delete(api_version, kind, name, owner.namespace)

    async def _write_status(
        self, owner: Owner, previous: Mapping[str, Any] | None, status: Manifest
    ) -> Outcome:
        patch = status_patch(previous, status)
        if patch is None:
            return Outcome()
        await self._storage.patch_status(owner.name, owner.namespace, patch)
        return Outcome(status_written=True, events=transition_events(previous, status))
