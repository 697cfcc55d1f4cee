"""Every example a user may copy is accepted: by the spec models, and by a real API server with the CRD."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_operator.spec import ModelDeployment
from operator_harness import REPO, install_crd_and_rbac

pytestmark = pytest.mark.cluster

EXAMPLES_DIR = REPO / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> None:
    install_crd_and_rbac(cluster)


def test_there_are_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {
        "iris.yaml",
        "mlflow-registry.yaml",
        "canary-gateway-api.yaml",
        "canary-custom-promql.yaml",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_is_accepted_by_the_api_server(
    cluster: LocalCluster, crd: None, namespace: str, example: Path
) -> None:
    output = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example))

    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    assert output.strip() == f"modeldeployment.modeldeploy.io/{name} created (server dry run)"


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_is_a_spec_the_operator_acts_on(example: Path) -> None:
    """The operator reports a spec its models refuse as InvalidSpec; no example may be one."""
    ModelDeployment.model_validate(yaml.safe_load(example.read_text()))


def test_every_example_is_described_in_the_readme() -> None:
    readme = (EXAMPLES_DIR / "README.md").read_text()
    undescribed = [path.name for path in EXAMPLES if f"`{path.name}`" not in readme]
    assert undescribed == []


def test_examples_have_distinct_names_so_they_can_share_a_namespace() -> None:
    names = [yaml.safe_load(path.read_text())["metadata"]["name"] for path in EXAMPLES]
    assert len(set(names)) == len(names)
