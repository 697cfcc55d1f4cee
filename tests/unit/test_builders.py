"""The child objects of a ModelDeployment, as golden YAML and as the properties that matter.

Each folder under tests/data/builders/ holds `input.yaml` (a ModelDeployment as the API
server returns it), optionally `settings.yaml` (OperatorSettings fields), and
`output.yaml`, the children `build_children` returns. After an intended change, rewrite
the outputs with

    MODELDEPLOY_REGENERATE_GOLDEN=1 pytest tests/unit/test_builders.py

and review the diff before committing it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy_operator.builders import (
    LABEL_VARIANT,
    MODEL_REVISION_ANNOTATION,
    Manifest,
    Owner,
    build_children,
    build_deployment,
    build_service,
    label_selector,
    model_revision,
)
from modeldeploy_operator.settings import ENV_PREFIX as OPERATOR_ENV_PREFIX
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import RESERVED_ENV_PREFIX, ModelDeploymentSpec, ModelSource
from modeldeploy_serving.settings import ENV_PREFIX as SERVER_ENV_PREFIX
from modeldeploy_serving.settings import ServerSettings

GOLDEN = Path(__file__).parents[1] / "data" / "builders"
CASES = sorted(path.name for path in GOLDEN.iterdir() if path.is_dir())
REGENERATE = os.environ.get("MODELDEPLOY_REGENERATE_GOLDEN") == "1"
OWNER = Owner("modeldeploy.io/v1alpha1", "ModelDeployment", "iris", "ml", "uid-1")


@pytest.fixture(autouse=True)
def _no_operator_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come from the test alone, not from the environment the tests run in."""
    for name in os.environ:
        if name.startswith(OPERATOR_ENV_PREFIX):
            monkeypatch.delenv(name)
    yield


def load_case(case: str) -> tuple[Owner, ModelDeploymentSpec, OperatorSettings]:
    body = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    settings_file = GOLDEN / case / "settings.yaml"
    overrides = yaml.safe_load(settings_file.read_text()) if settings_file.exists() else {}
    return (
        Owner.from_body(body),
        ModelDeploymentSpec.model_validate(body["spec"]),
        OperatorSettings(**overrides),
    )


def spec_with(**fields: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": "s3://models/iris/model.skops"}, **fields})


def server_container(deployment: Manifest) -> Manifest:
    container: Manifest = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def fetch_container(deployment: Manifest) -> Manifest:
    container: Manifest = deployment["spec"]["template"]["spec"]["initContainers"][0]
    return container


def env_of(container: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


@pytest.mark.parametrize("case", CASES)
def test_children_match_golden_output(case: str) -> None:
    owner, spec, settings = load_case(case)
    rendered = yaml.safe_dump_all(build_children(owner, spec, settings), sort_keys=False)
    output = GOLDEN / case / "output.yaml"
    if REGENERATE:
        output.write_text(rendered)
    assert output.read_text() == rendered, f"run with MODELDEPLOY_REGENERATE_GOLDEN=1 to accept ({case})"


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 4


def test_children_are_owned_and_labelled() -> None:
    children = build_children(OWNER, spec_with(), OperatorSettings())
    assert [(child["kind"], child["metadata"]["name"]) for child in children] == [
        ("Deployment", "iris-stable"),
        ("Service", "iris"),
        ("Service", "iris-stable"),
        ("Service", "iris-canary"),
    ]
    for child in children:
        metadata = child["metadata"]
        assert metadata["namespace"] == "ml"
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "modeldeploy.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "iris",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert metadata["labels"]["app.kubernetes.io/name"] == "modeldeploy-server"
        assert metadata["labels"]["app.kubernetes.io/instance"] == "iris"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"


def test_entry_service_selects_both_variants_and_variant_services_one() -> None:
    assert LABEL_VARIANT not in build_service(OWNER)["spec"]["selector"]
    assert build_service(OWNER, "stable")["spec"]["selector"][LABEL_VARIANT] == "stable"
    assert build_service(OWNER, "canary")["spec"]["selector"][LABEL_VARIANT] == "canary"
    assert build_service(OWNER)["spec"]["ports"][0]["targetPort"] == "http"


def test_deployment_selector_matches_its_pod_labels() -> None:
    deployment = build_deployment(OWNER, spec_with(), OperatorSettings())
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert set(label_selector("iris").split(",")) >= {
        "app.kubernetes.io/instance=iris",
        "app.kubernetes.io/name=modeldeploy-server",
    }


def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler() -> None:
    spec = spec_with(replicas=3, autoscaling={"maxReplicas": 5})
    assert "replicas" not in build_deployment(OWNER, spec, OperatorSettings())["spec"]
    assert build_deployment(OWNER, spec_with(replicas=3), OperatorSettings())["spec"]["replicas"] == 3
    hpa = [
        child for child in build_children(OWNER, spec, OperatorSettings()) if child["kind"] != "Deployment"
    ][-1]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-stable"


def test_canary_variant_serves_the_given_model_with_the_given_replicas() -> None:
    spec = spec_with(autoscaling={"maxReplicas": 5})
    canary_model = ModelSource(uri="models:/iris/4", version="4")
    deployment = build_deployment(
        OWNER, spec, OperatorSettings(), variant="canary", model=canary_model, replicas=1
    )
    assert deployment["metadata"]["name"] == "iris-canary"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"][LABEL_VARIANT] == "canary"
    env = env_of(server_container(deployment))
    assert env[RESERVED_ENV_PREFIX + "VARIANT"] == "canary"
    assert env[RESERVED_ENV_PREFIX + "MODEL_VERSION"] == "4"
    assert fetch_container(deployment)["args"][:3] == ["fetch", "--uri", "models:/iris/4"]


def test_a_new_model_changes_the_pod_template_annotation() -> None:
    first = build_deployment(OWNER, spec_with(), OperatorSettings())
    second = build_deployment(
        OWNER, spec_with(model={"uri": "s3://models/iris/v2.skops"}), OperatorSettings()
    )
    annotation = MODEL_REVISION_ANNOTATION
    assert (
        first["spec"]["template"]["metadata"]["annotations"][annotation]
        != (second["spec"]["template"]["metadata"]["annotations"][annotation])
    )
    assert model_revision(ModelSource(uri="/m")) == model_revision(ModelSource(uri="/m"))
    assert model_revision(ModelSource(uri="/m")) != model_revision(ModelSource(uri="/m", version="2"))


def test_every_server_variable_is_a_server_setting() -> None:
    """The contract with modeldeploy_serving: each variable the operator sets is one the server reads."""
    spec = spec_with(
        model={"uri": "/m.skops", "sha256": "a" * 64}, server={"env": [{"name": "X", "value": "1"}]}
    )
    env = env_of(server_container(build_deployment(OWNER, spec, OperatorSettings())))
    assert RESERVED_ENV_PREFIX == SERVER_ENV_PREFIX
    ours = {
        name.removeprefix(SERVER_ENV_PREFIX).lower() for name in env if name.startswith(SERVER_ENV_PREFIX)
    }
    assert ours <= set(ServerSettings.model_fields)
    assert {"model_name", "model_version", "variant", "namespace", "model_dir", "model_sha256"} <= ours
    assert env["X"] == "1"


def test_server_settings_accept_the_values_the_operator_sets() -> None:
    spec = spec_with(model={"uri": "/m.skops", "sha256": "a" * 64}, server={"batching": {"enabled": True}})
    env = env_of(server_container(build_deployment(OWNER, spec, OperatorSettings(allow_pickle=True))))
    values = {
        name.removeprefix(SERVER_ENV_PREFIX).lower(): value
        for name, value in env.items()
        if isinstance(value, str) and name.startswith(SERVER_ENV_PREFIX)
    }
    settings = ServerSettings(**values)
    assert settings.model_name == "iris"
    assert settings.batching_enabled is True
    assert settings.allow_pickle is True


def test_no_digest_variable_without_a_pin() -> None:
    env = env_of(server_container(build_deployment(OWNER, spec_with(), OperatorSettings())))
    assert RESERVED_ENV_PREFIX + "MODEL_SHA256" not in env
    assert "--sha256" not in fetch_container(build_deployment(OWNER, spec_with(), OperatorSettings()))["args"]


def test_pod_security_is_restricted() -> None:
    pod = build_deployment(OWNER, spec_with(), OperatorSettings())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_probes_port_and_scrape_annotations() -> None:
    deployment = build_deployment(OWNER, spec_with(), OperatorSettings())
    container = server_container(deployment)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # A slow start (a busy node, heavy imports) is not a dead server: liveness waits for the
    # start-up probe, which allows minutes where liveness allows about 30 s.
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    liveness = container["livenessProbe"]
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed >= 120 > liveness["periodSeconds"] * liveness["failureThreshold"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_image_comes_from_the_spec_or_the_operator_default() -> None:
    settings = OperatorSettings(server_image="default:1")
    assert server_container(build_deployment(OWNER, spec_with(), settings))["image"] == "default:1"
    spec = spec_with(server={"image": "custom:2"})
    deployment = build_deployment(OWNER, spec, settings)
    assert server_container(deployment)["image"] == fetch_container(deployment)["image"] == "custom:2"


def test_builders_share_no_mutable_state() -> None:
    spec = spec_with(tolerations=[{"key": "a", "operator": "Exists"}], affinity={"nodeAffinity": {}})
    first = build_deployment(OWNER, spec, OperatorSettings())
    first["spec"]["template"]["spec"]["tolerations"][0]["key"] = "changed"
    first["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = "/changed"
    second = build_deployment(OWNER, spec, OperatorSettings())
    assert second["spec"]["template"]["spec"]["tolerations"][0]["key"] == "a"
    assert second["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] == "/tmp"
    assert spec.tolerations[0]["key"] == "a"


def test_owner_from_body() -> None:
    body = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 3},
    }
    assert Owner.from_body(body) == OWNER


def test_a_terminating_server_pod_drains_once_and_within_its_grace_period() -> None:
    deployment = next(
        child
        for child in build_children(OWNER, spec_with(), OperatorSettings())
        if child["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = env_of(container)
    server = ServerSettings(
        drain_delay_seconds=float(env["MODELDEPLOY_SERVER_DRAIN_DELAY_SECONDS"]),
        graceful_shutdown_seconds=float(env["MODELDEPLOY_SERVER_GRACEFUL_SHUTDOWN_SECONDS"]),
    )
    # The preStop sleep covers the endpoint's removal; after it, a short drain tells keep-alive
    # clients still routed here to leave (tests/serving/test_server_lifecycle.py shows why).
    assert sleep >= 2
    assert 0 < server.drain_delay_seconds < sleep
    assert pod["terminationGracePeriodSeconds"] > (
        sleep + server.drain_delay_seconds + server.graceful_shutdown_seconds
    )
