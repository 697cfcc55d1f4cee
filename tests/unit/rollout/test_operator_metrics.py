"""The operator's rollout metrics follow the rollout machine's decisions, and go with the object."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry
from rollout_support import T0, analysed, make_spec, stable_status, step

from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.spec import ModelDeploymentStatus


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"namespace": "ml", "name": "iris", **labels})


def test_a_rollout_is_counted_from_start_through_each_check_to_its_outcome() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    spec = make_spec()
    before = stable_status()

    started = step(spec, before, T0)
    metrics.observe_rollout("ml", "iris", before, started.status, None)
    assert value(registry, "modeldeploy_operator_rollouts_started_total") == 1
    assert value(registry, "modeldeploy_operator_rollout_canary_weight_percent") == 10
    assert value(registry, "modeldeploy_operator_rollout_step") == 1

    # The same status observed again (an idle reconcile) counts nothing twice.
    metrics.observe_rollout("ml", "iris", started.status, started.status, None)
    assert value(registry, "modeldeploy_operator_rollouts_started_total") == 1

    later = T0 + timedelta(minutes=5, seconds=1)
    failing = step(spec, started.status, later, "fail")
    assert failing.status.canary is None

    metrics.observe_rollout(
        "ml", "iris", started.status, failing.status, analysed(spec, started.status, later, "fail")
    )
    checks = "modeldeploy_operator_analysis_checks_total"
    assert value(registry, checks, check="errorRate", verdict="fail") == 1
    assert value(registry, checks, check="samples", verdict="pass") == 1
    assert value(registry, "modeldeploy_operator_rollouts_finished_total", outcome="rolledBack") == 1
    assert value(registry, "modeldeploy_operator_rollout_canary_weight_percent") == 0
    assert value(registry, "modeldeploy_operator_rollout_step") == 0


def test_forgetting_an_object_removes_only_its_series() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    spec = make_spec()
    started = step(spec, stable_status(), T0).status
    metrics.observe_rollout("ml", "iris", stable_status(), started, None)
    metrics.observe_rollout("ml", "wine", stable_status(), started, None)

    metrics.forget("ml", "iris")

    assert value(registry, "modeldeploy_operator_rollouts_started_total") is None
    assert value(registry, "modeldeploy_operator_rollout_canary_weight_percent") is None
    assert (
        registry.get_sample_value(
            "modeldeploy_operator_rollouts_started_total", {"namespace": "ml", "name": "wine"}
        )
        == 1
    )


def test_a_status_without_rollouts_reports_no_canary() -> None:
    registry = CollectorRegistry()
    OperatorMetrics(registry).observe_rollout("ml", "iris", ModelDeploymentStatus(), stable_status(), None)
    assert value(registry, "modeldeploy_operator_rollouts_started_total") is None
    assert value(registry, "modeldeploy_operator_rollout_canary_weight_percent") == 0
