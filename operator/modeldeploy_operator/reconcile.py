"""The reconcile of one ModelDeployment: desired children applied, status observed and written.

Every trigger (the ModelDeployment's own events, a child's change, a rollout's wake-up, the
periodic resync) only names the object: `requeue(name, namespace)`. A bounded number of
workers then reconcile it as it is stored when its turn comes, never a body handed over
earlier, one reconcile at a time per object. The status is written with the resourceVersion it
was decided from; when the object changed meanwhile (409), it is read and decided again. Any
failure becomes a ReconcileFailed condition, a rate-limited Warning Event, a metric and a retry
with backoff, never a silent stop. When nothing changed, a reconcile writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from modeldeploy_operator.analysis import QueryFailure, QueryResult, evaluate, plan_analysis
from modeldeploy_operator.builders import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_VARIANT,
    MANAGER_NAME,
    Owner,
    Variant,
    deployment_name,
    selector_labels,
    service_name,
)
from modeldeploy_operator.desired import desired_children
from modeldeploy_operator.kinds import CHILD_KINDS, ROUTE_KINDS
from modeldeploy_operator.kube import KubernetesError, KubeStorage, Manifest
from modeldeploy_operator.metrics import METRICS, OperatorMetrics
from modeldeploy_operator.ordering import (
    ChildPlan,
    Observed,
    RouteState,
    last_applied_at,
    observe_deployment,
    plan_children,
    with_effective_weight,
)
from modeldeploy_operator.prometheus import PrometheusClient, PrometheusError
from modeldeploy_operator.rollout import (
    Placement,
    StepAnalysis,
    analysis_window,
    decide,
    next_analysis_at,
    placement,
)
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelDeploymentStatus, parse_duration
from modeldeploy_operator.status import (
    compute_status,
    invalid_spec_status,
    observe_canary_pods,
    reconcile_failed_status,
    status_patch,
    summarize_pod_problems,
)
from modeldeploy_operator.traffic import stored_canary_weight

# How long a child's event waits for the rest of its burst before the owner is reconciled.
COALESCE_SECONDS = 0.5
# While a canary runs, how often it is looked at at least (manual requests, deadline, pods);
# the end of each analysis window gets a wake-up of its own.
ROLLOUT_TICK_SECONDS = 5.0
# After a window's end, before it is queried: the last scrape of the window has to land.
WINDOW_SETTLE_SECONDS = 0.2
# How many ModelDeployments are reconciled at once (each object one reconcile at a time).
WORKERS = 4
# After a failed reconcile: the first retry, doubled at each failure in a row, up to the last.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0
# The same failure is told in a Warning Event at most this often (the condition always says it).
FAILURE_EVENT_SECONDS = 300.0
# Reads and decisions again when the object changed between the read and the status write.
CONFLICT_ATTEMPTS = 3
EVENT_COMPONENT = "modeldeploy-operator"
_logger = logging.getLogger("modeldeploy.reconcile")

# How long a retiring canary is kept at least while the stable Deployment grows (the rollout's
# progress deadline, when longer).
RETIRE_LIMIT_MIN = timedelta(minutes=1)
VARIANTS: tuple[Variant, ...] = ("stable", "canary")


@dataclass(frozen=True)
class StoredChildren:
    """The children a reconcile reads before it decides."""

    owner_name: str
    deployments: dict[str, Manifest]
    """The server Deployments this ModelDeployment controls, by variant."""
    pods: dict[str, list[Manifest]]
    """Their pods, by variant."""
    route: Manifest | None
    by_key: dict[tuple[str, str], Manifest | None]
    """Every child read, by (kind, name); None for one found missing."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    name: str | None = None
    """The Event's object name when it announces a transition (fixed before the status write)."""


def event_name(owner_name: str, owner_uid: str, decided_at: datetime, index: int, event: Event) -> str:
    """The name of the Event announcing a transition: the same wherever and however often the
    operator posts it, so the API server stores it once."""
    key = f"{owner_uid}/{decided_at.isoformat()}/{index}/{event.reason}/{event.message}"
    return f"{owner_name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _pending(events: list[Event]) -> list[Manifest] | None:
    return [
        {"name": event.name, "type": event.type, "reason": event.reason, "message": event.message[:1024]}
        for event in events
    ] or None


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


def controlled_by(child: Mapping[str, Any], owner_uid: str) -> bool:
    """Whether `child` names the ModelDeployment with this UID as its controller. Labels alone are
    anyone's to set: with the operator's delete rights, deleting by label would delete whatever a
    user labelled like a child, or the child of an earlier ModelDeployment of the same name."""
    return any(
        reference.get("uid") == owner_uid and reference.get("controller") is True
        for reference in child.get("metadata", {}).get("ownerReferences") or []
    )


def retry_delay(failures: int) -> float:
    """Seconds before the retry after `failures` failed reconciles in a row (1 for the first)."""
    doubled: float = RETRY_FIRST_SECONDS * 2.0 ** min(max(failures - 1, 0), 30)
    return min(RETRY_MAX_SECONDS, doubled)


def describe_failure(error: BaseException) -> tuple[str, str]:
    """The reason (CamelCase) and the one-line message of a failed reconcile."""
    if isinstance(error, KubernetesError):
        return "KubernetesAPIError", str(error)
    text = " ".join(str(error).split())
    return "UnexpectedError", f"{type(error).__name__}: {text}" if text else type(error).__name__


def rollout_wake_up(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> float:
    """Seconds until a running rollout should be looked at again: at the latest the tick, sooner
    when its analysis window ends first."""
    window_end = next_analysis_at(spec, status)
    if window_end is None:
        return ROLLOUT_TICK_SECONDS
    until_end = (window_end - now).total_seconds() + WINDOW_SETTLE_SECONDS
    return min(ROLLOUT_TICK_SECONDS, max(WINDOW_SETTLE_SECONDS, until_end))


class Reconciler:
    """Reconciles ModelDeployments by key: at most WORKERS at once, one at a time per object."""

    def __init__(
        self,
        storage: KubeStorage,
        settings: OperatorSettings,
        prometheus: PrometheusClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: OperatorMetrics = METRICS,
        workers: int = WORKERS,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._prometheus = prometheus
        # Per object: the requeue still waiting, and when (monotonic clock) it is due.
        self._requeued: dict[tuple[str, str], tuple[asyncio.Task[None], float]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._settings = settings
        self._clock = clock
        self._workers = workers
        self._slots: asyncio.Semaphore | None = None
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # Per object: failed reconciles in a row, and the last failure told in an Event (and when).
        self._failures: dict[tuple[str, str], int] = {}
        self._failure_told: dict[tuple[str, str], tuple[str, float]] = {}
        # Per object, per child (kind, name): what we last applied and the resourceVersion it produced.
        self._applied: defaultdict[tuple[str, str], dict[tuple[str, str], tuple[str, str]]] = defaultdict(
            dict
        )

    async def _apply(self, child: Manifest, stored: Mapping[tuple[str, str], Manifest | None]) -> Manifest:
        """Applies a child unless it is exactly as we last applied it and still holds every field
        we set (only its status, or fields of other managers, changed since). `stored` holds the
        children this reconcile has read already (None: found missing); others are read here.

        An idle reconcile then reads its children but writes nothing, not even a no-op apply, and
        neither does one after the controllers updated a Deployment's status. A child whose
        desired form changed is always applied, so fields we stopped setting are removed.
        """
        metadata = child["metadata"]
        applied_by_owner = self._applied[(metadata["namespace"], metadata["labels"][LABEL_INSTANCE])]
        key = (child["kind"], metadata["name"])
        fingerprint = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        last = applied_by_owner.get(key)
        if last is not None and last[0] == fingerprint:
            if key in stored:
                current = stored[key]
            else:
                current = await self._storage.get(
                    child["apiVersion"], child["kind"], metadata["name"], metadata["namespace"]
                )
            if current is not None and (
                current["metadata"]["resourceVersion"] == last[1] or holds_fields(current, child)
            ):
                return current
        applied = await self._storage.apply(child)
        applied_by_owner[key] = (fingerprint, applied["metadata"]["resourceVersion"])
        return applied

    async def reconcile_key(self, name: str, namespace: str) -> Outcome | None:
        """Reconciles the ModelDeployment as stored now, and posts the Events of what changed.

        Returns None when it is gone or the reconcile failed; a failure is reported (status,
        Event, metric) and retried with backoff here, never raised.
        """
        key = (namespace, name)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._workers)
        async with self._slots, self._locks[key]:
            try:
                reconciled = await self._reconcile_stored(name, namespace)
            except Exception as error:
                await self._report_failure(name, namespace, error)
                return None
            self._failures.pop(key, None)
            self._failure_told.pop(key, None)
            if reconciled is None:
                self._forget(key)
                return None
            body, outcome = reconciled
            await self._announce(body, outcome.events)
            return outcome

    def _forget(self, key: tuple[str, str]) -> None:
        """Drops what is kept per object once it is gone, so the operator does not grow with churn."""
        namespace, name = key
        self._metrics.forget(namespace, name)
        self._locks.pop(key, None)
        self._applied.pop(key, None)

    async def _reconcile_stored(self, name: str, namespace: str) -> tuple[Manifest, Outcome] | None:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            body = await self._storage.get_model_deployment(name, namespace)
            if body is None:
                return None
            try:
                return body, await self._measured_reconcile(body)
            except KubernetesError as error:
                if not error.is_conflict or attempt == CONFLICT_ATTEMPTS:
                    raise
                _logger.info(
                    "ModelDeployment %s/%s changed while reconciled: reading it again", namespace, name
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _report_failure(self, name: str, namespace: str, error: Exception) -> None:
        key = (namespace, name)
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = retry_delay(failures)
        reason, message = describe_failure(error)
        self._metrics.reconcile_failures.labels(reason).inc()
        _logger.warning(
            "Reconcile of ModelDeployment %s/%s failed (%d in a row), retrying in %.0fs: %s",
            namespace,
            name,
            failures,
            delay,
            message,
            exc_info=not isinstance(error, KubernetesError),
        )
        self.requeue(name, namespace, delay)
        try:
            body = await self._storage.get_model_deployment(name, namespace)
            if body is None:
                return
            status = reconcile_failed_status(
                generation=int(body["metadata"].get("generation", 1)),
                reason=reason,
                message=message,
                now=self._clock(),
                previous=body.get("status"),
            )
            patch = status_patch(body.get("status"), status)
            if patch is not None:
                await self._storage.patch_status(
                    name, namespace, patch, body["metadata"].get("resourceVersion")
                )
            told = self._failure_told.get(key)
            if told is None or told[0] != message or time.monotonic() - told[1] >= FAILURE_EVENT_SECONDS:
                self._failure_told[key] = (message, time.monotonic())
                await self._post_events(body, [Event("Warning", reason, message)])
        except Exception as report_error:
            _logger.warning(
                "Could not report the failure of ModelDeployment %s/%s in its status: %s",
                namespace,
                name,
                describe_failure(report_error)[1],
            )

    async def _announce(self, body: Manifest, events: list[Event]) -> None:
        """Posts the Events a status write recorded as pending, then clears them from the status
        (keeping those that could not be posted, for the next reconcile to post)."""
        if not events:
            return
        unposted = await self._post_events(body, events)
        metadata = body["metadata"]
        try:
            await self._storage.patch_status(
                metadata["name"], metadata["namespace"], {"pendingEvents": _pending(unposted)}, None
            )
        except KubernetesError as error:
            # They stay pending: the next reconcile posts them again under the same names.
            _logger.warning(
                "Could not clear the posted Events of ModelDeployment %s/%s: %s",
                metadata["namespace"],
                metadata["name"],
                error,
            )
        if unposted:
            self.requeue(metadata["name"], metadata["namespace"], RETRY_FIRST_SECONDS)

    async def _post_events(self, body: Mapping[str, Any], events: list[Event]) -> list[Event]:
        """Posts each Event; one that cannot be posted is logged and counted, never silently lost.
        Returns those that could not be posted."""
        metadata = body["metadata"]
        unposted = []
        for event in events:
            try:
                posted = await self._storage.post_event(
                    body, event.type, event.reason, event.message, EVENT_COMPONENT, event.name
                )
            except KubernetesError as error:
                unposted.append(event)
                self._metrics.events.labels(event.type, event.reason, "failed").inc()
                _logger.warning(
                    "Could not post the %s Event %s about ModelDeployment %s/%s (%s): %s",
                    event.type,
                    event.reason,
                    metadata["namespace"],
                    metadata["name"],
                    event.message,
                    error,
                )
            else:
                self._metrics.events.labels(
                    event.type, event.reason, "posted" if posted else "repeated"
                ).inc()
        return unposted

    def requeue(self, name: str, namespace: str, delay: float = 0.0) -> None:
        """Reconciles the object after `delay` seconds (once, however often it is asked meanwhile; an
        earlier request replaces a later one that is still waiting). Every trigger comes through here.

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
            await self.reconcile_key(name, namespace)

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
        """Reconciles the object `body` names, as it is stored now (`body` itself is not used)."""
        metadata = body["metadata"]
        return await self.reconcile_key(metadata["name"], metadata["namespace"]) or Outcome()

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
        # Events a crash kept from being posted after their status write: posted now, under their names.
        leftover = await self._post_events(
            body,
            [
                Event(e.type, e.reason, e.message, e.name)
                for e in _parse_status(previous).pending_events or []
            ],
        )
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec", {}))
        except ValidationError as error:
            # A spec the schema could not catch: report it and keep what runs, no retries.
            status = invalid_spec_status(
                generation=generation, message=validation_message(error), now=self._clock(), previous=previous
            )
            return await self._write_status(body, status, self._clock(), leftover)

        now = self._clock()
        current = _parse_status(previous).model_copy(update={"pending_events": None})
        analysis = await self._analyse(owner, spec, current, now)
        annotations = body["metadata"].get("annotations") or {}
        stored = await self._read_children(owner, spec)
        canary_pods = None
        running = placement(spec, current)
        if current.canary is not None and running is not None:
            canary_pods = observe_canary_pods(
                stored.deployments.get("canary"), stored.pods["canary"], running.canary_replicas
            )
        decision = decide(
            spec, current, now, analysis=analysis, annotations=annotations, canary_pods=canary_pods
        )
        target = placement(spec, decision.status)
        plan = None if target is None else self._plan(spec, decision.status, target, stored, now)
        decided = decision.status if plan is None else with_effective_weight(decision.status, plan)
        self._metrics.observe_rollout(owner.namespace, owner.name, current, decided, analysis)

        # The children do not depend on each other: apply them at once.
        wanted = desired_children(owner, spec, self._settings, plan)
        applied = list(await asyncio.gather(*(self._apply(child, stored.by_key) for child in wanted)))
        kept = [stored.deployments["canary"]] if plan is not None and plan.keep_canary else []
        await self._delete_unwanted_children(owner, [*applied, *kept])
        stable_name = deployment_name(owner.name, "stable")
        stable = next(
            c for c in applied if c["kind"] == "Deployment" and c["metadata"]["name"] == stable_name
        )
        status = compute_status(
            name=owner.name,
            namespace=owner.namespace,
            generation=generation,
            spec=spec,
            deployment=stable,
            pod_problems=summarize_pod_problems(stored.pods["stable"]),
            now=now,
            previous=decided.model_dump(mode="json", by_alias=True, exclude_none=True),
            served_model=plan.stable_model if plan is not None else None,
        )
        wake_up = [rollout_wake_up(spec, decided, now)] if decided.canary is not None else []
        if plan is not None and plan.recheck_seconds is not None:
            wake_up.append(plan.recheck_seconds)
        if plan is not None and plan.keep_canary:
            wake_up.append(ROLLOUT_TICK_SECONDS)  # the retire limit passes on the clock, not on an event
        if wake_up:
            self.requeue(owner.name, owner.namespace, min(wake_up))
        return await self._write_status(
            body,
            status,
            now,
            [*leftover, *(Event(event.type, event.reason, event.message) for event in decision.events)],
        )

    def _plan(
        self,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        target: Placement,
        stored: StoredChildren,
        now: datetime,
    ) -> ChildPlan:
        route = stored.route
        observed = Observed(
            stable=observe_deployment(stored.deployments.get("stable")),
            canary=observe_deployment(stored.deployments.get("canary")),
            route=None
            if route is None
            else RouteState(
                canary_weight=stored_canary_weight(route, service_name(stored.owner_name, "canary")),
                written_at=last_applied_at(route, self._settings.field_manager),
            ),
        )
        return plan_children(
            spec,
            target,
            observed,
            now,
            retiring_since=status.history[0].finished_at if status.history else None,
            route_settle=timedelta(seconds=self._settings.route_settle_seconds),
            retire_limit=max(parse_duration(spec.rollout.progress_deadline), RETIRE_LIMIT_MIN),
        )

    async def _read_children(self, owner: Owner, spec: ModelDeploymentSpec) -> StoredChildren:
        """The server Deployments this ModelDeployment controls, their pods and its route, as stored."""
        owned = {LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGER_NAME}
        deployments, pods = await asyncio.gather(
            self._storage.list_objects("apps/v1", "Deployment", owner.namespace, owned),
            self._storage.list_objects("v1", "Pod", owner.namespace, selector_labels(owner.name)),
        )
        route = None
        route_kind = ROUTE_KINDS.get(spec.traffic.provider)
        if route_kind is not None:
            route = await self._storage.get(
                route_kind.api_version, route_kind.kind, owner.name, owner.namespace
            )
        names = {deployment_name(owner.name, variant): variant for variant in VARIANTS}
        by_variant: dict[str, Manifest] = {
            names[deployment["metadata"]["name"]]: deployment
            for deployment in deployments
            if deployment["metadata"]["name"] in names and controlled_by(deployment, owner.uid)
        }
        pods_by_variant: dict[str, list[Manifest]] = {variant: [] for variant in VARIANTS}
        for pod in pods:
            variant = (pod["metadata"].get("labels") or {}).get(LABEL_VARIANT)
            if variant in pods_by_variant:
                pods_by_variant[variant].append(pod)
        # What was read here need not be read again before it is applied (None: it does not exist).
        by_key: dict[tuple[str, str], Manifest | None] = {
            ("Deployment", name): by_variant.get(variant) for name, variant in names.items()
        }
        if route_kind is not None:
            by_key[(route_kind.kind, owner.name)] = route
        return StoredChildren(
            owner_name=owner.name, deployments=by_variant, pods=pods_by_variant, route=route, by_key=by_key
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
        for child_kind in CHILD_KINDS:
            if not (child_kind.optional and child_kind.applied):
                continue
            kind, api_version = child_kind.kind, child_kind.api_version
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
                if (kind, name) not in wanted and controlled_by(existing, owner.uid):
                    await self._storage.delete(api_version, kind, name, owner.namespace)

    async def _write_status(
        self, body: Mapping[str, Any], status: Manifest, now: datetime, events: list[Event]
    ) -> Outcome:
        """Writes the status decided from `body`, only onto that version of the object (409 otherwise),
        with the Events announcing its transitions as pending: each gets its name here, before the
        write, so whoever posts it after the write (this reconcile, or the next after a crash) posts
        the same Event."""
        metadata, previous = body["metadata"], body.get("status")
        events = [*events, *transition_events(previous, status)]
        named = [
            event
            if event.name
            else replace(event, name=event_name(metadata["name"], metadata.get("uid", ""), now, index, event))
            for index, event in enumerate(events)
        ]
        if named:
            status = {**status, "pendingEvents": _pending(named)}
        patch = status_patch(previous, status)
        if patch is None:
            return Outcome(events=named)
        await self._storage.patch_status(
            metadata["name"], metadata["namespace"], patch, metadata.get("resourceVersion")
        )
        return Outcome(status_written=True, events=named)
