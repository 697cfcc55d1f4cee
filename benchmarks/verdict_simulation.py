"""Rollouts judged from simulated metrics: the servers' counters, Prometheus' scrapes and its answers.

Fast enough for thousands of rollouts, and close to what the operator sees from real servers:

- Each variant is one server target scraped every `SCRAPE_SECONDS` (or as told) at its own phase. Requests
  arrive as a Poisson process at the variant's share of the traffic (the step's effective weight,
  as `rollout.placement` says), each fails with the variant's error rate, and its latency falls
  into the server's own histogram buckets (`modeldeploy_serving.metrics.LATENCY_BUCKETS`) with
  the probabilities of the variant's latency distribution; successful requests count a predicted
  class. A scrape records the counters as they are then.
- A series exists from the first scrape after its counter was first incremented, as with
  prometheus_client's labelled children: the canary's servers start with the rollout, so its
  failures series appears with its first 5xx; the stable model has served long enough that all
  of its series exist.
- The queries `analysis.plan_analysis` renders are answered by key (what each measures), with
  Prometheus' semantics: `increase`/`rate` extrapolated as Prometheus' `extrapolatedRate` does,
  a range selector left-open (`(t - range, t]`, Prometheus 3), sums over series, and
  `histogram_quantile` interpolating linearly inside a bucket.
- `simulate_rollout` then drives the project's own `evaluate` and `decide` over simulated time,
  as the reconcile does: at each window's end (and at the step's deadline) it plans the window's
  queries, evaluates the answers and hands the `StepAnalysis` to `decide`, until the rollout is
  promoted or rolled back. The reconciles in between (every few seconds) change nothing here: no
  annotations, pods always ready, the same status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_operator.analysis import QueryResult, evaluate, plan_analysis
from modeldeploy_operator.rollout import (
    StepAnalysis,
    analysis_window,
    decide,
    next_analysis_at,
    placement,
    progress_deadline,
)
from modeldeploy_operator.spec import (
    ERROR_RATE,
    LATENCY,
    PREDICTION_SHIFT,
    SAMPLES,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    StableModel,
)
from modeldeploy_serving.metric_names import LABEL_CLASS
from modeldeploy_serving.metrics import LATENCY_BUCKETS

SCRAPE_SECONDS = 15.0
BUCKET_BOUNDS: tuple[float, ...] = (*LATENCY_BUCKETS, math.inf)
# How long the stable model has served before the rollout: its counters are that large.
_STABLE_HISTORY_SECONDS = 3600.0
_START = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
_NAME, _NAMESPACE = "model", "bench"


@dataclass(frozen=True)
class Latency:
    """A lognormal latency, of which `slow_share` of the requests are `slow_factor` times slower."""

    median: float
    sigma: float = 0.35
    slow_share: float = 0.0
    slow_factor: float = 1.0

    def bucket_shares(self) -> npt.NDArray[np.float64]:
        """The share of requests in each histogram bucket (not cumulative), the +Inf one last."""
        bounds = np.array(LATENCY_BUCKETS)

        def cdf(median: float) -> npt.NDArray[np.float64]:
            scaled = np.log(bounds / median) / (self.sigma * math.sqrt(2))
            return np.array([0.5 * (1 + math.erf(value)) for value in scaled])

        below = (1 - self.slow_share) * cdf(self.median) + self.slow_share * cdf(
            self.median * self.slow_factor
        )
        return np.diff(np.concatenate(([0.0], below, [1.0])))


@dataclass(frozen=True)
class Behaviour:
    """What one variant's servers do with requests."""

    error_rate: float
    latency: Latency
    classes: tuple[float, ...]
    """The share of successful predictions of each class."""


@dataclass(frozen=True)
class Sample:
    """One series of an answer, as `analysis.Series` wants it."""

    labels: Mapping[str, str]
    value: float


def extrapolated_increase(
    times: Sequence[float], values: Sequence[float], start: float, end: float
) -> float | None:
    """Prometheus' `increase(counter[end - start])` at `end` from the samples of one series inside the
    range, None without two of them (the series is then left out of the answer).

    Without counter resets (the simulated servers never restart). The increase between the first and
    last sample is extrapolated towards each boundary of the range by the gap to it when that gap is
    within 110 % of the average interval between samples, by half an interval otherwise (the series
    is taken to start or end there), and towards the start never beyond where the counter would be 0.
    """
    if len(times) < 2:
        return None
    sampled = times[-1] - times[0]
    increase = values[-1] - values[0]
    average = sampled / (len(times) - 1)
    to_start, to_end = times[0] - start, end - times[-1]
    if to_start >= average * 1.1:
        to_start = average / 2
    if increase > 0 and values[0] >= 0:
        to_start = min(to_start, sampled * values[0] / increase)
    if to_end >= average * 1.1:
        to_end = average / 2
    return increase * (sampled + to_start + to_end) / sampled


def histogram_quantile(quantile: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' `histogram_quantile` over cumulative `(le, count)` buckets (+Inf among them).

    NaN without a +Inf bucket or without observations; counts that fall from one bucket to the next
    (each bucket is extrapolated on its own) are raised to the one before; the quantile is
    interpolated linearly inside its bucket, the first bucket starting at 0, and a quantile in the
    +Inf bucket is the highest finite bound.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = quantile * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]
    upper = ordered[index][0]
    if index == 0:
        lower, below = 0.0, 0.0
        if upper <= 0:
            return upper
    else:
        lower, below = ordered[index - 1][0], counts[index - 1]
    return lower + (upper - lower) * (rank - below) / (counts[index] - below)


# The counters of one server, one column each: requests that succeeded, requests that failed, the
# latency buckets (cumulative, +Inf last), then one per class.
_OK, _FAILED, _BUCKETS = 0, 1, 2


@dataclass
class Target:
    """One variant's servers as Prometheus scrapes them."""

    behaviour: Behaviour
    phase: float
    rng: np.random.Generator
    preexisting: bool
    scrape_seconds: float = SCRAPE_SECONDS
    counters: npt.NDArray[np.float64] = field(init=False)
    times: list[float] = field(default_factory=list)
    snapshots: list[npt.NDArray[np.float64]] = field(default_factory=list)
    _clock: float = 0.0
    _expected: float = 0.0
    _next_scrape: float = field(init=False)
    _shares: npt.NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        self._shares = self.behaviour.latency.bucket_shares()
        self.counters = np.zeros(_BUCKETS + len(BUCKET_BOUNDS) + len(self.behaviour.classes))
        self._next_scrape = self.phase

    def seed_history(self, rate: float) -> None:
        """Counters as after `_STABLE_HISTORY_SECONDS` at `rate`: every series exists, and is large."""
        self._count(self.rng.poisson(rate * _STABLE_HISTORY_SECONDS))

    def _count(self, requests: int) -> None:
        failed = self.rng.binomial(requests, self.behaviour.error_rate)
        self.counters[_OK] += requests - failed
        self.counters[_FAILED] += failed
        buckets = self.rng.multinomial(requests, self._shares)
        self.counters[_BUCKETS : _BUCKETS + len(BUCKET_BOUNDS)] += np.cumsum(buckets)
        self.counters[_BUCKETS + len(BUCKET_BOUNDS) :] += self.rng.multinomial(
            requests - failed, self.behaviour.classes
        )

    def run(self, until: float, rate: float) -> None:
        """Serve `rate` requests a second from the target's clock until `until`, scraping on the way."""
        while self._next_scrape <= until:
            self._expected += rate * (self._next_scrape - self._clock)
            self._clock = self._next_scrape
            self._count(self.rng.poisson(self._expected))
            self._expected = 0.0
            self.times.append(self._clock)
            self.snapshots.append(self.counters.copy())
            self._next_scrape += self.scrape_seconds
        self._expected += rate * (until - self._clock)
        self._clock = until

    def increases(self, start: float, end: float) -> list[float | None]:
        """`increase()` of every column over `(start, end]`, None where the series has no two samples."""
        inside = [i for i, t in enumerate(self.times) if start < t <= end]
        if not inside:
            return [None] * len(self.counters)
        times = np.array([self.times[i] for i in inside])
        values = np.array([self.snapshots[i] for i in inside])
        answers: list[float | None] = []
        for column in range(values.shape[1]):
            # A series exists once its counter moved (its labelled child is created then).
            exists = np.ones(len(inside), dtype=bool) if self.preexisting else values[:, column] > 0
            if column >= _BUCKETS and column < _BUCKETS + len(BUCKET_BOUNDS) and not self.preexisting:
                exists = (
                    values[:, _BUCKETS + len(BUCKET_BOUNDS) - 1] > 0
                )  # a histogram's buckets come together
            answers.append(
                extrapolated_increase(list(times[exists]), list(values[exists, column]), start, end)
            )
        return answers


def _sum(values: Sequence[float | None]) -> list[Sample]:
    """`sum(...)` of series: one unlabelled sample, or no answer when no series is there."""
    present = [value for value in values if value is not None]
    return [Sample({}, float(sum(present)))] if present else []


def _le(bound: float) -> str:
    """A bucket's `le` label as Prometheus exposes it."""
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


@dataclass
class Simulation:
    """Both variants' servers behind one Prometheus."""

    stable: Target
    canary: Target
    requests_per_second: float

    @classmethod
    def start(
        cls,
        stable: Behaviour,
        canary: Behaviour,
        requests_per_second: float,
        rng: np.random.Generator,
        scrape_seconds: float = SCRAPE_SECONDS,
    ) -> Simulation:
        phases = rng.uniform(0, scrape_seconds, size=2)
        simulation = cls(
            Target(stable, float(phases[0]), rng, preexisting=True, scrape_seconds=scrape_seconds),
            Target(canary, float(phases[1]), rng, preexisting=False, scrape_seconds=scrape_seconds),
            requests_per_second,
        )
        simulation.stable.seed_history(requests_per_second)
        return simulation

    def run(self, until: float, canary_share: float) -> None:
        """Serve the traffic up to `until` with `canary_share` (0-1) of it going to the canary."""
        self.stable.run(until, self.requests_per_second * (1 - canary_share))
        self.canary.run(until, self.requests_per_second * canary_share)

    def answer(self, key: str, query: str, at: float, seconds: float, quantile: float) -> QueryResult:
        """The answer to the plan's query `key` evaluated at `at` over `seconds`."""
        check, *part, variant = key.split("/")
        target = self.canary if variant == "canary" else self.stable
        increases = target.increases(at - seconds, at)
        buckets = increases[_BUCKETS : _BUCKETS + len(BUCKET_BOUNDS)]
        what = (check, *part)
        if what == (SAMPLES,):
            return _sum(increases[_OK:_BUCKETS])
        if what == (ERROR_RATE,):
            # (sum(increase(failed)) or vector(0)) / sum(increase(all))
            total = _sum(increases[_OK:_BUCKETS])
            if not total:
                return []
            failed = increases[_FAILED] or 0.0
            return [Sample({}, failed / total[0].value if total[0].value else math.nan)]
        if what == (ERROR_RATE, "errors"):
            # sum(increase(failed)) or vector(0)
            return [Sample({}, increases[_FAILED] or 0.0)]
        if what == (LATENCY,):
            # histogram_quantile(q, sum by (le) (rate(buckets)))
            present = [
                (le, value / seconds)
                for le, value in zip(BUCKET_BOUNDS, buckets, strict=True)
                if value is not None
            ]
            return [Sample({}, histogram_quantile(quantile, present))] if present else []
        if what == (LATENCY, "buckets"):
            # sum by (le) (increase(buckets))
            return [
                Sample({"le": _le(le)}, value)
                for le, value in zip(BUCKET_BOUNDS, buckets, strict=True)
                if value is not None
            ]
        if what == (PREDICTION_SHIFT, "classes"):
            # sum by (class) (increase(classes))
            classes = increases[_BUCKETS + len(BUCKET_BOUNDS) :]
            return [
                Sample({LABEL_CLASS: str(index)}, value)
                for index, value in enumerate(classes)
                if value is not None
            ]
        if what == (PREDICTION_SHIFT, "values"):
            return []  # a classifier fills no value histogram
        raise UnknownQuery(key, query)


class UnknownQuery(Exception):
    """A plan asked a query the simulation does not know what it measures."""

    def __init__(self, key: str, query: str) -> None:
        super().__init__(f"the simulation cannot answer the query {key!r}: {query}")
        self.key = key


@dataclass(frozen=True)
class Outcome:
    """How a simulated rollout ended."""

    outcome: str
    """promoted or rolledBack (the history entry's outcome)."""
    reason: str
    seconds: float
    """From the rollout's start to its end."""
    blamed: tuple[str, ...] = ()
    """The checks of the last analysis that did not pass (failed, or inconclusive without a failure)."""


REPLICAS = 10


def rollout_settings(
    step_seconds: int, analysis: Mapping[str, Any] | None = None, **rollout: Any
) -> dict[str, Any]:
    """spec.rollout of every benchmarked rollout: the default settings with steps [10, 50],
    `analysis` in spec.rollout.analysis and `rollout` in spec.rollout."""
    return {
        "steps": [10, 50],
        "stepDuration": f"{step_seconds}s",
        "analysis": dict(analysis or {}),
        **rollout,
    }


def rollout_spec(
    step_seconds: int, analysis: Mapping[str, Any] | None = None, **rollout: Any
) -> ModelDeploymentSpec:
    """The spec of a benchmarked rollout, with `REPLICAS` pods so the replicas provider splits the
    traffic at exactly the steps' weights."""
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "s3://models/model/2.skops", "version": "2"},
            "replicas": REPLICAS,
            "rollout": rollout_settings(step_seconds, analysis, **rollout),
        }
    )


def _stable_status() -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stable=StableModel(uri="s3://models/model/1.skops", version="1", since=_START - timedelta(hours=1))
    )


def simulate_rollout(
    spec: ModelDeploymentSpec,
    stable: Behaviour,
    canary: Behaviour,
    requests_per_second: float,
    rng: np.random.Generator,
    *,
    scrape_seconds: float = SCRAPE_SECONDS,
    limit_seconds: float = 4 * 3600,
) -> Outcome:
    """One rollout of `canary` beside `stable`, decided by the operator's own code."""
    simulation = Simulation.start(stable, canary, requests_per_second, rng, scrape_seconds)
    status = decide(spec, _stable_status(), _START).status
    now = _START
    analysis = spec.rollout.analysis
    step: StepAnalysis | None = None
    while status.canary is not None:
        where = placement(spec, status)
        share = 0.0 if where is None else where.effective_weight / 100
        # The next moment a reconcile could change anything: the window's end or the step's deadline.
        deadline = progress_deadline(spec, status.canary) + timedelta(seconds=1)
        window_end = next_analysis_at(spec, status) or deadline
        later = max(min(window_end, deadline), now + timedelta(seconds=1))
        simulation.run((later - _START).total_seconds(), share)
        now = later
        window = analysis_window(spec, status, now)
        step = None
        if window is not None:
            plan = plan_analysis(_NAME, _NAMESPACE, analysis, window.duration)
            at = (window.end - _START).total_seconds()
            seconds = window.duration.total_seconds()
            answers = {
                key: simulation.answer(key, query, at, seconds, analysis.latency.quantile)
                for key, query in plan.queries.items()
            }
            step = StepAnalysis(window, tuple(evaluate(plan, answers)))
        status = decide(spec, status, now, analysis=step).status
        if (now - _START).total_seconds() > limit_seconds:
            raise RuntimeError("the simulated rollout did not end")
    entry = status.history[0]
    checks = () if step is None else step.checks
    # Too few samples make every check inconclusive: the count is to blame, not the others.
    inconclusive = tuple(check.name for check in checks if check.verdict == "inconclusive")
    blamed = tuple(check.name for check in checks if check.verdict == "fail") or (
        (SAMPLES,) if SAMPLES in inconclusive else inconclusive
    )
    return Outcome(
        entry.outcome, entry.reason or "", (entry.finished_at - entry.started_at).total_seconds(), blamed
    )
