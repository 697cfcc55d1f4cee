"""The rollout machine: what a canary rollout does next, as a pure function.

`decide(spec, status, now, analysis=..., annotations=...)` returns the new status and
the Events that announce its transitions. Everything the machine remembers lives in the status
it returns (the step, when the step and its analysis window began, the counters, the
revision under analysis, the manual requests already handled), and every timer is a
timestamp in it, so an operator that restarts anywhere, or runs a reconcile twice,
reaches the same outcome: an analysis is accepted only for the window the status says
is due, and a handled request is recorded before it could act again.

How the I/O layer drives it, on every reconcile of a ModelDeployment:
1. `window = analysis_window(spec, status, now)`; when it is not None, query Prometheus
   for it (`analysis.plan_analysis`, evaluated at `window.end`) and wrap the checks in
   a `StepAnalysis`; an unanswered query is an inconclusive check, not a skipped one.
2. `decision = decide(spec, status, now, analysis=..., annotations=metadata.annotations)`.
3. Apply the children on the way to `placement(spec, decision.status)` in a safe order
   (`ordering.plan_children`: traffic only to ready pods, capacity before it is taken away),
   write the status, post the decision's Events. Applying from the stored children and
   status on every reconcile makes a crash between writing the status and acting on it
   harmless.

Manual requests are annotations, so GitOps tools that own the spec never revert them:
`modeldeploy.io/promote` = `step` | `full`, `modeldeploy.io/abort` and
`modeldeploy.io/retry` (any value) act once per value: the handled value is kept in
status.handledRequests, a different value (for example `step:2`) is a new request, and
removing the annotation forgets it. `modeldeploy.io/paused: "true"` holds the rollout
at its step for as long as it is set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from .analysis import overall_verdict
from .builders import model_revision
from .spec import (
    SAMPLES,
    CanaryStatus,
    CheckResult,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
    RejectedModel,
    StableModel,
    parse_duration,
)
from .traffic import canary_replicas_beside, split_replicas

__all__ = [
    "ANNOTATION_ABORT",
    "ANNOTATION_PAUSED",
    "ANNOTATION_PROMOTE",
    "ANNOTATION_RETRY",
    "HISTORY_LIMIT",
    "AnalysisWindow",
    "CanaryPods",
    "Decision",
    "EmitEvent",
    "Placement",
    "StepAnalysis",
    "analysis_window",
    "decide",
    "extended_window_end",
    "next_analysis_at",
    "placement",
    "progress_deadline",
]

ANNOTATION_PROMOTE = "modeldeploy.io/promote"
ANNOTATION_ABORT = "modeldeploy.io/abort"
ANNOTATION_RETRY = "modeldeploy.io/retry"
ANNOTATION_PAUSED = "modeldeploy.io/paused"
# One-shot requests, in the order they are handled when several arrive together: a retry
# starts the rollout an abort could then end, and an abort outranks a promotion.
_ONE_SHOT_REQUESTS = (ANNOTATION_RETRY, ANNOTATION_ABORT, ANNOTATION_PROMOTE)

HISTORY_LIMIT = 10
_CHECKS_LIMIT = 32
# One window's traffic predicts the next one's only roughly (Poisson noise, increase()'s extrapolation
# at the window's edges): an extended window asks for a fifth more than the estimate, so that one
# extension is usually enough.
_EXTENSION_MARGIN = 1.2


@dataclass(frozen=True)
class EmitEvent:
    """Post a Kubernetes Event about the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Placement:
    """Which model runs where, with how many pods and how much traffic, as the status implies."""

    stable_model: ModelSource
    stable_replicas: int | None
    """None when an autoscaler owns the stable count."""
    canary_model: ModelSource | None
    canary_replicas: int
    canary_weight: int
    """The weight routers are given (gateway-api, istio) once the canary's pods are ready; 0 outside
    of a rollout."""
    effective_weight: float
    """The share of requests the canary gets once its pods are ready (the replicas provider
    approximates)."""


@dataclass(frozen=True)
class AnalysisWindow:
    """The stretch of time one analysis of a step covers; it is due once `end` has passed."""

    revision: str
    step: int
    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        """The range of the window's queries."""
        return self.end - self.start


@dataclass(frozen=True)
class StepAnalysis:
    """The checks of one analysis window, as `analysis.evaluate` returned them."""

    window: AnalysisWindow
    checks: tuple[CheckResult, ...]


@dataclass(frozen=True)
class CanaryPods:
    """The canary Deployment's pods as the reconcile observed them, for the model `revision`.

    `ready` means every pod the current step needs is ready, so the step's traffic is in effect.
    """

    revision: str
    ready: bool
    problem: str = ""


@dataclass(frozen=True)
class Decision:
    """The machine's answer: the status to write and the Events that announce its transitions."""

    status: ModelDeploymentStatus
    events: tuple[EmitEvent, ...] = ()


def _replicas(spec: ModelDeploymentSpec, weight: int) -> tuple[int | None, int, float]:
    """Stable pods (None: the autoscaler's), canary pods and effective weight for a canary weight."""
    autoscaled = spec.autoscaling is not None
    if weight == 0:
        return (None if autoscaled else spec.replicas), 0, 0.0
    if spec.traffic.provider == "replicas":
        split = split_replicas(spec.replicas, weight)
        return (None if autoscaled else split.stable), split.canary, split.effective_weight
    return (
        (None if autoscaled else spec.replicas),
        canary_replicas_beside(spec.replicas, weight),
        float(weight),
    )


def placement(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> Placement | None:
    """Where models run according to `status`, or None before a stable model exists.

    Without a stable model yet, the ordinary reconcile deploys the spec's model as stable.
    """
    if status.stable is None:
        return None
    canary = status.canary
    weight = 0 if canary is None else canary.weight
    stable_replicas, canary_replicas, effective = _replicas(spec, weight)
    return Placement(
        stable_model=status.stable.source(),
        stable_replicas=stable_replicas,
        canary_model=None if canary is None else canary.source(),
        canary_replicas=canary_replicas,
        canary_weight=weight,
        effective_weight=effective,
    )


def _step_duration(spec: ModelDeploymentSpec) -> timedelta:
    return parse_duration(spec.rollout.step_duration)


def progress_deadline(spec: ModelDeploymentSpec, canary: CanaryStatus) -> datetime:
    """When the current step has run too long and the rollout is rolled back; every step gets at least
    one full analysis window, and `decide` stops the clock while the rollout is paused."""
    allowed = max(parse_duration(spec.rollout.progress_deadline), _step_duration(spec))
    return canary.step_started_at + allowed


def analysis_window(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
) -> AnalysisWindow | None:
    """The analysis window that is due now, if any: the step's current window once it has ended.

    A paused rollout has none. The same window is due until `decide` accepts its analysis.
    """
    canary = status.canary
    if canary is None or canary.paused_at is not None:
        return None
    start, end = _window_span(spec, canary)
    if now < end:
        return None
    return AnalysisWindow(revision=canary.revision, step=canary.step, start=start, end=end)


def _window_span(spec: ModelDeploymentSpec, canary: CanaryStatus) -> tuple[datetime, datetime]:
    """The current analysis window's start and end, as the canary's status records them."""
    start = canary.analysis_started_at or canary.step_started_at
    return start, canary.analysis_ends_at or start + _step_duration(spec)


def next_analysis_at(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> datetime | None:
    """When the rollout's current analysis window ends (None without a running rollout).

    The reconcile wakes up then, so a failing window is acted on at once rather than at the
    next periodic tick.
    """
    canary = status.canary
    if canary is None or canary.paused_at is not None:
        return None
    return _window_span(spec, canary)[1]


def extended_window_end(
    spec: ModelDeploymentSpec, canary: CanaryStatus, window: AnalysisWindow, checks: Sequence[CheckResult]
) -> datetime | None:
    """Where a window whose checks lacked only requests ends instead, or None when it lacked more (a
    count it could not make, a query that failed) or cannot grow (it reached the progress deadline).

    The new end is where the window's own traffic says every variant a waiting check needs will
    have served `samplesNeeded` requests, with a margin; a variant that served none gives no rate,
    and the window grows by a stepDuration. It grows by at least a quarter of stepDuration, so a
    Prometheus scrape or more lands in the extension, and never past the progress deadline, where
    the step is judged one last time on everything it saw.
    """
    waiting = [check for check in checks if check.verdict == "inconclusive"]
    if not waiting or any(check.samples_needed is None for check in waiting):
        return None
    deadline = progress_deadline(spec, canary)
    if window.end >= deadline:
        return None
    seconds = window.duration.total_seconds()
    step_seconds = _step_duration(spec).total_seconds()
    growth = 1.0
    for check in waiting:
        needed = check.samples_needed or 0.0
        # The samples check counts the canary only; the others compare with the stable model when
        # they have its query.
        compares = check.name != SAMPLES and bool(check.baseline_query)
        served = [check.samples, check.stable_samples] if compares else [check.samples]
        for count in served:
            if count is not None and count < needed:
                growth = max(growth, needed / count if count > 0 else math.inf)
    wanted = seconds + step_seconds if math.isinf(growth) else seconds * growth * _EXTENSION_MARGIN
    wanted = max(wanted, seconds + max(step_seconds / 4, 10.0))
    return min(window.start + timedelta(seconds=math.ceil(wanted)), deadline)


def _describe(uri: str, version: str | None) -> str:
    return f"model {uri}" + (f" (version {version})" if version else "")


@dataclass
class _Machine:
    """One decision in the making; `status` and `events` accumulate its transitions."""

    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus
    now: datetime
    events: list[EmitEvent] = field(default_factory=list)

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(EmitEvent(type_, reason, message))

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def update_canary(self, **changes: object) -> None:
        assert self.status.canary is not None  # only called during a rollout
        self.update(canary=self.status.canary.model_copy(update=changes))

    def restart_window(self, **changes: object) -> None:
        """A new analysis window from now, of stepDuration, with `changes` to the canary's status."""
        self.update_canary(analysis_started_at=self.now, analysis_ends_at=None, **changes)

    @property
    def steps(self) -> list[int]:
        return self.spec.rollout.steps

    def step_label(self, step: int, *, first: bool = False) -> str:
        """The step as people count it; `first` for the start of a sentence."""
        return f"{'Step' if first else 'step'} {step + 1} of {len(self.steps)}"

    # Following the spec.

    def follow_spec(self) -> None:
        assert self.status.stable is not None  # decide() returns early without one
        target = model_revision(self.spec.model)
        stable = model_revision(self.status.stable.source())
        canary = self.status.canary
        if target == stable:
            if canary is not None:
                message = (
                    f"The spec names the stable {_describe(self.status.stable.uri, self.status.stable.version)}"
                    " again"
                )
                self.finish("cancelled", "SpecBackToStable", message)
                self.emit("Normal", "RolloutCancelled", f"{message}; the canary is removed")
            if self.status.rejected is not None:
                self.update(rejected=None)
            return
        if canary is not None and canary.revision == target:
            return
        if canary is not None:
            message = f"The spec names a newer {_describe(self.spec.model.uri, self.spec.model.version)}"
            self.finish("superseded", "Superseded", message)
            self.emit(
                "Normal",
                "RolloutSuperseded",
                f"Rollout of {_describe(canary.uri, canary.version)} ended: {message}",
            )
        rejected = self.status.rejected
        if rejected is not None and rejected.revision == target:
            return
        self.start()

    def start(self) -> None:
        model = self.spec.model
        weight = self.steps[0]
        self.update(
            rejected=None,
            canary=CanaryStatus(
                uri=model.uri,
                format=model.format,
                version=model.version,
                digest=model.sha256,
                revision=model_revision(model),
                weight=weight,
                step=0,
                started_at=self.now,
                step_started_at=self.now,
                analysis_started_at=self.now,
            ),
        )
        self.emit(
            "Normal",
            "RolloutStarted",
            f"Rolling out {_describe(model.uri, model.version)} as a canary: {self.step_label(0)}, {weight}% of traffic",
        )

    # Manual requests.

    def handle_requests(self, annotations: Mapping[str, str]) -> None:
        handled = dict(self.status.handled_requests or {})
        pending: list[tuple[str, str]] = []
        for key in _ONE_SHOT_REQUESTS:
            value = annotations.get(key)
            if value is None:
                handled.pop(key, None)
            elif handled.get(key) != value:
                handled[key] = value
                pending.append((key, value))
        if handled != (self.status.handled_requests or {}):
            self.update(handled_requests=handled or None)
        for key, value in pending:
            if key == ANNOTATION_RETRY:
                self.retry()
            elif key == ANNOTATION_ABORT:
                self.abort()
            else:
                self.promote_on_request(value)

    def ignore(self, key: str, why: str) -> None:
        self.emit("Normal", "RequestIgnored", f"Ignored the request {key}: {why}")

    def retry(self) -> None:
        rejected = self.status.rejected
        if rejected is None or rejected.revision != model_revision(self.spec.model):
            self.ignore(ANNOTATION_RETRY, "no rejected model to roll out again")
            return
        self.start()

    def abort(self) -> None:
        if self.status.canary is None:
            self.ignore(ANNOTATION_ABORT, "no rollout in progress")
            return
        self.reject("aborted", "Aborted", f"Aborted through the {ANNOTATION_ABORT} annotation")

    def promote_on_request(self, value: str) -> None:
        kind = value.split(":", 1)[0].strip().lower()
        if kind not in ("step", "full"):
            self.emit(
                "Warning",
                "InvalidRequest",
                f"{ANNOTATION_PROMOTE} must be step or full (optionally followed by :TOKEN to repeat the"
                f" request), not {value!r}",
            )
            return
        canary = self.status.canary
        if canary is None:
            self.ignore(ANNOTATION_PROMOTE, "no rollout in progress")
            return
        why = f"through the {ANNOTATION_PROMOTE} annotation"
        if kind == "full":
            self.promote(f"Promoted {why}")
        else:
            self.advance(f"Advanced {why}")

    # Pausing.

    def follow_pause(self, paused: bool) -> None:
        canary = self.status.canary
        if canary is None:
            return
        if paused and canary.paused_at is None:
            self.update_canary(paused_at=self.now)
            self.emit(
                "Normal", "RolloutPaused", f"Paused at {self.step_label(canary.step)} ({ANNOTATION_PAUSED})"
            )
        elif not paused and canary.paused_at is not None:
            # The pause does not count against the step's deadline; the analysis starts a fresh window,
            # since the one before the pause may be partly stale.
            self.restart_window(
                paused_at=None,
                step_started_at=canary.step_started_at + (self.now - canary.paused_at),
            )
            self.emit("Normal", "RolloutResumed", f"Resumed at {self.step_label(canary.step)}")

    # Waiting for the canary's pods.

    def follow_canary_pods(self, pods: CanaryPods | None) -> None:
        """Holds each step's analysis window until the pods the step needs are ready (the canary
        gets the step's traffic only then); rolls back when they cannot run (a model that cannot
        be fetched or loaded, a crash loop)."""
        canary = self.status.canary
        if pods is None or canary is None or canary.paused_at is not None:
            return
        if pods.revision != canary.revision:
            ready = False  # no canary Deployment for this model yet: the window waits for it
        elif pods.problem:
            self.reject(
                "rolledBack",
                "CanaryPodsFailing",
                f"The canary's pods cannot run at {self.step_label(canary.step)}: {pods.problem}",
            )
            return
        else:
            ready = pods.ready
        if ready:
            if canary.pods_ready_at is None:
                self.restart_window(pods_ready_at=self.now)
        elif (
            canary.pods_ready_at is not None
            or canary.analysis_started_at != self.now
            or canary.analysis_ends_at is not None
        ):
            # Until they are ready the window keeps starting now: it ends a step's length after they are.
            self.restart_window(pods_ready_at=None)

    # Judging the analysis.

    def judge(self, analysis: StepAnalysis | None) -> None:
        if analysis is None:
            return
        due = analysis_window(self.spec, self.status, self.now)
        # An analysis of another window is stale: computed before a transition this decision already made.
        if due is None or analysis.window != due:
            return
        canary = self.status.canary
        assert canary is not None  # a due window implies a rollout
        checks = list(analysis.checks)[:_CHECKS_LIMIT]
        self.update_canary(checks=checks)
        verdict = overall_verdict(checks)
        if verdict == "pass":
            self.update_canary(inconclusive=0)
            self.advance("Every check passed")
            return
        limits = self.spec.rollout
        if verdict == "inconclusive" and limits.wait_for_samples and limits.analysis.on_no_data == "hold":
            end = extended_window_end(self.spec, canary, analysis.window, checks)
            if end is not None:
                self.update_canary(analysis_ends_at=end)
                self.emit(
                    "Normal",
                    "WindowExtended",
                    f"{self.step_label(canary.step, first=True)} waits for requests: {_summary(checks, 'inconclusive')};"
                    f" its window now ends at {end:%Y-%m-%dT%H:%M:%SZ}, when the traffic so far gives enough",
                )
                return
        if verdict == "fail" or limits.analysis.on_no_data == "fail":
            failures = canary.failures + 1
            summary = _summary(checks, "fail") or _summary(checks, "inconclusive")
            if failures > limits.failure_limit:
                self.reject(
                    "rolledBack",
                    "AnalysisFailed",
                    f"{self.step_label(canary.step, first=True)} failed: {summary}",
                )
                return
            self.restart_window(failures=failures, inconclusive=0)
            self.emit(
                "Warning",
                "StepFailed",
                f"{self.step_label(canary.step, first=True)} failed ({failures} of {limits.failure_limit} failures tolerated),"
                f" analysing it again: {summary}",
            )
            return
        inconclusive = canary.inconclusive + 1
        summary = _summary(checks, "inconclusive")
        if inconclusive > limits.inconclusive_limit:
            self.reject(
                "rolledBack",
                "InconclusiveLimitReached",
                f"{inconclusive} analyses in a row without a verdict at {self.step_label(canary.step)}: {summary}",
            )
            return
        self.restart_window(inconclusive=inconclusive)
        self.emit(
            "Normal",
            "StepInconclusive",
            f"{self.step_label(canary.step, first=True)} has no verdict yet ({inconclusive} of"
            f" {limits.inconclusive_limit} tolerated), analysing it again: {summary}",
        )

    def check_deadline(self) -> None:
        canary = self.status.canary
        if canary is None or canary.paused_at is not None:
            return
        if self.now > progress_deadline(self.spec, canary):
            waited_for_pods = canary.pods_ready_at is None and canary.analysis_started_at == self.now
            short = [check for check in canary.checks if check.samples_needed is not None]
            why = ""
            if waited_for_pods:
                why = ": the canary's pods never became ready"
            elif short:
                why = f": {_summary(short, 'inconclusive')}"
            self.reject(
                "rolledBack",
                "ProgressDeadlineExceeded",
                f"{self.step_label(canary.step, first=True)} ran longer than the progress deadline of"
                f" {self.spec.rollout.progress_deadline} without a verdict{why}",
            )

    # Transitions.

    def advance(self, why: str) -> None:
        canary = self.status.canary
        assert canary is not None  # callers check
        step = canary.step + 1
        if step >= len(self.steps):
            self.promote(f"{why} at the last step")
            return
        weight = self.steps[step]
        self.restart_window(
            step=step,
            weight=weight,
            step_started_at=self.now,
            inconclusive=0,
            # The step's pods are counted afresh (a larger step needs more of them).
            pods_ready_at=None,
            # A step entered while paused stays paused, and its pause starts now.
            paused_at=None if canary.paused_at is None else self.now,
        )
        self.emit(
            "Normal",
            "StepAdvanced",
            f"{why}; {self.step_label(step)}: the canary {_describe(canary.uri, canary.version)}"
            f" now receives {weight}% of traffic",
        )

    def promote(self, why: str) -> None:
        canary = self.status.canary
        assert canary is not None  # callers check
        model = canary.source()
        self.finish("promoted", "Promoted", why)
        self.update(
            stable=StableModel(
                uri=model.uri, format=model.format, version=model.version, digest=model.sha256, since=self.now
            )
        )
        self.emit(
            "Normal", "Promoted", f"{why}: {_describe(model.uri, model.version)} is now the stable model"
        )

    def reject(self, outcome: Literal["rolledBack", "aborted"], reason: str, message: str) -> None:
        canary = self.status.canary
        assert canary is not None  # callers check
        self.finish(outcome, reason, message)
        self.update(
            rejected=RejectedModel(
                uri=canary.uri,
                version=canary.version,
                revision=canary.revision,
                reason=reason,
                message=message,
                at=self.now,
            )
        )
        self.emit(
            "Warning",
            "RolledBack",
            f"Rolled back {_describe(canary.uri, canary.version)}: {message}; it is not rolled out again"
            f" until the spec names another model or {ANNOTATION_RETRY} is set",
        )

    def finish(
        self,
        outcome: Literal["promoted", "rolledBack", "aborted", "superseded", "cancelled"],
        reason: str,
        message: str,
    ) -> None:
        """End the rollout and record it in the history; the caller says so in an Event."""
        canary = self.status.canary
        assert canary is not None  # callers check
        entry = HistoryEntry(
            uri=canary.uri,
            version=canary.version,
            revision=canary.revision,
            outcome=outcome,
            reason=reason,
            started_at=canary.started_at or canary.step_started_at,
            finished_at=self.now,
            message=message,
            checks=canary.checks or None,
        )
        # The evidence of older rollouts goes, so that the status stays small.
        older = [previous.model_copy(update={"checks": None}) for previous in self.status.history]
        self.update(canary=None, history=[entry, *older][:HISTORY_LIMIT])


def _summary(checks: Sequence[CheckResult], verdict: str) -> str:
    return "; ".join(f"{check.name}: {check.message}" for check in checks if check.verdict == verdict)


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    now: datetime,
    *,
    analysis: StepAnalysis | None = None,
    annotations: Mapping[str, str] | None = None,
    canary_pods: CanaryPods | None = None,
) -> Decision:
    """The next status of a ModelDeployment's rollout, and the Events of its transitions.

    `now` is timezone-aware; it is cut to whole seconds, as the API server keeps timestamps.
    `analysis` is the evaluation of the window `analysis_window` reported due (any other is
    ignored as stale); `annotations` are the object's metadata.annotations; `canary_pods` is the
    canary's pods as observed (None: not observed, windows run from the step's start; a
    revision other than the canary's: no pods for it yet). Until the stable
    model exists (status.stable), there is nothing to roll out and nothing changes.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    before = placement(spec, status)
    if before is None:
        return Decision(status)
    machine = _Machine(spec, status, now)
    annotations = annotations or {}
    machine.follow_spec()
    machine.handle_requests(annotations)
    machine.follow_pause(annotations.get(ANNOTATION_PAUSED, "").strip().lower() == "true")
    machine.follow_canary_pods(canary_pods)
    machine.judge(analysis)
    machine.check_deadline()
    return Decision(machine.status, tuple(machine.events))
