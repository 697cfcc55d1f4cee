"""How often the rollout's verdicts are wrong: a corpus of scenarios with a known truth, each rolled
out many times through the operator's own `evaluate` and `decide` on simulated metrics
(`verdict_simulation`), with 5-minute and 1-minute windows.

Every rollout uses the default analysis settings, steps [10, 50], ten pods (the replicas provider then
splits exactly at the steps' weights) and a stable model that has served for an hour. Printed per
scenario and window: the share of rollouts rolled back and promoted, and the median time from the
rollout's start to its end. For a good model a rollback is a false rollback; for a bad one a promotion
is a missed regression. Every analysis method the spec allows (`spec.rollout.analysis.method`), each with
windows that restart and windows that wait for samples (`spec.rollout.waitForSamples`), is run on the
same seeds (the same simulated traffic and requests).

    .venv/bin/python benchmarks/verdict_quality.py [--rollouts 500] [--method NAME ...] [--scenario NAME ...]

Not a test: the numbers are estimates from `--rollouts` random rollouts (at 500, a share of 2 % is
known to about ±1.3 points, 50 % to ±4.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from verdict_simulation import (
    REPLICAS,
    Behaviour,
    Latency,
    Outcome,
    UnknownQuery,
    rollout_settings,
    rollout_spec,
    simulate_rollout,
)

from modeldeploy_operator.spec import Analysis, Rollout

if TYPE_CHECKING:
    from canary_rollouts import Bench

Truth = Literal["good", "bad"]

CLASSES = (0.4, 0.25, 0.15, 0.12, 0.08)
# PSI 0.005 from CLASSES.
SHIFTED_CLASSES = (0.435, 0.24, 0.14, 0.11, 0.075)
LOST_CLASS = (0.44, 0.27, 0.16, 0.13, 0.0)
ERRORS = 0.002
LATENCY = Latency(median=0.05)
STABLE = Behaviour(ERRORS, LATENCY, CLASSES)
REQUESTS_PER_SECOND = 10.0
WINDOWS = (300, 60)
# A noisy machine slows this share of both variants' requests, drawn for each rollout, this many times.
NOISY_SHARE = (0.01, 0.02)
NOISY_FACTOR = 10.0


@dataclass(frozen=True)
class Scenario:
    """A canary beside the stable model, and whether it should be promoted."""

    name: str
    truth: Truth
    canary: Behaviour
    stable: Behaviour = STABLE
    requests_per_second: float = REQUESTS_PER_SECOND
    noisy: bool = False

    def behaviours(self, rng: np.random.Generator) -> tuple[Behaviour, Behaviour]:
        """The stable model's and the canary's behaviour in one rollout."""
        if not self.noisy:
            return self.stable, self.canary
        share = float(rng.uniform(*NOISY_SHARE))

        def slowed(behaviour: Behaviour) -> Behaviour:
            latency = replace(behaviour.latency, slow_share=share, slow_factor=NOISY_FACTOR)
            return replace(behaviour, latency=latency)

        return slowed(self.stable), slowed(self.canary)


def _slower(factor: float, median: float) -> Scenario:
    stable = replace(STABLE, latency=Latency(median))
    return Scenario(
        f"latency {factor:g}x at {median * 1000:g} ms",
        "bad",
        replace(stable, latency=Latency(median * factor)),
        stable=stable,
    )


def _errors(points: float) -> Scenario:
    return Scenario(f"errors +{points:g} points", "bad", replace(STABLE, error_rate=ERRORS + points / 100))


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("good retrain (10 req/s)", "good", STABLE),
    Scenario("good, noisy machine", "good", STABLE, noisy=True),
    Scenario("good at 2 req/s", "good", STABLE, requests_per_second=2.0),
    Scenario("good at 1 req/s", "good", STABLE, requests_per_second=1.0),
    _errors(0.5),
    _errors(2),
    _errors(10),
    *(_slower(factor, median) for median in (0.005, 0.05) for factor in (1.2, 1.5, 3.0)),
    Scenario(
        "slow tail only (2 % of requests 3x)",
        "bad",
        replace(STABLE, latency=replace(LATENCY, slow_share=0.02, slow_factor=3.0)),
    ),
    Scenario("one class lost", "bad", replace(STABLE, classes=LOST_CLASS)),
    Scenario("subtle prediction shift (PSI 0.005)", "bad", replace(STABLE, classes=SHIFTED_CLASSES)),
)


def methods() -> list[str | None]:
    """The analysis methods the spec offers (None: the field does not exist yet, today's rules)."""
    field = Analysis.model_fields.get("method")
    if field is None:
        return [None]
    return [str(value) for value in typing.get_args(field.annotation)] or [None]


@dataclass(frozen=True)
class Rules:
    """One way of judging a rollout: an analysis method, and whether a window short of requests waits
    for more (spec.rollout.waitForSamples) or is analysed again from scratch."""

    method: str | None
    waits: bool | None

    @property
    def name(self) -> str:
        method = self.method or "today's"
        if self.waits is None:
            return method
        return f"{method}, {'windows wait' if self.waits else 'windows restart'}"

    def analysis(self) -> dict[str, Any]:
        return {} if self.method is None else {"method": self.method}

    def rollout(self) -> dict[str, Any]:
        return {} if self.waits is None else {"waitForSamples": self.waits}


def every_rules(chosen_methods: Sequence[str | None]) -> list[Rules]:
    """Each method with windows that restart and windows that wait, where the spec offers the choice."""
    waits: list[bool | None] = [False, True] if "wait_for_samples" in Rollout.model_fields else [None]
    return [Rules(method, wait) for method in chosen_methods for wait in waits]


@dataclass(frozen=True)
class Cell:
    """The rollouts of one scenario with one window length and one of the rules."""

    rolled_back: float
    promoted: float
    median_seconds: float
    blamed: Counter[str] = field(default_factory=Counter)
    """How many rollbacks each check caused."""
    problem: str = ""


def summarise(outcomes: Sequence[Outcome]) -> Cell:
    """The shares of rollbacks and promotions, the median time, the checks to blame."""
    return Cell(
        rolled_back=sum(outcome.outcome == "rolledBack" for outcome in outcomes) / len(outcomes),
        promoted=sum(outcome.outcome == "promoted" for outcome in outcomes) / len(outcomes),
        median_seconds=statistics.median(outcome.seconds for outcome in outcomes),
        blamed=Counter(
            name for outcome in outcomes if outcome.outcome == "rolledBack" for name in outcome.blamed
        ),
    )


def run_cell(
    scenario: Scenario,
    index: int,
    window: int,
    rules: Rules,
    rollouts: int,
    scrape_seconds: float | None = None,
) -> Cell:
    spec = rollout_spec(window, rules.analysis(), **rules.rollout())
    outcomes: list[Outcome] = []
    extra: dict[str, Any] = {} if scrape_seconds is None else {"scrape_seconds": scrape_seconds}
    for rollout in range(rollouts):
        # The same seed for all rules: the same traffic, failures and latencies.
        rng = np.random.default_rng([index, window, rollout])
        stable, canary = scenario.behaviours(rng)
        try:
            outcomes.append(
                simulate_rollout(spec, stable, canary, scenario.requests_per_second, rng, **extra)
            )
        except UnknownQuery as error:
            return Cell(0, 0, 0, problem=str(error))
    return summarise(outcomes)


def _describe(cell: Cell) -> str:
    if cell.problem:
        return "not simulated"
    return f"{cell.rolled_back:.1%} / {cell.promoted:.1%} / {cell.median_seconds / 60:g} min"


def _causes(cell: Cell) -> str:
    if not cell.blamed:
        return "-"
    total = sum(cell.blamed.values())
    return ", ".join(f"{name} {count / total:.0%}" for name, count in cell.blamed.most_common(2))


def table(rows: Sequence[tuple[Scenario, str, dict[int, Cell]]]) -> str:
    """A Markdown table: scenario, truth, rules, then rolled back / promoted / median time per window."""
    header = "| scenario | truth | rules | " + " | ".join(
        f"{window // 60}-min windows: rolled back / promoted / median time" for window in WINDOWS
    )
    header += " | rolled back by (" + "; ".join(f"{window // 60} min" for window in WINDOWS) + ")"
    lines = [header + " |", "|" + "---|" * (4 + len(WINDOWS))]
    for scenario, rules, cells in rows:
        values = " | ".join(_describe(cells[window]) for window in WINDOWS)
        causes = "; ".join(_causes(cells[window]) for window in WINDOWS)
        lines.append(f"| {scenario.name} | {scenario.truth} | {rules} | {values} | {causes} |")
    return "\n".join(lines)


# Replayed for real: the iris models of `modeldeploy_localcluster.iris_models` served by real server
# processes, Prometheus scraping them every second (`standins.SCRAPE_INTERVAL_SECONDS`), the operator
# deciding; 10 requests a second cycling through one row of each class. Next to each, the simulation of
# the same behaviour with the same scrape interval.
REAL_WINDOW = 60
REAL_SCRAPE_SECONDS = 1.0
SIMULATED_BESIDE_REAL = 200
_IRIS = Behaviour(0.0, Latency(0.003), (1 / 3, 1 / 3, 1 / 3))
REAL_SCENARIOS: tuple[tuple[str, Scenario], ...] = (
    ("v1-retrained", Scenario("good retrain (iris)", "good", _IRIS, stable=_IRIS)),
    (
        # Every request with a row of the lost class fails inside the model: a third of them.
        "v2-lost-a-class",
        Scenario(
            "one class lost, its requests fail (iris)",
            "bad",
            replace(_IRIS, error_rate=1 / 3, classes=(0.5, 0.5, 0.0)),
            stable=_IRIS,
        ),
    ),
)


def _real_bench(cluster: Any, workdir: Path, rules: Rules) -> Bench:
    """canary_rollouts' bench (cluster, operator, Prometheus, stand-ins, load) with this benchmark's
    rollouts: the default settings, steps [10, 50], 1-minute windows, 10 requests a second."""
    from canary_rollouts import Bench, model_deployment

    class RealBench(Bench):
        def manifest(self, model_dir: Path, version: str) -> str:
            analysis: dict[str, Any] = {"prometheusAddress": self.prometheus.url, **rules.analysis()}
            rollout = rollout_settings(REAL_WINDOW, analysis, **rules.rollout())
            return model_deployment(model_dir, version, REPLICAS, rollout)

    return RealBench(cluster, workdir, REAL_WINDOW, REQUESTS_PER_SECOND)


def _real_rollout(bench: Bench, model: str) -> Outcome:
    bench.apply(model)
    bench.wait(lambda: "canary" in bench.status(), "the rollout to start")
    bench.wait(lambda: "canary" not in bench.status(), "the rollout to end", timeout=1800)
    entry = bench.status()["history"][0]
    # The stand-ins follow the outcome before the next rollout starts.
    bench.wait(lambda: bench.stand_ins.running_version("canary") is None, "the canary process to stop")
    started, finished = (datetime.fromisoformat(entry[key]) for key in ("startedAt", "finishedAt"))
    print(f"[real] {entry['outcome']}: {entry.get('message', '')}", file=sys.stderr, flush=True)
    return Outcome(entry["outcome"], entry.get("reason", ""), (finished - started).total_seconds())


def replay_for_real(
    rollouts: int, chosen: Sequence[Rules], wanted: Sequence[str] | None = None
) -> list[tuple[Scenario, Rules, Cell]]:
    """`rollouts` real rollouts of each real scenario (those whose name contains one of `wanted`, if
    given) with each of the rules, 1-minute windows."""
    from modeldeploy_localcluster.cluster import LocalCluster

    def say(message: str) -> None:
        print(f"[real] {message}", file=sys.stderr, flush=True)

    rows = []
    for rules in chosen:
        with tempfile.TemporaryDirectory(prefix="modeldeploy-verdicts-") as temporary:
            workdir = Path(temporary)
            with LocalCluster(workdir=workdir / "cluster", progress=say) as cluster:
                bench = _real_bench(cluster, workdir, rules)
                with bench:
                    bench.deploy_stable()
                    for model, scenario in REAL_SCENARIOS:
                        if wanted and not any(part in scenario.name for part in wanted):
                            continue
                        outcomes = []
                        for number in range(rollouts):
                            outcomes.append(_real_rollout(bench, model))
                            say(f"{scenario.name}, {rules.name}, {number + 1}: {outcomes[-1]}")
                        rows.append((scenario, rules, summarise(outcomes)))
    return rows


def real_table(real: Sequence[tuple[Scenario, Rules, Cell]], rollouts: int) -> str:
    """The real rollouts beside the simulation of the same scenarios (1-second scrapes)."""
    lines = [
        f"| scenario | truth | rules | real ({rollouts} a row): rolled back / promoted / median time"
        f" | simulated ({SIMULATED_BESIDE_REAL}): rolled back / promoted / median time |",
        "|---|---|---|---|---|",
    ]
    for scenario, rules, cell in real:
        index = next(number for number, (_, known) in enumerate(REAL_SCENARIOS) if known is scenario)
        simulated = run_cell(
            scenario, 100 + index, REAL_WINDOW, rules, SIMULATED_BESIDE_REAL, REAL_SCRAPE_SECONDS
        )
        lines.append(
            f"| {scenario.name} | {scenario.truth} | {rules.name} | {_describe(cell)} | {_describe(simulated)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=500, help="rollouts per scenario and window")
    available = methods()
    parser.add_argument(
        "--method",
        action="append",
        choices=[method for method in available if method is not None] or None,
        help="spec.rollout.analysis.method to run (repeatable; default: every one the spec offers)",
    )
    parser.add_argument("--scenario", action="append", help="run only scenarios whose name contains this")
    parser.add_argument(
        "--real",
        type=int,
        default=0,
        metavar="N",
        help="also replay each iris scenario N times for real (local cluster, Prometheus, server processes)",
    )
    args = parser.parse_args(argv)
    chosen = every_rules(args.method or available)
    if args.real:
        real = replay_for_real(args.real, chosen, args.scenario)
        print(real_table(real, args.real))
    rows: list[tuple[Scenario, str, dict[int, Cell]]] = []
    problems: set[str] = set()
    started = time.perf_counter()
    for index, scenario in enumerate(SCENARIOS):
        if args.scenario and not any(part in scenario.name for part in args.scenario):
            continue
        for rules in chosen:
            cells = {window: run_cell(scenario, index, window, rules, args.rollouts) for window in WINDOWS}
            problems.update(cell.problem for cell in cells.values() if cell.problem)
            rows.append((scenario, rules.name, cells))
            print(f"  {scenario.name}, {rules.name}: done", file=sys.stderr, flush=True)
    print(table(rows))
    for problem in sorted(problems):
        print(f"not simulated: {problem}")
    rollouts = args.rollouts * len(WINDOWS) * len(rows)
    print(f"{rollouts} simulated rollouts in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
