"""A rollout judged by the statistical method end to end: the real control plane and operator, a real
Prometheus scraping real model-server processes, the checks computed from the counts Prometheus
answers (failed and all requests, latency buckets, prediction classes of both variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_canary import CanaryRecorder, Rollouts

from kube_helpers import wait_until
from modeldeploy_localcluster.standins import PrometheusProcess

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

FALSE_ROLLBACK_RATE = 0.05


def statistical_analysis(prometheus: PrometheusProcess) -> dict[str, Any]:
    return {
        "prometheusAddress": prometheus.url,
        "method": "statistical",
        "falseRollbackRate": FALSE_ROLLBACK_RATE,
        "minSamples": 20,
        # No excess of failures over the stable model beyond chance, and at most 5 % absolute.
        "errorRate": {"maxRatio": 0.05},
        # Latency on a shared 2-core machine is noise: tolerate a lot, and call up to 100 ms equally fast.
        "latency": {"maxIncreaseRatio": 4, "ignoreBelowSeconds": 0.1},
        "predictionShift": {"maxShift": 0.2},
    }


def judged(recorder: CanaryRecorder) -> list[dict[str, Any]]:
    """Every check result the recorder saw, once each (the status repeats them until the next window)."""
    seen: dict[str, dict[str, Any]] = {}
    for sample in recorder.samples:
        for check in sample.get("checks", []):
            key = repr(sorted(check.items()))
            seen.setdefault(key, check)
    return list(seen.values())


def recorded_rollout(
    rollouts: Rollouts, model: Path, version: str, analysis: dict[str, Any]
) -> tuple[dict[str, Any], CanaryRecorder]:
    """The status after a rollout of `model`, and what the status showed of each step meanwhile."""
    rollouts.start_rollout(model, version, analysis=analysis)
    recorder = CanaryRecorder(rollouts)
    try:
        return rollouts.wait_for_outcome(), recorder
    finally:
        recorder.stop()


def brief(check: dict[str, Any]) -> str:
    """What a failed assertion shows of a check (its queries are long)."""
    return f"{check['name']} {check['verdict']}: {check.get('message', '')}"


def test_a_good_model_is_promoted_and_a_failing_one_rolled_back_on_evidence(
    rollouts: Rollouts, iris_models: dict[str, Path]
) -> None:
    rollouts.deploy_stable(iris_models["v1"], "v1")
    analysis = statistical_analysis(rollouts.prometheus)

    # The same classifier retrained: nothing the data shows beyond chance.
    promoted, recorder = recorded_rollout(rollouts, iris_models["v1-retrained"], "v2", analysis)
    assert promoted["history"][0]["outcome"] == "promoted", promoted["history"]
    assert promoted["stable"]["version"] == "v2"
    checks = [check for check in judged(recorder) if check["name"] != "samples"]
    # A window the canary's first requests had not filled yet is inconclusive, not judged.
    assert not [brief(check) for check in checks if check["verdict"] == "fail"], checks
    checks = [check for check in checks if check["verdict"] == "pass"]
    assert {check["name"] for check in checks} == {"errorRate", "latency", "predictionShift"}, [
        brief(check) for check in judged(recorder)
    ]
    # Steps [25, 50] and five tests a window: each test at 0.05 / 2 / 5.
    for check in checks:
        assert check["alpha"] == pytest.approx(FALSE_ROLLBACK_RATE / 2 / 5), check
        assert check["pValue"] >= check["alpha"], check
        assert check["test"] and check["samples"] >= 20 and check["stableSamples"] >= 20, check
        assert check["effectLow"] <= check["effect"] <= check["effectHigh"], check

    # The stand-in processes follow the promotion before the next canary starts: until then the
    # process labelled canary still serves v2.
    wait_until(
        lambda: rollouts.stand_ins.running_version("stable") == "v2"
        and rollouts.stand_ins.running_version("canary") is None,
        "the stand-ins to follow the promotion",
    )

    # A model that lost a class answers about a third of its requests with a 500.
    rejected, recorder = recorded_rollout(rollouts, iris_models["v2-lost-a-class"], "v3", analysis)
    assert rejected["history"][0]["outcome"] == "rolledBack", [brief(check) for check in judged(recorder)]
    assert rejected["rejected"]["version"] == "v3"
    # The window that decides clears status.canary in the same write; its evidence is in the history.
    entry = rejected["history"][0]
    errors = next(check for check in entry["checks"] if check["name"] == "errorRate")
    assert errors["verdict"] == "fail", brief(errors)
    # The message tells the same evidence for people: the deciding test and its p-value.
    assert "errorRate: canary" in entry["message"], entry["message"]
    assert f"({errors['test']} p=" in entry["message"], entry["message"]
    # The exact test against the stable model's failures, with the excess it measured.
    assert errors["test"] in {"conditional-binomial", "exact-binomial"}, errors
    assert errors["samples"] >= 20 and errors["stableSamples"] >= 20, errors
    assert errors["value"] > 0.1 + errors["baseline"], errors
    assert errors["pValue"] < errors["alpha"] == pytest.approx(FALSE_ROLLBACK_RATE / 2 / 5, rel=0.05), errors
    assert errors["effectLow"] > 0, errors
    assert rollouts.stand_ins.running_version("stable") == "v2"
