"""Traffic splitting: replica counts that approximate a weight, and the route objects of exact providers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeldeploy_operator.builders import LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_VARIANT, Owner
from modeldeploy_operator.spec import GatewayParentRef, GatewayTraffic, IstioTraffic
from modeldeploy_operator.traffic import (
    ReplicaSplit,
    build_http_route,
    build_virtual_service,
    canary_replicas_beside,
    split_replicas,
)

OWNER = Owner(
    api_version="modeldeploy.io/v1alpha1", kind="ModelDeployment", name="iris", namespace="ml", uid="u-1"
)


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [
        (10, 10, ReplicaSplit(stable=9, canary=1, effective_weight=10.0)),
        (10, 25, ReplicaSplit(stable=7, canary=3, effective_weight=30.0)),  # 2.5 pods round half up
        (4, 10, ReplicaSplit(stable=3, canary=1, effective_weight=25.0)),  # at least one canary pod
        (4, 99, ReplicaSplit(stable=1, canary=3, effective_weight=75.0)),  # at least one stable pod
        (1, 10, ReplicaSplit(stable=1, canary=1, effective_weight=50.0)),  # one pod grows to two
        (0, 50, ReplicaSplit(stable=1, canary=1, effective_weight=50.0)),
        (3, 0, ReplicaSplit(stable=3, canary=0, effective_weight=0.0)),
        (3, 100, ReplicaSplit(stable=0, canary=3, effective_weight=100.0)),
    ],
)
def test_split_replicas(total: int, weight: int, expected: ReplicaSplit) -> None:
    assert split_replicas(total, weight) == expected


@given(total=st.integers(0, 200), weight=st.integers(1, 99))
def test_a_rollout_split_keeps_both_variants_and_reports_the_weight_it_reaches(
    total: int, weight: int
) -> None:
    split = split_replicas(total, weight)
    assert split.canary >= 1
    assert split.stable >= 1
    assert split.stable + split.canary == max(total, 2)
    assert split.effective_weight == 100 * split.canary / (split.stable + split.canary)
    # No other count of canary pods comes closer to the weight (within the one-pod minimums).
    pods = split.stable + split.canary
    best = min(range(1, pods), key=lambda canary: (abs(100 * canary / pods - weight), -canary))
    assert abs(split.effective_weight - weight) == abs(100 * best / pods - weight)


@pytest.mark.parametrize("weight", [-1, 101])
def test_a_weight_is_a_percentage(weight: int) -> None:
    with pytest.raises(ValueError, match="percentage"):
        split_replicas(4, weight)


def test_exact_providers_give_the_canary_its_share_of_the_stable_capacity() -> None:
    assert canary_replicas_beside(10, 25) == 3
    assert canary_replicas_beside(1, 10) == 1
    assert canary_replicas_beside(0, 10) == 1
    assert canary_replicas_beside(10, 0) == 0


def test_http_route() -> None:
    gateway = GatewayTraffic(
        parent_refs=[
            GatewayParentRef(name="public", namespace="gateways", section_name="https"),
            GatewayParentRef(name="internal"),
        ],
        hostnames=["iris.example.com"],
    )
    route = build_http_route(OWNER, gateway, 25)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "iris"
    assert route["metadata"]["namespace"] == "ml"
    assert route["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert route["metadata"]["labels"][LABEL_INSTANCE] == "iris"
    assert route["metadata"]["labels"][LABEL_MANAGED_BY] == "modeldeploy"
    assert LABEL_VARIANT not in route["metadata"]["labels"]
    assert route["spec"] == {
        "parentRefs": [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": "public",
                "namespace": "gateways",
                "sectionName": "https",
            },
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "internal"},
        ],
        "hostnames": ["iris.example.com"],
        "rules": [
            {
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": "iris-stable", "port": 80, "weight": 75},
                    {"group": "", "kind": "Service", "name": "iris-canary", "port": 80, "weight": 25},
                ]
            }
        ],
    }


def test_http_route_outside_a_rollout_keeps_the_canary_backend_at_zero() -> None:
    route = build_http_route(OWNER, GatewayTraffic(parent_refs=[GatewayParentRef(name="public")]), 0)
    assert "hostnames" not in route["spec"]
    weights = {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"iris-stable": 100, "iris-canary": 0}


def test_virtual_service() -> None:
    service = build_virtual_service(
        OWNER, IstioTraffic(gateways=["mesh", "edge/public"], hosts=["iris.example.com"]), 10
    )
    assert service["apiVersion"] == "networking.istio.io/v1"
    assert service["kind"] == "VirtualService"
    assert service["metadata"]["name"] == "iris"
    assert service["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert service["spec"] == {
        "hosts": ["iris.example.com"],
        "gateways": ["mesh", "edge/public"],
        "http": [
            {
                "name": "canary-split",
                "route": [
                    {"destination": {"host": "iris-stable", "port": {"number": 80}}, "weight": 90},
                    {"destination": {"host": "iris-canary", "port": {"number": 80}}, "weight": 10},
                ],
            }
        ],
    }


def test_virtual_service_defaults_to_the_entry_service() -> None:
    service = build_virtual_service(OWNER, IstioTraffic(), 0)
    assert service["spec"]["hosts"] == ["iris"]
    assert "gateways" not in service["spec"]


def test_virtual_service_mirrors_the_canary_share_instead_of_routing_it() -> None:
    service = build_virtual_service(OWNER, IstioTraffic(mirror=True), 25)
    assert service["spec"]["http"] == [
        {
            "name": "canary-split",
            "route": [{"destination": {"host": "iris-stable", "port": {"number": 80}}, "weight": 100}],
            "mirror": {"host": "iris-canary", "port": {"number": 80}},
            "mirrorPercentage": {"value": 25.0},
        }
    ]
    idle = build_virtual_service(OWNER, IstioTraffic(mirror=True), 0)
    assert "mirror" not in idle["spec"]["http"][0]


def test_route_weights_are_percentages() -> None:
    with pytest.raises(ValueError, match="percentage"):
        build_virtual_service(OWNER, IstioTraffic(mirror=True), 101)
