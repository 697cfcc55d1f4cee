"""Statistical verdicts: one-sided tests that tell a regression from noise, as pure functions.

Every test asks the same question of one analysis window: is the canary worse than the stable model
(or a bound) by more than the tolerance the user stated? The null hypothesis is "no worse than the
tolerance"; a test fails the canary only when its p-value is below the share `alpha` of the rollout's
stated error rate that it may spend, so a model within the tolerances is rolled back with at most that
rate. Each outcome carries the effect it measured and a two-sided interval at confidence 1 - 2·alpha;
but for the comparison of error rates, whose interval is shown beside an exact test, its lower end is
the one-sided bound the test used: the test fails when `low` exceeds the tolerance (up to the
discreteness of the exact tests).

The tests, and why these:
- error rate against a bound: exact binomial test, Clopper-Pearson interval (exact for any count,
  zero included);
- error rate against the stable model: exact tests on the counts (conditional on all failures for a
  margin of 0, against the stable model's bound plus the margin otherwise): a z-test on a pooled rate,
  and even Newcombe's score interval, fail a canary for one 5xx beside a stable model without any;
- latency tail: the share of canary requests slower than the bucket boundary at or above
  `ratio` times the stable model's quantile bucket, against 1 - quantile (exact binomial);
- latency distribution: a one-sided Mann-Whitney test on the binned latencies with ties, the stable
  model's buckets moved up by `ratio` and rounded up to a boundary, so only a canary slower than
  the tolerated slowdown in every placement within the buckets counts;
- prediction shift: the PSI of two samples from one distribution is about (1/n1 + 1/n2) times a
  chi-square with k - 1 degrees of freedom, and with a true shift of PSI d about a noncentral one with
  noncentrality d / (1/n1 + 1/n2); the test compares the observed PSI with that distribution at the
  bound.
Counts come from Prometheus' increase(), which extrapolates, so they are rounded to whole requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Histogram",
    "TestName",
    "TestOutcome",
    "binomial_sf",
    "chi2_sf",
    "clopper_pearson",
    "exceeds_bound",
    "interim_alpha",
    "latency_bound",
    "latency_distribution",
    "latency_tail",
    "noncentral_chi2_sf",
    "normal_quantile",
    "normal_sf",
    "per_test_alpha",
    "population_stability_index",
    "prediction_shift",
    "quantile_bucket",
    "regularized_beta",
    "regularized_gamma_q",
    "spent_alpha",
    "tail_limit",
    "two_proportions",
    "wilson",
]

TestName = Literal[
    "exact-binomial", "conditional-binomial", "berger-boos-binomial", "mann-whitney", "noncentral-chi2"
]

# Per-bucket counts of a histogram: (upper bound in seconds, requests in the bucket), ascending,
# +Inf last; the bucket holds the values above the previous bound up to its own.
Histogram = Sequence[tuple[float, float]]

# Shares below this count as this much, so a category only one model predicted is a large, finite
# shift (for both analysis methods).
PSI_SHARE_FLOOR = 1e-4
_ITERATIONS = 10_000
_EPSILON = 1e-15
_TINY = 1e-300


@dataclass(frozen=True)
class TestOutcome:
    """One test of one window: what it measured, how sure it is, and whether the canary fails."""

    test: TestName
    effect: float
    """The measured effect, in the unit of the tolerance."""
    low: float
    high: float
    """The effect's interval at confidence 1 - 2·alpha."""
    tolerance: float
    """The largest effect that is not a regression (the null hypothesis' boundary)."""
    p_value: float
    """The chance of an effect at least this large if the canary were exactly at the tolerance."""
    alpha: float
    canary_samples: int
    stable_samples: int

    @property
    def failed(self) -> bool:
        """Whether the evidence that the canary is worse than the tolerance is beyond the test's level."""
        return self.p_value < self.alpha


# --- distributions ------------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p, for 0 < p < 1 (bisection: exact to double precision, no table)."""
    if not 0 < p < 1:
        raise ValueError(f"a probability strictly between 0 and 1 is needed, not {p}")
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        # P(Z <= z) as P(Z > -z): no cancellation in the lower tail.
        if normal_sf(-middle) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-15:
            break
    return (low + high) / 2


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _ITERATIONS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > _TINY else _TINY)
            c = 1 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1) < _EPSILON:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    # The fraction converges fast only below the mean; above it, use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), the upper regularized incomplete gamma function, for a > 0."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        # P(a, x) = e^-x x^a / Γ(a+1) · Σ x^n / ((a+1)...(a+n)).
        term = total = 1 / a
        for n in range(1, _ITERATIONS):
            term *= x / (a + n)
            total += term
            if term < total * _EPSILON:
                break
        return max(0.0, 1 - math.exp(log_front) * total)
    # Q(a, x) = e^-x x^a / Γ(a) · 1 / (x + 1 - a - 1·(1-a) / (x + 3 - a - 2·(2-a) / ...)), by Lentz.
    b = x + 1 - a
    c, d = 1 / _TINY, 1 / b
    result = d
    for n in range(1, _ITERATIONS):
        numerator = -n * (n - a)
        b += 2
        d = numerator * d + b
        d = 1 / (d if abs(d) > _TINY else _TINY)
        c = b + numerator / c
        c = c if abs(c) > _TINY else _TINY
        result *= c * d
        if abs(c * d - 1) < _EPSILON:
            break
    return math.exp(log_front) * result


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for a chi-square X with `df` degrees of freedom."""
    return regularized_gamma_q(df / 2, x / 2)


def noncentral_chi2_sf(x: float, df: float, noncentrality: float) -> float:
    """P(X > x) for a noncentral chi-square: a Poisson(noncentrality / 2) mixture of central ones with
    df + 2j degrees of freedom, summed outward from the Poisson mode until the weights vanish."""
    if noncentrality <= 0:
        return chi2_sf(x, df)
    half = noncentrality / 2
    mode = math.floor(half)

    def weight(j: int) -> float:
        return math.exp(-half + j * math.log(half) - math.lgamma(j + 1))

    total = 0.0
    for direction in (range(mode, -1, -1), range(mode + 1, mode + _ITERATIONS)):
        for j in direction:
            w = weight(j)
            total += w * chi2_sf(x, df + 2 * j)
            if w < 1e-17 and j != mode:
                break
    return min(1.0, total)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return regularized_beta(k, n - k + 1, p)


def _solve(
    function: Callable[[float], float], target: float, low: float, high: float, precision: float = 1e-15
) -> float:
    """The x in [low, high] where the increasing `function` crosses `target`, by bisection to a relative
    `precision`."""
    for _ in range(200):
        middle = (low + high) / 2
        if function(middle) < target:
            low = middle
        else:
            high = middle
        if high - low <= precision * max(1.0, abs(high)):
            break
    return (low + high) / 2


def clopper_pearson(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """The exact interval for a binomial share: each end excludes the share with at most `alpha`."""
    low = 0.0 if successes <= 0 else _solve(lambda p: binomial_sf(successes, n, p), alpha, 0.0, 1.0, 1e-12)
    high = (
        1.0
        if successes >= n
        # P(X <= successes) falls as p grows: solve P(X >= successes + 1) = 1 - alpha.
        else _solve(lambda p: binomial_sf(successes + 1, n, p), 1 - alpha, 0.0, 1.0, 1e-12)
    )
    return low, high


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a binomial share with the continuity correction, at normal quantile
    z >= 0 (n > 0): close to the exact interval's level for few successes, in closed form."""
    share = successes / n
    denominator = 2 * (n + z * z)
    low = (
        0.0
        if successes <= 0
        else (
            2 * successes
            + z * z
            - 1
            - z * math.sqrt(max(0.0, z * z - 2 - 1 / n + 4 * share * (n - successes + 1)))
        )
        / denominator
    )
    high = (
        1.0
        if successes >= n
        else (
            2 * successes
            + z * z
            + 1
            + z * math.sqrt(max(0.0, z * z + 2 - 1 / n + 4 * share * (n - successes - 1)))
        )
        / denominator
    )
    return max(0.0, min(low, share)), min(1.0, max(high, share))


# --- the tests ----------------------------------------------------------------------------------


def _count(value: float) -> int:
    return max(0, round(value))


def exceeds_bound(failures: float, n: float, bound: float, alpha: float) -> TestOutcome:
    """Exact test of "the canary's failure share exceeds `bound`" from its failures of n requests."""
    x, size = _count(failures), _count(n)
    x = min(x, size)
    low, high = clopper_pearson(x, size, alpha)
    return TestOutcome(
        test="exact-binomial",
        effect=x / size,
        low=low,
        high=high,
        tolerance=bound,
        p_value=binomial_sf(x, size, bound),
        alpha=alpha,
        canary_samples=size,
        stable_samples=0,
    )


def two_proportions(
    canary_failures: float,
    canary_n: float,
    stable_failures: float,
    stable_n: float,
    margin: float,
    alpha: float,
) -> TestOutcome:
    """Test of "the canary's failure share exceeds the stable model's by more than `margin`".

    With margin 0, the exact conditional test: given the failures of both variants together, each
    failure is the canary's with its share of the requests, so the canary's count is binomial
    (Fisher's test in its Poisson form, a little more cautious). With a margin, the stable model's share
    is not known: the canary's count is tested exactly against the stable model's upper confidence
    bound plus the margin, and the bound's own error is added to the p-value (Berger and Boos), which
    keeps the level even when the stable model had no failure. The effect is the difference of the
    shares, its interval Newcombe's hybrid score interval (continuity-corrected Wilson intervals of
    both variants): shown beside the exact test, which decides.
    """
    n_c, n_s = _count(canary_n), _count(stable_n)
    x_c, x_s = min(_count(canary_failures), n_c), min(_count(stable_failures), n_s)
    p_c, p_s = x_c / n_c, x_s / n_s
    z = normal_quantile(1 - alpha)
    low_c, high_c = wilson(x_c, n_c, z)
    low_s, high_s = wilson(x_s, n_s, z)
    if margin <= 0:
        test: TestName = "conditional-binomial"
        p_value = binomial_sf(x_c, x_c + x_s, n_c / (n_c + n_s))
    else:
        test = "berger-boos-binomial"
        # A tenth of the level for the stable model's bound, the rest for the canary's count.
        spent = alpha / 10
        _, stable_bound = clopper_pearson(x_s, n_s, spent)
        p_value = min(1.0, binomial_sf(x_c, n_c, min(1.0, stable_bound + margin)) + spent)
    return TestOutcome(
        test=test,
        effect=p_c - p_s,
        low=p_c - p_s - math.hypot(p_c - low_c, high_s - p_s),
        high=p_c - p_s + math.hypot(high_c - p_c, p_s - low_s),
        tolerance=margin,
        p_value=p_value,
        alpha=alpha,
        canary_samples=n_c,
        stable_samples=n_s,
    )


def _counts(histogram: Histogram) -> list[tuple[float, int]]:
    return [(upper, _count(count)) for upper, count in sorted(histogram)]


def _ceiling(value: float, bounds: Sequence[float]) -> float:
    """The smallest bucket bound at or above `value` (+Inf when none is)."""
    return next((bound for bound in bounds if bound >= value), math.inf)


def _quantile_bound(histogram: Sequence[tuple[float, int]], quantile: float) -> float:
    """The upper bound of the bucket that holds the quantile, read without interpolation."""
    total = sum(count for _, count in histogram)
    below = 0
    for upper, count in histogram:
        below += count
        if below >= quantile * total:
            return upper
    return math.inf


def latency_tail(
    canary: Histogram,
    stable: Histogram,
    *,
    quantile: float,
    ratio: float,
    floor: float,
    alpha: float,
) -> TestOutcome:
    """Test of "the canary's latency at `quantile` exceeds `ratio` times the stable model's".

    If it does not, at most 1 - quantile of the canary's requests are slower than ratio times the
    stable model's quantile, and so than any bound above it; the bound used is the first bucket bound
    at or above ratio times the upper bound of the stable model's quantile bucket (and at or above the
    noise floor), so the share above it is counted exactly. The effect is that share.
    """
    canary_counts, stable_counts = _counts(canary), _counts(stable)
    bounds = sorted({upper for upper, _ in canary_counts} | {upper for upper, _ in stable_counts})
    limit = _ceiling(max(ratio * _quantile_bound(stable_counts, quantile), floor), bounds)
    n_c = sum(count for _, count in canary_counts)
    slower = sum(count for upper, count in canary_counts if upper > limit)
    outcome = exceeds_bound(slower, n_c, 1 - quantile, alpha)
    return TestOutcome(
        test=outcome.test,
        effect=outcome.effect,
        low=outcome.low,
        high=outcome.high,
        tolerance=outcome.tolerance,
        p_value=outcome.p_value,
        alpha=alpha,
        canary_samples=n_c,
        stable_samples=sum(count for _, count in stable_counts),
    )


def tail_limit(stable: Histogram, *, quantile: float, ratio: float, floor: float) -> float:
    """The bucket bound `latency_tail` counts the canary's slow requests above, for its messages."""
    counts = _counts(stable)
    return _ceiling(max(ratio * _quantile_bound(counts, quantile), floor), [upper for upper, _ in counts])


def quantile_bucket(histogram: Histogram, quantile: float) -> float:
    """The upper bound of the bucket that holds the quantile (+Inf for an empty histogram)."""
    return _quantile_bound(_counts(histogram), quantile)


def latency_bound(canary: Histogram, *, quantile: float, seconds: float, alpha: float) -> TestOutcome:
    """Test of "the canary's latency at `quantile` exceeds `seconds`": if it does not, at most
    1 - quantile of its requests are slower than the first bucket bound at or above `seconds`."""
    counts = _counts(canary)
    limit = _ceiling(seconds, [upper for upper, _ in counts])
    slower = sum(count for upper, count in counts if upper > limit)
    return exceeds_bound(slower, sum(count for _, count in counts), 1 - quantile, alpha)


def latency_distribution(
    canary: Histogram,
    stable: Histogram,
    *,
    ratio: float,
    floor: float,
    alpha: float,
) -> TestOutcome:
    """One-sided Mann-Whitney test of "the canary is slower than the stable model slowed by `ratio`".

    Each request is represented by its bucket's upper bound; the stable model's are multiplied by
    `ratio` and rounded up to a bound, which can only make them slower, so the test keeps its level
    whatever the latencies within the buckets. Requests up to the noise floor count as equally fast.
    The effect is the chance that a canary request is slower than a tolerated stable one (ties
    counted half): 0.5 when they are alike. Normal approximation with the tie correction and a
    continuity correction.
    """
    canary_counts, stable_counts = _counts(canary), _counts(stable)
    bounds = sorted({upper for upper, _ in canary_counts} | {upper for upper, _ in stable_counts})
    fast = _ceiling(floor, bounds)
    canary_values: dict[float, int] = {}
    stable_values: dict[float, int] = {}
    for upper, count in canary_counts:
        value = max(upper, fast)
        canary_values[value] = canary_values.get(value, 0) + count
    for upper, count in stable_counts:
        value = max(_ceiling(ratio * upper, bounds), fast)
        stable_values[value] = stable_values.get(value, 0) + count
    n_c, n_s = sum(canary_values.values()), sum(stable_values.values())
    total = n_c + n_s
    wins, ties_correction, stable_below = 0.0, 0.0, 0
    for value in sorted(set(canary_values) | set(stable_values)):
        c, s = canary_values.get(value, 0), stable_values.get(value, 0)
        wins += c * (stable_below + s / 2)
        stable_below += s
        ties_correction += (c + s) ** 3 - (c + s)
    pairs = n_c * n_s
    variance = pairs / 12 * ((total + 1) - ties_correction / (total * (total - 1))) if total > 1 else 0.0
    spread = math.sqrt(max(variance, 0.0))
    excess = wins - pairs / 2
    # All requests tied: nothing says the canary is slower.
    p_value = normal_sf((excess - 0.5) / spread) if spread > 0 else (0.0 if excess > 0.5 else 1.0)
    half = normal_quantile(1 - alpha) * spread / pairs
    effect = wins / pairs
    return TestOutcome(
        test="mann-whitney",
        effect=effect,
        low=max(0.0, effect - half),
        high=min(1.0, effect + half),
        tolerance=0.5,
        p_value=p_value,
        alpha=alpha,
        canary_samples=n_c,
        stable_samples=n_s,
    )


def population_stability_index(canary: Mapping[str, float], stable: Mapping[str, float]) -> float:
    """Population stability index between two distributions given as counts per category (both with a
    positive total): Σ (c_i - s_i) · ln(c_i / s_i) over the shares, each floored at PSI_SHARE_FLOOR."""
    canary_total, stable_total = sum(canary.values()), sum(stable.values())
    index = 0.0
    for category in set(canary) | set(stable):
        c = max(canary.get(category, 0.0) / canary_total, PSI_SHARE_FLOOR)
        s = max(stable.get(category, 0.0) / stable_total, PSI_SHARE_FLOOR)
        index += (c - s) * math.log(c / s)
    return index


def prediction_shift(
    canary: Mapping[str, float], stable: Mapping[str, float], max_shift: float, alpha: float
) -> TestOutcome:
    """Test of "the prediction distributions differ by more than PSI `max_shift`", allowing for the
    upward bias of a PSI measured on samples: E[PSI] ≈ d + (k - 1)(1/n1 + 1/n2) for a true shift d.

    PSI ≈ Σ (c_i - s_i)² / p_i for nearby shares, and (c_i - s_i) of two multinomial samples has
    covariance (1/n1 + 1/n2)(diag p - p pᵀ), so PSI / (1/n1 + 1/n2) is chi-square with k - 1 degrees of
    freedom for one distribution, noncentral with noncentrality d / (1/n1 + 1/n2) for a shift d. The
    effect is the PSI less its expected bias (at least 0); the interval inverts the noncentral test.
    """
    canary_counts = {key: float(_count(value)) for key, value in canary.items() if _count(value) > 0}
    stable_counts = {key: float(_count(value)) for key, value in stable.items() if _count(value) > 0}
    n_c, n_s = round(sum(canary_counts.values())), round(sum(stable_counts.values()))
    categories = len(set(canary_counts) | set(stable_counts))
    scale = 1 / n_c + 1 / n_s
    observed = population_stability_index(canary_counts, stable_counts)
    df = categories - 1
    if df < 1:
        # One category on both sides: the distributions are identical.
        return TestOutcome("noncentral-chi2", 0.0, 0.0, 0.0, max_shift, 1.0, alpha, n_c, n_s)
    statistic = observed / scale

    def sf(noncentrality: float) -> float:
        return noncentral_chi2_sf(statistic, df, noncentrality)

    def bound(target: float) -> float:
        if sf(0.0) >= target:
            return 0.0
        top = max(1.0, statistic)
        while sf(top) < target:
            top *= 2
        # Shown, not tested against: six digits are plenty, and each step sums a Poisson mixture.
        return _solve(sf, target, 0.0, top, precision=1e-6) * scale

    return TestOutcome(
        test="noncentral-chi2",
        effect=max(0.0, observed - df * scale),
        low=bound(alpha),
        high=bound(1 - alpha),
        tolerance=max_shift,
        p_value=sf(max_shift / scale),
        alpha=alpha,
        canary_samples=n_c,
        stable_samples=n_s,
    )


# --- the error rate over a rollout --------------------------------------------------------------


def per_test_alpha(rate: float, windows: int, tests: int) -> float:
    """The level of each test when a rollout judges `windows` windows with `tests` tests each and may
    roll back a model within its tolerances with at most `rate` in all (Bonferroni: the union bound
    holds whatever the tests' dependence)."""
    return rate / (max(1, windows) * max(1, tests))


def spent_alpha(alpha: float, fraction: float) -> float:
    """How much of a window's `alpha` a sequential rule may have spent once `fraction` (0 to 1) of the
    window's samples are in: the O'Brien-Fleming-like spending function of Lan and DeMets,
    2 - 2Φ(z_{1-alpha/2} / √fraction), which spends almost nothing early and all of alpha at the end."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    return 2 * normal_sf(normal_quantile(1 - alpha / 2) / math.sqrt(fraction))


def interim_alpha(alpha: float, fraction: float, previous: float) -> float:
    """The level of a look at the window's evidence taken at `fraction` of its samples, the last look
    having been at `previous`: a look fails the canary early if a test's p-value is below it. The levels
    of all looks add up to at most `alpha`, so failing at any look keeps the window's error rate."""
    return max(0.0, spent_alpha(alpha, fraction) - spent_alpha(alpha, previous))
