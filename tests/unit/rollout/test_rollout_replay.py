"""The rollout machine resumes anywhere: replaying from any persisted status reaches the same outcome.

Hypothesis drives random rollouts (verdicts, time passing, new models, manual requests, pauses)
three ways: uninterrupted; through the API server (every chosen status serialised to JSON and read
back, as a restarted operator reads it); and with reconciles repeated (an operator that wrote the
status, crashed before acting and ran the same reconcile again). All three end in the same status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_support import T0, V1, V2, V3, Verdict, analysed, make_spec, roundtrip, stable_status

from modeldeploy_operator.builders import model_revision
from modeldeploy_operator.rollout import (
    ANNOTATION_ABORT,
    ANNOTATION_PAUSED,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
    decide,
)
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelDeploymentStatus, ModelSource


@dataclass(frozen=True)
class Tick:
    """One reconcile: time passes, the spec and annotations are as given, the due window gets a verdict."""

    seconds: float
    verdict: Verdict | None
    model: ModelSource
    annotations: dict[str, str]


def ticks() -> st.SearchStrategy[Tick]:
    annotations = st.fixed_dictionaries(
        {},
        optional={
            ANNOTATION_PROMOTE: st.sampled_from(["step", "full", "step:1", "bogus"]),
            ANNOTATION_ABORT: st.sampled_from(["a", "b"]),
            ANNOTATION_RETRY: st.sampled_from(["1", "2"]),
            ANNOTATION_PAUSED: st.sampled_from(["true", "false"]),
        },
    )
    return st.builds(
        Tick,
        # Around the five-minute windows, with fractions of seconds the machine cuts off.
        seconds=st.one_of(st.sampled_from([0, 30, 299, 300, 301, 600]), st.floats(0, 900, allow_nan=False)),
        verdict=st.sampled_from([None, "pass", "pass", "fail", "inconclusive", "inconclusive"]),
        # Mostly the model under rollout, sometimes a newer one or the stable one.
        model=st.sampled_from([V2] * 10 + [V3, V1]),
        annotations=st.one_of(*[st.just({})] * 4, annotations),
    )


def specs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "steps": st.lists(st.integers(1, 99), min_size=1, max_size=3, unique=True).map(sorted),
            "failureLimit": st.integers(0, 2),
            "inconclusiveLimit": st.integers(0, 2),
            "progressDeadline": st.sampled_from(["4m", "10m", "30m"]),
            "analysis": st.sampled_from([{"onNoData": "hold"}, {"onNoData": "fail"}]),
        }
    )


def spec_for(rollout: dict[str, Any], model: ModelSource, provider: str) -> ModelDeploymentSpec:
    traffic = {"provider": provider}
    if provider == "gateway-api":
        traffic["gateway"] = {"parentRefs": [{"name": "public"}]}  # type: ignore[assignment]
    return make_spec(model, traffic=traffic, **rollout)


def reconcile(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime, tick: Tick
) -> tuple[ModelDeploymentStatus, ModelDeploymentStatus]:
    """The status after one reconcile, and after the same reconcile run a second time."""
    analysis = None if tick.verdict is None else analysed(spec, status, now, tick.verdict)
    first = decide(spec, status, now, analysis=analysis, annotations=tick.annotations)
    again = decide(spec, first.status, now, analysis=analysis, annotations=tick.annotations)
    assert again.events == (), "a repeated reconcile must not announce anything again"
    return first.status, again.status


def check_invariants(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> None:
    assert status.stable is not None
    canary, rejected = status.canary, status.rejected
    if canary is not None:
        assert canary.revision == model_revision(spec.model)
        assert canary.weight == spec.rollout.steps[canary.step]
        assert rejected is None
        assert canary.started_at is not None
        assert canary.started_at <= canary.step_started_at or canary.paused_at is not None
    if rejected is not None:
        assert rejected.revision == model_revision(spec.model)
    if canary is None and rejected is None:
        assert status.stable.source() == spec.model
    assert len(status.history) <= 10


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rollout=specs(),
    provider=st.sampled_from(["replicas", "gateway-api", "istio"]),
    run=st.lists(ticks(), min_size=1, max_size=30),
    persisted=st.sets(st.integers(0, 29)),
    repeated=st.sets(st.integers(0, 29)),
)
def test_replaying_from_any_persisted_status_reaches_the_same_outcome(
    rollout: dict[str, Any], provider: str, run: list[Tick], persisted: set[int], repeated: set[int]
) -> None:
    uninterrupted = interrupted = stable_status()
    now = T0
    for index, tick in enumerate(run):
        now += timedelta(seconds=tick.seconds)
        spec = spec_for(rollout, tick.model, provider)
        uninterrupted, _ = reconcile(spec, uninterrupted, now, tick)
        check_invariants(spec, uninterrupted)
        if index in persisted:
            interrupted = roundtrip(interrupted)
        once, twice = reconcile(spec, interrupted, now, tick)
        interrupted = twice if index in repeated else once
        assert interrupted == uninterrupted
    assert roundtrip(interrupted) == uninterrupted


@settings(max_examples=100, deadline=None)
@given(rollout=specs(), verdicts=st.lists(st.sampled_from(["pass", "fail", "inconclusive"]), max_size=40))
def test_every_rollout_ends_promoted_or_rolled_back(rollout: dict[str, Any], verdicts: list[Verdict]) -> None:
    """However the windows go, a rollout ends within its limits, and only passing windows promote."""
    spec = spec_for(rollout, V2, "replicas")
    status = stable_status()
    now = T0
    for verdict in [*verdicts, *["inconclusive"] * 200]:
        status = decide(spec, status, now, analysis=analysed(spec, status, now, verdict)).status  # type: ignore[arg-type]
        if status.history:
            break
        now += timedelta(minutes=5)
    (entry,) = status.history
    if entry.outcome == "promoted":
        assert verdicts.count("pass") >= len(spec.rollout.steps)
    else:
        assert entry.outcome == "rolledBack"
        assert status.rejected is not None
        assert entry.reason in {"AnalysisFailed", "InconclusiveLimitReached", "ProgressDeadlineExceeded"}
