"""A running rollout is looked at again when its analysis window ends, not a tick later."""

from __future__ import annotations

from datetime import timedelta

from rollout_support import T0, make_spec, stable_status, step

from modeldeploy_operator.reconcile import ROLLOUT_TICK_SECONDS, WINDOW_SETTLE_SECONDS, rollout_wake_up
from modeldeploy_operator.rollout import ANNOTATION_PAUSED, next_analysis_at


def test_the_wake_up_is_the_window_end_when_it_comes_before_the_tick() -> None:
    spec = make_spec(stepDuration="8s")
    started = step(spec, stable_status(), T0).status
    assert next_analysis_at(spec, started) == T0 + timedelta(seconds=8)

    assert rollout_wake_up(spec, started, T0) == ROLLOUT_TICK_SECONDS
    assert rollout_wake_up(spec, started, T0 + timedelta(seconds=6)) == 2 + WINDOW_SETTLE_SECONDS
    # A window already over (the operator was away) is looked at almost at once.
    assert rollout_wake_up(spec, started, T0 + timedelta(minutes=3)) == WINDOW_SETTLE_SECONDS


def test_an_inconclusive_window_moves_the_next_wake_up_to_the_new_window() -> None:
    spec = make_spec(stepDuration="8s")
    started = step(spec, stable_status(), T0).status
    later = T0 + timedelta(seconds=9)
    held = step(spec, started, later, "inconclusive").status
    assert next_analysis_at(spec, held) == later + timedelta(seconds=8)


def test_paused_or_finished_rollouts_have_no_window_to_wake_up_for() -> None:
    spec = make_spec(stepDuration="8s")
    started = step(spec, stable_status(), T0).status
    paused = step(spec, started, T0 + timedelta(seconds=1), annotations={ANNOTATION_PAUSED: "true"}).status
    assert paused.canary is not None and paused.canary.paused_at is not None
    assert next_analysis_at(spec, paused) is None
    assert rollout_wake_up(spec, paused, T0) == ROLLOUT_TICK_SECONDS
    assert next_analysis_at(spec, stable_status()) is None
