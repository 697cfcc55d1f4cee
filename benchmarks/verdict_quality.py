"""How often the rollout's verdicts are wrong: a corpus of scenarios with a known truth, each rolled
out many times through the operator's own `evaluate` and `decide` on simulated metrics
(`verdict_simulation`), with 5-minute and 1-minute windows.

Every rollout uses the default analysis settings, steps [10, 50], ten pods (the replicas provider then
splits exactly at the steps' weights) and a stable model that has served for an hour. Printed per
scenario and window: the share of rollouts rolled back and promoted, and the median time from the
rollout's start to its end. For a good model a rollback is a false rollback; for a bad one a promotion
is a missed regression. With `spec.rollout.analysis.method` in the spec, every method it allows is
run on the same seeds (the same simulated traffic and requests).

    .venv/bin/python benchmarks/verdict_quality.py [--rollouts 500] [--method NAME ...] [--scenario NAME ...]

Not a test: the numbers are estimates from `--rollouts` random rollouts (at 500, a share of 2 % is
known to about ±1.3 points, 50 % to ±4.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from verdict_simulation import Behaviour, Latency, Outcome, UnknownQuery, rollout_spec, simulate_rollout

from modeldeploy_operator.spec import Analysis

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
class Cell:
    """The rollouts of one scenario with one window length and one method."""

    rolled_back: float
    promoted: float
    median_seconds: float
    blamed: Counter[str] = field(default_factory=Counter)
    """How many rollbacks each check caused."""
    problem: str = ""


def run_cell(scenario: Scenario, index: int, window: int, method: str | None, rollouts: int) -> Cell:
    spec = rollout_spec(window, {} if method is None else {"method": method})
    outcomes: list[Outcome] = []
    for rollout in range(rollouts):
        # The same seed for every method: the same traffic, failures and latencies.
        rng = np.random.default_rng([index, window, rollout])
        stable, canary = scenario.behaviours(rng)
        try:
            outcomes.append(simulate_rollout(spec, stable, canary, scenario.requests_per_second, rng))
        except UnknownQuery as error:
            return Cell(0, 0, 0, problem=str(error))
    return Cell(
        rolled_back=sum(outcome.outcome == "rolledBack" for outcome in outcomes) / rollouts,
        promoted=sum(outcome.outcome == "promoted" for outcome in outcomes) / rollouts,
        median_seconds=statistics.median(outcome.seconds for outcome in outcomes),
        blamed=Counter(
            name for outcome in outcomes if outcome.outcome == "rolledBack" for name in outcome.blamed
        ),
    )


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
    """A Markdown table: scenario, truth, method, then rolled back / promoted / median time per window."""
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
    args = parser.parse_args(argv)
    chosen: list[str | None] = args.method or available
    rows: list[tuple[Scenario, str, dict[int, Cell]]] = []
    problems: set[str] = set()
    started = time.perf_counter()
    for index, scenario in enumerate(SCENARIOS):
        if args.scenario and not any(part in scenario.name for part in args.scenario):
            continue
        for method in chosen:
            cells = {window: run_cell(scenario, index, window, method, args.rollouts) for window in WINDOWS}
            problems.update(cell.problem for cell in cells.values() if cell.problem)
            rows.append((scenario, method or "today's", cells))
            print(f"  {scenario.name}, {method or 'today'}: done", file=sys.stderr, flush=True)
    print(table(rows))
    for problem in sorted(problems):
        print(f"not simulated: {problem}")
    rollouts = args.rollouts * len(WINDOWS) * len(rows)
    print(f"{rollouts} simulated rollouts in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
