"""The PromQL of a rollout step's checks, and their verdicts from Prometheus' answers.

Nothing here talks to Prometheus. `plan_analysis` renders every query a step needs;
the I/O layer runs each as an instant query at the end of the step's window and
hands the decoded answers to `evaluate`, which turns them into `CheckResult`s.

Every check compares the canary over exactly the step's window (`[Ns]`), and, where
it compares, the stable model over the same window. A verdict is `pass` only on
evidence: an empty result, NaN, an infinity, several series where one was expected,
too few requests or an unanswered query make a check `inconclusive`.

The prediction shift is the population stability index (PSI) between the canary's and
the stable model's distributions of predicted classes (classifiers) or of predicted
values over the histogram's buckets (regressors):
PSI = Σ (c_i - s_i) · ln(c_i / s_i) over the categories i, where c_i and s_i are the
shares of the canary's and the stable model's predictions in category i, each floored
at `PSI_SHARE_FLOOR` so a category only one model predicted counts as a large, finite
shift. Rules of thumb: below 0.1 little shift, above 0.25 a large one.

With `method: statistical` the built-in checks query counts instead of ratios (failed and all
requests, the latency histogram's buckets, the prediction counts of both variants) and judge them with
the tests of `verdicts`, each at its share of the rollout's `falseRollbackRate` (`AnalysisPlan.alpha`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol

from modeldeploy_serving.metric_names import (
    LABEL_CLASS,
    LABEL_CODE,
    LABEL_ENDPOINT,
    LABEL_MODEL,
    LABEL_NAMESPACE,
    LABEL_VARIANT,
    PREDICTION_CLASS_TOTAL,
    PREDICTION_VALUE,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
)

from . import verdicts
from .builders import Variant
from .spec import ERROR_RATE, LATENCY, PREDICTION_SHIFT, SAMPLES, Analysis, CheckResult
from .verdicts import PSI_SHARE_FLOOR, Histogram, TestOutcome, population_stability_index

__all__ = [
    "PREDICTION_ENDPOINTS",
    "PSI_SHARE_FLOOR",
    "AnalysisPlan",
    "QueryFailure",
    "QueryFailureKind",
    "QueryResult",
    "Series",
    "Verdict",
    "evaluate",
    "overall_verdict",
    "plan_analysis",
    "population_stability_index",
    "render_custom_query",
]

# The server's endpoints that predict (see modeldeploy_serving.routes); health probes and
# metadata calls are counted too, but say nothing about the model and would inflate the samples.
PREDICTION_ENDPOINTS = ("infer", "predict")

QueryFailureKind = Literal["unreachable", "timeout", "http", "bad-query", "bad-response", "not-allowed"]


_VARIANTS: tuple[Variant, ...] = ("canary", "stable")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class Series(Protocol):
    """One element of an instant vector (`prometheus.Sample` is one): its labels and its value at the
    evaluation time; a scalar answer is one series without labels."""

    @property
    def labels(self) -> Mapping[str, str]:
        """The series' labels."""

    @property
    def value(self) -> float:
        """The value, NaN and ±Inf included."""


@dataclass(frozen=True)
class QueryFailure:
    """A query without an answer, of the kinds `prometheus.PrometheusError` reports: Prometheus
    unreachable, too slow, answering with an HTTP error, refusing the query, or answering nonsense."""

    kind: QueryFailureKind
    message: str = ""


# Prometheus' answer to one instant query: its series, or why there are none.
QueryResult = Sequence[Series] | QueryFailure


@dataclass(frozen=True)
class AnalysisPlan:
    """Every query one analysis window needs, by key; run each at the window's end."""

    analysis: Analysis
    window: timedelta
    queries: Mapping[str, str] = field(default_factory=dict)
    alpha: float | None = None
    """With method statistical: the level of each test of this window, the rollout's falseRollbackRate
    split over its windows and this window's tests."""


def _window(window: timedelta) -> str:
    seconds = max(1, round(window.total_seconds()))
    return f"[{seconds}s]"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _selector(name: str, namespace: str, variant: Variant, *, requests: bool = False, extra: str = "") -> str:
    matchers = [
        f"{LABEL_MODEL}={_quote(name)}",
        f"{LABEL_NAMESPACE}={_quote(namespace)}",
        f"{LABEL_VARIANT}={_quote(variant)}",
    ]
    if requests:
        matchers.append(f"{LABEL_ENDPOINT}=~{_quote('|'.join(PREDICTION_ENDPOINTS))}")
    if extra:
        matchers.append(extra)
    return "{" + ",".join(matchers) + "}"


def _samples_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    return f"sum(increase({REQUESTS_TOTAL}{_selector(name, namespace, variant, requests=True)}{window}))"


def _error_rate_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    failed = _selector(name, namespace, variant, requests=True, extra=f'{LABEL_CODE}=~"5.."')
    # Without a single failure there is no 5xx series at all; that is a rate of 0, not missing data.
    return (
        f"(sum(increase({REQUESTS_TOTAL}{failed}{window})) or vector(0))"
        f" / {_samples_query(name, namespace, variant, window)}"
    )


def _latency_query(name: str, namespace: str, variant: Variant, window: str, quantile: float) -> str:
    buckets = f"{REQUEST_DURATION_SECONDS}_bucket{_selector(name, namespace, variant, requests=True)}"
    return f"histogram_quantile({quantile:g}, sum by (le) (rate({buckets}{window})))"


def _errors_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    failed = _selector(name, namespace, variant, requests=True, extra=f'{LABEL_CODE}=~"5.."')
    # Without a single failure there is no 5xx series at all; that is a count of 0, not missing data.
    return f"sum(increase({REQUESTS_TOTAL}{failed}{window})) or vector(0)"


def _latency_buckets_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    buckets = f"{REQUEST_DURATION_SECONDS}_bucket{_selector(name, namespace, variant, requests=True)}"
    return f"sum by (le) (increase({buckets}{window}))"


def _classes_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    selector = _selector(name, namespace, variant)
    return f"sum by ({LABEL_CLASS}) (increase({PREDICTION_CLASS_TOTAL}{selector}{window}))"


def _values_query(name: str, namespace: str, variant: Variant, window: str) -> str:
    return f"sum by (le) (increase({PREDICTION_VALUE}_bucket{_selector(name, namespace, variant)}{window}))"


def render_custom_query(
    template: str, *, name: str, namespace: str, variant: Variant, window: timedelta
) -> str:
    """A custom check's query with {{name}}, {{namespace}}, {{variant}} and {{window}} (or {{interval}})
    filled in. Other placeholders stay, so Prometheus rejects the query and the check is inconclusive
    with its parse error."""
    values = {
        "name": name,
        "namespace": namespace,
        "variant": variant,
        "window": _window(window)[1:-1],
        "interval": _window(window)[1:-1],
    }
    return _PLACEHOLDER.sub(lambda match: values.get(match[1], match[0]), template)


def _key(check: str, variant: Variant, part: str = "") -> str:
    return "/".join(item for item in (check, part, variant) if item)


def _custom_key(name: str) -> str:
    """Custom checks' queries live under their own prefix, so no name a user picks can replace a
    built-in query (the samples query gates every verdict)."""
    return _key(f"custom:{name}", "canary")


def plan_analysis(name: str, namespace: str, analysis: Analysis, window: timedelta) -> AnalysisPlan:
    """The queries for one window of the ModelDeployment `name` in `namespace`.

    The request counts of both variants are always queried. The threshold method queries the stable
    model's value of a check only where the check compares with it; the statistical method queries
    both variants' counts, which every one of its tests compares.
    """
    span = _window(window)
    queries: dict[str, str] = {}
    for variant in _VARIANTS:
        queries[_key(SAMPLES, variant)] = _samples_query(name, namespace, variant, span)
    alpha = None
    if analysis.method == "statistical":
        _plan_counts(queries, name, namespace, analysis, span)
        alpha = verdicts.per_test_alpha(analysis.false_rollback_rate, analysis.windows, _tests(analysis))
    else:
        _plan_ratios(queries, name, namespace, analysis, span)
    if analysis.prediction_shift.enabled:
        for variant in _VARIANTS:
            queries[_key(PREDICTION_SHIFT, variant, "classes")] = _classes_query(
                name, namespace, variant, span
            )
            queries[_key(PREDICTION_SHIFT, variant, "values")] = _values_query(name, namespace, variant, span)
    for check in analysis.custom:
        queries[_custom_key(check.name)] = render_custom_query(
            check.query, name=name, namespace=namespace, variant="canary", window=window
        )
    return AnalysisPlan(analysis=analysis, window=window, queries=queries, alpha=alpha)


def _plan_ratios(queries: dict[str, str], name: str, namespace: str, analysis: Analysis, span: str) -> None:
    """The threshold method's queries: the error rates and latency quantiles themselves."""
    error_rate = analysis.error_rate
    if error_rate.enabled and (error_rate.max_ratio is not None or error_rate.max_increase is not None):
        queries[_key(ERROR_RATE, "canary")] = _error_rate_query(name, namespace, "canary", span)
        if error_rate.max_increase is not None:
            queries[_key(ERROR_RATE, "stable")] = _error_rate_query(name, namespace, "stable", span)
    latency = analysis.latency
    if latency.enabled and (latency.max_seconds is not None or latency.max_increase_ratio is not None):
        queries[_key(LATENCY, "canary")] = _latency_query(name, namespace, "canary", span, latency.quantile)
        if latency.max_increase_ratio is not None:
            queries[_key(LATENCY, "stable")] = _latency_query(
                name, namespace, "stable", span, latency.quantile
            )


def _plan_counts(queries: dict[str, str], name: str, namespace: str, analysis: Analysis, span: str) -> None:
    """The statistical method's queries: failed requests and latency buckets of both variants (the
    requests themselves are the samples queries)."""
    for variant in _VARIANTS:
        if analysis.error_rate.enabled:
            queries[_key(ERROR_RATE, variant, "errors")] = _errors_query(name, namespace, variant, span)
        if analysis.latency.enabled:
            queries[_key(LATENCY, variant, "buckets")] = _latency_buckets_query(
                name, namespace, variant, span
            )


def _tests(analysis: Analysis) -> int:
    """How many tests one window of the statistical method runs, to split its error rate over them."""
    error_rate, latency = analysis.error_rate, analysis.latency
    count = 0
    if error_rate.enabled:
        count += 1 + (error_rate.max_ratio is not None)
    if latency.enabled:
        count += (latency.max_seconds is not None) + 2 * (latency.max_increase_ratio is not None)
    return count + analysis.prediction_shift.enabled


@dataclass(frozen=True)
class _Scalar:
    """A query's single number, or why there is none."""

    value: float | None
    problem: str = ""


def _describe_failure(failure: QueryFailure) -> str:
    what = {
        "unreachable": "Prometheus is unreachable",
        "timeout": "the query timed out",
        "http": "Prometheus answered with an HTTP error",
        "bad-query": "Prometheus refused the query",
        "bad-response": "Prometheus' answer was unreadable",
        "not-allowed": "the operator may not query this Prometheus",
    }[failure.kind]
    return f"{what}: {failure.message}" if failure.message else what


def _scalar(result: QueryResult | None) -> _Scalar:
    if result is None:
        return _Scalar(None, "the query was not run")
    if isinstance(result, QueryFailure):
        return _Scalar(None, _describe_failure(result))
    if not result:
        return _Scalar(None, "no data: the query returned no series")
    if len(result) > 1:
        return _Scalar(None, f"the query returned {len(result)} series where one was expected")
    value = result[0].value
    if math.isnan(value):
        return _Scalar(None, "the query returned NaN (no requests in the window?)")
    if math.isinf(value):
        return _Scalar(None, f"the query returned {'+' if value > 0 else '-'}Inf")
    return _Scalar(value)


@dataclass(frozen=True)
class _Counts:
    canary: float | None
    stable: float | None
    min_samples: int
    # Why a count is missing (Prometheus unreachable, no series, ...), for the messages.
    canary_unknown: str = ""
    stable_unknown: str = ""

    def canary_problem(self) -> str:
        if self.canary is None:
            return f"the canary's requests could not be counted ({self.canary_unknown})"
        if self.canary < self.min_samples:
            return f"too few samples: the canary served {self.canary:g} of the {self.min_samples} requests needed"
        return ""

    def stable_problem(self) -> str:
        if self.stable is None:
            return f"the stable model's requests could not be counted ({self.stable_unknown})"
        if self.stable < self.min_samples:
            return (
                f"too few samples: the stable model served {self.stable:g} of the {self.min_samples}"
                " requests needed for a comparison"
            )
        return ""

    def short(self, *, compares: bool) -> bool:
        """Whether too few requests, counted (not unknown), keep a check that compares with the stable
        model or not from its verdict."""
        canary_short = self.canary is not None and self.canary < self.min_samples
        stable_short = compares and self.stable is not None and self.stable < self.min_samples
        return canary_short or stable_short


Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class _Judge:
    """Turns one window's answers into check results."""

    plan: AnalysisPlan
    results: Mapping[str, QueryResult]
    counts: _Counts

    def scalar(self, key: str) -> _Scalar:
        return _scalar(self.results.get(key))

    def result(
        self,
        name: str,
        verdict: Verdict,
        message: str,
        *,
        key: str,
        baseline_key: str = "",
        value: float | None = None,
        baseline: float | None = None,
        outcome: TestOutcome | None = None,
    ) -> CheckResult:
        statistics = (
            {}
            if outcome is None
            else {
                "test": outcome.test,
                "effect": outcome.effect,
                "effect_low": outcome.low,
                "effect_high": outcome.high,
                "tolerance": outcome.tolerance,
                "p_value": outcome.p_value,
                "alpha": outcome.alpha,
            }
        )
        short = verdict == "inconclusive" and self.counts.short(compares=bool(baseline_key))
        return CheckResult(
            name=name,
            query=self.plan.queries.get(key, ""),
            baseline_query=self.plan.queries.get(baseline_key, ""),
            value=value,
            baseline=baseline,
            samples=self.counts.canary,
            stable_samples=self.counts.stable,
            samples_needed=float(self.counts.min_samples) if short else None,
            verdict=verdict,
            message=message,
            **statistics,
        )

    def samples(self) -> CheckResult:
        key, baseline_key = _key(SAMPLES, "canary"), _key(SAMPLES, "stable")
        problem = self.counts.canary_problem()
        if problem:
            verdict: Verdict = "inconclusive"
            message = problem
        else:
            verdict = "pass"
            message = f"the canary served {self.counts.canary:g} requests, at least {self.counts.min_samples}"
        return self.result(
            SAMPLES,
            verdict,
            message,
            key=key,
            baseline_key=baseline_key,
            value=self.counts.canary,
            baseline=self.counts.stable,
        )

    def bounded(
        self,
        name: str,
        *,
        upper: float | None,
        compare: _Comparison | None,
        describe: _Describe,
    ) -> CheckResult:
        """A check with an absolute upper bound and/or a bound relative to the stable model's value.

        An absolute bound exceeded fails the check even when the comparison has no data.
        """
        key = _key(name, "canary")
        baseline_key = _key(name, "stable") if compare is not None else ""
        canary = self.scalar(key)
        baseline = self.scalar(baseline_key) if compare is not None else _Scalar(None)

        def result(verdict: Verdict, message: str) -> CheckResult:
            return self.result(
                name,
                verdict,
                message,
                key=key,
                baseline_key=baseline_key,
                value=canary.value,
                baseline=baseline.value,
            )

        samples_problem = self.counts.canary_problem()
        if canary.value is None or samples_problem:
            return result("inconclusive", samples_problem or f"canary: {canary.problem}")
        if upper is not None and canary.value > upper:
            return result("fail", f"canary {describe(canary.value)} is above the bound of {describe(upper)}")
        if compare is not None:
            stable_problem = self.counts.stable_problem()
            if baseline.value is None or stable_problem:
                return result("inconclusive", stable_problem or f"stable model: {baseline.problem}")
            limit = compare(baseline.value)
            if canary.value > limit:
                return result(
                    "fail",
                    f"canary {describe(canary.value)} is above {describe(limit)}, the most allowed beside"
                    f" the stable model's {describe(baseline.value)}",
                )
            return result(
                "pass",
                f"canary {describe(canary.value)} is within bounds (stable model {describe(baseline.value)})",
            )
        return result("pass", f"canary {describe(canary.value)} is within bounds")

    def prediction_counts(self) -> _PredictionCounts | str:
        """Both variants' predictions per class (classifiers) or per value bucket (regressors), or why
        they cannot be compared."""
        samples_problem = self.counts.canary_problem() or self.counts.stable_problem()
        if samples_problem:
            return samples_problem
        answers: dict[str, Sequence[Series]] = {}
        for variant in _VARIANTS:
            for part in ("classes", "values"):
                answer = self.results.get(_key(PREDICTION_SHIFT, variant, part))
                if answer is None:
                    return f"{variant}: the query was not run"
                if isinstance(answer, QueryFailure):
                    return f"{variant}: {_describe_failure(answer)}"
                answers[f"{variant}/{part}"] = answer
        canary_classes, stable_classes = (
            _class_counts(answers["canary/classes"]),
            _class_counts(answers["stable/classes"]),
        )
        # Classifiers count classes, regressors fill the value histogram; a model does one or the other.
        if _total(canary_classes) > 0 or _total(stable_classes) > 0:
            counts = _PredictionCounts("classes", "classes", canary_classes, stable_classes)
        else:
            counts = _PredictionCounts(
                "predicted values",
                "values",
                _bucket_counts(answers["canary/values"]),
                _bucket_counts(answers["stable/values"]),
            )
        for variant, variant_counts in (("canary", counts.canary), ("stable model", counts.stable)):
            if _total(variant_counts) <= 0:
                return f"no data: the {variant} recorded no predictions in the window"
        return counts

    def prediction_shift(self) -> CheckResult:
        counts = self.prediction_counts()
        part = counts.part if isinstance(counts, _PredictionCounts) else "classes"
        key, baseline_key = _key(PREDICTION_SHIFT, "canary", part), _key(PREDICTION_SHIFT, "stable", part)

        def result(
            verdict: Verdict, message: str, value: float | None = None, outcome: TestOutcome | None = None
        ) -> CheckResult:
            return self.result(
                PREDICTION_SHIFT,
                verdict,
                message,
                key=key,
                baseline_key=baseline_key,
                value=value,
                outcome=outcome,
            )

        if isinstance(counts, str):
            return result("inconclusive", counts)
        shift = population_stability_index(counts.canary, counts.stable)
        limit = self.plan.analysis.prediction_shift.max_shift
        if self.plan.alpha is not None:
            outcome = verdicts.prediction_shift(counts.canary, counts.stable, limit, self.plan.alpha)
            return result(
                "fail" if outcome.failed else "pass",
                f"the {counts.kind} shifted by PSI {shift:.3g}, {outcome.effect:.3g} less the"
                f" {shift - outcome.effect:.3g} expected of samples this size ({_evidence(outcome)})",
                shift,
                outcome,
            )
        if shift > limit:
            return result(
                "fail", f"the {counts.kind} shifted by PSI {shift:.3g}, above the bound of {limit:g}", shift
            )
        return result(
            "pass", f"the {counts.kind} shifted by PSI {shift:.3g}, within the bound of {limit:g}", shift
        )

    def statistical_error_rate(self) -> CheckResult:
        """Failed-request shares: exact against maxRatio, two proportions against the stable model."""
        check = self.plan.analysis.error_rate
        key, baseline_key = _key(ERROR_RATE, "canary", "errors"), _key(ERROR_RATE, "stable", "errors")
        canary, stable = self.scalar(key), self.scalar(baseline_key)
        alpha = self.plan.alpha or 0.0

        def result(
            verdict: Verdict, message: str, outcome: TestOutcome | None = None, baseline: float | None = None
        ) -> CheckResult:
            share = (
                None if canary.value is None or not self.counts.canary else canary.value / self.counts.canary
            )
            return self.result(
                ERROR_RATE,
                verdict,
                message,
                key=key,
                baseline_key=baseline_key,
                value=share,
                baseline=baseline,
                outcome=outcome,
            )

        samples_problem = self.counts.canary_problem()
        if canary.value is None or samples_problem or self.counts.canary is None:
            return result("inconclusive", samples_problem or f"canary: {canary.problem}")
        outcomes: list[tuple[str, TestOutcome]] = []
        if check.max_ratio is not None:
            bound = verdicts.exceeds_bound(canary.value, self.counts.canary, check.max_ratio, alpha)
            outcomes.append((f"against the bound of {_percent(check.max_ratio)}", bound))
        stable_problem = self.counts.stable_problem() or (
            f"stable model: {stable.problem}" if stable.value is None else ""
        )
        if stable_problem or stable.value is None or self.counts.stable is None:
            failed = [outcome for outcome in outcomes if outcome[1].failed]
            if failed:
                return result("fail", _describe_tests(failed, _points), failed[0][1])
            return result("inconclusive", stable_problem)
        comparison = verdicts.two_proportions(
            canary.value,
            self.counts.canary,
            stable.value,
            self.counts.stable,
            check.max_increase or 0.0,
            alpha,
        )
        outcomes.insert(0, ("excess over the stable model", comparison))
        deciding = _deciding(outcomes)
        return result(
            "fail" if deciding.failed else "pass",
            f"canary {_count_share(canary.value, self.counts.canary)}, stable model"
            f" {_count_share(stable.value, self.counts.stable)}: {_describe_tests(outcomes, _points)}",
            deciding,
            stable.value / self.counts.stable if self.counts.stable else None,
        )

    def statistical_latency(self) -> CheckResult:
        """Latency buckets: the tail and the whole distribution against the stable model's slowed by
        maxIncreaseRatio, the tail against maxSeconds."""
        check = self.plan.analysis.latency
        key, baseline_key = _key(LATENCY, "canary", "buckets"), _key(LATENCY, "stable", "buckets")
        canary, stable = _histogram(self.results.get(key)), _histogram(self.results.get(baseline_key))
        alpha = self.plan.alpha or 0.0

        def quantile_bound(histogram: Histogram | str) -> float | None:
            # The value shown: the upper bound of the quantile's bucket, not an interpolation within it.
            if isinstance(histogram, str) or not sum(count for _, count in histogram):
                return None
            return verdicts.quantile_bucket(histogram, check.quantile)

        def result(verdict: Verdict, message: str, outcome: TestOutcome | None = None) -> CheckResult:
            return self.result(
                LATENCY,
                verdict,
                message,
                key=key,
                baseline_key=baseline_key,
                value=_finite(quantile_bound(canary)),
                baseline=_finite(quantile_bound(stable)),
                outcome=outcome,
            )

        samples_problem = self.counts.canary_problem()
        if samples_problem or isinstance(canary, str):
            return result("inconclusive", samples_problem or f"canary: {canary}")
        if not sum(count for _, count in canary):
            return result("inconclusive", "no data: the canary's latency histogram is empty in the window")
        outcomes: list[tuple[str, TestOutcome]] = []
        if check.max_seconds is not None:
            bound = verdicts.latency_bound(
                canary, quantile=check.quantile, seconds=check.max_seconds, alpha=alpha
            )
            outcomes.append((f"share slower than {_seconds(check.max_seconds)} (maxSeconds)", bound))
        ratio = check.max_increase_ratio
        if ratio is not None:
            stable_problem = self.counts.stable_problem() or (
                f"stable model: {stable}" if isinstance(stable, str) else ""
            )
            if not stable_problem and isinstance(stable, list) and not sum(count for _, count in stable):
                stable_problem = "no data: the stable model's latency histogram is empty in the window"
            if stable_problem or isinstance(stable, str):
                failed = [outcome for outcome in outcomes if outcome[1].failed]
                if failed:
                    return result("fail", _describe_tests(failed, _share), failed[0][1])
                return result("inconclusive", stable_problem)
            floor = check.ignore_below_seconds
            limit = verdicts.tail_limit(stable, quantile=check.quantile, ratio=ratio, floor=floor)
            tail = verdicts.latency_tail(
                canary, stable, quantile=check.quantile, ratio=ratio, floor=floor, alpha=alpha
            )
            ranks = verdicts.latency_distribution(canary, stable, ratio=ratio, floor=floor, alpha=alpha)
            outcomes[:0] = [
                (
                    f"share slower than {_seconds(limit)} ({ratio:g}x the stable model's p{check.quantile * 100:g} bucket)",
                    tail,
                ),
                (f"chance a request is slower than the stable model's {ratio:g}x", ranks),
            ]
        deciding = _deciding(outcomes)
        return result("fail" if deciding.failed else "pass", _describe_tests(outcomes, _share), deciding)

    def custom(self, name: str, low: float | None, high: float | None) -> CheckResult:
        key = _custom_key(name)
        value = self.scalar(key)

        def result(verdict: Verdict, message: str) -> CheckResult:
            return self.result(name, verdict, message, key=key, value=value.value)

        samples_problem = self.counts.canary_problem()
        if value.value is None or samples_problem:
            return result("inconclusive", samples_problem or value.problem)
        if low is not None and value.value < low:
            return result("fail", f"{value.value:g} is below the minimum of {low:g}")
        if high is not None and value.value > high:
            return result("fail", f"{value.value:g} is above the maximum of {high:g}")
        return result("pass", f"{value.value:g} is within bounds")


_Comparison = Callable[[float], float]
_Describe = Callable[[float], str]


@dataclass(frozen=True)
class _PredictionCounts:
    """Both variants' predictions by category, and what the categories are."""

    kind: str
    part: str
    canary: dict[str, float]
    stable: dict[str, float]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _points(value: float) -> str:
    return f"{value * 100:+.3g} points" if value else "0 points"


def _share(value: float) -> str:
    return f"{value:.3g}"


def _count_share(failures: float, requests: float) -> str:
    return f"{failures:.0f} of {requests:.0f} failed ({_percent(failures / requests) if requests else '-'})"


def _evidence(outcome: TestOutcome) -> str:
    verdict = "below" if outcome.failed else "not below"
    return (
        f"{outcome.test} p={outcome.p_value:.2g} {verdict} alpha {outcome.alpha:.2g},"
        f" interval {outcome.low:.3g} to {outcome.high:.3g} against a tolerance of {outcome.tolerance:.3g}"
    )


def _describe_tests(outcomes: Sequence[tuple[str, TestOutcome]], describe: _Describe) -> str:
    return "; ".join(
        f"{what} {describe(outcome.effect)} ({_evidence(outcome)})" for what, outcome in outcomes
    )


def _deciding(outcomes: Sequence[tuple[str, TestOutcome]]) -> TestOutcome:
    """The test a check reports: the strongest evidence against the canary, relative to each test's
    level (the failed one if any)."""
    return min((outcome for _, outcome in outcomes), key=lambda outcome: outcome.p_value / outcome.alpha)


def _histogram(result: QueryResult | None) -> Histogram | str:
    """Per-bucket counts of a latency histogram's increase over the window, or why there are none."""
    if result is None:
        return "the query was not run"
    if isinstance(result, QueryFailure):
        return _describe_failure(result)
    return sorted((_bound(label), count) for label, count in _bucket_counts(result).items())


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


def _seconds(value: float) -> str:
    return f"{value:.3g}s"


def _class_counts(vector: Sequence[Series]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for series in vector:
        if math.isfinite(series.value) and series.value > 0:
            label = series.labels.get(LABEL_CLASS, "")
            counts[label] = counts.get(label, 0.0) + series.value
    return counts


def _bound(text: str) -> float:
    """A bucket's upper bound; NaN for a label that is not one (which the bucket count then skips)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _bucket_counts(vector: Sequence[Series]) -> dict[str, float]:
    """Per-bucket counts from a histogram's cumulative ones (`le` labels)."""
    cumulative = []
    for series in vector:
        bound = _bound(series.labels.get("le", ""))
        if not math.isnan(bound) and math.isfinite(series.value):
            cumulative.append((bound, series.value))
    cumulative.sort()
    counts: dict[str, float] = {}
    below = 0.0
    for upper, total in cumulative:
        # increase() extrapolates each bucket on its own, so a bucket may come out a little below the one
        # before it; that is noise, not a negative count.
        counts[f"{upper:g}"] = max(total - below, 0.0)
        below = max(below, total)
    return counts


def _total(counts: Mapping[str, float]) -> float:
    return sum(counts.values())


def evaluate(plan: AnalysisPlan, results: Mapping[str, QueryResult]) -> list[CheckResult]:
    """The verdict of every check of the plan, the request count ("samples") first.

    `results` holds the decoded answer to each of `plan.queries` by the same key; a missing
    answer counts as a query that was not run.
    """
    canary = _scalar(results.get(_key(SAMPLES, "canary")))
    stable = _scalar(results.get(_key(SAMPLES, "stable")))
    counts = _Counts(
        canary=canary.value,
        stable=stable.value,
        min_samples=plan.analysis.min_samples,
        canary_unknown=canary.problem,
        stable_unknown=stable.problem,
    )
    judge = _Judge(plan, results, counts)
    checks = [judge.samples()]
    analysis = plan.analysis
    if _key(ERROR_RATE, "canary", "errors") in plan.queries:
        checks.append(judge.statistical_error_rate())
    if _key(LATENCY, "canary", "buckets") in plan.queries:
        checks.append(judge.statistical_latency())
    if _key(ERROR_RATE, "canary") in plan.queries:
        increase = analysis.error_rate.max_increase
        checks.append(
            judge.bounded(
                ERROR_RATE,
                upper=analysis.error_rate.max_ratio,
                compare=None if increase is None else (lambda stable: stable + increase),
                describe=_percent,
            )
        )
    if _key(LATENCY, "canary") in plan.queries:
        ratio = analysis.latency.max_increase_ratio
        floor = analysis.latency.ignore_below_seconds
        checks.append(
            judge.bounded(
                LATENCY,
                upper=analysis.latency.max_seconds,
                compare=None if ratio is None else (lambda stable: max(stable * ratio, floor)),
                describe=_seconds,
            )
        )
    if analysis.prediction_shift.enabled:
        checks.append(judge.prediction_shift())
    checks.extend(judge.custom(check.name, check.min, check.max) for check in analysis.custom)
    return checks


def overall_verdict(checks: Sequence[CheckResult]) -> Verdict:
    """A window's verdict: fail if any check failed, pass only if every check passed."""
    verdicts = {check.verdict for check in checks}
    if "fail" in verdicts:
        return "fail"
    if not checks or "inconclusive" in verdicts:
        return "inconclusive"
    return "pass"
