"""The safe order of a rollout's changes, as a pure function of the target and what is observed.

`rollout.placement` says where models should run once everything has happened; this module
says what to apply *now* so that no request meets a model without ready pods on the way:

- A canary gets traffic only as its pods become ready: a router's weight is the step's weight
  scaled by the share of the canary's pods that are ready (0 until the first one is), and with
  the `replicas` provider the stable Deployment shrinks only by the canary pods that are ready.
- A promoted canary keeps serving until the stable Deployment runs the new model on all its pods:
  the stable Deployment first switches to the new model at its current size, then grows, and
  only then does the router's weight go back to 0; after the router has held weight 0 for the
  data plane to catch up, the canary Deployment goes.
- A rejected canary (rolled back, aborted) gets no traffic from the moment it is rejected: a
  router's weight is 0 at once (its Deployment goes after the settle time, so requests under
  way finish), and with `replicas` its Deployment goes at once while stable grows back.
- A canary ended otherwise (the spec named the stable model again, or a newer one) gets no
  router traffic either, but with `replicas` its pods serve until stable is back at full size.
- A canary kept longer than `retire_limit` after its rollout ended goes anyway, so a stable
  Deployment that cannot grow never pins it.

Everything here is derived from the stored children and the status, so an operator that
crashes between two of these steps resumes at the right one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .builders import MODEL_REVISION_ANNOTATION, model_revision
from .rollout import Placement
from .spec import ModelDeploymentSpec, ModelDeploymentStatus, ModelSource

__all__ = [
    "ChildPlan",
    "Observed",
    "RouteState",
    "VariantPods",
    "last_applied_at",
    "observe_deployment",
    "plan_children",
    "with_effective_weight",
]


@dataclass(frozen=True)
class VariantPods:
    """A server Deployment as stored: the model its pod template runs and how many pods serve it."""

    revision: str
    """The model revision of the pod template (`modeldeploy.io/model-revision`)."""
    replicas: int | None
    """spec.replicas (None when an autoscaler has not set it yet)."""
    ready: int
    """Pods of that template that are available; a lower bound while older pods still exist."""


@dataclass(frozen=True)
class RouteState:
    """The route object (HTTPRoute, VirtualService) as stored."""

    canary_weight: int
    written_at: datetime | None
    """When the operator last applied it (its managedFields entry); None when unknown."""


@dataclass(frozen=True)
class Observed:
    """The children that decide the order, as the reconcile read them."""

    stable: VariantPods | None
    canary: VariantPods | None
    route: RouteState | None = None


@dataclass(frozen=True)
class ChildPlan:
    """What to apply now."""

    stable_model: ModelSource
    stable_replicas: int | None
    """None leaves the count to the autoscaler."""
    canary_model: ModelSource | None
    """The canary Deployment to apply, or None."""
    canary_replicas: int
    keep_canary: bool
    """An existing canary Deployment stays exactly as it is: neither applied nor deleted."""
    route_weight: int
    """The canary's weight in the route object."""
    effective_weight: float
    """The share of requests the canary gets with these children, in percent."""
    recheck_seconds: float | None = None
    """Look again after this long even without an event (a timed wait), or None."""

    @property
    def settled(self) -> bool:
        """Whether the children are at the placement's target, with nothing left to wait for."""
        return not self.keep_canary and self.recheck_seconds is None


def observe_deployment(deployment: Mapping[str, Any] | None) -> VariantPods | None:
    """A server Deployment's model revision and the available pods of its current template.

    Counted from the Deployment's status, conservatively: pods of older templates that are
    still there are assumed available, so they are never taken for pods of the new one.
    """
    if deployment is None:
        return None
    metadata = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    template_annotations = (spec.get("template", {}).get("metadata", {}).get("annotations")) or {}
    revision = str(template_annotations.get(MODEL_REVISION_ANNOTATION, ""))
    replicas = spec.get("replicas")
    if status.get("observedGeneration", 0) < metadata.get("generation", 0):
        # The controller has not seen the current template yet: none of its pods can be counted.
        return VariantPods(revision=revision, replicas=replicas, ready=0)
    updated = int(status.get("updatedReplicas", 0))
    older = max(0, int(status.get("replicas", 0)) - updated)
    available = int(status.get("availableReplicas", 0))
    return VariantPods(revision=revision, replicas=replicas, ready=max(0, min(updated, available - older)))


def last_applied_at(child: Mapping[str, Any] | None, manager: str) -> datetime | None:
    """When the field manager `manager` last applied `child` (its managedFields); None when not recorded."""
    if child is None:
        return None
    times = [
        datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
        for entry in child.get("metadata", {}).get("managedFields") or []
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and entry.get("time")
    ]
    return max(times, default=None)


def _ready_of(pods: VariantPods | None, model: ModelSource) -> int:
    if pods is None or pods.revision != model_revision(model):
        return 0
    return pods.ready


def _without_canary(target: Placement) -> ChildPlan:
    """The target outside of a rollout, as it is: the stable model alone, no canary, no weight."""
    return ChildPlan(
        stable_model=target.stable_model,
        stable_replicas=target.stable_replicas,
        canary_model=None,
        canary_replicas=0,
        keep_canary=False,
        route_weight=0,
        effective_weight=0.0,
    )


def _during_rollout(spec: ModelDeploymentSpec, target: Placement, observed: Observed) -> ChildPlan:
    assert target.canary_model is not None  # the caller checks
    ready = min(_ready_of(observed.canary, target.canary_model), target.canary_replicas)
    base = ChildPlan(
        stable_model=target.stable_model,
        stable_replicas=target.stable_replicas,
        canary_model=target.canary_model,
        canary_replicas=target.canary_replicas,
        keep_canary=False,
        route_weight=0,
        effective_weight=0.0,
    )
    if spec.traffic.provider == "replicas":
        stable = target.stable_replicas
        if stable is not None:
            # Together the ready canary pods and the stable ones never fall below the spec's count.
            stable = max(stable, spec.replicas - ready)
        serving_stable = observed.stable.ready if observed.stable is not None else 0
        if stable is not None:
            serving_stable = min(serving_stable, stable)
        total = ready + serving_stable
        return replace(
            base,
            stable_replicas=stable,
            effective_weight=0.0 if total == 0 else round(100 * ready / total, 1),
        )
    weight = target.canary_weight * ready // target.canary_replicas if target.canary_replicas else 0
    return replace(base, route_weight=weight, effective_weight=float(weight))


def _retiring(
    spec: ModelDeploymentSpec,
    target: Placement,
    observed: Observed,
    now: datetime,
    retiring_since: datetime | None,
    route_settle: timedelta,
    retire_limit: timedelta,
    rejected_revision: str | None,
) -> ChildPlan:
    stable = observed.stable
    stable_revision = model_revision(target.stable_model)
    current = stable.replicas if stable is not None else None
    wanted = target.stable_replicas if target.stable_replicas is not None else current
    on_model = stable is not None and stable.revision == stable_revision
    stable_replicas = target.stable_replicas
    if (
        stable_replicas is not None
        and current is not None
        and current < stable_replicas
        and not (on_model and stable is not None and stable.ready >= current)
    ):
        # Switch the model at the current size first, then grow: resizing and changing the template
        # at once makes the Deployment create pods of the old template only to delete them again.
        stable_replicas = current
    stable_full = on_model and stable is not None and stable.ready >= (wanted or 0)
    overdue = retiring_since is None or now >= retiring_since + retire_limit
    route = observed.route
    assert observed.canary is not None  # the caller checks
    promoted = observed.canary.revision == stable_revision
    rejected = rejected_revision is not None and observed.canary.revision == rejected_revision
    plan = replace(
        _without_canary(target),
        stable_replicas=target.stable_replicas if rejected else stable_replicas,
        keep_canary=True,
        # Only a promoted canary, serving the new stable model, keeps its share while stable switches.
        route_weight=route.canary_weight if route is not None and promoted else 0,
    )
    if not stable_full and not overdue and not rejected:
        return plan
    plan = replace(plan, route_weight=0)
    if spec.traffic.provider == "replicas" or overdue:
        # Without the canary's pods nothing justifies a stable Deployment below its target: an overdue
        # canary goes while the stable one may still be at the size it had beside it.
        return replace(plan, keep_canary=False, stable_replicas=target.stable_replicas)
    # The router's weight goes to 0 first; the canary goes once the data plane had time to follow.
    if route is None:
        return replace(plan, keep_canary=False)  # no router ever sent it traffic
    if route.canary_weight != 0:
        return replace(plan, recheck_seconds=route_settle.total_seconds())
    if route.written_at is not None and now < route.written_at + route_settle:
        return replace(plan, recheck_seconds=(route.written_at + route_settle - now).total_seconds())
    return replace(plan, keep_canary=False)


def plan_children(
    spec: ModelDeploymentSpec,
    target: Placement,
    observed: Observed,
    now: datetime,
    *,
    retiring_since: datetime | None,
    route_settle: timedelta,
    retire_limit: timedelta,
    rejected_revision: str | None = None,
) -> ChildPlan:
    """What to apply now on the way to `target` (`rollout.placement`), given the stored children.

    `retiring_since` is when the last rollout ended (a canary Deployment still there after it is
    retiring); `route_settle` is how long a router keeps weight 0 before the canary goes;
    `retire_limit` is how long a retiring canary is kept at most; `rejected_revision` is the model
    the last rollout rejected (status.rejected), which gets no traffic once rejected.
    """
    if target.canary_model is not None:
        return _during_rollout(spec, target, observed)
    if observed.canary is None:
        return _without_canary(target)
    return _retiring(
        spec, target, observed, now, retiring_since, route_settle, retire_limit, rejected_revision
    )


def with_effective_weight(status: ModelDeploymentStatus, plan: ChildPlan) -> ModelDeploymentStatus:
    """The status with the canary's effective weight as the planned children give it."""
    canary = status.canary
    if canary is None or canary.effective_weight == plan.effective_weight:
        return status
    return status.model_copy(
        update={"canary": canary.model_copy(update={"effective_weight": plan.effective_weight})}
    )
