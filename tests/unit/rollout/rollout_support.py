"""Shared builders for the rollout machine's tests: models, specs, statuses and analysis windows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from modeldeploy_operator.rollout import Decision, StepAnalysis, analysis_window, decide
from modeldeploy_operator.spec import (
    CheckResult,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
    StableModel,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
V1 = ModelSource(uri="s3://models/iris/1.skops", version="1")
V2 = ModelSource(uri="s3://models/iris/2.skops", version="2", sha256="a" * 64)
V3 = ModelSource(uri="s3://models/iris/3.skops", version="3")

Verdict = Literal["pass", "fail", "inconclusive"]


def make_spec(
    model: ModelSource = V2,
    *,
    replicas: int = 4,
    traffic: Mapping[str, Any] | None = None,
    autoscaling: Mapping[str, Any] | None = None,
    **rollout: Any,
) -> ModelDeploymentSpec:
    """A spec with two steps of five minutes over four pods; `rollout` overrides spec.rollout fields."""
    fields: dict[str, Any] = {
        "model": model.model_dump(by_alias=True, exclude_none=True),
        "replicas": replicas,
        "traffic": dict(traffic or {}),
        "rollout": {"steps": [10, 50], "stepDuration": "5m", "progressDeadline": "30m", **rollout},
    }
    if autoscaling is not None:
        fields["autoscaling"] = dict(autoscaling)
    return ModelDeploymentSpec.model_validate(fields)


def stable_status(model: ModelSource = V1) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stable=StableModel(
            uri=model.uri,
            format=model.format,
            version=model.version,
            digest=model.sha256,
            since=T0 - timedelta(hours=1),
        )
    )


def checks(verdict: Verdict) -> tuple[CheckResult, ...]:
    samples = CheckResult(
        name="samples", verdict="pass" if verdict != "inconclusive" else "inconclusive", message="n"
    )
    return (
        samples,
        CheckResult(name="errorRate", verdict=verdict, value=0.5, message=f"errorRate {verdict}"),
    )


def analysed(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime, verdict: Verdict
) -> StepAnalysis | None:
    """The analysis of the window due now, as the I/O layer would hand it over; None when none is due."""
    window = analysis_window(spec, status, now)
    return None if window is None else StepAnalysis(window, checks(verdict))


def step(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    now: datetime,
    verdict: Verdict | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Decision:
    """One reconcile: the due window analysed with `verdict` (if any), then the machine."""
    analysis = None if verdict is None else analysed(spec, status, now, verdict)
    return decide(spec, status, now, analysis=analysis, annotations=annotations)


def roundtrip(status: ModelDeploymentStatus) -> ModelDeploymentStatus:
    """The status as the API server stores it and a restarted operator reads it back."""
    return ModelDeploymentStatus.model_validate_json(status.model_dump_json(by_alias=True, exclude_none=True))


# Analysis windows as the Prometheus layer answers them.
WINDOW = timedelta(minutes=5)
CANARY = 'model="iris",namespace="ml",variant="canary"'
STABLE = 'model="iris",namespace="ml",variant="stable"'
REQUESTS = 'endpoint=~"infer|predict"'


@dataclass(frozen=True)
class Point:
    """A series as the Prometheus layer decodes it."""

    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def one(value: float) -> list[Point]:
    return [Point(value)]


def by_name(checks: list[CheckResult]) -> dict[str, CheckResult]:
    return {check.name: check for check in checks}


def verdicts(checks: list[CheckResult]) -> dict[str, str]:
    return {check.name: check.verdict for check in checks}
