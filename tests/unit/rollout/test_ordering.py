"""The safe order of a rollout's changes: traffic only to ready canary pods, capacity before it is
taken away, the canary kept until the stable Deployment and the router no longer need it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from rollout_support import T0, V1, V2, make_spec, stable_status, step

from modeldeploy_operator.builders import MANAGER_NAME, MODEL_REVISION_ANNOTATION, Owner, model_revision
from modeldeploy_operator.ordering import (
    ChildPlan,
    Observed,
    RouteState,
    VariantPods,
    last_applied_at,
    observe_deployment,
    plan_children,
)
from modeldeploy_operator.rollout import placement
from modeldeploy_operator.spec import (
    GatewayTraffic,
    IstioTraffic,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelSource,
)
from modeldeploy_operator.traffic import build_http_route, build_virtual_service, stored_canary_weight

SETTLE = timedelta(seconds=5)
LIMIT = timedelta(minutes=10)
GATEWAY = {"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}}


def pods(model: ModelSource, ready: int, replicas: int | None = None) -> VariantPods:
    return VariantPods(model_revision(model), ready if replicas is None else replicas, ready)


def plan(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    seconds: float = 0,
    retiring_since: Any = "as the status says",
) -> ChildPlan:
    target = placement(spec, status)
    assert target is not None
    if retiring_since == "as the status says":
        retiring_since = status.history[0].finished_at if status.history else None
    return plan_children(
        spec,
        target,
        observed,
        T0 + timedelta(seconds=seconds),
        retiring_since=retiring_since,
        route_settle=SETTLE,
        retire_limit=LIMIT,
        rejected_revision=status.rejected.revision if status.rejected is not None else None,
    )


def running(spec: ModelDeploymentSpec, steps: int = 0) -> ModelDeploymentStatus:
    """The status of a rollout of V2 over the stable V1, `steps` steps in."""
    status = step(spec, stable_status(), T0).status
    for number in range(steps):
        status = step(spec, status, T0 + timedelta(minutes=5 * (number + 1)), "pass").status
    return status


def promoted(spec: ModelDeploymentSpec) -> ModelDeploymentStatus:
    status = running(spec, len(spec.rollout.steps))
    assert status.canary is None and status.stable is not None and status.stable.source() == V2
    return status


def rolled_back(spec: ModelDeploymentSpec) -> ModelDeploymentStatus:
    status = step(spec, running(spec), T0 + timedelta(minutes=5), "fail").status
    assert status.canary is None and status.rejected is not None
    return status


# During a rollout: traffic follows the canary's ready pods.


def test_a_router_sends_nothing_to_a_canary_without_ready_pods() -> None:
    spec = make_spec(traffic=GATEWAY)
    found = plan(spec, running(spec), Observed(stable=pods(V1, 4), canary=None))
    assert (found.canary_model, found.canary_replicas) == (V2, 1)  # its pods are on their way
    assert (found.route_weight, found.effective_weight, found.stable_replicas) == (0, 0.0, 4)


def test_a_router_weight_grows_with_the_share_of_ready_canary_pods() -> None:
    spec = make_spec(traffic=GATEWAY, steps=[50])  # 4 stable pods beside 2 canary pods
    status = running(spec)
    assert plan(spec, status, Observed(pods(V1, 4), pods(V2, 0, 2))).route_weight == 0
    half = plan(spec, status, Observed(pods(V1, 4), pods(V2, 1, 2)))
    assert (half.route_weight, half.effective_weight) == (25, 25.0)
    full = plan(spec, status, Observed(pods(V1, 4), pods(V2, 2, 2)))
    assert (full.route_weight, full.effective_weight) == (50, 50.0)
    assert full.settled


def test_pods_of_another_canary_model_carry_no_traffic() -> None:
    spec = make_spec(traffic=GATEWAY)
    assert plan(spec, running(spec), Observed(pods(V1, 4), pods(V1, 1))).route_weight == 0


def test_with_replicas_the_stable_deployment_shrinks_only_by_the_ready_canary_pods() -> None:
    spec = make_spec(steps=[25, 50])
    status = running(spec)
    waiting = plan(spec, status, Observed(pods(V1, 4), pods(V2, 0, 1)))
    assert (waiting.stable_replicas, waiting.canary_replicas, waiting.effective_weight) == (4, 1, 0.0)
    ready = plan(spec, status, Observed(pods(V1, 4), pods(V2, 1, 1)))
    # Stable still has 4 ready pods until it shrinks: the canary gets one pod in five meanwhile.
    assert (ready.stable_replicas, ready.effective_weight) == (3, 25.0)
    second = running(spec, 1)  # 50 %: 2 and 2
    growing = plan(spec, second, Observed(pods(V1, 3), pods(V2, 1, 2)))
    assert (growing.stable_replicas, growing.canary_replicas) == (3, 2)
    assert growing.effective_weight == 25.0
    done = plan(spec, second, Observed(pods(V1, 2, 2), pods(V2, 2, 2)))
    assert (done.stable_replicas, done.effective_weight) == (2, 50.0)


def test_an_autoscaled_stable_deployment_is_left_to_its_autoscaler() -> None:
    spec = make_spec(autoscaling={"maxReplicas": 10})
    found = plan(spec, running(spec), Observed(pods(V1, 6), pods(V2, 1)))
    assert found.stable_replicas is None


# After a rollout: the canary serves until it is no longer needed.


def test_a_promotion_switches_the_stable_model_at_its_size_then_grows_then_drops_the_canary() -> None:
    spec = make_spec(steps=[50])
    status = promoted(spec)
    # At the last step: 2 stable pods of V1 and 2 canary pods of V2.
    first = plan(spec, status, Observed(pods(V1, 2, 2), pods(V2, 2, 2)))
    assert (first.stable_model, first.stable_replicas, first.keep_canary) == (V2, 2, True)
    assert first.canary_model is None  # kept as it is, not applied again
    switching = plan(spec, status, Observed(pods(V2, 1, 2), pods(V2, 2, 2)))
    assert (switching.stable_replicas, switching.keep_canary) == (2, True)
    growing = plan(spec, status, Observed(pods(V2, 2, 2), pods(V2, 2, 2)))
    assert (growing.stable_replicas, growing.keep_canary) == (4, True)
    almost = plan(spec, status, Observed(pods(V2, 3, 4), pods(V2, 2, 2)))
    assert (almost.stable_replicas, almost.keep_canary) == (4, True)
    done = plan(spec, status, Observed(pods(V2, 4, 4), pods(V2, 2, 2)))
    assert (done.stable_replicas, done.keep_canary, done.settled) == (4, False, True)


def test_a_promotion_behind_a_router_moves_traffic_only_once_the_new_stable_pods_serve() -> None:
    spec = make_spec(traffic=GATEWAY, steps=[50])
    status = promoted(spec)
    route = RouteState(canary_weight=50, written_at=T0)
    rolling = plan(spec, status, Observed(pods(V1, 4), pods(V2, 2), route))
    assert (rolling.stable_model, rolling.stable_replicas) == (V2, 4)
    assert (rolling.route_weight, rolling.keep_canary) == (50, True)  # the canary still takes its half
    served = plan(spec, status, Observed(pods(V2, 4), pods(V2, 2), route))
    assert (served.route_weight, served.keep_canary, served.recheck_seconds) == (0, True, 5.0)
    drained = RouteState(canary_weight=0, written_at=T0 + timedelta(seconds=60))
    settling = plan(spec, status, Observed(pods(V2, 4), pods(V2, 2), drained), seconds=62)
    assert (settling.keep_canary, settling.recheck_seconds) == (True, 3.0)
    gone = plan(spec, status, Observed(pods(V2, 4), pods(V2, 2), drained), seconds=65)
    assert (gone.route_weight, gone.keep_canary, gone.settled) == (0, False, True)


def test_a_rollback_behind_a_router_drains_the_canary_before_it_goes() -> None:
    spec = make_spec(traffic={"provider": "istio"})
    status = rolled_back(spec)
    first = plan(spec, status, Observed(pods(V1, 4), pods(V2, 1), RouteState(10, T0)))
    assert (first.stable_model, first.route_weight, first.keep_canary) == (V1, 0, True)
    # managedFields not recorded (None): weight 0 stored is enough.
    later = plan(spec, status, Observed(pods(V1, 4), pods(V2, 1), RouteState(0, None)))
    assert not later.keep_canary


def test_a_rejected_canary_with_replicas_goes_at_once_while_stable_grows_back() -> None:
    # A rejected model gets no traffic: its pods go even before the stable pods are back.
    spec = make_spec()
    found = plan(spec, rolled_back(spec), Observed(pods(V1, 3, 3), pods(V2, 1)))
    assert (found.stable_model, found.stable_replicas, found.keep_canary) == (V1, 4, False)


def cancelled(spec: ModelDeploymentSpec) -> tuple[ModelDeploymentSpec, ModelDeploymentStatus]:
    """The spec back on the stable model mid-rollout: the canary's model is not known to be bad."""
    back = make_spec(V1, replicas=spec.replicas, traffic=spec.traffic.model_dump(by_alias=True))
    status = step(back, running(spec), T0 + timedelta(minutes=1)).status
    assert status.canary is None and status.rejected is None
    return back, status


def test_a_cancelled_canary_with_replicas_serves_until_stable_is_back_at_full_size() -> None:
    spec, status = cancelled(make_spec())
    growing = plan(spec, status, Observed(pods(V1, 3, 3), pods(V2, 1)))
    assert (growing.stable_model, growing.stable_replicas, growing.keep_canary) == (V1, 4, True)
    assert not plan(spec, status, Observed(pods(V1, 4), pods(V2, 1))).keep_canary


def test_a_cancelled_canary_behind_a_router_gets_no_traffic_at_once() -> None:
    spec, status = cancelled(make_spec(traffic=GATEWAY))
    found = plan(spec, status, Observed(pods(V1, 3), pods(V2, 1), RouteState(10, T0)))
    assert (found.route_weight, found.keep_canary) == (0, True)


def test_a_retiring_canary_goes_after_the_limit_even_if_the_stable_deployment_cannot_grow() -> None:
    spec, status = cancelled(make_spec())
    stuck = Observed(pods(V1, 3, 4), pods(V2, 1))
    assert plan(spec, status, stuck, seconds=60 * 10).keep_canary
    overdue = plan(spec, status, stuck, seconds=60 * 11)  # cancelled at 1 min, limit 10
    assert (overdue.keep_canary, overdue.stable_replicas) == (False, 4)
    assert not plan(spec, status, stuck, retiring_since=None).keep_canary


def test_a_router_that_never_sent_traffic_needs_no_drain() -> None:
    spec = make_spec(traffic=GATEWAY)
    assert not plan(spec, rolled_back(spec), Observed(pods(V1, 4), pods(V2, 1), None)).keep_canary


def test_without_a_canary_the_target_is_applied_as_it_is() -> None:
    spec = make_spec(V1, replicas=6)
    found = plan(spec, stable_status(), Observed(pods(V1, 4), None))
    assert (found.stable_model, found.stable_replicas, found.canary_model, found.keep_canary) == (
        V1,
        6,
        None,
        False,
    )


def test_an_autoscaled_promotion_waits_for_the_autoscalers_count() -> None:
    spec = make_spec(autoscaling={"maxReplicas": 10}, steps=[50])
    status = promoted(spec)
    assert plan(spec, status, Observed(pods(V2, 4, 5), pods(V2, 2))).keep_canary
    found = plan(spec, status, Observed(pods(V2, 5, 5), pods(V2, 2)))
    assert (found.stable_replicas, found.keep_canary) == (None, False)


# Invariants over any observation.

observations = st.builds(
    Observed,
    stable=st.none() | st.builds(pods, st.sampled_from([V1, V2]), st.integers(0, 6), st.integers(0, 6)),
    canary=st.none() | st.builds(pods, st.sampled_from([V1, V2]), st.integers(0, 4), st.integers(0, 4)),
    route=st.none() | st.builds(RouteState, st.integers(0, 100), st.none() | st.just(T0)),
)


@given(
    provider=st.sampled_from(["replicas", "gateway-api", "istio"]),
    replicas=st.integers(1, 6),
    steps=st.integers(0, 3),
    observed=observations,
    seconds=st.integers(0, 1200),
)
def test_no_plan_sends_traffic_to_pods_that_are_not_ready_or_takes_capacity_away(
    provider: str, replicas: int, steps: int, observed: Observed, seconds: int
) -> None:
    traffic = {"provider": provider} | ({"gateway": GATEWAY["gateway"]} if provider == "gateway-api" else {})
    spec = make_spec(replicas=replicas, traffic=traffic, steps=[25, 50])
    status = promoted(spec) if steps == 2 else rolled_back(spec) if steps == 3 else running(spec, steps)
    found = plan(spec, status, observed, seconds=seconds)
    if (
        status.rejected is not None
        and observed.canary
        and observed.canary.revision == status.rejected.revision
    ):
        # A rejected model gets no traffic at all: no router weight, and no pods of its own with replicas.
        assert found.route_weight == 0
        if provider == "replicas":
            assert not found.keep_canary
        return
    canary_ready = (
        observed.canary.ready if observed.canary and observed.canary.revision == model_revision(V2) else 0
    )
    if status.canary is not None:
        if provider == "replicas":
            assert found.stable_replicas is not None
            assert found.stable_replicas + min(canary_ready, found.canary_replicas) >= replicas
            assert found.effective_weight == 0 or canary_ready > 0
        else:
            assert found.route_weight <= status.canary.weight
            assert found.route_weight == 0 or canary_ready > 0
            assert found.stable_replicas == replicas
    else:
        stable_serves = (
            observed.stable is not None
            and status.stable is not None
            and observed.stable.revision == model_revision(status.stable.source())
            and observed.stable.ready >= replicas
        )
        finished = status.history[0].finished_at if status.history else T0
        overdue = T0 + timedelta(seconds=seconds) >= finished + LIMIT  # kept 10 min at most
        if observed.canary is not None and not found.keep_canary:
            assert stable_serves or overdue
            if provider != "replicas" and observed.route is not None and not overdue:
                assert observed.route.canary_weight == 0
        if found.route_weight != 0:
            assert found.keep_canary  # a router never points at a Deployment about to go


# Reading stored objects.


def deployment(revision: str, *, generation: int = 1, seen: int = 1, **status: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {
            "replicas": 3,
            "template": {"metadata": {"annotations": {MODEL_REVISION_ANNOTATION: revision}}},
        },
        "status": {"observedGeneration": seen, **status},
    }


def test_observing_a_deployment_counts_only_pods_of_its_current_template() -> None:
    assert observe_deployment(None) is None
    settled = deployment("r", replicas=3, updatedReplicas=3, availableReplicas=3)
    assert observe_deployment(settled) == VariantPods("r", 3, 3)
    rolling = deployment("r", replicas=4, updatedReplicas=2, availableReplicas=3)
    assert observe_deployment(rolling) == VariantPods("r", 3, 1)  # 2 old pods might be the available ones
    unseen = deployment("r", generation=2, seen=1, replicas=3, updatedReplicas=3, availableReplicas=3)
    assert observe_deployment(unseen) == VariantPods("r", 3, 0)
    assert observe_deployment({"metadata": {}, "spec": {}}) == VariantPods("", None, 0)


def test_when_the_operator_last_applied_a_child() -> None:
    child = {
        "metadata": {
            "managedFields": [
                {"manager": MANAGER_NAME, "operation": "Apply", "time": "2026-11-27T12:00:05Z"},
                {"manager": "kubectl", "operation": "Apply", "time": "2026-11-27T12:09:00Z"},
                {"manager": MANAGER_NAME, "operation": "Update", "time": "2026-11-27T12:08:00Z"},
            ]
        }
    }
    assert last_applied_at(child, MANAGER_NAME) == T0 + timedelta(seconds=5)
    assert last_applied_at({"metadata": {}}, MANAGER_NAME) is None
    assert last_applied_at(None, MANAGER_NAME) is None


def test_the_stored_canary_weight_of_each_route_object() -> None:
    owner = Owner("modeldeploy.io/v1alpha1", "ModelDeployment", "iris", "ml", "u1")
    gateway = GatewayTraffic.model_validate(GATEWAY["gateway"])
    for weight in (0, 10, 100):
        assert stored_canary_weight(build_http_route(owner, gateway, weight), "iris-canary") == weight
        assert (
            stored_canary_weight(build_virtual_service(owner, IstioTraffic(), weight), "iris-canary")
            == weight
        )
        mirrored = build_virtual_service(owner, IstioTraffic(mirror=True), weight)
        assert stored_canary_weight(mirrored, "iris-canary") == weight
    assert stored_canary_weight({"spec": {}}, "iris-canary") == 0
