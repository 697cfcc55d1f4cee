"""The analysis waits for the canary's pods, and a canary whose pods cannot run is rolled back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rollout_support import T0, V2, make_spec, stable_status, step

from modeldeploy_operator.builders import MODEL_REVISION_ANNOTATION, model_revision
from modeldeploy_operator.rollout import CanaryPods, analysis_window, decide
from modeldeploy_operator.spec import ModelDeploymentStatus
from modeldeploy_operator.status import observe_canary_pods

SPEC = make_spec(stepDuration="1m", progressDeadline="10m")
REVISION = model_revision(V2)


def started() -> ModelDeploymentStatus:
    return step(SPEC, stable_status(), T0).status


def observe(status: ModelDeploymentStatus, seconds: int, pods: CanaryPods) -> ModelDeploymentStatus:
    return decide(SPEC, status, T0 + timedelta(seconds=seconds), canary_pods=pods).status


def test_the_first_window_starts_when_the_canary_pods_are_ready() -> None:
    status = observe(started(), 20, CanaryPods(REVISION, ready=False))
    # Still starting at the step's end: no window is due, the step waits.
    status = observe(status, 60, CanaryPods(REVISION, ready=False))
    assert analysis_window(SPEC, status, T0 + timedelta(seconds=61)) is None

    status = observe(status, 90, CanaryPods(REVISION, ready=True))
    assert status.canary is not None
    assert status.canary.pods_ready_at == T0 + timedelta(seconds=90)
    assert analysis_window(SPEC, status, T0 + timedelta(seconds=149)) is None
    window = analysis_window(SPEC, status, T0 + timedelta(seconds=150))
    assert window is not None and window.start == T0 + timedelta(seconds=90)

    # A pod that stops being ready mid-window (killed, restarted) starts the window again: the one
    # under way measured less than the step's traffic.
    again = observe(status, 100, CanaryPods(REVISION, ready=False))
    assert again.canary is not None
    assert again.canary.pods_ready_at is None
    assert analysis_window(SPEC, again, T0 + timedelta(seconds=150)) is None
    back = observe(again, 110, CanaryPods(REVISION, ready=True))
    assert back.canary is not None and back.canary.analysis_started_at == T0 + timedelta(seconds=110)


def test_every_step_waits_for_the_pods_it_needs() -> None:
    status = observe(started(), 10, CanaryPods(REVISION, ready=True))
    status = step(SPEC, status, T0 + timedelta(seconds=75), "pass").status
    assert status.canary is not None and status.canary.step == 1
    assert status.canary.pods_ready_at is None  # the larger step's pods are counted afresh
    # The second step's extra pod takes 40 s to become ready: its window starts then.
    status = observe(status, 80, CanaryPods(REVISION, ready=False))
    status = observe(status, 115, CanaryPods(REVISION, ready=True))
    window = analysis_window(SPEC, status, T0 + timedelta(seconds=175))
    assert window is not None and (window.step, window.start) == (1, T0 + timedelta(seconds=115))


def test_pods_of_another_model_are_not_taken_for_the_canarys() -> None:
    status = observe(started(), 20, CanaryPods("some-older-canary", ready=True, problem="CrashLoopBackOff"))
    assert status.canary is not None  # not rolled back for another model's problem
    assert status.canary.pods_ready_at is None
    assert status.canary.analysis_started_at == T0 + timedelta(seconds=20)  # and not judged on its pods


def test_a_canary_whose_pods_cannot_run_is_rolled_back_with_the_reason() -> None:
    problem = (
        "pod iris-canary-1 container fetch-model CrashLoopBackOff: 404 Not Found from s3://models/iris/2"
    )
    decision = decide(
        SPEC, started(), T0 + timedelta(seconds=30), canary_pods=CanaryPods(REVISION, False, problem)
    )

    assert decision.status.canary is None
    assert decision.status.rejected is not None
    assert decision.status.rejected.reason == "CanaryPodsFailing"
    assert "404 Not Found" in decision.status.rejected.message
    assert decision.status.history[0].outcome == "rolledBack"


def test_pods_never_ready_run_into_the_deadline_which_says_so() -> None:
    status = started()
    for seconds in range(30, 601, 30):
        status = observe(status, seconds, CanaryPods(REVISION, ready=False))
    final = decide(SPEC, status, T0 + timedelta(seconds=601), canary_pods=CanaryPods(REVISION, ready=False))
    assert final.status.history[0].reason == "ProgressDeadlineExceeded"
    assert "never became ready" in final.status.history[0].message


def deployment(revision: str, *, available: int, replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"annotations": {MODEL_REVISION_ANNOTATION: revision}}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": available,
        },
    }


def test_observing_the_canary_deployment_and_its_pods() -> None:
    assert observe_canary_pods(None, [], 1) == CanaryPods("", ready=False)
    assert observe_canary_pods(deployment("r1", available=0), [], 1) == CanaryPods("r1", ready=False)
    assert observe_canary_pods(deployment("r1", available=1), [], 1) == CanaryPods("r1", ready=True)
    # Ready means the pods the current step needs, not the ones the Deployment had so far.
    assert observe_canary_pods(deployment("r1", available=1), [], 2) == CanaryPods("r1", ready=False)
    growing = deployment("r1", available=2, replicas=3)
    assert observe_canary_pods(growing, [], 2) == CanaryPods("r1", ready=True)
    # While pods of an older template remain, they may be the available ones: not counted as new.
    replacing = deployment("r2", available=3, replicas=2)
    replacing["status"].update(replicas=3, updatedReplicas=1)
    assert observe_canary_pods(replacing, [], 1) == CanaryPods("r2", ready=True)  # 3 available: 1 is new
    assert observe_canary_pods(replacing, [], 2) == CanaryPods("r2", ready=False)
    # A template the Deployment controller has not seen yet has no pods of its own.
    unseen = deployment("r3", available=1)
    unseen["metadata"]["generation"] = 2
    assert observe_canary_pods(unseen, [], 1) == CanaryPods("r3", ready=False)
    failing_pod = {
        "metadata": {"name": "iris-canary-x"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "403 Forbidden"}},
                }
            ]
        },
    }
    observed = observe_canary_pods(deployment("r1", available=0), [failing_pod], 1)
    assert observed is not None and observed.problem.endswith("CrashLoopBackOff: 403 Forbidden")
