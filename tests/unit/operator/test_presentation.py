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


def test_detail_shows_the_evidence_of_the_last_rollout_once_it_ended() -> None:
    ended = {
        "phase": "Ready",
        "stable": {"uri": "s3://m/v1", "version": "1"},
        "history": [
            {
                "uri": "s3://m/v2",
                "version": "2",
                "outcome": "rolledBack",
                "reason": "AnalysisFailed",
                "startedAt": "2026-11-27T11:50:00Z",
                "finishedAt": "2026-11-27T11:57:00Z",
                "checks": [
                    {"name": "errorRate", "verdict": "fail", "value": 0.3, "baseline": 0.0, "samples": 90},
                ],
            },
            {
                "uri": "s3://m/v1",
                "outcome": "promoted",
                "startedAt": "2026-11-27T10:00:00Z",
                "finishedAt": "2026-11-27T10:10:00Z",
            },
        ],
    }
    text = detail(body(ended), NOW)
    assert "  Last rollout: s3://m/v2 (2) rolledBack (AnalysisFailed) 3m ago, on these checks:" in text
    assert next(line.split()[:5] for line in text.splitlines() if line.strip().startswith("errorRate")) == [
        "errorRate",
        "fail",
        "0.3",
        "0",
        "90",
    ]
    assert "Last rollout" not in detail(body(ROLLING), NOW)


def test_detail_says_when_a_window_waits_for_requests() -> None:
    assert "Window:" not in detail(body(ROLLING), NOW)
    waiting = {
        **ROLLING,
        "canary": {
            **ROLLING["canary"],
            "analysisStartedAt": "2026-11-27T11:58:00Z",
            "analysisEndsAt": "2026-11-27T12:09:00Z",
        },
    }
    text = detail(body(waiting), NOW)
    assert "  Window:   waits for requests, from 2026-11-27T11:58:00Z to 2026-11-27T12:09:00Z" in text


def test_detail_shows_the_evidence_of_statistical_verdicts() -> None:
    statistical = {
        **ROLLING,
        "canary": {
            **ROLLING["canary"],
            "checks": [
                {"name": "samples", "verdict": "pass", "value": 300, "baseline": 2700, "samples": 300,
                 "stableSamples": 2700, "message": "the canary served 300 requests, at least 50"},
                {"name": "errorRate", "verdict": "fail", "value": 0.03, "baseline": 0.0052, "samples": 300,
                 "stableSamples": 2700, "test": "conditional-binomial", "effect": 0.0248, "effectLow": 0.0061,
                 "effectHigh": 0.0612, "tolerance": 0.0, "pValue": 0.00012, "alpha": 0.005,
                 "message": "canary 9 of 300 failed"},
            ],
        },
    }  # fmt: skip
    text = detail(body(statistical), NOW)
    header = next(line.split() for line in text.splitlines() if line.strip().startswith("CHECK"))
    assert header[:6] == ["CHECK", "VERDICT", "CANARY", "STABLE", "SAMPLES", "TEST"]
    assert "P/ALPHA" in header and "TOLERANCE" in header
    errors = next(line.split() for line in text.splitlines() if line.strip().startswith("errorRate"))
    assert errors[:6] == ["errorRate", "fail", "0.03", "0.0052", "300/2700", "conditional-binomial"]
    assert errors[6:9] == ["0.0248", "[0.0061,", "0.0612]"]
    assert errors[9:11] == ["0", "0.00012/0.005"]
    samples = next(line.split() for line in text.splitlines() if line.strip().startswith("samples"))
    assert samples[4:6] == ["300/2700", "-"]


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
