"""Pure traffic splitting between the stable and the canary model, per provider.

The `replicas` provider has no router: the entry Service spreads requests evenly over
all ready server pods, so the canary's share is its share of the pods, and only some
weights can be reached. The `gateway-api` and `istio` providers route exact weights
through an object built here as a plain dict, owned by the ModelDeployment like
every other child.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .builders import SERVICE_PORT, Manifest, Owner, Variant, owned_metadata, service_name
from .spec import GatewayTraffic, IstioTraffic

__all__ = [
    "HTTP_ROUTE_API_VERSION",
    "VIRTUAL_SERVICE_API_VERSION",
    "ReplicaSplit",
    "build_http_route",
    "build_virtual_service",
    "canary_replicas_beside",
    "split_replicas",
    "stored_canary_weight",
]

HTTP_ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
VIRTUAL_SERVICE_API_VERSION = "networking.istio.io/v1"


@dataclass(frozen=True)
class ReplicaSplit:
    """Pod counts that approximate a weight with the replicas provider."""

    stable: int
    canary: int
    effective_weight: float
    """The canary's share of the pods, in percent: the share of requests it actually receives."""


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def split_replicas(total: int, weight: int) -> ReplicaSplit:
    """Divide `total` pods so the canary's share comes as close to `weight` percent as pods allow.

    Weight 0 is no rollout and 100 is the canary alone. In between, both variants keep at least
    one pod, because a canary without pods cannot be judged and a stable model without pods
    cannot take the traffic back; so fewer than two pods grow to two.
    """
    if not 0 <= weight <= 100:
        raise ValueError(f"a weight is a percentage from 0 to 100, not {weight}")
    if weight == 0:
        return ReplicaSplit(stable=total, canary=0, effective_weight=0.0)
    if weight == 100:
        pods = max(total, 1)
        return ReplicaSplit(stable=0, canary=pods, effective_weight=100.0)
    pods = max(total, 2)
    canary = min(max(_round_half_up(pods * weight / 100), 1), pods - 1)
    return ReplicaSplit(stable=pods - canary, canary=canary, effective_weight=100 * canary / pods)


def canary_replicas_beside(stable: int, weight: int) -> int:
    """Canary pods for a provider that routes exact weights while the stable pods all stay.

    The canary gets enough pods to carry its share of the stable model's capacity (at least one),
    so raising its weight does not overload it and a rollback needs no scaling.
    """
    if weight <= 0:
        return 0
    return max(1, math.ceil(stable * weight / 100))


def _backend_weights(canary_weight: int) -> list[tuple[Variant, int]]:
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"a weight is a percentage from 0 to 100, not {canary_weight}")
    return [("stable", 100 - canary_weight), ("canary", canary_weight)]


def build_http_route(owner: Owner, gateway: GatewayTraffic, canary_weight: int) -> Manifest:
    """The Gateway API HTTPRoute NAME sending `canary_weight` percent to NAME-canary, the rest to NAME-stable.

    Both backends stay listed at weight 0 too, so starting a rollout changes numbers, not structure.
    """
    parent_refs = []
    for parent in gateway.parent_refs:
        ref: Manifest = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent.name}
        if parent.namespace is not None:
            ref["namespace"] = parent.namespace
        if parent.section_name is not None:
            ref["sectionName"] = parent.section_name
        parent_refs.append(ref)
    route_spec: Manifest = {"parentRefs": parent_refs}
    if gateway.hostnames:
        route_spec["hostnames"] = list(gateway.hostnames)
    route_spec["rules"] = [
        {
            "backendRefs": [
                {
                    "group": "",
                    "kind": "Service",
                    "name": service_name(owner.name, variant),
                    "port": SERVICE_PORT,
                    "weight": weight,
                }
                for variant, weight in _backend_weights(canary_weight)
            ]
        }
    ]
    return {
        "apiVersion": HTTP_ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": owned_metadata(owner, owner.name, None),
        "spec": route_spec,
    }


def build_virtual_service(owner: Owner, istio: IstioTraffic, canary_weight: int) -> Manifest:
    """The Istio VirtualService NAME splitting requests between NAME-stable and NAME-canary.

    With `istio.mirror`, every request goes to the stable model and a copy of `canary_weight`
    percent of them to the canary, whose answers Istio discards.
    """

    def destination(variant: Variant) -> Manifest:
        return {"host": service_name(owner.name, variant), "port": {"number": SERVICE_PORT}}

    weights = _backend_weights(canary_weight)
    http: Manifest
    if istio.mirror:
        http = {"route": [{"destination": destination("stable"), "weight": 100}]}
        if canary_weight > 0:
            http["mirror"] = destination("canary")
            http["mirrorPercentage"] = {"value": float(canary_weight)}
    else:
        http = {
            "route": [{"destination": destination(variant), "weight": weight} for variant, weight in weights]
        }
    service_spec: Manifest = {"hosts": list(istio.hosts) or [service_name(owner.name)]}
    if istio.gateways:
        service_spec["gateways"] = list(istio.gateways)
    service_spec["http"] = [{"name": "canary-split", **http}]
    return {
        "apiVersion": VIRTUAL_SERVICE_API_VERSION,
        "kind": "VirtualService",
        "metadata": owned_metadata(owner, owner.name, None),
        "spec": service_spec,
    }


def stored_canary_weight(route: Manifest, canary_service: str) -> int:
    """The weight (or mirrored percentage) a stored HTTPRoute or VirtualService gives `canary_service`.

    The inverse of the builders above, for objects edited by hand too: every rule is read, and the
    largest share found counts, so a canary still reachable anywhere is never taken for drained.
    """
    spec = route.get("spec") or {}
    weights = [0]
    for rule in spec.get("rules") or []:
        for backend in rule.get("backendRefs") or []:
            if backend.get("name") == canary_service:
                weights.append(int(backend.get("weight", 1)))
    for http in spec.get("http") or []:
        for destination in http.get("route") or []:
            if (destination.get("destination") or {}).get("host") == canary_service:
                weights.append(int(destination.get("weight", 100)))
        if (http.get("mirror") or {}).get("host") == canary_service:
            weights.append(math.ceil(float((http.get("mirrorPercentage") or {}).get("value", 100))))
    return max(weights)
