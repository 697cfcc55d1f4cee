"""The ModelDeployment models: defaults, aliases, and every validation the CRD also enforces."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modeldeploy_operator.spec import (
    MODEL_URI_PATTERN,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    parse_duration,
)

EXAMPLES = Path(__file__).parents[2] / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def spec_with(**fields: Any) -> dict[str, Any]:
    return {"model": {"uri": "s3://models/iris/model.skops"}, **fields}


def error_lines(error: ValidationError) -> list[str]:
    """Each error as "path: message", the path written as the API server writes it (a.b[0].c)."""
    lines = []
    for item in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        lines.append(f"{path.lstrip('.')}: {item['msg']}")
    return lines


def test_defaults_fill_in_everything_but_the_model() -> None:
    spec = ModelDeploymentSpec.model_validate(spec_with())
    assert spec.replicas == 1
    assert spec.model.format == "auto"
    assert spec.traffic.provider == "replicas"
    assert spec.rollout.steps == [10, 50]
    assert spec.rollout.analysis.on_no_data == "hold"
    assert spec.autoscaling is None
    assert spec.server.batching.enabled is False


def test_camel_case_aliases_round_trip() -> None:
    raw = spec_with(
        autoscaling={"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilizationPercentage": 60},
        podDisruptionBudget={"maxUnavailable": "25%"},
        nodeSelector={"gpu": "a100"},
    )
    spec = ModelDeploymentSpec.model_validate(raw)
    assert spec.autoscaling is not None
    assert spec.autoscaling.target_cpu_utilization_percentage == 60
    dumped = spec.model_dump(by_alias=True, exclude_defaults=True)
    assert dumped["autoscaling"]["targetCPUUtilizationPercentage"] == 60
    assert dumped["podDisruptionBudget"] == {"maxUnavailable": "25%"}
    assert ModelDeploymentSpec.model_validate(spec.model_dump(by_alias=True)) == spec


def test_snake_case_names_are_accepted_in_python() -> None:
    spec = ModelDeploymentSpec(model={"uri": "/models/iris.skops"}, node_selector={"a": "b"})  # type: ignore[arg-type]
    assert spec.node_selector == {"a": "b"}


def test_every_field_has_a_description() -> None:
    def walk(schema: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, child in schema.get("properties", {}).items():
            if not child.get("description"):
                missing.append(f"{path}.{name}")
        return missing

    for model in (ModelDeploymentSpec, ModelDeploymentStatus):
        schema = model.model_json_schema(by_alias=True)
        missing = walk(schema, model.__name__)
        for name, definition in schema.get("$defs", {}).items():
            missing += walk(definition, name)
        assert missing == []


@pytest.mark.parametrize(
    "uri",
    [
        "/opt/models/iris.skops",
        "file:///opt/models/iris.skops",
        "pvc://model-store/iris/1/model.skops",
        "pvc://model-store",
        "http://models.example.com/iris.skops",
        "https://models.example.com:8443/iris/model.skops?version=2",
        "s3://my-bucket/iris/model.skops",
        "gs://my_bucket/iris/",
        "models:/iris/3",
        "models:/iris@champion",
        "runs:/0123abcd/model",
    ],
)
def test_model_uri_accepts_every_documented_scheme(uri: str) -> None:
    assert ModelDeploymentSpec.model_validate(spec_with(model={"uri": uri})).model.uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "models/iris.skops",
        "ftp://models.example.com/iris.skops",
        "file://relative/path",
        "pvc://Bad_Claim/x",
        "s3://",
        "models:/iris",
        "runs:/abc",
        "https://models.example.com/with space",
        "hdfs://namenode/iris",
    ],
)
def test_model_uri_rejects_other_forms(uri: str) -> None:
    with pytest.raises(ValidationError, match=r"model\.uri"):
        ModelDeploymentSpec.model_validate(spec_with(model={"uri": uri}))


def test_model_uri_pattern_needs_no_escaping_inside_cel() -> None:
    # The CRD embeds the pattern in a double-quoted CEL string literal.
    assert '"' not in MODEL_URI_PATTERN
    assert "\\" not in MODEL_URI_PATTERN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("2m0.5s", timedelta(minutes=2, milliseconds=500)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-5m", "1d", "m5"])
def test_parse_duration_rejects_non_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_steps_must_increase_strictly() -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"steps": [10, 10]}))
    assert ModelDeploymentSpec.model_validate(spec_with(rollout={"steps": [5]})).rollout.steps == [5]


def test_on_no_data_never_passes() -> None:
    with pytest.raises(ValidationError, match="onNoData"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"onNoData": "pass"}}))


def test_latency_check_needs_a_bound_only_when_enabled() -> None:
    unbounded = {"maxIncreaseRatio": None}
    with pytest.raises(ValidationError, match="maxSeconds or maxIncreaseRatio"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"latency": unbounded}}))
    disabled = {"enabled": False, "maxIncreaseRatio": None}
    ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"latency": disabled}}))


def test_custom_check_names_are_unique_and_bounds_ordered() -> None:
    check = {"name": "qps", "query": "sum(rate(x[1m]))", "min": 1}
    with pytest.raises(ValidationError, match="unique"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"custom": [check, check]}}))
    inverted = {**check, "min": 2, "max": 1}
    with pytest.raises(ValidationError, match="less than or equal"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"custom": [inverted]}}))


@pytest.mark.parametrize("name", ["samples", "latency"])
def test_a_custom_check_may_not_take_a_built_in_name(name: str) -> None:
    check = {"name": name, "query": "sum(rate(x[1m]))", "max": 1}
    with pytest.raises(ValidationError, match="name of a built-in check"):
        ModelDeploymentSpec.model_validate(spec_with(rollout={"analysis": {"custom": [check]}}))


def test_env_names_must_be_unique() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    with pytest.raises(ValidationError, match="unique"):
        ModelDeploymentSpec.model_validate(spec_with(server={"env": env}))


def test_gpu_and_quantities_pass_through() -> None:
    resources = {"limits": {"nvidia.com/gpu": 1, "memory": "2Gi", "cpu": "1.5"}, "requests": {"cpu": "500m"}}
    spec = ModelDeploymentSpec.model_validate(spec_with(server={"resources": resources}))
    assert spec.server.resources.limits == {"nvidia.com/gpu": 1, "memory": "2Gi", "cpu": "1.5"}


def test_status_reads_past_keys_of_other_controllers() -> None:
    status = ModelDeploymentStatus.model_validate({"phase": "Ready", "kopf": {"progress": {}}})
    assert status.phase == "Ready"


def test_example_is_valid() -> None:
    manifest = yaml.safe_load((EXAMPLES / "iris.yaml").read_text())
    ModelDeployment.model_validate(manifest)


def test_there_are_at_least_fifteen_invalid_examples() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_example_is_rejected_naming_the_field(path: Path) -> None:
    text = path.read_text()
    expect = re.match(r"# expect: (.+)\n", text)
    assert expect is not None, "the first line must say what the error message must contain"
    with pytest.raises(ValidationError) as caught:
        ModelDeployment.model_validate(yaml.safe_load(text))
    lines = error_lines(caught.value)
    assert any(expect[1] in line for line in lines), lines


def test_disruption_budget_takes_a_count_or_a_percentage() -> None:
    for value in (0, 2, "50%"):
        budget = ModelDeploymentSpec.model_validate(spec_with(podDisruptionBudget={"minAvailable": value}))
        assert budget.pod_disruption_budget is not None
        assert budget.pod_disruption_budget.min_available == value
    for bad in (-1, "half", "50"):
        with pytest.raises(ValidationError, match="minAvailable"):
            ModelDeploymentSpec.model_validate(spec_with(podDisruptionBudget={"minAvailable": bad}))
