"""Status from observations: kstatus conditions, phase, stable model, and no change without news."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modeldeploy_operator.spec import ModelDeploymentSpec, ModelSource, StableModel
from modeldeploy_operator.status import (
    PodProblem,
    compute_status,
    invalid_spec_status,
    status_patch,
    summarize_pod_problems,
)

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
SPEC = ModelDeploymentSpec.model_validate(
    {"model": {"uri": "s3://models/iris/1.skops", "version": "1", "sha256": "a" * 64}, "replicas": 2}
)


def deployment(
    *,
    replicas: int = 2,
    generation: int = 1,
    observed: int = 1,
    existing: int = 2,
    updated: int = 2,
    ready: int = 2,
    available: int = 2,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris-stable", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": existing,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": conditions or [],
        },
    }


def status(
    observed: dict[str, Any] | None,
    *,
    previous: dict[str, Any] | None = None,
    now: datetime = NOW,
    generation: int = 1,
    problems: list[PodProblem] | None = None,
    spec: ModelDeploymentSpec = SPEC,
) -> dict[str, Any]:
    return compute_status(
        name="iris",
        namespace="ml",
        generation=generation,
        spec=spec,
        deployment=observed,
        pod_problems=problems or [],
        now=now,
        previous=previous,
    )


def conditions(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {condition["type"]: condition for condition in result["conditions"]}


def states(result: dict[str, Any]) -> dict[str, str]:
    return {kind: condition["status"] for kind, condition in conditions(result).items()}


def test_before_the_deployment_exists_it_is_pending() -> None:
    result = status(None)
    assert states(result) == {
        "Ready": "False",
        "Progressing": "True",
        "Reconciling": "True",
        "Stalled": "False",
    }
    assert result["phase"] == "Pending"
    assert conditions(result)["Ready"]["reason"] == "DeploymentMissing"
    assert result["url"] == "http://iris.ml.svc.cluster.local"
    assert result["replicas"] == 0
    assert result["readyReplicas"] == 0
    assert "stable" not in result


def test_available_deployment_is_ready_and_becomes_the_stable_model() -> None:
    result = status(deployment())
    assert states(result) == {
        "Ready": "True",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "False",
    }
    assert result["phase"] == "Ready"
    assert result["observedGeneration"] == 1
    assert all(condition["observedGeneration"] == 1 for condition in result["conditions"])
    assert all(
        condition["lastTransitionTime"] == "2026-11-27T12:00:00Z" for condition in result["conditions"]
    )
    assert result["stable"] == {
        "uri": "s3://models/iris/1.skops",
        "format": "auto",
        "version": "1",
        "digest": "a" * 64,
        "since": "2026-11-27T12:00:00Z",
    }
    assert result["replicas"] == 2
    assert result["readyReplicas"] == 2
    assert result["selector"] == "app.kubernetes.io/instance=iris,app.kubernetes.io/name=modeldeploy-server"


def test_nothing_new_means_nothing_to_write() -> None:
    first = status(deployment())
    again = status(deployment(), previous=first, now=NOW + timedelta(minutes=5))
    assert again == first
    assert status_patch(first, again) is None


def test_deployment_that_has_not_seen_the_change_is_not_ready() -> None:
    result = status(deployment(generation=2, observed=1))
    assert states(result)["Ready"] == "False"
    assert conditions(result)["Progressing"]["reason"] == "DeploymentUpdating"


def test_rolling_deployment_is_progressing() -> None:
    cases = [
        (deployment(updated=1, available=1), "1 of 2 replicas updated"),
        (deployment(existing=3, updated=2), "1 old replicas terminating"),
        (deployment(available=1), "1 of 2 updated replicas available"),
    ]
    for observed, message in cases:
        result = status(observed)
        assert states(result) == {
            "Ready": "False",
            "Progressing": "True",
            "Reconciling": "True",
            "Stalled": "False",
        }
        assert conditions(result)["Progressing"]["message"] == message


def test_scaled_to_zero_is_ready() -> None:
    observed = deployment(replicas=0, existing=0, updated=0, ready=0, available=0)
    assert states(status(observed))["Ready"] == "True"


def test_deployment_progress_deadline_stalls() -> None:
    exceeded = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "iris-stable-abc" has timed out progressing.',
    }
    result = status(deployment(updated=1, available=1, conditions=[exceeded]))
    assert states(result) == {
        "Ready": "False",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "True",
    }
    assert result["phase"] == "Stalled"
    assert "timed out" in conditions(result)["Stalled"]["message"]


def test_failing_pods_stall_with_the_fetch_error() -> None:
    problem = PodProblem("iris-stable-1", "fetch-model", "CrashLoopBackOff", "sha256 mismatch")
    other = PodProblem("iris-stable-2", "fetch-model", "CrashLoopBackOff", "sha256 mismatch")
    result = status(deployment(updated=2, available=0, ready=0), problems=[problem, other])
    stalled = conditions(result)["Stalled"]
    assert stalled["status"] == "True"
    assert stalled["reason"] == "PodsFailing"
    assert stalled["message"] == (
        "pod iris-stable-1 container fetch-model CrashLoopBackOff: sha256 mismatch (and 1 more)"
    )


def test_pod_problems_do_not_matter_once_ready() -> None:
    problem = PodProblem("iris-stable-old", "server", "CrashLoopBackOff", "")
    assert states(status(deployment(), problems=[problem]))["Ready"] == "True"


def test_own_progress_deadline_counts_from_when_progress_began() -> None:
    started = status(deployment(updated=0, available=0), now=NOW)
    within = status(deployment(updated=0, available=0), previous=started, now=NOW + timedelta(minutes=9))
    assert states(within)["Stalled"] == "False"
    assert within == {**started, "conditions": within["conditions"]}
    late = status(deployment(updated=0, available=0), previous=started, now=NOW + timedelta(minutes=11))
    assert states(late)["Stalled"] == "True"
    assert "progress deadline of 10m0s" in conditions(late)["Stalled"]["message"]


def test_stalled_stays_until_ready_or_a_new_generation() -> None:
    late = status(
        deployment(updated=0, available=0),
        previous=status(deployment(updated=0, available=0), now=NOW),
        now=NOW + timedelta(minutes=11),
    )
    still = status(deployment(updated=0, available=0), previous=late, now=NOW + timedelta(minutes=12))
    assert still == late
    crashing = PodProblem("iris-stable-1", "fetch-model", "CrashLoopBackOff", "404")
    stalled = status(deployment(available=0), problems=[crashing], now=NOW)
    between_crashes = status(deployment(available=0), previous=stalled, now=NOW + timedelta(seconds=30))
    assert between_crashes == stalled
    recovered = status(deployment(), previous=between_crashes, now=NOW + timedelta(minutes=1))
    assert states(recovered) == {
        "Ready": "True",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "False",
    }
    fixed = status(
        deployment(generation=2, observed=2, available=0),
        previous=between_crashes,
        generation=2,
        now=NOW + timedelta(minutes=1),
    )
    assert states(fixed) == {
        "Ready": "False",
        "Progressing": "True",
        "Reconciling": "True",
        "Stalled": "False",
    }


def test_a_new_generation_restarts_the_progress_clock() -> None:
    started = status(deployment(updated=0, available=0), now=NOW)
    changed = status(
        deployment(generation=2, observed=2, updated=0, available=0),
        previous=started,
        generation=2,
        now=NOW + timedelta(minutes=11),
    )
    assert states(changed)["Stalled"] == "False"
    assert conditions(changed)["Progressing"]["lastTransitionTime"] == "2026-11-27T12:11:00Z"


def test_transition_time_changes_only_with_the_status() -> None:
    rolling = status(deployment(updated=1, available=1), now=NOW)
    still_rolling = status(deployment(available=1), previous=rolling, now=NOW + timedelta(minutes=1))
    assert (
        conditions(still_rolling)["Progressing"]["message"] != conditions(rolling)["Progressing"]["message"]
    )
    assert conditions(still_rolling)["Progressing"]["lastTransitionTime"] == "2026-11-27T12:00:00Z"
    ready = status(deployment(), previous=still_rolling, now=NOW + timedelta(minutes=2))
    assert conditions(ready)["Ready"]["lastTransitionTime"] == "2026-11-27T12:02:00Z"
    assert conditions(ready)["Stalled"]["lastTransitionTime"] == "2026-11-27T12:00:00Z"


def test_stable_model_changes_only_when_a_new_model_is_ready() -> None:
    ready = status(deployment(), now=NOW)
    new_spec = SPEC.model_copy(update={"model": ModelSource(uri="s3://models/iris/2.skops", version="2")})
    rolling = status(
        deployment(generation=2, observed=2, updated=1, available=1),
        previous=ready,
        generation=2,
        spec=new_spec,
        now=NOW + timedelta(minutes=1),
    )
    assert rolling["phase"] == "Progressing"
    assert rolling["stable"] == ready["stable"]
    done = status(
        deployment(generation=2, observed=2),
        previous=rolling,
        generation=2,
        spec=new_spec,
        now=NOW + timedelta(minutes=2),
    )
    assert done["stable"]["uri"] == "s3://models/iris/2.skops"
    assert done["stable"]["since"] == "2026-11-27T12:02:00Z"
    rescaled = status(deployment(generation=3, observed=3), previous=done, generation=3, spec=new_spec)
    assert rescaled["stable"]["since"] == "2026-11-27T12:02:00Z"


def test_served_model_overrides_the_spec_during_a_rollout() -> None:
    served = ModelSource(uri="s3://models/iris/0.skops", version="0")
    result = compute_status(
        name="iris",
        namespace="ml",
        generation=1,
        spec=SPEC,
        deployment=deployment(),
        pod_problems=[],
        now=NOW,
        previous=None,
        served_model=served,
    )
    assert result["stable"]["version"] == "0"


def test_fields_owned_by_the_rollout_are_carried_over() -> None:
    previous = status(deployment())
    previous["canary"] = {
        "uri": "s3://models/iris/2.skops",
        "revision": "abc",
        "weight": 10,
        "step": 0,
        "stepStartedAt": "2026-11-27T11:59:00Z",
        "failures": 0,
        "inconclusive": 0,
        "checks": [],
    }
    previous["history"] = [
        {
            "uri": "s3://models/iris/0.skops",
            "outcome": "promoted",
            "startedAt": "2026-11-26T10:00:00Z",
            "finishedAt": "2026-11-26T10:20:00Z",
            "message": "",
        }
    ]
    result = status(deployment(), previous=previous)
    assert result["canary"] == previous["canary"]
    assert result["history"] == previous["history"]
    # Observed again with nothing new: nothing to write.
    assert status_patch(result, status(deployment(), previous=result)) is None


def test_a_canary_rollout_is_progress_that_kstatus_and_kubectl_get_show() -> None:
    previous = status(deployment())
    previous["canary"] = {
        "uri": "s3://models/iris/2.skops",
        "version": "2",
        "revision": "abc",
        "weight": 10,
        "step": 0,
        "stepStartedAt": "2026-11-27T11:59:00Z",
    }
    result = status(deployment(), previous=previous)
    # The stable model serves all along: Ready. Flux (kstatus) waits on Reconciling.
    assert states(result) == {
        "Ready": "True",
        "Progressing": "False",
        "Reconciling": "True",
        "Stalled": "False",
    }
    reconciling = conditions(result)["Reconciling"]
    assert reconciling["reason"] == "CanaryRollout"
    assert "version 2" in reconciling["message"] and "step 1 of" in reconciling["message"]
    assert "10% of traffic" in reconciling["message"]
    assert result["phase"] == "Progressing"

    del result["canary"]
    finished = status(deployment(), previous=result)
    assert states(finished)["Reconciling"] == "False"
    assert finished["phase"] == "Ready"


def test_unreadable_previous_status_is_rebuilt() -> None:
    result = status(deployment(), previous={"conditions": "not a list"})
    assert result["phase"] == "Ready"


def test_microseconds_are_dropped_like_the_api_server_does() -> None:
    result = status(deployment(), now=NOW.replace(microsecond=123456))
    assert conditions(result)["Ready"]["lastTransitionTime"] == "2026-11-27T12:00:00Z"


def test_invalid_spec_fails_but_keeps_what_serves() -> None:
    ready = status(deployment())
    result = invalid_spec_status(
        generation=2, message="spec.model.uri: unsupported", now=NOW + timedelta(minutes=1), previous=ready
    )
    assert result["phase"] == "Failed"
    assert result["observedGeneration"] == 2
    assert states(result) == {
        "Ready": "False",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "True",
    }
    assert conditions(result)["Stalled"]["reason"] == "InvalidSpec"
    assert conditions(result)["Stalled"]["message"] == "spec.model.uri: unsupported"
    assert result["stable"] == ready["stable"]
    assert result["url"] == ready["url"]
    again = invalid_spec_status(
        generation=2, message="spec.model.uri: unsupported", now=NOW + timedelta(minutes=5), previous=result
    )
    assert status_patch(result, again) is None


def test_status_patch_sets_changes_and_removes_dropped_keys() -> None:
    current = status(deployment())
    previous = {
        **current,
        "url": "http://old.ml.svc.cluster.local",
        "canary": {
            "uri": "/m",
            "revision": "r",
            "weight": 5,
            "step": 0,
            "stepStartedAt": "2026-11-27T11:00:00Z",
        },
    }
    assert status_patch(previous, current) == {"url": current["url"], "canary": None}
    # An empty list equals the default of a missing one, so the first patch leaves it out.
    assert status_patch(None, current) == {key: value for key, value in current.items() if value != []}


def test_status_patch_ignores_defaults_the_api_server_filled_in() -> None:
    entry = {
        "uri": "/m",
        "outcome": "promoted",
        "startedAt": "2026-11-26T10:00:00Z",
        "finishedAt": "2026-11-26T10:20:00Z",
    }
    previous = {**status(deployment()), "history": [entry]}
    current = status(deployment(), previous=previous)
    assert current["history"] == [{**entry, "message": ""}]
    assert status_patch(previous, current) is None


def pod(
    name: str, init: list[dict[str, Any]] | None = None, main: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"initContainerStatuses": init or [], "containerStatuses": main or []},
    }


def test_summarize_pod_problems() -> None:
    pods = [
        pod(
            "b",
            main=[
                {"name": "server", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
            ],
        ),
        pod(
            "a",
            init=[
                {
                    "name": "fetch-model",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "digest mismatch\n"}},
                }
            ],
        ),
        pod("c", init=[{"name": "fetch-model", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]),
        pod(
            "d",
            init=[{"name": "fetch-model", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        ),
        pod("e", main=[{"name": "server", "state": {"waiting": {"reason": "ContainerCreating"}}}]),
        pod("f", main=[{"name": "server", "state": {"terminated": {"exitCode": 1}}}]),
        {"metadata": {"name": "g"}},
    ]
    assert summarize_pod_problems(pods) == [
        PodProblem("a", "fetch-model", "CrashLoopBackOff", "digest mismatch"),
        PodProblem("b", "server", "ErrImagePull", "not found"),
        PodProblem("c", "fetch-model", "Error", ""),
    ]


def test_stable_model_in_status_rebuilds_the_model_it_serves() -> None:
    stable = status(deployment())["stable"]
    assert StableModel.model_validate(stable).source() == SPEC.model


def test_a_server_container_that_restarted_once_or_twice_is_not_yet_a_model_that_cannot_run() -> None:
    # On a real node a canary container killed twice went into CrashLoopBackOff (the kubelet backs
    # off after any exit), and the rollout was rolled back as "cannot run".
    def backing_off(restarts: int) -> dict[str, Any]:
        return pod(
            "p",
            main=[
                {
                    "name": "server",
                    "restartCount": restarts,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {"terminated": {"exitCode": 137, "message": "killed"}},
                }
            ],
        )

    assert summarize_pod_problems([backing_off(1)]) == []
    assert summarize_pod_problems([backing_off(2)]) == []
    assert summarize_pod_problems([backing_off(3)]) == [
        PodProblem("p", "server", "CrashLoopBackOff", "killed")
    ]
