"""Statistical verdicts: the distributions against scipy, the tests against hand-computed cases, their
levels by simulation at the null hypothesis' boundary, and the edge cases (zero counts, all errors,
empty buckets)."""

from __future__ import annotations

import math
import random
from itertools import pairwise

import pytest

from modeldeploy_operator import verdicts
from modeldeploy_operator.verdicts import (
    binomial_sf,
    chi2_sf,
    clopper_pearson,
    exceeds_bound,
    interim_alpha,
    latency_distribution,
    latency_tail,
    noncentral_chi2_sf,
    normal_quantile,
    normal_sf,
    per_test_alpha,
    population_stability_index,
    prediction_shift,
    regularized_beta,
    spent_alpha,
    tail_limit,
    two_proportions,
    wilson,
)

stats = pytest.importorskip("scipy.stats")
INF = math.inf
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, INF)


def histogram(**counts: float) -> list[tuple[float, float]]:
    """Per-bucket counts over the server's latency buckets, by bound written as b10ms, b25ms, binf."""
    named = {f"b{round(bound * 1000)}ms" if bound != INF else "binf": bound for bound in BOUNDS}
    given = {named[name]: count for name, count in counts.items()}
    return [(bound, given.get(bound, 0.0)) for bound in BOUNDS]


def expand(buckets: list[tuple[float, float]], scale: float = 1.0) -> list[float]:
    """One value per request at its bucket's upper bound (what the rank test compares)."""
    return [min(scale * bound, 1e9) for bound, count in buckets for _ in range(round(count))]


# --- distributions against scipy ---------------------------------------------------------------


@pytest.mark.parametrize("z", [-8.0, -1.96, 0.0, 0.5, 3.0, 12.0])
def test_normal_sf_matches_scipy(z: float) -> None:
    assert normal_sf(z) == pytest.approx(stats.norm.sf(z), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("p", [1e-12, 1e-6, 0.025, 0.5, 0.9, 0.999999])
def test_normal_quantile_matches_scipy(p: float) -> None:
    assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), rel=1e-9)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, math.nan])
def test_normal_quantile_refuses_what_is_not_an_open_probability(p: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        normal_quantile(p)


@pytest.mark.parametrize(
    ("a", "b", "x"), [(1, 1, 0.3), (0.5, 0.5, 0.01), (3, 98, 0.01), (500, 99501, 0.004), (50, 1, 0.99)]
)
def test_regularized_beta_matches_scipy(a: float, b: float, x: float) -> None:
    assert regularized_beta(a, b, x) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-9)


def test_regularized_beta_at_the_ends() -> None:
    assert regularized_beta(2, 3, 0.0) == 0.0
    assert regularized_beta(2, 3, 1.0) == 1.0


@pytest.mark.parametrize(
    ("k", "n", "p"), [(3, 100, 0.01), (1, 1000, 0.0001), (50, 50, 0.9), (500, 100_000, 0.004), (7, 20, 0.5)]
)
def test_binomial_sf_matches_scipy(k: int, n: int, p: float) -> None:
    assert binomial_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9)


def test_binomial_sf_outside_the_support() -> None:
    assert binomial_sf(0, 10, 0.3) == 1.0
    assert binomial_sf(-2, 10, 0.3) == 1.0
    assert binomial_sf(11, 10, 0.3) == 0.0
    assert binomial_sf(1, 10, 0.0) == 0.0
    assert binomial_sf(10, 10, 1.0) == 1.0


@pytest.mark.parametrize(("x", "df"), [(3.0, 1), (10, 5), (100, 80), (0.01, 3), (1e4, 9000), (0.0, 4)])
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9)


@pytest.mark.parametrize(
    ("x", "df", "noncentrality"),
    [(3.0, 1, 2.0), (10, 5, 20.0), (100, 80, 3.0), (20_000, 9, 19_000.0), (50, 3, 0.001), (4, 2, 0.0)],
)
def test_noncentral_chi2_sf_matches_scipy(x: float, df: int, noncentrality: float) -> None:
    assert noncentral_chi2_sf(x, df, noncentrality) == pytest.approx(
        stats.ncx2.sf(x, df, noncentrality) if noncentrality else stats.chi2.sf(x, df), rel=1e-8
    )


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (3, 100), (50, 50), (1, 1), (500, 100_000)])
def test_clopper_pearson_matches_scipy(successes: int, n: int) -> None:
    expected = stats.binomtest(successes, n).proportion_ci(0.95, method="exact")
    low, high = clopper_pearson(successes, n, 0.025)
    assert low == pytest.approx(expected.low, abs=1e-11)
    assert high == pytest.approx(expected.high, abs=1e-11)


def test_wilson_with_continuity_correction_by_hand() -> None:
    # Newcombe (1998), 81 of 263 at 95%: 0.2553 to 0.3662 without the correction, 0.2535 to 0.3682 with
    # it (by hand: (2·81 + z² - 1 - z·sqrt(z² - 2 - 1/263 + 4·(81/263)·(182 + 1))) / (2·(263 + z²))).
    low, high = wilson(81, 263, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.2535, 0.3682)
    # No successes: the lower end is 0; all successes: the upper end is 1.
    assert wilson(0, 50, 1.96)[0] == 0.0
    assert wilson(50, 50, 1.96)[1] == 1.0


# --- error rate against a bound ------------------------------------------------------------------


def test_exceeds_bound_is_the_exact_binomial_test() -> None:
    outcome = exceeds_bound(5, 100, 0.01, 0.01)
    assert outcome.test == "exact-binomial"
    assert outcome.effect == 0.05
    assert outcome.p_value == pytest.approx(stats.binomtest(5, 100, 0.01, alternative="greater").pvalue)
    assert outcome.failed
    # The interval's lower end is the one-sided bound: it lies above the tolerance exactly when the test fails.
    assert outcome.low > outcome.tolerance


def test_one_error_in_fifty_does_not_fail_a_one_percent_bound() -> None:
    outcome = exceeds_bound(1, 50, 0.01, 0.005)
    assert not outcome.failed
    assert outcome.p_value == pytest.approx(1 - 0.99**50)


def test_exceeds_bound_with_zero_errors_and_with_all_errors() -> None:
    none = exceeds_bound(0, 200, 0.01, 0.01)
    assert (none.p_value, none.effect, none.low, none.failed) == (1.0, 0.0, 0.0, False)
    every = exceeds_bound(200, 200, 0.01, 0.01)
    assert every.failed
    assert (every.effect, every.high) == (1.0, 1.0)


def test_exceeds_bound_rounds_the_extrapolated_counts_of_increase() -> None:
    assert exceeds_bound(2.4, 99.6, 0.01, 0.01) == exceeds_bound(2, 100, 0.01, 0.01)
    # increase() may extrapolate the failures a little above the requests: never more than all of them.
    assert exceeds_bound(101.2, 100.4, 0.01, 0.01).effect == 1.0


# --- error rate against the stable model ---------------------------------------------------------


def test_two_proportions_by_hand() -> None:
    outcome = two_proportions(20, 100, 5, 900, 0.005, 0.01)
    assert outcome.test == "berger-boos-binomial"
    assert outcome.effect == pytest.approx(0.2 - 5 / 900)
    assert outcome.low < outcome.effect < outcome.high
    assert (outcome.canary_samples, outcome.stable_samples) == (100, 900)
    # The canary's 20 of 100 against the stable model's exact upper bound (at alpha/10) plus the margin.
    bound = stats.binomtest(5, 900).proportion_ci(1 - 2 * 0.001, method="exact").high
    assert outcome.p_value == pytest.approx(stats.binom.sf(19, 100, bound + 0.005) + 0.001)
    assert outcome.failed


def test_without_a_margin_the_test_is_conditional_on_all_failures() -> None:
    outcome = two_proportions(8, 300, 14, 2700, 0.0, 0.005)
    assert outcome.test == "conditional-binomial"
    assert outcome.p_value == pytest.approx(stats.binom.sf(7, 22, 0.1))
    # Fisher's exact test, whose hypergeometric form this binomial one bounds from above.
    fisher = stats.fisher_exact([[8, 292], [14, 2686]], alternative="greater").pvalue
    assert fisher <= outcome.p_value < 1.5 * fisher


def test_one_or_two_failures_in_a_small_window_are_not_a_regression() -> None:
    # One 5xx of 60 canary requests beside none of 2700 stable ones: the old 1 % bound failed this, and
    # so does Newcombe's interval (its lower end is above 0); the exact test says p = 60/2760.
    one = two_proportions(1, 60, 0, 2700, 0.0, 0.005)
    assert one.p_value == pytest.approx(60 / 2760)
    assert not one.failed
    assert one.low > 0
    # Two of 100 beside none of 900: Fisher's p = (100·99)/(1000·999) ≈ 0.0099.
    two = two_proportions(2, 100, 0, 900, 0.0, 0.005)
    assert two.p_value == pytest.approx(0.01)
    assert not two.failed
    assert not two_proportions(1, 60, 0, 2700, 0.005, 0.005).failed


def test_two_proportions_without_evidence_has_a_large_p_value() -> None:
    better = two_proportions(0, 500, 10, 500, 0.0, 0.01)
    assert better.p_value == 1.0
    assert better.effect < 0
    equal = two_proportions(5, 500, 5, 500, 0.0, 0.01)
    assert equal.p_value > 0.5
    assert not equal.failed


def test_two_proportions_with_all_errors_on_both_sides_and_none_anywhere() -> None:
    all_errors = two_proportions(100, 100, 100, 100, 0.0, 0.01)
    assert (all_errors.effect, all_errors.failed) == (0.0, False)
    nothing = two_proportions(0, 100, 0, 100, 0.0, 0.01)
    assert (nothing.effect, nothing.p_value, nothing.failed) == (0.0, 1.0, False)
    assert not two_proportions(0, 100, 0, 100, 0.005, 0.01).failed
    canary_broken = two_proportions(100, 100, 0, 100, 0.005, 0.01)
    assert canary_broken.failed
    assert canary_broken.p_value < 0.0011


@pytest.mark.parametrize(
    ("share", "canary_n", "stable_n", "margin"),
    [(0.002, 100, 900, 0.0), (0.01, 100, 900, 0.0), (0.05, 300, 2700, 0.0), (0.005, 300, 2700, 0.005)],
)
def test_two_proportions_keeps_its_level_at_the_boundary(
    share: float, canary_n: int, stable_n: int, margin: float
) -> None:
    """A canary exactly `margin` worse than the stable model fails at most about alpha of the windows."""
    rng = random.Random(13)  # noqa: S311 - reproducible samples, not secrets
    alpha, runs = 0.01, 2000
    failed = 0
    for _ in range(runs):
        canary = sum(rng.random() < share + margin for _ in range(canary_n))
        stable = sum(rng.random() < share for _ in range(stable_n))
        failed += two_proportions(canary, canary_n, stable, stable_n, margin, alpha).failed
    assert failed / runs <= 1.2 * alpha


def test_two_proportions_finds_two_points_of_errors_in_a_five_minute_window() -> None:
    # 10 req/s, canary at 10 %: 300 canary requests, 2700 stable ones; 2.5 % against 0.5 % of errors.
    assert two_proportions(8, 300, 14, 2700, 0.0, 0.005).failed


# --- latency --------------------------------------------------------------------------------------


def test_latency_distribution_matches_scipys_mann_whitney_with_ties() -> None:
    canary = histogram(b10ms=30, b25ms=50, b50ms=20, binf=1)
    stable = histogram(b10ms=60, b25ms=30, b50ms=10)
    outcome = latency_distribution(canary, stable, ratio=1.0, floor=0.0, alpha=0.05)
    expected = stats.mannwhitneyu(expand(canary), expand(stable), alternative="greater", method="asymptotic")
    assert outcome.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert outcome.effect == pytest.approx(expected.statistic / (101 * 100))
    assert outcome.failed


def test_latency_distribution_moves_the_stable_model_up_by_the_ratio() -> None:
    canary = histogram(b25ms=40, b50ms=40, b100ms=20)
    stable = histogram(b10ms=40, b25ms=40, b50ms=20)
    outcome = latency_distribution(canary, stable, ratio=2.0, floor=0.0, alpha=0.05)
    # 2 x 10 ms rounds up to 25 ms, 2 x 25 ms to 50 ms, 2 x 50 ms to 100 ms: the same distribution.
    assert outcome.effect == pytest.approx(0.5)
    assert not outcome.failed
    assert latency_distribution(canary, stable, ratio=1.0, floor=0.0, alpha=0.05).failed


def test_latency_distribution_ignores_differences_below_the_noise_floor() -> None:
    canary = histogram(b10ms=20, b25ms=80)
    stable = histogram(b5ms=80, b10ms=20)
    assert latency_distribution(canary, stable, ratio=1.0, floor=0.0, alpha=0.05).failed
    floored = latency_distribution(canary, stable, ratio=1.0, floor=0.025, alpha=0.05)
    assert (floored.effect, floored.p_value, floored.failed) == (0.5, 1.0, False)


def test_latency_distribution_keeps_its_level_for_equal_latencies() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible samples, not secrets
    alpha, runs, failed = 0.01, 1000, 0
    for _ in range(runs):
        samples = [[rng.lognormvariate(math.log(0.02), 0.5) for _ in range(n)] for n in (100, 900)]
        canary, stable = (
            [
                (bound, sum(1 for x in values if lower < x <= bound))
                for lower, bound in zip((0, *BOUNDS), BOUNDS, strict=False)
            ]
            for values in samples
        )
        failed += latency_distribution(canary, stable, ratio=1.0, floor=0.0, alpha=alpha).failed
    assert failed / runs <= 2 * alpha


def test_latency_tail_counts_the_canary_above_ratio_times_the_stable_quantile_bucket() -> None:
    stable = histogram(b5ms=500, b10ms=495, b25ms=5)
    # The stable p99 lies in (5 ms, 10 ms]; 1.5 x 10 ms = 15 ms rounds up to the 25 ms bound.
    assert tail_limit(stable, quantile=0.99, ratio=1.5, floor=0.0) == 0.025
    slow_tail = histogram(b5ms=50, b10ms=40, b25ms=2, b250ms=8)
    outcome = latency_tail(slow_tail, stable, quantile=0.99, ratio=1.5, floor=0.0, alpha=0.01)
    assert outcome.effect == pytest.approx(0.08)
    assert outcome.tolerance == pytest.approx(0.01)
    assert outcome.p_value == pytest.approx(stats.binom.sf(7, 100, 0.01))
    assert outcome.failed
    healthy = histogram(b5ms=50, b10ms=49, b25ms=1)
    assert not latency_tail(healthy, stable, quantile=0.99, ratio=1.5, floor=0.0, alpha=0.01).failed


def test_latency_tail_respects_the_noise_floor() -> None:
    stable = histogram(b1ms=1000)
    canary = histogram(b1ms=90, b10ms=10)
    assert latency_tail(canary, stable, quantile=0.99, ratio=1.5, floor=0.0, alpha=0.01).failed
    assert tail_limit(stable, quantile=0.99, ratio=1.5, floor=0.025) == 0.025
    assert not latency_tail(canary, stable, quantile=0.99, ratio=1.5, floor=0.025, alpha=0.01).failed


def test_latency_tail_of_a_stable_model_slower_than_every_bound_cannot_fail() -> None:
    stable = histogram(binf=100)
    assert tail_limit(stable, quantile=0.99, ratio=1.5, floor=0.0) == INF
    outcome = latency_tail(histogram(binf=100), stable, quantile=0.99, ratio=1.5, floor=0.0, alpha=0.01)
    assert (outcome.effect, outcome.failed) == (0.0, False)


def test_latency_tests_with_empty_buckets_between() -> None:
    canary = histogram(b1ms=50, b10000ms=50)
    stable = histogram(b1ms=100)
    assert latency_distribution(canary, stable, ratio=1.0, floor=0.0, alpha=0.01).failed
    # With the tolerance, the stable model's 1 ms count as 2.5 ms: the canary's fast half outweighs its
    # slow half in ranks, and only the tail test sees the 10 s requests.
    moved = latency_distribution(canary, stable, ratio=1.5, floor=0.0, alpha=0.01)
    assert (moved.effect, moved.failed) == (0.5, False)
    assert latency_tail(canary, stable, quantile=0.99, ratio=1.5, floor=0.0, alpha=0.01).failed


# --- prediction shift -----------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    assert population_stability_index({"a": 50, "b": 50}, {"a": 50, "b": 50}) == 0.0
    expected = (0.6 - 0.4) * math.log(0.6 / 0.4) + (0.4 - 0.6) * math.log(0.4 / 0.6)
    assert population_stability_index({"a": 60, "b": 40}, {"a": 40, "b": 60}) == pytest.approx(expected)


def test_prediction_shift_p_value_is_the_noncentral_chi_square_at_the_bound() -> None:
    canary, stable = {"a": 60, "b": 40}, {"a": 530, "b": 370}
    outcome = prediction_shift(canary, stable, 0.2, 0.01)
    scale = 1 / 100 + 1 / 900
    assert outcome.p_value == pytest.approx(
        stats.ncx2.sf(population_stability_index(canary, stable) / scale, 1, 0.2 / scale)
    )
    assert not outcome.failed
    assert outcome.low == 0.0
    assert outcome.high < 0.2


def test_prediction_shift_subtracts_the_bias_of_small_samples() -> None:
    # Two samples of 100 from one distribution over 10 classes: E[PSI] ≈ 9 x (1/100 + 1/100) = 0.18.
    rng = random.Random(3)  # noqa: S311 - reproducible samples, not secrets
    classes = [str(i) for i in range(10)]
    raw, effects = [], []
    for _ in range(300):
        canary = {c: 0.0 for c in classes}
        stable = {c: 0.0 for c in classes}
        for _ in range(100):
            canary[rng.choice(classes)] += 1
            stable[rng.choice(classes)] += 1
        raw.append(population_stability_index(canary, stable))
        effects.append(prediction_shift(canary, stable, 0.2, 0.01).effect)
    assert sum(raw) / len(raw) == pytest.approx(0.18, rel=0.15)
    assert sum(effects) / len(effects) < 0.05


def test_prediction_shift_keeps_its_level_at_the_bound() -> None:
    """Canary shares chosen so the true PSI is the bound: few windows fail."""
    rng = random.Random(5)  # noqa: S311 - reproducible samples, not secrets
    stable_shares = (0.5, 0.5)
    canary_shares = (0.5 + 0.1106, 0.5 - 0.1106)  # PSI ≈ 0.0497
    bound = population_stability_index(
        dict(zip("ab", canary_shares, strict=True)), dict(zip("ab", stable_shares, strict=True))
    )
    alpha, runs, failed = 0.01, 300, 0
    for _ in range(runs):
        canary_a = sum(rng.random() < canary_shares[0] for _ in range(400))
        stable_a = sum(rng.random() < stable_shares[0] for _ in range(400))
        outcome = prediction_shift(
            {"a": canary_a, "b": 400 - canary_a}, {"a": stable_a, "b": 400 - stable_a}, bound, alpha
        )
        failed += outcome.failed
    assert failed / runs <= 2 * alpha


def test_a_lost_class_is_a_large_shift() -> None:
    outcome = prediction_shift({"a": 100}, {"a": 530, "b": 370}, 0.2, 0.01)
    assert outcome.failed
    assert outcome.low > 0.2


def test_one_class_on_both_sides_is_no_shift() -> None:
    outcome = prediction_shift({"a": 100, "b": 0}, {"a": 900}, 0.2, 0.01)
    assert (outcome.effect, outcome.p_value, outcome.failed) == (0.0, 1.0, False)


# --- the error rate over a rollout --------------------------------------------------------------


def test_per_test_alpha_splits_the_rollouts_rate() -> None:
    assert per_test_alpha(0.05, 2, 5) == pytest.approx(0.005)
    assert per_test_alpha(0.05, 0, 0) == 0.05


def test_spending_spends_little_early_and_all_at_the_end() -> None:
    alpha = 0.01
    assert spent_alpha(alpha, 0.0) == 0.0
    assert spent_alpha(alpha, 1.0) == alpha
    assert spent_alpha(alpha, 0.25) < alpha / 100
    looks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    levels = [interim_alpha(alpha, now, before) for before, now in pairwise(looks)]
    assert all(level >= 0 for level in levels)
    assert levels == sorted(levels)
    assert sum(levels) == pytest.approx(alpha)


def test_spending_matches_the_lan_demets_formula() -> None:
    alpha, fraction = 0.05, 0.5
    expected = 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(fraction))
    assert spent_alpha(alpha, fraction) == pytest.approx(expected, rel=1e-9)


def test_outcome_fails_only_below_its_level() -> None:
    outcome = exceeds_bound(5, 100, 0.01, 0.01)
    assert outcome.failed
    assert not verdicts.TestOutcome(**{**outcome.__dict__, "alpha": outcome.p_value}).failed
