"""The gateway-api and istio providers: route objects carry the canary's weight at every step.

The real Gateway API and Istio CRDs are installed from their published Go modules, so the
API server validates the route objects the operator writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from crds import crd_documents, go_module_dir, install_crds
from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_operator.reconcile import ROLLOUT_TICK_SECONDS
from operator_harness import OperatorProcess, steered_rollout_manifest

pytestmark = pytest.mark.cluster

GATEWAY_API = (
    "sigs.k8s.io/gateway-api",
    "v1.6.3",
    "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
)
ISTIO_API = ("istio.io/api", "v1.32.0", "kubernetes/customresourcedefinitions.gen.yaml")


@pytest.fixture(scope="session")
def route_crds(cluster: LocalCluster) -> None:
    """Installed for the rest of the session: the operator watches route objects once they exist."""
    documents = []
    for module, version, path in (GATEWAY_API, ISTIO_API):
        documents += crd_documents(go_module_dir(module, version) / path, {"HTTPRoute", "VirtualService"})
    assert len(documents) == 2
    install_crds(cluster, documents)


def http_route_weights(route: dict[str, Any]) -> dict[str, int]:
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def virtual_service_weights(service: dict[str, Any]) -> dict[str, int]:
    return {entry["destination"]["host"]: entry["weight"] for entry in service["spec"]["http"][0]["route"]}


@pytest.mark.parametrize(
    ("traffic", "resource", "weights"),
    [
        (
            {"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}},
            "httproute",
            http_route_weights,
        ),
        ({"provider": "istio", "istio": {"gateways": ["public"]}}, "virtualservice", virtual_service_weights),
    ],
    ids=["gateway-api", "istio"],
)
def test_route_weights_follow_each_step(
    cluster: LocalCluster,
    operator: OperatorProcess,
    route_crds: None,
    namespace: str,
    traffic: dict[str, Any],
    resource: str,
    weights: Callable[[dict[str, Any]], dict[str, int]],
) -> None:
    def route_weights() -> dict[str, int]:
        found = cluster.kubectl("get", resource, "iris", "-n", namespace, "-o", "json", "--ignore-not-found")
        return weights(json.loads(found)) if found.strip() else {}

    def expect(stable: int, canary: int, what: str) -> None:
        wanted = {"iris-stable": stable, "iris-canary": canary}
        wait_until(lambda: route_weights() == wanted, f"{what}: {wanted}, last seen {route_weights()}")

    def promote(value: str) -> None:
        cluster.kubectl(
            "annotate", "--overwrite", "md/iris", "-n", namespace, f"modeldeploy.io/promote={value}"
        )

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v1", traffic))
    cluster.kubectl("wait", "--for=condition=Ready", "md/iris", "-n", namespace, "--timeout=90s")
    expect(100, 0, "before a rollout")

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v2", traffic))
    expect(75, 25, "first step")
    canary = json.loads(cluster.kubectl("get", "deployment", "iris-canary", "-n", namespace, "-o", "json"))
    # With a router doing the split, the canary needs only the pods for its share.
    assert canary["spec"]["replicas"] >= 1
    promote("step:1")
    expect(50, 50, "second step")
    promote("full:1")
    expect(100, 0, "after promotion")
    # The children change first, then the status is written: wait for it rather than race it.
    wait_until(
        lambda: json.loads(cluster.kubectl("get", "md", "iris", "-n", namespace, "-o", "json"))["status"]
        .get("stable", {})
        .get("version")
        == "v2",
        "the promoted model to be the stable one",
    )


def test_deleting_a_model_deployment_mid_rollout_leaves_nothing_behind(
    cluster: LocalCluster, operator: OperatorProcess, route_crds: None, namespace: str
) -> None:
    traffic = {"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v1", traffic))
    cluster.kubectl("wait", "--for=condition=Ready", "md/iris", "-n", namespace, "--timeout=90s")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=steered_rollout_manifest("v2", traffic))
    wait_until(
        lambda: bool(
            cluster.kubectl(
                "get", "pods", "-n", namespace, "-l", "modeldeploy.io/variant=canary", "-o", "name"
            )
        ),
        "the canary's pods",
    )

    cluster.kubectl("delete", "md", "iris", "-n", namespace, "--wait=true")

    def left() -> str:
        return cluster.kubectl(
            "get", "deployments,services,pods,httproutes,poddisruptionbudgets", "-n", namespace, "-o", "name"
        ).strip()

    wait_until(lambda: left() == "", "everything the ModelDeployment owned to go")
    # Nothing comes back: the rollout's pending wake-up (every 5 s) finds the object gone.
    time.sleep(ROLLOUT_TICK_SECONDS + 2)
    assert left() == "", left()
