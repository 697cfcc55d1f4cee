"""Every child a ModelDeployment should own right now, from its spec and the rollout's child plan."""

from __future__ import annotations

from modeldeploy_operator.builders import Manifest, Owner, build_children, build_deployment
from modeldeploy_operator.ordering import ChildPlan
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import IstioTraffic, ModelDeploymentSpec
from modeldeploy_operator.traffic import build_http_route, build_virtual_service


def desired_children(
    owner: Owner, spec: ModelDeploymentSpec, settings: OperatorSettings, place: ChildPlan | None
) -> list[Manifest]:
    """The children to apply; an owned child missing from this list is to be deleted, except a
    canary Deployment the plan keeps (`place.keep_canary`).

    Before a stable model exists (`place` is None) the spec's model is deployed as stable.
    Afterwards the stable Deployment serves the plan's stable model, a canary Deployment is
    applied while a rollout runs, and the traffic provider's route object carries the weight.
    """
    children = build_children(owner, spec, settings)
    canary_weight = 0 if place is None else place.route_weight
    if spec.traffic.provider == "gateway-api" and spec.traffic.gateway is not None:
        children.append(build_http_route(owner, spec.traffic.gateway, canary_weight))
    elif spec.traffic.provider == "istio":
        children.append(build_virtual_service(owner, spec.traffic.istio or IstioTraffic(), canary_weight))
    if place is None:
        return children
    stable = build_deployment(
        owner, spec, settings, variant="stable", model=place.stable_model, replicas=place.stable_replicas
    )
    children = [stable if child["kind"] == "Deployment" else child for child in children]
    if place.canary_model is not None:
        children.append(
            build_deployment(
                owner,
                spec,
                settings,
                variant="canary",
                model=place.canary_model,
                replicas=place.canary_replicas,
            )
        )
    return children
