"""The long real-node scenarios, run side by side on the one node.

A canary rollout on real pods mostly waits: for pods to start, for the operator's steps, for
measuring windows. Run one after another they took about 7 of the real-node part's 9 minutes;
run at the same time, each in a namespace of its own, they share the node, the operator and
Prometheus the way several teams' models share a cluster, and the part takes about as long as
the longest of them.

A scenario is a plain function taking session fixtures by name (as a test does) plus `namespace`
(a new restricted namespace, deleted afterwards) and `workdir`; it measures and returns a record.
A test marked `@pytest.mark.side_by_side(scenario=...)` takes the `scenario` fixture and asserts on
`scenario.record()`. The session starts every selected test's scenario, the first time one is asked
for, LANES at a time, with fixtures resolved beforehand in the main thread (pytest's fixtures are
not thread-safe); an exception in a scenario, a failed `assert` or `pytest.fail` included, is
raised in its test by `record()`.

What cannot share the node runs alone, after them (`alone_on_the_node` in conftest.py): a restart
of the kubelet (pods on the node lose readiness for a moment) and the chart's in-cluster operator
(a second operator on the same objects).
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

Scenario = Callable[..., Any]

# Scenarios running at once: each brings 2-6 server pods and a load client. With all five at once
# on a 2-core machine that other work shared, probes timed out and pods flapped (load average 34);
# three keep the part about as long as its longest lane.
LANES = 3
# Given to every scenario by the runner, not by pytest.
RUNNER_ARGUMENTS = ("namespace", "workdir")
# The longest scenario takes about 3 minutes alone; this bounds a hung one.
SCENARIO_TIMEOUT_SECONDS = 900.0


def scenario_of(item: pytest.Item) -> Scenario | None:
    marker = item.get_closest_marker("side_by_side")
    return None if marker is None else marker.kwargs["scenario"]


class SideBySide:
    """Runs scenarios in threads, at once, and hands each test its scenario's record."""

    def __init__(
        self,
        new_namespace: Callable[[], str],
        delete_namespace: Callable[[str], None],
        workdir: Path,
    ) -> None:
        self._new_namespace = new_namespace
        self._delete_namespace = delete_namespace
        self._workdir = workdir
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[Scenario, Future[Any]] = {}
        self.durations: dict[str, float] = {}

    def start(self, scenarios: list[Scenario], fixture: Callable[[str], Any]) -> None:
        """Starts every scenario at once; `fixture` resolves a fixture by name (main thread only)."""
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="scenario")
        for scenario in scenarios:
            names = [name for name in inspect.signature(scenario).parameters if name not in RUNNER_ARGUMENTS]
            arguments = {name: fixture(name) for name in names}
            self._running[scenario] = self._pool.submit(self._run, scenario, arguments)

    def _run(self, scenario: Scenario, arguments: dict[str, Any]) -> Any:
        namespace = self._new_namespace()
        workdir = self._workdir / f"{scenario.__name__}-{uuid.uuid4().hex[:4]}"
        workdir.mkdir(parents=True)
        started = time.monotonic()
        try:
            return scenario(**arguments, namespace=namespace, workdir=workdir)
        finally:
            self.durations[scenario.__name__] = time.monotonic() - started
            self._delete_namespace(namespace)

    def running(self, scenario: Scenario) -> RunningScenario:
        if scenario not in self._running:
            raise LookupError(f"{scenario.__name__} was not started: is its test selected and marked?")
        return RunningScenario(self._running[scenario])

    def wait_all(self) -> None:
        """Until no scenario runs (their failures are their tests' to report)."""
        wait(self._running.values(), timeout=SCENARIO_TIMEOUT_SECONDS)

    def close(self) -> None:
        self.wait_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class RunningScenario:
    """One scenario, started; its test waits for the record."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def record(self) -> Any:
        """The scenario's record, once it has finished; its exception if it failed."""
        return self._future.result(timeout=SCENARIO_TIMEOUT_SECONDS)
