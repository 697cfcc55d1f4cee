"""Analysis with `method: statistical`: the count queries each window sends, the share of the rollout's
error rate each test gets, and the verdicts with their tests, samples, effects and levels."""

from __future__ import annotations

import math
from typing import Any

import pytest
from rollout_support import CANARY, REQUESTS, STABLE, WINDOW, Point, by_name, one, verdicts

from modeldeploy_operator.analysis import AnalysisPlan, QueryFailure, QueryResult, evaluate, plan_analysis
from modeldeploy_operator.spec import Analysis, ModelDeploymentSpec, Rollout

BOUNDS = (
    "0.001",
    "0.0025",
    "0.005",
    "0.01",
    "0.025",
    "0.05",
    "0.1",
    "0.25",
    "0.5",
    "1",
    "2.5",
    "5",
    "10",
    "+Inf",
)


def buckets(**per_bucket: float) -> list[Point]:
    """A latency histogram's increase as Prometheus answers it (cumulative by `le`), from per-bucket
    counts named like b10ms, b250ms, binf."""
    names = {bound: ("binf" if bound == "+Inf" else f"b{round(float(bound) * 1000)}ms") for bound in BOUNDS}
    total, points = 0.0, []
    for bound in BOUNDS:
        total += per_bucket.get(names[bound], 0.0)
        points.append(Point(total, {"le": bound}))
    return points


def statistical(**fields: Any) -> Analysis:
    return Analysis.model_validate({"method": "statistical", **fields})


def plan(**fields: Any) -> AnalysisPlan:
    return plan_analysis("iris", "ml", statistical(**fields), WINDOW)


def healthy() -> dict[str, QueryResult]:
    """A window of 10 req/s with the canary at 10 %, behaving like the stable model."""
    return {
        "samples/canary": one(300),
        "samples/stable": one(2700),
        "errorRate/errors/canary": one(1),
        "errorRate/errors/stable": one(8),
        "latency/buckets/canary": buckets(b5ms=150, b10ms=140, b25ms=9, b100ms=1),
        "latency/buckets/stable": buckets(b5ms=1400, b10ms=1250, b25ms=40, b100ms=10),
        "predictionShift/classes/canary": [
            Point(180, {"class": "setosa"}),
            Point(120, {"class": "versicolor"}),
        ],
        "predictionShift/classes/stable": [
            Point(1600, {"class": "setosa"}),
            Point(1100, {"class": "versicolor"}),
        ],
        "predictionShift/values/canary": [],
        "predictionShift/values/stable": [],
    }


# The queries and the error rate's split.


def test_statistical_plan_golden_queries() -> None:
    queries = dict(plan().queries)
    failed = f'{REQUESTS},code=~"5.."'
    expected = {
        "samples/canary": f"sum(increase(modeldeploy_requests_total{{{CANARY},{REQUESTS}}}[300s]))",
        "samples/stable": f"sum(increase(modeldeploy_requests_total{{{STABLE},{REQUESTS}}}[300s]))",
        "errorRate/errors/canary": f"sum(increase(modeldeploy_requests_total{{{CANARY},{failed}}}[300s])) or vector(0)",
        "errorRate/errors/stable": f"sum(increase(modeldeploy_requests_total{{{STABLE},{failed}}}[300s])) or vector(0)",
        "latency/buckets/canary": (
            f"sum by (le) (increase(modeldeploy_request_duration_seconds_bucket{{{CANARY},{REQUESTS}}}[300s]))"
        ),
        "latency/buckets/stable": (
            f"sum by (le) (increase(modeldeploy_request_duration_seconds_bucket{{{STABLE},{REQUESTS}}}[300s]))"
        ),
    }
    assert {key: queries[key] for key in expected} == expected
    # No quantile or ratio queries: those are the threshold method's.
    assert set(queries) - set(expected) == {
        "predictionShift/classes/canary",
        "predictionShift/classes/stable",
        "predictionShift/values/canary",
        "predictionShift/values/stable",
    }


def test_the_threshold_method_stays_the_default_and_has_no_alpha() -> None:
    default = plan_analysis("iris", "ml", Analysis(), WINDOW)
    assert default.alpha is None
    assert "errorRate/canary" in default.queries
    assert "errorRate/errors/canary" not in default.queries


def test_each_test_gets_its_share_of_the_rollouts_rate() -> None:
    # Defaults: errors against maxRatio and the stable model, latency tail and ranks, PSI: 5 tests.
    assert plan().alpha == pytest.approx(0.05 / 5)
    assert plan(falseRollbackRate=0.01, latency={"maxSeconds": 0.5}).alpha == pytest.approx(0.01 / 6)
    assert plan(errorRate={"maxRatio": None}, predictionShift={"enabled": False}).alpha == pytest.approx(
        0.05 / 3
    )


def test_a_rollout_splits_the_rate_over_its_steps() -> None:
    rollout = Rollout.model_validate({"steps": [10, 25, 50, 75], "analysis": {"method": "statistical"}})
    assert rollout.analysis.windows == 4
    assert plan_analysis("iris", "ml", rollout.analysis, WINDOW).alpha == pytest.approx(0.05 / 4 / 5)
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "/m"}, "rollout": {"analysis": {"method": "statistical"}}}
    )
    assert spec.rollout.analysis.windows == 2


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5])
def test_the_false_rollback_rate_is_a_probability(rate: float) -> None:
    with pytest.raises(ValueError, match=r"false_rollback_rate|falseRollbackRate"):
        statistical(falseRollbackRate=rate)


# The verdicts.


def test_a_healthy_canary_passes_with_its_evidence() -> None:
    checks = evaluate(plan(), healthy())
    assert verdicts(checks) == {
        "samples": "pass",
        "errorRate": "pass",
        "latency": "pass",
        "predictionShift": "pass",
    }
    for check in checks[1:]:
        assert check.test is not None
        assert check.p_value is not None and check.alpha == pytest.approx(0.01)
        assert check.p_value >= check.alpha
        assert check.effect_low is not None and check.effect_high is not None
        assert check.effect_low <= check.effect_high
        assert (check.samples, check.stable_samples) == (300, 2700)
    errors = by_name(checks)["errorRate"]
    assert errors.test == "conditional-binomial"
    assert errors.value == pytest.approx(1 / 300)
    assert errors.baseline == pytest.approx(8 / 2700)
    assert errors.tolerance == 0.0
    assert "1 of 300 failed" in errors.message and "8 of 2700 failed" in errors.message
    latency = by_name(checks)["latency"]
    # The shown latencies are the quantile's bucket bounds, not interpolations within them.
    assert (latency.value, latency.baseline) == (0.025, 0.025)
    assert 'variant="stable"' in latency.baseline_query


def test_one_5xx_in_a_small_window_is_not_a_regression() -> None:
    answers = {**healthy(), "samples/canary": one(60), "errorRate/errors/canary": one(1)}
    answers["errorRate/errors/stable"] = one(0)
    answers["latency/buckets/canary"] = buckets(b5ms=30, b10ms=30)
    errors = by_name(evaluate(plan(), answers))["errorRate"]
    assert errors.verdict == "pass"
    # The threshold method fails the same window: 1 of 60 is above 1 %.
    assert errors.value == pytest.approx(1 / 60)


def test_two_points_of_errors_fail_with_the_excess_and_its_interval() -> None:
    answers = {**healthy(), "errorRate/errors/canary": one(9), "errorRate/errors/stable": one(14)}
    errors = by_name(evaluate(plan(), answers))["errorRate"]
    assert errors.verdict == "fail"
    assert errors.test == "conditional-binomial"
    assert errors.effect == pytest.approx(9 / 300 - 14 / 2700)
    assert errors.effect_low is not None and errors.effect_low > 0
    assert errors.p_value is not None and errors.alpha is not None and errors.p_value < errors.alpha


def test_the_error_tolerance_is_max_increase() -> None:
    answers = {**healthy(), "errorRate/errors/canary": one(9), "errorRate/errors/stable": one(14)}
    tolerant = by_name(evaluate(plan(errorRate={"maxIncrease": 0.05, "maxRatio": None}), answers))[
        "errorRate"
    ]
    assert tolerant.verdict == "pass"
    assert tolerant.tolerance == 0.05


def test_an_exceeded_absolute_bound_fails_without_the_stable_model() -> None:
    answers = {**healthy(), "errorRate/errors/canary": one(30), "samples/stable": one(3)}
    errors = by_name(evaluate(plan(), answers))["errorRate"]
    assert errors.verdict == "fail"
    assert errors.test == "exact-binomial"
    assert errors.tolerance == 0.01
    healthy_errors = by_name(evaluate(plan(), {**healthy(), "samples/stable": one(3)}))["errorRate"]
    assert healthy_errors.verdict == "inconclusive"
    assert "stable model served 3" in healthy_errors.message
    assert healthy_errors.samples_needed == 50


def test_too_few_samples_are_inconclusive_never_pass() -> None:
    answers = {**healthy(), "samples/canary": one(12), "errorRate/errors/canary": one(12)}
    checks = evaluate(plan(), answers)
    assert set(verdicts(checks).values()) == {"inconclusive"}
    assert {check.samples_needed for check in checks} == {50}


@pytest.mark.parametrize(
    "answer", [[], one(math.nan), one(math.inf), QueryFailure("timeout"), [Point(1), Point(2)], None]
)
def test_unusable_error_counts_are_inconclusive(answer: QueryResult | None) -> None:
    answers = healthy()
    if answer is None:
        del answers["errorRate/errors/canary"]
    else:
        answers["errorRate/errors/canary"] = answer
    assert by_name(evaluate(plan(), answers))["errorRate"].verdict == "inconclusive"


def test_a_slow_tail_fails_the_latency_check() -> None:
    # 5 % of the canary's requests take 250 ms; the stable p99 is in the 25 ms bucket.
    answers = {**healthy(), "latency/buckets/canary": buckets(b5ms=140, b10ms=130, b25ms=15, b250ms=15)}
    latency = by_name(evaluate(plan(latency={"ignoreBelowSeconds": 0}), answers))["latency"]
    assert latency.verdict == "fail"
    assert latency.test == "exact-binomial"
    assert latency.effect == pytest.approx(15 / 300)
    assert latency.tolerance == pytest.approx(0.01)
    assert "share slower than 0.05s" in latency.message


def test_a_general_slowdown_fails_the_rank_test() -> None:
    # Three times slower everywhere, the tail included, against a tolerance of 1.5.
    answers = {**healthy(), "latency/buckets/canary": buckets(b10ms=20, b25ms=200, b50ms=70, b250ms=10)}
    latency = by_name(evaluate(plan(latency={"ignoreBelowSeconds": 0}), answers))["latency"]
    assert latency.verdict == "fail"
    assert "mann-whitney" in latency.message


def test_latency_below_the_noise_floor_passes() -> None:
    answers = {**healthy(), "latency/buckets/canary": buckets(b10ms=100, b25ms=200)}
    assert (
        by_name(evaluate(plan(latency={"ignoreBelowSeconds": 0.025}), answers))["latency"].verdict == "pass"
    )
    assert by_name(evaluate(plan(latency={"ignoreBelowSeconds": 0}), answers))["latency"].verdict == "fail"


def test_max_seconds_is_tested_on_the_canary_alone() -> None:
    answers = {
        **healthy(),
        "latency/buckets/canary": buckets(b10ms=250, b1000ms=50),
        "samples/stable": one(0),
    }
    latency = by_name(evaluate(plan(latency={"maxSeconds": 0.5}), answers))["latency"]
    assert latency.verdict == "fail"
    assert latency.tolerance == pytest.approx(0.01)
    assert "maxSeconds" in latency.message


@pytest.mark.parametrize(
    ("key", "answer", "message"),
    [
        ("latency/buckets/canary", buckets(), "histogram is empty"),
        ("latency/buckets/canary", [], "histogram is empty"),
        ("latency/buckets/canary", QueryFailure("http", "502"), "HTTP error"),
        ("latency/buckets/stable", buckets(), "stable model's latency histogram is empty"),
        ("latency/buckets/stable", QueryFailure("timeout"), "timed out"),
    ],
)
def test_latency_without_buckets_is_inconclusive(key: str, answer: QueryResult, message: str) -> None:
    latency = by_name(evaluate(plan(), {**healthy(), key: answer}))["latency"]
    assert latency.verdict == "inconclusive"
    assert message in latency.message


def test_a_lost_class_fails_the_prediction_shift() -> None:
    answers = {**healthy(), "predictionShift/classes/canary": [Point(300, {"class": "setosa"})]}
    shift = by_name(evaluate(plan(), answers))["predictionShift"]
    assert shift.verdict == "fail"
    assert shift.test == "noncentral-chi2"
    assert shift.effect_low is not None and shift.effect_low > 0.2


def test_the_prediction_shift_allows_for_the_sample_sizes() -> None:
    # 60 canary requests over 8 classes, the same shares as the stable model's up to sampling noise: the
    # raw PSI is large for so few samples, the corrected one is not, and the check passes.
    classes = [f"c{i}" for i in range(8)]
    canary = [
        Point(count, {"class": name}) for name, count in zip(classes, (12, 4, 9, 6, 11, 5, 8, 5), strict=True)
    ]
    stable = [Point(340, {"class": name}) for name in classes]
    answers = {
        **healthy(),
        "samples/canary": one(60),
        "latency/buckets/canary": buckets(b5ms=30, b10ms=30),
        "errorRate/errors/canary": one(0),
        "predictionShift/classes/canary": canary,
        "predictionShift/classes/stable": stable,
    }
    shift = by_name(evaluate(plan(predictionShift={"maxShift": 0.05}), answers))["predictionShift"]
    assert shift.value is not None and shift.value > 0.05
    assert shift.effect is not None and shift.effect < shift.value
    assert shift.verdict == "pass"
