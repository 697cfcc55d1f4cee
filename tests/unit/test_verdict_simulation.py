"""The decision-quality benchmark's simulator answers queries the way Prometheus does.

`benchmarks/verdict_simulation.py` stands in for the servers and Prometheus; its numbers are only
worth something if `increase()` and `histogram_quantile` follow Prometheus' rules and the rollouts
it drives end the way the operator's own code says.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from verdict_simulation import (
    Behaviour,
    Latency,
    Sample,
    Simulation,
    UnknownQuery,
    extrapolated_increase,
    histogram_quantile,
    rollout_spec,
    simulate_rollout,
)

from modeldeploy_serving.metrics import LATENCY_BUCKETS

CLASSES = (0.5, 0.3, 0.2)
GOOD = Behaviour(0.0, Latency(0.05), CLASSES)


def test_an_increase_covering_the_range_is_extrapolated_to_both_ends() -> None:
    times = [15.0 * i for i in range(1, 20)]  # 15 ... 285 inside (0, 300]
    values = [10.0 * t for t in times]
    assert extrapolated_increase(times, values, 0.0, 300.0) == pytest.approx(3000.0)


def test_a_series_starting_inside_the_range_is_extrapolated_to_its_zero_and_half_an_interval() -> None:
    # First sample far from the start: half an interval, capped where the counter was 0 (0.75 s
    # before 100); last sample far from the end: half an interval.
    increase = extrapolated_increase([100.0, 115.0, 130.0], [1.0, 21.0, 41.0], 0.0, 300.0)
    assert increase == pytest.approx(40.0 * (30.0 + 0.75 + 7.5) / 30.0)


def test_a_new_series_first_increment_is_not_seen_and_one_sample_is_no_answer() -> None:
    assert extrapolated_increase([15.0, 30.0, 45.0], [1.0, 1.0, 1.0], 0.0, 60.0) == 0.0
    assert extrapolated_increase([15.0], [3.0], 0.0, 60.0) is None


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 10.0), (0.2, 20.0), (math.inf, 100.0)]) == 0.2


def test_histogram_quantile_raises_a_falling_count_and_needs_observations_and_inf() -> None:
    # The 0.2 bucket extrapolated a little below the 0.1 one counts as the 0.1 one.
    buckets = [(0.1, 10.0), (0.2, 9.5), (0.4, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.2 + 0.2 * 5.0 / 10.0)
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
    assert math.isnan(histogram_quantile(0.5, [(0.1, 3.0), (0.2, 5.0)]))


def test_latency_shares_cover_every_bucket_and_put_the_median_at_its_bound() -> None:
    shares = Latency(LATENCY_BUCKETS[4]).bucket_shares()
    assert len(shares) == len(LATENCY_BUCKETS) + 1
    assert shares.sum() == pytest.approx(1.0)
    assert shares[:5].sum() == pytest.approx(0.5)
    slowed = Latency(0.05, slow_share=0.02, slow_factor=10).bucket_shares()
    assert slowed[:6].sum() == pytest.approx(0.98 * 0.5 + 0.02 * Latency(0.5).bucket_shares()[:6].sum())


def _served(canary: Behaviour = GOOD) -> Simulation:
    simulation = Simulation.start(GOOD, canary, 10.0, np.random.default_rng(7))
    simulation.run(600.0, canary_share=0.5)
    return simulation


def test_the_canary_request_count_is_its_share_of_the_traffic() -> None:
    answer = _served().answer("samples/canary", "", 600.0, 300.0, 0.99)
    assert isinstance(answer, list)
    # 1500 expected; a Poisson count and the extrapolation stay well within 10 %.
    assert answer[0].value == pytest.approx(1500.0, rel=0.1)


def test_no_failures_is_an_error_rate_of_zero_and_failures_are_their_share() -> None:
    assert _served().answer("errorRate/canary", "", 600.0, 300.0, 0.99) == [Sample({}, 0.0)]
    failing = _served(Behaviour(0.2, Latency(0.05), CLASSES)).answer(
        "errorRate/canary", "", 600.0, 300.0, 0.99
    )
    assert isinstance(failing, list)
    assert failing[0].value == pytest.approx(0.2, abs=0.04)


def test_latency_and_classes_are_answered_from_the_buckets_and_class_counters() -> None:
    simulation = _served(Behaviour(0.0, Latency(0.05), (0.5, 0.5, 0.0)))
    latency = simulation.answer("latency/canary", "", 600.0, 300.0, 0.5)
    assert isinstance(latency, list)
    assert 0.025 < latency[0].value < 0.1  # the median of 50 ms, interpolated in its bucket
    classes = simulation.answer("predictionShift/classes/canary", "", 600.0, 300.0, 0.99)
    assert isinstance(classes, list)
    # A class never predicted has no series at all.
    assert sorted(series.labels["class"] for series in classes) == ["0", "1"]


def test_failed_requests_and_buckets_are_answered_as_counts() -> None:
    simulation = _served(Behaviour(0.2, Latency(0.05), CLASSES))
    errors = simulation.answer("errorRate/errors/canary", "", 600.0, 300.0, 0.99)
    assert isinstance(errors, list)
    assert errors[0].value == pytest.approx(300.0, rel=0.2)
    assert _served().answer("errorRate/errors/canary", "", 600.0, 300.0, 0.99) == [Sample({}, 0.0)]
    buckets = simulation.answer("latency/buckets/stable", "", 600.0, 300.0, 0.99)
    assert isinstance(buckets, list)
    by_bound = {series.labels["le"]: series.value for series in buckets}
    assert len(by_bound) == len(LATENCY_BUCKETS) + 1
    assert by_bound["+Inf"] == pytest.approx(1500.0, rel=0.1)
    assert by_bound["0.05"] == pytest.approx(by_bound["+Inf"] / 2, rel=0.15)


def test_a_query_the_simulation_does_not_know_is_refused() -> None:
    with pytest.raises(UnknownQuery):
        _served().answer("somethingNew/canary", "up", 600.0, 300.0, 0.99)


def test_a_good_model_is_promoted_after_two_windows() -> None:
    outcome = simulate_rollout(rollout_spec(300), GOOD, GOOD, 10.0, np.random.default_rng(1))
    assert (outcome.outcome, outcome.seconds) == ("promoted", 600.0)


def test_a_failing_model_is_rolled_back_after_its_first_window() -> None:
    failing = Behaviour(0.1, Latency(0.05), CLASSES)
    outcome = simulate_rollout(rollout_spec(300), GOOD, failing, 10.0, np.random.default_rng(1))
    assert (outcome.outcome, outcome.reason, outcome.seconds) == ("rolledBack", "AnalysisFailed", 300.0)


def test_a_model_without_enough_traffic_is_rolled_back_for_no_verdict_when_windows_restart() -> None:
    spec = rollout_spec(300, waitForSamples=False)
    outcome = simulate_rollout(spec, GOOD, GOOD, 1.0, np.random.default_rng(1))
    # Four windows of 30 canary requests, below minSamples, then the inconclusive limit of 3.
    assert (outcome.outcome, outcome.reason, outcome.seconds) == (
        "rolledBack",
        "InconclusiveLimitReached",
        1200.0,
    )


def test_a_model_without_enough_traffic_is_promoted_when_its_windows_wait_for_samples() -> None:
    outcome = simulate_rollout(rollout_spec(300), GOOD, GOOD, 1.0, np.random.default_rng(1))
    # About 0.1 canary requests a second at the first step: 50 of them take about 500 s, not 300;
    # at the second step (0.5 a second) 300 s are enough.
    assert outcome.outcome == "promoted", outcome
    assert 800 <= outcome.seconds <= 1100, outcome
