"""Pure functions from what the operator observes to the ModelDeployment's status.

The conditions follow kstatus, so `kubectl wait --for=condition=Ready`, Argo CD
and Flux understand them: `Ready` only when the stable Deployment has rolled out
completely, `Progressing` while it rolls, `Stalled` when it cannot finish, and
`Reconciling` (the condition kstatus and so Flux wait on) while either the stable
Deployment rolls or a canary rollout runs. A
condition's lastTransitionTime changes only with its status, so a reconcile that
observes nothing new produces a status equal to the previous one and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from .builders import Manifest, label_selector, service_name
from .ordering import observe_deployment
from .rollout import CanaryPods
from .spec import (
    Condition,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
    StableModel,
    parse_duration,
)

__all__ = [
    "BLOCKING_WAITING_REASONS",
    "PodProblem",
    "compute_status",
    "invalid_spec_status",
    "status_patch",
    "summarize_pod_problems",
]

Phase = Literal["Pending", "Progressing", "Ready", "Stalled", "Failed"]

# Waiting reasons after which a container will not start without a change to the spec or the
# cluster; a pod that reports one will not become ready by waiting.
BLOCKING_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

# A server container in CrashLoopBackOff blocks the pod once it has restarted this often; the
# fetch (init) container blocks at its first failure, which a retry does not cure.
CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True)
class PodProblem:
    """Why one container of a server pod cannot start."""

    pod: str
    container: str
    reason: str
    message: str

    def describe(self) -> str:
        """One line for a condition message."""
        detail = f": {self.message}" if self.message else ""
        return f"pod {self.pod} container {self.container} {self.reason}{detail}"


def summarize_pod_problems(pods: Iterable[Mapping[str, Any]]) -> list[PodProblem]:
    """The blocking problems of the given Pod objects, in a stable order.

    A failed model fetch shows up as the init container exiting non-zero and then in
    CrashLoopBackOff; the message is its termination message (the fetch error) when it left one.
    """
    problems = []
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "")
        status = pod.get("status", {})
        for key, is_init in (("initContainerStatuses", True), ("containerStatuses", False)):
            for container in status.get(key, []):
                problem = _container_problem(pod_name, container, is_init=is_init)
                if problem is not None:
                    problems.append(problem)
    return sorted(problems, key=lambda problem: (problem.pod, problem.container))


def describe_pod_problems(problems: Sequence[PodProblem]) -> str:
    """The first problem in full, and how many more there are."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0].describe() + more


def _container_problem(pod: str, container: Mapping[str, Any], *, is_init: bool) -> PodProblem | None:
    name = container.get("name", "")
    state = container.get("state", {})
    last_terminated = container.get("lastState", {}).get("terminated", {})
    waiting = state.get("waiting")
    reason = (waiting or {}).get("reason")
    if (
        reason == "CrashLoopBackOff"
        and not is_init
        and int(container.get("restartCount", 0)) < CRASH_LOOP_RESTARTS
    ):
        # The kubelet backs off after any exit, also after a container was killed once or twice
        # (a node's OOM kill, a restart by hand): not yet a model that cannot run.
        return None
    if waiting is not None and reason in BLOCKING_WAITING_REASONS:
        message = (last_terminated.get("message") or waiting.get("message") or "").strip()
        return PodProblem(pod, name, waiting["reason"], message)
    terminated = state.get("terminated")
    # An init container that exited non-zero blocks the pod even before the kubelet backs off.
    if is_init and terminated is not None and terminated.get("exitCode", 0) != 0:
        reason = terminated.get("reason") or "Error"
        return PodProblem(pod, name, reason, (terminated.get("message") or "").strip())
    return None


@dataclass(frozen=True)
class _Verdict:
    """What the observations mean, before it is written as conditions."""

    ready: bool
    stalled: bool
    reason: str
    message: str


def _judge_deployment(
    deployment: Mapping[str, Any] | None,
    pod_problems: Sequence[PodProblem],
    previous: ModelDeploymentStatus,
    generation: int,
    now: datetime,
    deadline: timedelta,
) -> _Verdict:
    if deployment is None:
        verdict = _Verdict(False, False, "DeploymentMissing", "The stable Deployment does not exist yet")
    else:
        verdict = _judge_rollout(deployment)
    if verdict.ready or verdict.stalled:
        return verdict
    if pod_problems:
        return _Verdict(False, True, "PodsFailing", describe_pod_problems(pod_problems))
    # Stalled stays until the change is ready or a new one arrives: a crash-looping pod is
    # between crashes most of the time, and flapping back to Progressing would hide that.
    stalled_before = _current_condition(previous, "Stalled", generation)
    if stalled_before is not None and stalled_before.status == "True":
        return _Verdict(False, True, stalled_before.reason, stalled_before.message)
    progressing_before = _current_condition(previous, "Progressing", generation)
    if (
        progressing_before is not None
        and progressing_before.status == "True"
        and now - progressing_before.last_transition_time > deadline
    ):
        message = f"Not ready within the progress deadline of {_format(deadline)}: {verdict.message}"
        return _Verdict(False, True, "ProgressDeadlineExceeded", message)
    return verdict


def _current_condition(previous: ModelDeploymentStatus, type_: str, generation: int) -> Condition | None:
    """The previous condition of this type, if it describes the current generation."""
    for condition in previous.conditions:
        if condition.type == type_ and condition.observed_generation == generation:
            return condition
    return None


def _judge_rollout(deployment: Mapping[str, Any]) -> _Verdict:
    """Whether the Deployment has rolled out, in the same terms as `kubectl rollout status`."""
    generation = deployment.get("metadata", {}).get("generation", 0)
    status = deployment.get("status", {})
    for condition in status.get("conditions", []):
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            message = condition.get("message") or "The stable Deployment exceeded its progress deadline"
            return _Verdict(False, True, "ProgressDeadlineExceeded", message)
    if status.get("observedGeneration", 0) < generation:
        return _Verdict(
            False, False, "DeploymentUpdating", "The stable Deployment has not seen the change yet"
        )
    desired = deployment.get("spec", {}).get("replicas", 1)
    existing = status.get("replicas", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < desired:
        return _Verdict(False, False, "RollingOut", f"{updated} of {desired} replicas updated")
    if existing > updated:
        return _Verdict(False, False, "RollingOut", f"{existing - updated} old replicas terminating")
    if available < updated:
        return _Verdict(False, False, "RollingOut", f"{available} of {updated} updated replicas available")
    return _Verdict(True, False, "Available", f"{available} of {desired} replicas available")


def _format(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _parse_previous(previous: Mapping[str, Any] | None) -> ModelDeploymentStatus:
    # A status this version cannot read (written by an older one, or edited by hand) is rebuilt.
    try:
        return ModelDeploymentStatus.model_validate(previous or {})
    except ValidationError:
        return ModelDeploymentStatus()


def _conditions(
    previous: ModelDeploymentStatus,
    generation: int,
    now: datetime,
    wanted: Sequence[tuple[str, bool, str, str]],
) -> list[Condition]:
    """Conditions with each lastTransitionTime kept unless the status changed.

    Progressing also restarts its clock with a new generation: the progress deadline counts
    from the change being rolled out, not from an earlier one still in progress.
    """
    earlier = {condition.type: condition for condition in previous.conditions}
    conditions = []
    for type_, holds, reason, message in wanted:
        status: Literal["True", "False"] = "True" if holds else "False"
        before = earlier.get(type_)
        unchanged = before is not None and before.status == status
        if type_ == "Progressing" and before is not None and before.observed_generation != generation:
            unchanged = False
        since = before.last_transition_time if (before is not None and unchanged) else now
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return conditions


def _stable_model(previous: StableModel | None, model: ModelSource, now: datetime) -> StableModel:
    current = StableModel(
        uri=model.uri, format=model.format, version=model.version, digest=model.sha256, since=now
    )
    if previous is not None and previous.model_copy(update={"since": now}) == current:
        return previous
    return current


def observe_canary_pods(
    deployment: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]], needed: int
) -> CanaryPods:
    """The canary's pods as the rollout machine needs them: whether the `needed` pods of the
    current step are ready, or why they cannot run.

    The model they run is read from the Deployment's pod template, so pods of a canary being
    replaced are never taken for the new one's; without a canary Deployment the revision is empty.
    """
    if deployment is None:
        return CanaryPods("", ready=False)
    observed = observe_deployment(deployment)
    assert observed is not None  # a Deployment was given
    problems = summarize_pod_problems(pods)
    if problems:
        return CanaryPods(observed.revision, ready=False, problem=describe_pod_problems(problems))
    return CanaryPods(observed.revision, ready=observed.ready >= max(needed, 1))


def _dump(status: ModelDeploymentStatus) -> Manifest:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def compute_status(
    *,
    name: str,
    namespace: str,
    generation: int,
    spec: ModelDeploymentSpec,
    deployment: Mapping[str, Any] | None,
    pod_problems: Sequence[PodProblem],
    now: datetime,
    previous: Mapping[str, Any] | None,
    served_model: ModelSource | None = None,
) -> Manifest:
    """The whole status of a ModelDeployment from the stable Deployment as last observed.

    `deployment` is the stable Deployment as the API server returned it (after applying it),
    or None when it does not exist; `pod_problems` summarises its pods
    (`summarize_pod_problems`); `now` is timezone-aware. `served_model` is the model the stable
    Deployment serves (the spec's outside of a rollout); it becomes status.stable once ready.
    Fields this function does not own (canary, history) are carried over from `previous`.
    """
    now = now.replace(microsecond=0)
    before = _parse_previous(previous)
    deadline = parse_duration(spec.progress_deadline)
    verdict = _judge_deployment(deployment, pod_problems, before, generation, now, deadline)
    progressing = not (verdict.ready or verdict.stalled)
    # A canary rollout is work in progress too, though the stable model serves throughout;
    # Progressing keeps to the stable Deployment, whose progress deadline it times.
    canary = before.canary
    reconciling_reason, reconciling_message = verdict.reason, verdict.message
    if canary is not None and not verdict.stalled:
        reconciling_reason = "CanaryRollout"
        reconciling_message = (
            f"Rolling out model {canary.uri}"
            + (f" (version {canary.version})" if canary.version else "")
            + f" as a canary: step {canary.step + 1} of {len(spec.rollout.steps)}, {canary.weight}% of traffic"
        )
    conditions = _conditions(
        before,
        generation,
        now,
        [
            ("Ready", verdict.ready, verdict.reason, verdict.message),
            ("Progressing", progressing, verdict.reason, verdict.message),
            (
                "Reconciling",
                progressing or (canary is not None and not verdict.stalled),
                reconciling_reason,
                reconciling_message,
            ),
            ("Stalled", verdict.stalled, verdict.reason, verdict.message),
        ],
    )
    phase: Phase
    if verdict.stalled:
        phase = "Stalled"
    elif verdict.ready and canary is None:
        phase = "Ready"
    else:
        phase = "Progressing" if before.stable is not None else "Pending"
    stable = before.stable
    if verdict.ready:
        stable = _stable_model(before.stable, served_model or spec.model, now)
    observed = (deployment or {}).get("status", {})
    status = before.model_copy(
        update={
            "observed_generation": generation,
            "conditions": conditions,
            "phase": phase,
            "stable": stable,
            "url": f"http://{service_name(name)}.{namespace}.svc.cluster.local",
            "replicas": observed.get("replicas", 0),
            "ready_replicas": observed.get("readyReplicas", 0),
            "selector": label_selector(name),
        }
    )
    return _dump(status)


def invalid_spec_status(
    *, generation: int, message: str, now: datetime, previous: Mapping[str, Any] | None
) -> Manifest:
    """The status of a ModelDeployment whose spec the operator cannot act on (phase Failed).

    Everything else (the stable model still serving, the URL) stays as it was: the objects
    built from the last valid spec are left alone.
    """
    now = now.replace(microsecond=0)
    before = _parse_previous(previous)
    conditions = _conditions(
        before,
        generation,
        now,
        [
            ("Ready", False, "InvalidSpec", message),
            ("Progressing", False, "InvalidSpec", message),
            ("Reconciling", False, "InvalidSpec", message),
            ("Stalled", True, "InvalidSpec", message),
        ],
    )
    status = before.model_copy(
        update={"observed_generation": generation, "conditions": conditions, "phase": "Failed"}
    )
    return _dump(status)


RECONCILE_FAILED = "ReconcileFailed"


def reconcile_failed_status(
    *, generation: int, reason: str, message: str, now: datetime, previous: Mapping[str, Any] | None
) -> Manifest:
    """The stored status with a ReconcileFailed condition added (or updated): the last reconcile
    raised and is retried with backoff. Everything else stays as the last successful reconcile
    wrote it; the next successful one writes its own conditions, without this one."""
    now = now.replace(microsecond=0)
    before = _parse_previous(previous)
    kept = [condition for condition in before.conditions if condition.type != RECONCILE_FAILED]
    (failed,) = _conditions(before, generation, now, [(RECONCILE_FAILED, True, reason, message[:4096])])
    return _dump(before.model_copy(update={"conditions": [*kept, failed]}))


def status_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Manifest | None:
    """A JSON merge patch turning `previous` into `new`, or None when nothing changed.

    `previous` is read through the status model first, so defaults the API server filled in
    do not count as changes.
    """
    before = _dump(_parse_previous(previous))
    if before == new:
        return None
    return merge_patch(before, new)


def merge_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> Manifest:
    """The RFC 7386 merge patch from `before` to `after`: nested objects are patched key by key, so
    a key dropped deep inside (a rollout's pausedAt) is sent as null and really removed."""
    patch: Manifest = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if old != value:
                patch[key] = merge_patch(old, value)
        elif old != value:
            patch[key] = value
    patch.update({key: None for key in before if key not in after})
    return patch
