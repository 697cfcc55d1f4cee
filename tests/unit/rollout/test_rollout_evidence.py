"""Windows that wait for evidence (spec.rollout.waitForSamples): a window whose checks lack only requests
grows from the same start, as far as its own traffic says is enough, up to the progress deadline."""

from __future__ import annotations

from datetime import datetime, timedelta

from rollout_support import T0, make_spec, roundtrip, stable_status

from modeldeploy_operator.rollout import (
    AnalysisWindow,
    CanaryPods,
    Decision,
    StepAnalysis,
    analysis_window,
    decide,
    extended_window_end,
    next_analysis_at,
)
from modeldeploy_operator.spec import CheckResult, ModelDeploymentSpec, ModelDeploymentStatus

MINUTE = timedelta(minutes=1)
NEEDED = 50.0


def short_checks(canary: float, stable: float = 1000.0) -> tuple[CheckResult, ...]:
    """A window's checks as `evaluate` gives them when `canary` and `stable` requests were served of the
    50 each needs: the samples check counts the canary, errorRate compares with the stable model."""
    canary_short, stable_short = canary < NEEDED, stable < NEEDED

    def check(name: str, short: bool, compares: bool) -> CheckResult:
        return CheckResult(
            name=name,
            baseline_query="stable" if compares else "",
            samples=canary,
            stable_samples=stable,
            samples_needed=NEEDED if short else None,
            verdict="inconclusive" if short else "pass",
            message=f"{name} short" if short else f"{name} fine",
        )

    return (
        check("samples", canary_short, compares=True),
        check("errorRate", canary_short or stable_short, compares=True),
        check("custom", canary_short, compares=False),
    )


def started(**rollout: object) -> tuple[ModelDeploymentSpec, ModelDeploymentStatus]:
    spec = make_spec(**rollout)
    return spec, decide(spec, stable_status(), T0).status


def judged(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime, found: tuple[CheckResult, ...]
) -> Decision:
    window = analysis_window(spec, status, now)
    assert window is not None, "no window is due"
    return decide(spec, status, now, analysis=StepAnalysis(window, found))


def test_a_window_short_of_canary_requests_grows_from_the_same_start_without_counting() -> None:
    spec, status = started()
    decision = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20))
    canary = decision.status.canary
    assert canary is not None
    # 20 of 50 in 5 minutes: 12.5 minutes at that rate, a fifth more for the noise.
    assert (canary.analysis_started_at, canary.analysis_ends_at) == (T0, T0 + 15 * MINUTE)
    assert (canary.step, canary.inconclusive, canary.failures) == (0, 0, 0)
    assert [check.samples_needed for check in canary.checks] == [NEEDED, NEEDED, NEEDED]
    assert [(event.type, event.reason) for event in decision.events] == [("Normal", "WindowExtended")]
    assert "its window now ends at 2026-11-27T12:15:00Z" in decision.events[0].message
    assert "samples: samples short" in decision.events[0].message
    after = roundtrip(decision.status)
    assert next_analysis_at(spec, after) == T0 + 15 * MINUTE
    assert analysis_window(spec, after, T0 + 15 * MINUTE - timedelta(seconds=1)) is None
    assert analysis_window(spec, after, T0 + 15 * MINUTE) == AnalysisWindow(
        canary.revision, 0, T0, T0 + 15 * MINUTE
    )


def test_the_grown_window_judges_everything_it_saw_and_the_next_step_starts_afresh() -> None:
    spec, status = started()
    status = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20)).status
    status = judged(spec, status, T0 + 15 * MINUTE, short_checks(canary=60)).status
    canary = status.canary
    assert canary is not None
    assert (canary.step, canary.analysis_started_at, canary.analysis_ends_at) == (1, T0 + 15 * MINUTE, None)
    assert next_analysis_at(spec, status) == T0 + 20 * MINUTE


def test_an_analysis_of_the_window_before_it_grew_is_stale() -> None:
    spec, status = started()
    window = analysis_window(spec, status, T0 + 5 * MINUTE)
    assert window is not None
    status = decide(spec, status, T0 + 5 * MINUTE, analysis=StepAnalysis(window, short_checks(20))).status
    passing = StepAnalysis(window, short_checks(canary=100))
    assert decide(spec, status, T0 + 15 * MINUTE, analysis=passing).status == status


def test_the_stable_model_short_of_requests_sets_the_growth_for_the_checks_that_compare() -> None:
    spec, status = started()
    decision = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=500, stable=25))
    canary = decision.status.canary
    assert canary is not None
    # 25 of 50: twice the window, and a fifth more.
    assert canary.analysis_ends_at == T0 + 12 * MINUTE


def test_a_window_without_a_single_request_grows_by_a_step_duration() -> None:
    spec, status = started()
    canary = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=0)).status.canary
    assert canary is not None and canary.analysis_ends_at == T0 + 10 * MINUTE


def test_a_window_nearly_full_still_grows_by_a_quarter_of_the_step() -> None:
    spec, status = started()
    canary = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=49.5)).status.canary
    assert canary is not None
    assert canary.analysis_ends_at == T0 + 5 * MINUTE + timedelta(seconds=75)


def test_a_window_grows_no_further_than_the_deadline_and_a_step_still_short_there_rolls_back() -> None:
    spec, status = started(progressDeadline="20m")
    status = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=2)).status
    assert status.canary is not None and status.canary.analysis_ends_at == T0 + 20 * MINUTE
    # At the deadline the window is judged on all of it; still short, it cannot grow.
    decision = judged(spec, status, T0 + 20 * MINUTE, short_checks(canary=8))
    canary = decision.status.canary
    assert canary is not None and canary.inconclusive == 1  # counted as the windows before this feature
    decision = decide(spec, decision.status, T0 + 20 * MINUTE + timedelta(seconds=1))
    rejected = decision.status.rejected
    assert rejected is not None and rejected.reason == "ProgressDeadlineExceeded"
    assert rejected.message.startswith(
        "Step 1 of 2 ran longer than the progress deadline of 20m without a verdict: samples: samples short"
    )


def test_restarting_windows_is_still_there_for_whoever_wants_it() -> None:
    spec, status = started(waitForSamples=False)
    canary = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20)).status.canary
    assert canary is not None
    assert (canary.analysis_started_at, canary.analysis_ends_at, canary.inconclusive) == (
        T0 + 5 * MINUTE,
        None,
        1,
    )


def test_no_data_as_failure_does_not_wait() -> None:
    spec, status = started(analysis={"onNoData": "fail"})
    decision = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20))
    assert decision.status.rejected is not None and decision.status.rejected.reason == "AnalysisFailed"


def test_a_window_that_lacks_more_than_requests_is_analysed_again_from_scratch() -> None:
    spec, status = started()
    unanswered = CheckResult(name="latency", verdict="inconclusive", message="Prometheus unreachable")
    canary = judged(spec, status, T0 + 5 * MINUTE, (*short_checks(canary=20), unanswered)).status.canary
    assert canary is not None
    assert (canary.analysis_started_at, canary.analysis_ends_at, canary.inconclusive) == (
        T0 + 5 * MINUTE,
        None,
        1,
    )


def test_a_failed_check_beside_a_short_one_fails_the_window() -> None:
    spec, status = started()
    failing = CheckResult(name="latency", verdict="fail", message="far too slow")
    decision = judged(spec, status, T0 + 5 * MINUTE, (*short_checks(canary=20), failing))
    assert decision.status.rejected is not None and decision.status.rejected.reason == "AnalysisFailed"


def test_canary_pods_that_stop_being_ready_restart_a_grown_window() -> None:
    spec, status = started()
    ready = CanaryPods(revision=status.canary.revision if status.canary else "", ready=True)
    status = decide(spec, status, T0, canary_pods=ready).status
    status = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20)).status
    unready = CanaryPods(revision=ready.revision, ready=False)
    canary = decide(spec, status, T0 + 7 * MINUTE, canary_pods=unready).status.canary
    assert canary is not None
    assert (canary.analysis_started_at, canary.analysis_ends_at) == (T0 + 7 * MINUTE, None)


def test_a_paused_and_resumed_rollout_starts_a_plain_window() -> None:
    spec, status = started()
    status = judged(spec, status, T0 + 5 * MINUTE, short_checks(canary=20)).status
    paused = decide(spec, status, T0 + 6 * MINUTE, annotations={"modeldeploy.io/paused": "true"}).status
    assert next_analysis_at(spec, paused) is None
    resumed = decide(spec, paused, T0 + 8 * MINUTE).status
    assert resumed.canary is not None
    assert (resumed.canary.analysis_started_at, resumed.canary.analysis_ends_at) == (T0 + 8 * MINUTE, None)


def test_the_end_is_a_pure_function_of_the_window_and_its_checks() -> None:
    spec, status = started()
    assert status.canary is not None
    window = AnalysisWindow(status.canary.revision, 0, T0, T0 + 5 * MINUTE)
    ends = {extended_window_end(spec, status.canary, window, short_checks(canary=20)) for _ in range(3)}
    assert ends == {T0 + 15 * MINUTE}
    assert extended_window_end(spec, status.canary, window, short_checks(canary=80)) is None
