"""The rollout machine, transition by transition: start, steps, promotion, rollback, limits, deadline,
a new model or the stable one mid-rollout, manual requests and pausing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rollout_support import T0, V1, V2, V3, checks, make_spec, roundtrip, stable_status, step

from modeldeploy_operator.builders import model_revision
from modeldeploy_operator.rollout import (
    ANNOTATION_ABORT,
    ANNOTATION_PAUSED,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
    AnalysisWindow,
    EmitEvent,
    StepAnalysis,
    analysis_window,
    decide,
    placement,
)
from modeldeploy_operator.spec import HistoryEntry, ModelDeploymentSpec, ModelDeploymentStatus

MINUTE = timedelta(minutes=1)


def events(emitted: tuple[EmitEvent, ...]) -> list[tuple[str, str]]:
    return [(event.type, event.reason) for event in emitted]


def target(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> tuple[object, ...]:
    """Where the status puts the models: (stable model, its pods, canary model, its pods, route weight).

    How the children get there safely is ordering's job (tests/unit/rollout/test_ordering.py)."""
    found = placement(spec, status)
    assert found is not None
    return (
        found.stable_model,
        found.stable_replicas,
        found.canary_model,
        found.canary_replicas,
        found.canary_weight,
    )


def started(spec: ModelDeploymentSpec | None = None) -> tuple[ModelDeploymentSpec, ModelDeploymentStatus]:
    """A spec and the status of its rollout just started at T0."""
    spec = spec or make_spec()
    return spec, step(spec, stable_status(), T0).status


# Starting.


def test_nothing_happens_before_a_stable_model_exists() -> None:
    status = ModelDeploymentStatus()
    decision = decide(make_spec(), status, T0, annotations={ANNOTATION_ABORT: "now"})
    assert decision.status == status
    assert decision.events == ()
    assert placement(make_spec(), status) is None


def test_nothing_happens_while_the_spec_names_the_stable_model() -> None:
    decision = step(make_spec(V1), stable_status(), T0)
    assert decision.status == stable_status()
    assert decision.events == ()


def test_a_new_model_starts_a_rollout_at_the_first_step() -> None:
    decision = step(make_spec(), stable_status(), T0 + timedelta(microseconds=700))
    canary = decision.status.canary
    assert canary is not None
    assert (canary.uri, canary.version, canary.digest, canary.format) == (V2.uri, "2", V2.sha256, "auto")
    assert canary.revision == model_revision(V2)
    assert canary.source() == V2
    assert (canary.step, canary.weight, canary.failures, canary.inconclusive) == (0, 10, 0, 0)
    assert canary.started_at == canary.step_started_at == canary.analysis_started_at == T0
    # Four pods cannot carry 10%: one canary pod of four carries 25%, and status says so.
    assert placement(make_spec(), decision.status).effective_weight == 25.0  # type: ignore[union-attr]
    assert decision.status.stable == stable_status().stable
    assert target(make_spec(), decision.status) == (V1, 3, V2, 1, 10)
    assert events(decision.events) == [("Normal", "RolloutStarted")]
    assert "s3://models/iris/2.skops (version 2)" in decision.events[-1].message


def test_a_route_provider_keeps_the_stable_pods_and_sets_the_weight() -> None:
    spec = make_spec(traffic={"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}})
    decision = step(spec, stable_status(), T0)
    assert target(spec, decision.status) == (V1, 4, V2, 1, 10)
    assert placement(spec, decision.status).effective_weight == 10.0  # type: ignore[union-attr]


def test_the_target_weight_follows_the_pod_count() -> None:
    spec, status = started()
    assert placement(spec, status).effective_weight == 25.0  # type: ignore[union-attr]
    decision = step(make_spec(replicas=10), status, T0 + MINUTE)
    assert placement(make_spec(replicas=10), decision.status).effective_weight == 10.0  # type: ignore[union-attr]
    assert decision.events == ()  # applying the children scales the pods; nothing else changed


def test_an_autoscaled_stable_model_keeps_its_count() -> None:
    spec = make_spec(autoscaling={"maxReplicas": 10})
    decision = step(spec, stable_status(), T0)
    assert target(spec, decision.status) == (V1, None, V2, 1, 10)
    found = placement(spec, decision.status)
    assert found is not None
    assert found.stable_replicas is None


# Steps.


def test_no_window_is_due_before_the_step_duration_has_passed() -> None:
    spec, status = started()
    assert analysis_window(spec, status, T0 + 4 * MINUTE) is None
    assert analysis_window(spec, status, T0 + 5 * MINUTE) == AnalysisWindow(
        revision=model_revision(V2), step=0, start=T0, end=T0 + 5 * MINUTE
    )
    decision = step(spec, status, T0 + 4 * MINUTE, "pass")
    assert decision.status == status
    assert decision.events == ()


def test_a_passing_window_moves_to_the_next_step() -> None:
    spec, status = started()
    decision = step(spec, status, T0 + 6 * MINUTE, "pass")
    canary = decision.status.canary
    assert canary is not None
    assert (canary.step, canary.weight) == (1, 50)
    assert canary.step_started_at == canary.analysis_started_at == T0 + 6 * MINUTE
    assert canary.started_at == T0
    assert [check.name for check in canary.checks] == ["samples", "errorRate"]
    assert target(spec, decision.status) == (V1, 2, V2, 2, 50)
    assert events(decision.events) == [("Normal", "StepAdvanced")]


def test_the_last_passing_step_promotes_the_canary() -> None:
    spec, status = started()
    status = step(spec, status, T0 + 5 * MINUTE, "pass").status
    decision = step(spec, status, T0 + 10 * MINUTE, "pass")
    assert decision.status.canary is None
    stable = decision.status.stable
    assert stable is not None
    assert stable.source() == V2
    assert stable.since == T0 + 10 * MINUTE
    (entry,) = decision.status.history
    assert (entry.outcome, entry.reason, entry.revision) == ("promoted", "Promoted", model_revision(V2))
    assert (entry.started_at, entry.finished_at) == (T0, T0 + 10 * MINUTE)
    assert target(spec, decision.status) == (V2, 4, None, 0, 0)
    assert events(decision.events) == [("Normal", "Promoted")]
    # Afterwards the spec names the stable model: nothing more to do.
    later = step(spec, decision.status, T0 + 20 * MINUTE, "pass")
    assert later.status == decision.status
    assert later.events == ()


def test_promotion_with_a_route_provider_moves_traffic_back_before_removing_the_canary() -> None:
    spec = make_spec(steps=[50], traffic={"provider": "istio"})
    _, status = started(spec)
    decision = step(spec, status, T0 + 5 * MINUTE, "pass")
    assert target(spec, decision.status) == (V2, 4, None, 0, 0)


# Failing and inconclusive windows.


def test_a_failing_window_rolls_back_and_says_why() -> None:
    spec, status = started()
    decision = step(spec, status, T0 + 5 * MINUTE, "fail")
    assert decision.status.canary is None
    assert decision.status.stable == stable_status().stable
    rejected = decision.status.rejected
    assert rejected is not None
    assert (rejected.revision, rejected.reason, rejected.at) == (
        model_revision(V2),
        "AnalysisFailed",
        T0 + 5 * MINUTE,
    )
    assert rejected.message == "Step 1 of 2 failed: errorRate: errorRate fail"
    (entry,) = decision.status.history
    assert (entry.outcome, entry.reason) == ("rolledBack", "AnalysisFailed")
    # The deciding window's checks stay with the rollout they ended.
    assert entry.checks == list(checks("fail"))
    assert target(spec, decision.status) == (V1, 4, None, 0, 0)
    assert events(decision.events) == [("Warning", "RolledBack")]


def test_only_the_newest_history_entry_keeps_its_checks() -> None:
    spec, status = started()
    status = step(spec, status, T0 + 5 * MINUTE, "fail").status
    status = step(make_spec(V3), status, T0 + 6 * MINUTE).status
    status = step(make_spec(V3), status, T0 + 11 * MINUTE, "pass").status
    status = step(make_spec(V3), status, T0 + 16 * MINUTE, "pass").status
    newest, older = status.history
    assert (newest.outcome, older.outcome) == ("promoted", "rolledBack")
    assert newest.checks == list(checks("pass"))
    assert older.checks is None


def test_a_rejected_model_is_not_rolled_out_again_while_the_spec_names_it() -> None:
    spec, status = started()
    rejected = step(spec, status, T0 + 5 * MINUTE, "fail").status
    for minutes in (6, 60, 600):
        later = step(spec, rejected, T0 + minutes * MINUTE, "pass")
        assert later.status == rejected
        assert later.events == ()


def test_failures_within_the_limit_repeat_the_step() -> None:
    spec, status = started(make_spec(failureLimit=1))
    decision = step(spec, status, T0 + 5 * MINUTE, "fail")
    canary = decision.status.canary
    assert canary is not None
    assert (canary.step, canary.failures) == (0, 1)
    assert canary.step_started_at == T0
    assert canary.analysis_started_at == T0 + 5 * MINUTE
    assert events(decision.events) == [("Warning", "StepFailed")]
    assert target(spec, decision.status) == target(spec, status)
    again = step(spec, decision.status, T0 + 10 * MINUTE, "fail")
    assert again.status.canary is None
    assert again.status.rejected is not None


def test_failures_count_over_the_whole_rollout() -> None:
    spec, status = started(make_spec(failureLimit=1))
    status = step(spec, status, T0 + 5 * MINUTE, "fail").status
    status = step(spec, status, T0 + 10 * MINUTE, "pass").status
    assert status.canary is not None
    assert (status.canary.step, status.canary.failures) == (1, 1)
    assert step(spec, status, T0 + 15 * MINUTE, "fail").status.canary is None


def test_inconclusive_windows_hold_then_roll_back_at_the_limit() -> None:
    spec, status = started(make_spec(inconclusiveLimit=2))
    for count in (1, 2):
        decision = step(spec, status, T0 + 5 * count * MINUTE, "inconclusive")
        status = decision.status
        assert status.canary is not None
        assert (status.canary.step, status.canary.inconclusive) == (0, count)
        assert events(decision.events) == [("Normal", "StepInconclusive")]
    decision = step(spec, status, T0 + 15 * MINUTE, "inconclusive")
    assert decision.status.canary is None
    assert decision.status.rejected is not None
    assert decision.status.rejected.reason == "InconclusiveLimitReached"
    assert decision.status.rejected.message.startswith("3 analyses in a row without a verdict at step 1 of 2")


def test_a_verdict_resets_the_inconclusive_count() -> None:
    spec, status = started(make_spec(inconclusiveLimit=1, failureLimit=5))
    status = step(spec, status, T0 + 5 * MINUTE, "inconclusive").status
    status = step(spec, status, T0 + 10 * MINUTE, "fail").status
    assert status.canary is not None
    assert status.canary.inconclusive == 0
    status = step(spec, status, T0 + 15 * MINUTE, "inconclusive").status
    assert status.canary is not None
    assert status.canary.inconclusive == 1


def test_hold_never_promotes_without_data() -> None:
    spec, status = started(make_spec(steps=[10], inconclusiveLimit=1000, progressDeadline="24h"))
    for window in range(1, 200):
        status = step(spec, status, T0 + 5 * window * MINUTE, "inconclusive").status
        assert status.canary is not None
        assert status.stable is not None
        assert status.stable.source() == V1
    assert not status.history


def test_on_no_data_fail_counts_an_inconclusive_window_as_failed() -> None:
    spec, status = started(make_spec(analysis={"onNoData": "fail"}))
    decision = step(spec, status, T0 + 5 * MINUTE, "inconclusive")
    assert decision.status.canary is None
    assert decision.status.rejected is not None
    assert decision.status.rejected.reason == "AnalysisFailed"
    assert "errorRate inconclusive" in decision.status.rejected.message


# The deadline.


def test_a_step_without_a_verdict_past_the_deadline_rolls_back() -> None:
    spec, status = started()
    assert step(spec, status, T0 + 30 * MINUTE).status.canary is not None
    decision = step(spec, status, T0 + 30 * MINUTE + timedelta(seconds=1))
    assert decision.status.canary is None
    assert decision.status.rejected is not None
    assert decision.status.rejected.reason == "ProgressDeadlineExceeded"
    assert (
        decision.status.rejected.message
        == "Step 1 of 2 ran longer than the progress deadline of 30m without a verdict"
    )
    assert decision.status.history[0].reason == "ProgressDeadlineExceeded"


def test_the_deadline_counts_from_the_current_step() -> None:
    spec, status = started()
    status = step(spec, status, T0 + 20 * MINUTE, "pass").status
    assert step(spec, status, T0 + 45 * MINUTE).status.canary is not None
    assert step(spec, status, T0 + 51 * MINUTE).status.canary is None


def test_a_verdict_at_the_deadline_is_taken_before_the_deadline_is_checked() -> None:
    spec, status = started()
    decision = step(spec, status, T0 + 40 * MINUTE, "pass")
    assert decision.status.canary is not None
    assert decision.status.canary.step == 1


def test_every_step_gets_at_least_one_window_before_its_deadline() -> None:
    spec, status = started(make_spec(stepDuration="1h", progressDeadline="10m"))
    assert step(spec, status, T0 + 59 * MINUTE).status.canary is not None
    assert step(spec, status, T0 + 60 * MINUTE, "pass").status.canary is not None
    assert step(spec, status, T0 + 61 * MINUTE).status.canary is None


# The spec changing mid-rollout.


def test_a_newer_model_restarts_the_rollout() -> None:
    spec, status = started()
    status = step(spec, status, T0 + 5 * MINUTE, "pass").status
    decision = step(make_spec(V3), status, T0 + 7 * MINUTE)
    canary = decision.status.canary
    assert canary is not None
    assert (canary.uri, canary.step, canary.weight, canary.started_at) == (V3.uri, 0, 10, T0 + 7 * MINUTE)
    assert canary.checks == []
    (entry,) = decision.status.history
    assert (entry.uri, entry.outcome, entry.reason) == (V2.uri, "superseded", "Superseded")
    assert target(spec, decision.status) == (V1, 3, V3, 1, 10)
    assert events(decision.events) == [("Normal", "RolloutSuperseded"), ("Normal", "RolloutStarted")]


def test_any_change_of_the_model_counts_as_a_new_model() -> None:
    _, status = started()
    pinned_differently = V2.model_copy(update={"sha256": "b" * 64})
    decision = step(make_spec(pinned_differently), status, T0 + MINUTE)
    assert decision.status.canary is not None
    assert decision.status.canary.digest == "b" * 64
    assert decision.status.history[0].outcome == "superseded"


def test_the_stable_model_in_the_spec_ends_the_rollout_at_once() -> None:
    _, status = started()
    decision = step(make_spec(V1), status, T0 + MINUTE)
    assert decision.status.canary is None
    assert decision.status.rejected is None
    (entry,) = decision.status.history
    assert (entry.outcome, entry.reason) == ("cancelled", "SpecBackToStable")
    assert target(make_spec(V1), decision.status) == (V1, 4, None, 0, 0)
    assert events(decision.events) == [("Normal", "RolloutCancelled")]


def test_a_new_model_after_a_rollback_is_rolled_out() -> None:
    spec, status = started()
    rejected = step(spec, status, T0 + 5 * MINUTE, "fail").status
    decision = step(make_spec(V3), rejected, T0 + 6 * MINUTE)
    assert decision.status.rejected is None
    assert decision.status.canary is not None
    assert decision.status.canary.uri == V3.uri


def test_the_stable_model_in_the_spec_clears_a_rejection() -> None:
    spec, status = started()
    rejected = step(spec, status, T0 + 5 * MINUTE, "fail").status
    decision = step(make_spec(V1), rejected, T0 + 6 * MINUTE)
    assert decision.status.rejected is None
    assert decision.status.canary is None
    assert decision.events == ()
    # ...so naming the once rejected model again is a new change, and rolls it out.
    assert step(spec, decision.status, T0 + 7 * MINUTE).status.canary is not None


def test_an_analysis_of_a_superseded_canary_is_ignored() -> None:
    spec, status = started()
    stale = StepAnalysis(analysis_window(spec, status, T0 + 5 * MINUTE), checks("fail"))  # type: ignore[arg-type]
    decision = decide(make_spec(V3), status, T0 + 5 * MINUTE, analysis=stale)
    assert decision.status.canary is not None
    assert decision.status.canary.uri == V3.uri
    assert decision.status.rejected is None


def test_an_analysis_already_taken_is_not_taken_twice() -> None:
    spec, status = started(make_spec(steps=[10, 20, 30]))
    analysis = StepAnalysis(analysis_window(spec, status, T0 + 5 * MINUTE), checks("pass"))  # type: ignore[arg-type]
    once = decide(spec, status, T0 + 5 * MINUTE, analysis=analysis)
    twice = decide(spec, once.status, T0 + 10 * MINUTE, analysis=analysis)
    assert once.status.canary is not None
    assert once.status.canary.step == 1
    assert twice.status == once.status
    assert twice.events == ()


def test_history_keeps_the_latest_ten_rollouts() -> None:
    _, status = started()
    models = [V2.model_copy(update={"version": str(n)}) for n in range(12)]
    for n, model in enumerate(models):
        status = step(make_spec(model), status, T0 + n * MINUTE).status
    assert len(status.history) == 10
    assert status.history[0].version == "10"
    assert all(isinstance(entry, HistoryEntry) for entry in status.history)


# Manual requests.


def test_promote_full_promotes_at_once_and_only_once() -> None:
    spec, status = started()
    request = {ANNOTATION_PROMOTE: "full"}
    decision = step(spec, status, T0 + MINUTE, annotations=request)
    assert decision.status.canary is None
    assert decision.status.stable is not None
    assert decision.status.stable.source() == V2
    assert decision.status.history[0].message == "Promoted through the modeldeploy.io/promote annotation"
    assert decision.status.handled_requests == request
    # The annotation stays; the next rollout is not promoted by it.
    next_rollout = step(make_spec(V3), decision.status, T0 + 2 * MINUTE, annotations=request)
    assert next_rollout.status.canary is not None
    assert next_rollout.status.canary.uri == V3.uri


def test_promote_step_advances_one_step_and_a_new_value_another() -> None:
    spec, status = started(make_spec(steps=[10, 20, 30]))
    first = step(spec, status, T0 + MINUTE, annotations={ANNOTATION_PROMOTE: "step"})
    assert first.status.canary is not None
    assert first.status.canary.step == 1
    assert first.status.canary.step_started_at == T0 + MINUTE
    assert events(first.events) == [("Normal", "StepAdvanced")]
    same = step(spec, first.status, T0 + 2 * MINUTE, annotations={ANNOTATION_PROMOTE: "step"})
    assert same.status == first.status
    second = step(spec, first.status, T0 + 2 * MINUTE, annotations={ANNOTATION_PROMOTE: "step:2"})
    assert second.status.canary is not None
    assert second.status.canary.step == 2
    last = step(spec, second.status, T0 + 3 * MINUTE, annotations={ANNOTATION_PROMOTE: "STEP:3"})
    assert last.status.canary is None
    assert last.status.history[0].outcome == "promoted"


def test_removing_a_request_forgets_it_so_it_can_be_made_again() -> None:
    spec, status = started(make_spec(steps=[10, 20, 30]))
    status = step(spec, status, T0 + MINUTE, annotations={ANNOTATION_PROMOTE: "step"}).status
    status = step(spec, status, T0 + 2 * MINUTE, annotations={}).status
    assert status.handled_requests is None
    status = step(spec, status, T0 + 3 * MINUTE, annotations={ANNOTATION_PROMOTE: "step"}).status
    assert status.canary is not None
    assert status.canary.step == 2


def test_an_invalid_promote_request_is_reported_once() -> None:
    spec, status = started()
    decision = step(spec, status, T0 + MINUTE, annotations={ANNOTATION_PROMOTE: "yes please"})
    assert events(decision.events) == [("Warning", "InvalidRequest")]
    assert decision.status.canary == status.canary
    again = step(spec, decision.status, T0 + 2 * MINUTE, annotations={ANNOTATION_PROMOTE: "yes please"})
    assert again.events == ()


def test_abort_rolls_back_and_keeps_the_model_rejected() -> None:
    spec, status = started()
    decision = step(spec, status, T0 + MINUTE, annotations={ANNOTATION_ABORT: "true"})
    assert decision.status.canary is None
    assert decision.status.rejected is not None
    assert decision.status.rejected.reason == "Aborted"
    assert decision.status.history[0].outcome == "aborted"
    assert target(spec, decision.status) == (V1, 4, None, 0, 0)
    assert events(decision.events) == [("Warning", "RolledBack")]
    later = step(spec, decision.status, T0 + 10 * MINUTE, annotations={ANNOTATION_ABORT: "true"})
    assert later.status == decision.status


def test_requests_without_a_rollout_are_ignored_and_recorded() -> None:
    spec = make_spec(V1)
    annotations = {ANNOTATION_ABORT: "1", ANNOTATION_PROMOTE: "full", ANNOTATION_RETRY: "1"}
    decision = step(spec, stable_status(), T0, annotations=annotations)
    assert events(decision.events) == [("Normal", "RequestIgnored")] * 3
    assert decision.status.handled_requests == annotations
    # A rollout that starts later is not aborted or promoted by the old annotations.
    later = step(make_spec(V2), decision.status, T0 + MINUTE, annotations=annotations)
    assert later.status.canary is not None
    assert events(later.events) == [("Normal", "RolloutStarted")]


def test_retry_rolls_out_a_rejected_model_again() -> None:
    spec, status = started(make_spec(failureLimit=0))
    rejected = step(spec, status, T0 + 5 * MINUTE, "fail").status
    decision = step(spec, rejected, T0 + 6 * MINUTE, annotations={ANNOTATION_RETRY: "1"})
    assert decision.status.rejected is None
    canary = decision.status.canary
    assert canary is not None
    assert (canary.step, canary.failures, canary.started_at) == (0, 0, T0 + 6 * MINUTE)
    assert events(decision.events) == [("Normal", "RolloutStarted")]
    # The same retry value does not restart the next rollback.
    failed_again = step(spec, decision.status, T0 + 11 * MINUTE, "fail", annotations={ANNOTATION_RETRY: "1"})
    assert failed_again.status.canary is None
    assert (
        step(spec, failed_again.status, T0 + 12 * MINUTE, annotations={ANNOTATION_RETRY: "1"}).status.canary
        is None
    )
    assert (
        step(spec, failed_again.status, T0 + 12 * MINUTE, annotations={ANNOTATION_RETRY: "2"}).status.canary
        is not None
    )


def test_abort_outranks_a_promotion_requested_together() -> None:
    spec, status = started()
    decision = step(
        spec, status, T0 + MINUTE, annotations={ANNOTATION_PROMOTE: "full", ANNOTATION_ABORT: "x"}
    )
    assert decision.status.history[0].outcome == "aborted"
    assert decision.status.stable is not None
    assert decision.status.stable.source() == V1


# Pausing.


def test_a_paused_rollout_holds_its_step_and_its_deadline() -> None:
    spec, status = started()
    paused = {ANNOTATION_PAUSED: "true"}
    decision = step(spec, status, T0 + 2 * MINUTE, annotations=paused)
    assert events(decision.events) == [("Normal", "RolloutPaused")]
    status = decision.status
    assert status.canary is not None
    assert status.canary.paused_at == T0 + 2 * MINUTE
    # No window is due, no verdict taken, and the deadline waits.
    assert analysis_window(spec, status, T0 + 10 * MINUTE) is None
    held = step(spec, status, T0 + 120 * MINUTE, "fail", annotations=paused)
    assert held.status == status
    assert held.events == ()
    resumed = step(spec, status, T0 + 122 * MINUTE, annotations={ANNOTATION_PAUSED: "false"})
    canary = resumed.status.canary
    assert canary is not None
    assert canary.paused_at is None
    assert canary.step_started_at == T0 + 120 * MINUTE  # the two hours paused do not count
    assert canary.analysis_started_at == T0 + 122 * MINUTE  # a fresh window
    assert events(resumed.events) == [("Normal", "RolloutResumed")]
    assert step(spec, resumed.status, T0 + 149 * MINUTE).status.canary is not None
    assert step(spec, resumed.status, T0 + 151 * MINUTE).status.canary is None


def test_manual_requests_act_while_paused() -> None:
    spec, status = started(make_spec(steps=[10, 20, 30]))
    paused = {ANNOTATION_PAUSED: "true"}
    status = step(spec, status, T0 + MINUTE, annotations=paused).status
    decision = step(spec, status, T0 + 3 * MINUTE, annotations={**paused, ANNOTATION_PROMOTE: "step"})
    canary = decision.status.canary
    assert canary is not None
    assert canary.step == 1
    # The new step is paused from its start, so resuming does not shift it by the earlier pause.
    assert canary.paused_at == T0 + 3 * MINUTE
    resumed = step(spec, decision.status, T0 + 4 * MINUTE).status
    assert resumed.canary is not None
    assert resumed.canary.step_started_at == T0 + 4 * MINUTE
    aborted = step(spec, decision.status, T0 + 5 * MINUTE, annotations={**paused, ANNOTATION_ABORT: "y"})
    assert aborted.status.canary is None


def test_a_rollout_started_while_paused_waits_at_its_first_step() -> None:
    decision = step(make_spec(), stable_status(), T0, annotations={ANNOTATION_PAUSED: "true"})
    assert decision.status.canary is not None
    assert decision.status.canary.paused_at == T0
    assert events(decision.events) == [("Normal", "RolloutStarted"), ("Normal", "RolloutPaused")]


# Persistence.


@pytest.mark.parametrize("minutes", [0, 5, 6, 11])
def test_every_status_survives_the_api_server(minutes: int) -> None:
    spec, status = started(make_spec(steps=[10, 20, 30], failureLimit=1))
    status = step(spec, status, T0 + 5 * MINUTE, "fail", annotations={ANNOTATION_PAUSED: "true"}).status
    status = step(spec, status, T0 + (6 + minutes) * MINUTE, "pass").status
    assert roundtrip(status) == status
    assert (
        roundtrip(step(spec, status, T0 + 90 * MINUTE).status) == step(spec, status, T0 + 90 * MINUTE).status
    )
