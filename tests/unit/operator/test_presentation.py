"""Text views of ModelDeployments for the `modeldeploy` command."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modeldeploy_operator.presentation import detail, history_table, progress_bar, summary_table

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def body(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris", "namespace": "ml", "creationTimestamp": "2026-11-27T11:00:00Z"},
        "spec": {"model": {"uri": "s3://m/v2", "version": "2"}, "rollout": {"steps": [10, 50]}},
        "status": status,
    }


ROLLING = {
    "phase": "Progressing",
    "conditions": [{"type": "Ready", "status": "True", "message": "2/2 ready"}],
    "stable": {"uri": "s3://m/v1", "version": "1"},
    "canary": {
        "uri": "s3://m/v2",
        "version": "2",
        "weight": 50,
        "effectiveWeight": 33.3,
        "step": 1,
        "stepStartedAt": "2026-11-27T11:58:00Z",
        "checks": [
            {"name": "errorRate", "verdict": "pass", "value": 0.001, "baseline": 0.002, "samples": 420},
            {"name": "latency", "verdict": "inconclusive", "message": "too few samples"},
        ],
    },
    "url": "http://iris.ml.svc.cluster.local",
}


def test_progress_bar_fills_with_the_weight() -> None:
    assert progress_bar(0, 10) == "[..........]"
    assert progress_bar(50, 10) == "[#####.....]"
    assert progress_bar(100, 10) == "[##########]"
    assert progress_bar(140, 10) == "[##########]"


def test_summary_shows_phase_versions_weight_and_age() -> None:
    table = summary_table([body(ROLLING)], NOW)
    header, row = table.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "READY", "PHASE", "STABLE", "CANARY", "WEIGHT", "AGE"]
    assert row.split() == ["ml", "iris", "True", "Progressing", "1", "2", "50%", "1h"]


def test_detail_explains_the_rollout_and_its_checks() -> None:
    text = detail(body(ROLLING), NOW)
    assert "ml/iris: Progressing" in text
    assert "Stable:   s3://m/v1 (1)" in text
    assert "[##########..........] 50% (effective 33.3%), step 2/2, step began 2m ago" in text
    check_lines = [
        line.split() for line in text.splitlines() if line.strip().startswith(("errorRate", "latency"))
    ]
    assert check_lines[0] == ["errorRate", "pass", "0.001", "0.002", "420"]
    assert check_lines[1][:2] == ["latency", "inconclusive"] and "too few samples" in " ".join(check_lines[1])


def test_detail_of_a_stalled_deployment_says_why() -> None:
    stalled = {
        "phase": "Stalled",
        "conditions": [
            {"type": "Stalled", "status": "True", "reason": "PodsFailing", "message": "fetch failed: 403"}
        ],
    }
    assert "Stalled:  PodsFailing: fetch failed: 403" in detail(body(stalled), NOW)


def test_history_lists_outcomes_newest_first() -> None:
    finished = {
        "history": [
            {"uri": "s3://m/v3", "version": "3", "outcome": "rolledBack", "reason": "ChecksFailed",
             "message": "errorRate 0.2 > 0.01", "finishedAt": "2026-11-27T11:30:00Z"},
            {"uri": "s3://m/v2", "version": "2", "outcome": "promoted", "reason": "ChecksPassed",
             "finishedAt": "2026-11-27T10:00:00Z"},
        ]
    }  # fmt: skip
    lines = history_table(body(finished)).splitlines()
    assert lines[1].split()[:4] == ["2026-11-27T11:30:00Z", "s3://m/v3", "(3)", "rolledBack"]
    assert "promoted" in lines[2]
    assert history_table(body({})) == "no finished rollouts"
