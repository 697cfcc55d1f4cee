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
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from modeldeploy_operator.announce import Announcer, Event, event_name, pending_list, transition_events
from modeldeploy_operator.builders import (
    Owner,
    Variant,
    deployment_name,
    service_name,
)
from modeldeploy_operator.children import Children, StoredChildren
from modeldeploy_operator.desired import desired_children
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
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.rollout import (
    Placement,
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
from modeldeploy_operator.windows import WindowAnalyst
from modeldeploy_operator.workqueue import WorkQueue

# How long a child's event waits for the rest of its burst before the owner is reconciled.
COALESCE_SECONDS = 0.5
# While a canary runs, how often it is looked at at least (manual requests, deadline, pods);
# the end of each analysis window gets a wake-up of its own.
ROLLOUT_TICK_SECONDS = 5.0
# After a window's end, before it is queried: the last scrape of the window has to land.
WINDOW_SETTLE_SECONDS = 0.2
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


def validation_message(error: ValidationError) -> str:
    """One line per problem, each naming the field as a path under spec."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in ("spec", *item["loc"]))
        problems.append(f"{path}: {item['msg']}")
    return "; ".join(problems)


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
    """Reconciles ModelDeployments by key: at most `settings.reconcile_workers` at once, one at a time
    per object."""

    def __init__(
        self,
        storage: KubeStorage,
        settings: OperatorSettings,
        prometheus: PrometheusClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: OperatorMetrics = METRICS,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._queue = WorkQueue(self.reconcile_key, settings.reconcile_workers)
        metrics.reconciles_waiting.set_function(lambda: self._queue.waiting)
        self._children = Children(storage)
        self._announcer = Announcer(storage, metrics)
        self._analyst = WindowAnalyst(prometheus, settings, metrics)
        # Per object: failed reconciles in a row, and the last failure told in an Event (and when).
        self._failures: dict[tuple[str, str], int] = {}
        self._failure_told: dict[tuple[str, str], tuple[str, float]] = {}

    async def reconcile_key(self, name: str, namespace: str) -> Outcome | None:
        """Reconciles the ModelDeployment as stored now, and posts the Events of what changed.

        Returns None when it is gone or the reconcile failed; a failure is reported (status,
        Event, metric) and retried with backoff here, never raised.
        """
        key = (namespace, name)
        async with self._queue.turn(key):
            try:
                reconciled = await self._reconcile_stored(name, namespace)
            except KubernetesError as error:
                if not error.is_namespace_terminating:
                    await self._report_failure(name, namespace, error)
                    return None
                # The namespace controller is deleting the object with everything around it: a
                # retry, a failure condition or a Warning Event could not be written there either
                # (deleting a namespace of 250 ModelDeployments cost over a thousand such failures).
                _logger.info("Namespace %s is being deleted: ModelDeployment %s left to it", namespace, name)
                self._failures.pop(key, None)
                return None
            except Exception as error:
                await self._report_failure(name, namespace, error)
                return None
            self._failures.pop(key, None)
            self._failure_told.pop(key, None)
            if reconciled is None:
                self._forget(key)
                return None
            body, outcome = reconciled
            if not await self._announcer.announce(body, outcome.events):
                self.requeue(name, namespace, RETRY_FIRST_SECONDS)
            return outcome

    def _forget(self, key: tuple[str, str]) -> None:
        """Drops what is kept per object once it is gone, so the operator does not grow with churn."""
        namespace, name = key
        self._metrics.forget(namespace, name)
        self._queue.forget(key)
        self._children.forget(namespace, name)

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
                await self._announcer.post(body, [Event("Warning", reason, message)])
        except Exception as report_error:
            _logger.warning(
                "Could not report the failure of ModelDeployment %s/%s in its status: %s",
                namespace,
                name,
                describe_failure(report_error)[1],
            )

    def requeue(self, name: str, namespace: str, delay: float = 0.0) -> None:
        """Reconciles the object after `delay` seconds (see WorkQueue). Every trigger comes through here."""
        self._queue.requeue(name, namespace, delay)

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
        """Cancels pending reconciles and refuses new ones: the clients are about to close."""
        self._queue.close()

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
        leftover = await self._announcer.post(
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
        analysis = await self._analyst.analyse(owner, spec, current, now)
        annotations = body["metadata"].get("annotations") or {}
        stored = await self._children.read(owner, spec)
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
        applied = list(
            await asyncio.gather(*(self._children.apply(child, stored.by_key) for child in wanted))
        )
        kept = [stored.deployments["canary"]] if plan is not None and plan.keep_canary else []
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
        outcome = await self._write_status(
            body,
            status,
            now,
            [*leftover, *(Event(event.type, event.reason, event.message) for event in decision.events)],
        )
        # Deleting comes only after the decision is stored: a rollback's verdict that failed to be
        # written (a 409) must not lose the canary it was judged on, or the next attempt, reading the
        # status as it was, would see no canary pods and start them again.
        await self._children.delete_unwanted(owner, [*applied, *kept])
        return outcome

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
            rejected_revision=status.rejected.revision if status.rejected is not None else None,
        )

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
            status = {**status, "pendingEvents": pending_list(named)}
        patch = status_patch(previous, status)
        if patch is None:
            return Outcome(events=named)
        await self._storage.patch_status(
            metadata["name"], metadata["namespace"], patch, metadata.get("resourceVersion")
        )
        return Outcome(status_written=True, events=named)
