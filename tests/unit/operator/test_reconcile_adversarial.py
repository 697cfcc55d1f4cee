"""The real Reconciler under adversarial interleavings, checked against invariants after every step.

A hypothesis state machine drives one ModelDeployment through random sequences of: spec changes
(another model, back to the stable one, a new replica count), the manual annotations, reconciles
triggered by key, twice at once or from a stale body, 409 conflicts on the status write, API
errors on any storage call (before it takes effect, or after, with the answer lost), concurrent
changes landing in the middle of a reconcile, Prometheus answering pass, fail, no data or not at
all, pods becoming ready or failing, the Deployment controllers catching up, the clock advancing,
and the operator crashing at any storage call of a reconcile (then a fresh Reconciler on the same
store goes on, as after a restart).

After every step the store must show: no traffic to a rejected model, no canary Deployment created
(or switched to a model) without a spec change or a retry asking for it, no step going back within
a rollout and no ended rollout coming back, the stable Deployment never shrunk below what the spec
asks when counted with the ready canary pods (replicas provider), no route weight on a canary
Deployment without ready pods, and every transition Event announcing a committed transition, at
most once per rollout. At the end, with the faults gone and the clock driven only by the wake-ups
the operator asked for and the changes it would be told of, the rollout must end (promoted or
rolled back), the canary go, and every announced Event be posted exactly once.

CI runs a bounded, derandomized profile; `MODELDEPLOY_ADVERSARIAL=long` runs thousands of random
interleavings by hand. Run with `-s` to see how many interleavings and steps were explored.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from prometheus_client import CollectorRegistry

from memory_storage import NAME, NAMESPACE, NOW, Phase, SimulatedCluster, model_deployment
from modeldeploy_operator.builders import model_revision
from modeldeploy_operator.kube import KubernetesError, KubeStorage
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.prometheus import PrometheusClient, PrometheusError, Sample
from modeldeploy_operator.reconcile import Reconciler
from modeldeploy_operator.rollout import (
    ANNOTATION_ABORT,
    ANNOTATION_PAUSED,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
)
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.spec import ModelSource

MODELS = (
    {"uri": "s3://models/iris/alpha.skops", "version": "a"},
    {"uri": "s3://models/iris/beta.skops", "version": "b"},
    {"uri": "s3://models/iris/gamma.skops", "version": "c"},
)
REVISIONS = tuple(model_revision(ModelSource.model_validate(model)) for model in MODELS)
GATEWAY_TRAFFIC = {"provider": "gateway-api", "gateway": {"parentRefs": [{"name": "public"}]}}
STABLE, CANARY = f"{NAME}-stable", f"{NAME}-canary"
# Events that name a rollout's model and happen at most once per rollout with the same message.
ROLLOUT_REASONS = frozenset({"RolloutStarted", "StepAdvanced", "Promoted", "RolledBack", "RolloutSuperseded"})
# Events that report a failed reconcile (rate-limited, not transitions): posted without a name.
FAILURE_REASONS = frozenset({"KubernetesAPIError", "UnexpectedError"})
# The end of a run: at most this many reconciles and this much simulated time to finish the rollout.
FINISH_RECONCILES = 300
FINISH_TIME = timedelta(hours=3)


class OperatorCrashed(BaseException):
    """The operator process dies at this storage call: nothing of it runs any more."""


@dataclass(frozen=True)
class Fault:
    """What goes wrong in one reconcile, at its `at`-th storage call (status write for conflicts)."""

    kind: Literal["api-error", "conflict", "crash", "concurrent-change"]
    at: int
    phase: Phase = "before"
    """before: the call has no effect; after: it took effect but its answer is lost."""
    change: tuple[str, Any] = ("sync", 0)
    """For a concurrent change: the user's or the cluster's action that lands at that call."""


USER_ACTIONS = st.one_of(
    st.tuples(st.just("model"), st.integers(0, len(MODELS) - 1)),
    st.tuples(st.just("replicas"), st.integers(1, 4)),
    st.tuples(st.just("promote"), st.sampled_from(["step", "full", "sideways"])),
    st.tuples(st.just("abort"), st.just(0)),
    st.tuples(st.just("retry"), st.just(0)),
    st.tuples(st.just("paused"), st.booleans()),
    st.tuples(st.just("forget"), st.sampled_from([ANNOTATION_PROMOTE, ANNOTATION_ABORT, ANNOTATION_RETRY])),
)
CLUSTER_ACTIONS = st.one_of(
    st.tuples(st.just("sync"), st.just(0)),
    # Most pods start; some cannot.
    st.tuples(st.sampled_from(["pod-ready"] * 3 + ["pod-fails"]), st.sampled_from([STABLE, CANARY])),
)
FAULTS = st.one_of(
    st.none(),
    st.none(),
    st.builds(
        Fault,
        kind=st.sampled_from(["api-error", "crash"]),
        at=st.integers(1, 30),
        phase=st.sampled_from(["before", "after"]),
    ),
    st.builds(Fault, kind=st.just("conflict"), at=st.integers(1, 3)),
    st.builds(
        Fault,
        kind=st.just("concurrent-change"),
        at=st.integers(1, 30),
        change=st.one_of(USER_ACTIONS, CLUSTER_ACTIONS),
    ),
)


class Interposer:
    """Counts a reconcile's storage calls and injects its fault at the chosen one."""

    def __init__(self, fault: Fault | None, act: Callable[[tuple[str, Any]], None]) -> None:
        self.fault = fault
        self.act = act
        self.calls = 0
        self.status_writes = 0
        self.fired = False
        self.crashed = False

    def __call__(self, operation: str, phase: Phase) -> None:
        if self.crashed:
            raise OperatorCrashed
        if phase == "before":
            self.calls += 1
            self.status_writes += operation == "patch_status"
        fault = self.fault
        if fault is None or self.fired or phase != fault.phase:
            return
        if fault.kind == "conflict":
            if operation != "patch_status" or self.status_writes != fault.at:
                return
        elif self.calls != fault.at:
            return
        self.fired = True
        if fault.kind == "api-error":
            raise KubernetesError(f"{operation}: injected API error", status=500)
        if fault.kind == "conflict":
            raise KubernetesError(f"{operation}: the object has been modified (injected)", status=409)
        if fault.kind == "crash":
            self.crashed = True
            raise OperatorCrashed
        self.act(fault.change)


class ScriptedPrometheus(PrometheusClient):
    """Answers every query at the boundary of the real client, as `mode` says."""

    def __init__(self) -> None:
        super().__init__(httpx.AsyncClient())
        self.mode: Literal["pass", "fail", "no-data", "error"] = "pass"

    async def query(self, address: str, promql: str, at: datetime | None = None) -> list[Sample]:
        if self.mode == "error":
            raise PrometheusError("unreachable", f"{address}: injected outage")
        if self.mode == "no-data":
            return []
        if '=~"5.."' in promql:  # the error rate
            return [Sample({}, 0.0 if self.mode == "pass" else 0.5)]
        assert "requests_total" in promql, f"a query the harness does not know: {promql}"
        return [Sample({}, 1000.0)]


class RecordingReconciler(Reconciler):
    """The Reconciler with its wake-ups recorded on the simulated clock instead of scheduled."""

    def __init__(
        self, storage: SimulatedCluster, prometheus: PrometheusClient, wake_ups: list[datetime]
    ) -> None:
        typed: KubeStorage = storage  # type: ignore[assignment]
        super().__init__(
            typed,
            OperatorSettings(server_image="registry.invalid/server:1"),
            prometheus,
            clock=storage.clock,
            metrics=OperatorMetrics(CollectorRegistry()),
        )
        self._now = storage.clock
        self._wake_ups = wake_ups

    def requeue(self, name: str, namespace: str, delay: float = 0.0) -> None:
        self._wake_ups.append(self._now() + timedelta(seconds=delay))


def rollout_spec(
    *, provider: str, replicas: int, steps: list[int], failure_limit: int, inconclusive_limit: int
) -> dict[str, Any]:
    return {
        "model": MODELS[0],
        "replicas": replicas,
        "traffic": {"provider": "replicas"} if provider == "replicas" else GATEWAY_TRAFFIC,
        "rollout": {
            "steps": steps,
            "stepDuration": "1m",
            "progressDeadline": "10m",
            "failureLimit": failure_limit,
            "inconclusiveLimit": inconclusive_limit,
            "analysis": {
                "minSamples": 10,
                "errorRate": {"maxRatio": 0.05},
                "latency": {"enabled": False},
                "predictionShift": {"enabled": False},
            },
        },
    }


@dataclass
class Exploration:
    """What the runs explored, for the report."""

    interleavings: int = 0
    steps: int = 0
    reconciles: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    steps_reached: Counter[int] = field(default_factory=Counter)
    """How many rollouts reached each step (0 is the first)."""


EXPLORED = Exploration()


def _first_model(message: str) -> str | None:
    """The revision of the model a rollout Event names first (its rollout's model)."""
    found = [
        (message.find(model["uri"]), revision) for model, revision in zip(MODELS, REVISIONS, strict=True)
    ]
    named = [item for item in found if item[0] >= 0]
    return min(named)[1] if named else None


class AdversarialReconcile(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.loop = asyncio.new_event_loop()
        self.store = SimulatedCluster(lambda: self.now)
        self.prometheus = ScriptedPrometheus()
        self.wake_ups: list[datetime] = []
        self.service = self._start_operator()
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        # Canary Deployments a spec change or a retry allows to be created (or switched), by revision.
        self.permits: Counter[str] = Counter()
        self.model_changes_seen = 0
        self.statuses_seen = 0
        # Rollouts (revision, startedAt): the highest step each reached, and those that ended.
        self.steps_reached: dict[tuple[str, str], int] = {}
        self.ended: set[tuple[str, str]] = set()
        self.pending_names: set[str] = set()
        self.replicas_floor = 0
        self.capacity = 0
        self.ready_to_check = False
        self.version_seen = -1
        EXPLORED.interleavings += 1

    # Set-up and helpers.

    def _start_operator(self) -> RecordingReconciler:
        self.wake_ups.clear()  # a new process knows nothing of the old one's timers
        return RecordingReconciler(self.store, self.prometheus, self.wake_ups)

    def _run(self, work: Callable[[], Any], fault: Fault | None = None) -> Interposer:
        interposer = Interposer(fault, self.act)
        self.store.interpose = interposer
        try:
            self.loop.run_until_complete(work())
        except OperatorCrashed:
            pass
        finally:
            # Whatever the crashed reconcile still had running dies at its next storage call.
            leftovers = asyncio.all_tasks(self.loop)
            if leftovers:
                self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self.store.interpose = None
        EXPLORED.reconciles += 1
        if interposer.fired and fault is not None:
            EXPLORED.faults[fault.kind] += 1
        if interposer.crashed:
            self.service = self._start_operator()
        return interposer

    def _reconcile_cleanly(self) -> None:
        self._run(lambda: self.service.reconcile_key(NAME, NAMESPACE))
        self._after_clean_reconcile()

    def _after_clean_reconcile(self) -> None:
        self.replicas_floor = self.spec()["replicas"]
        rejected = self.status().get("rejected")
        if rejected is not None and self.spec()["traffic"]["provider"] == "replicas":
            # Behind the one Service, a rejected canary's pods go in the reconcile that rejects it.
            serving = [pod for pod in self.store.ready_pods(CANARY) if pod.revision == rejected["revision"]]
            assert not serving, f"the rejected model {rejected['revision']} still serves from {serving}"

    def body(self) -> dict[str, Any]:
        return self.store.model_deployment_body()

    def spec(self) -> dict[str, Any]:
        return dict(self.body()["spec"])

    def status(self) -> dict[str, Any]:
        return dict(self.body().get("status") or {})

    def route_weight(self) -> int:
        route = self.store.objects.get(("HTTPRoute", NAMESPACE, NAME))
        if route is None:
            return 0
        return max(
            [0]
            + [
                int(backend.get("weight", 1))
                for rule in route["spec"]["rules"]
                for backend in rule["backendRefs"]
                if backend["name"] == CANARY
            ]
        )

    def stable_capacity(self) -> int:
        """The stable Deployment's replicas plus the ready canary pods: what serves when all is up."""
        stable = self.store.objects.get(("Deployment", NAMESPACE, STABLE))
        replicas = 0 if stable is None else int(stable["spec"].get("replicas", 1))
        return replicas + len(self.store.ready_pods(CANARY))

    # The actions of users and of the cluster, as rules and as changes landing mid-reconcile.

    def act(self, action: tuple[str, Any]) -> None:
        kind, value = action
        annotations = self.body()["metadata"].get("annotations") or {}
        if kind == "model":
            if self.spec()["model"] != MODELS[value]:
                self.store.edit_model_deployment(model=MODELS[value])
                self.permits[REVISIONS[value]] += 1
                self.now += timedelta(seconds=1)  # a rollout it starts begins after any earlier one
        elif kind == "replicas":
            self.store.edit_model_deployment(replicas=value)
            self.replicas_floor = min(self.replicas_floor, value)
        elif kind in ("promote", "abort", "retry"):
            self.requests += 1
            key = {"promote": ANNOTATION_PROMOTE, "abort": ANNOTATION_ABORT, "retry": ANNOTATION_RETRY}[kind]
            if kind == "retry":
                rejected = self.status().get("rejected") or {}
                wanted = model_revision(ModelSource.model_validate(self.spec()["model"]))
                if rejected.get("revision") == wanted:
                    self.permits[wanted] += 1
                self.now += timedelta(seconds=1)
            self.store.annotate(
                **{key: f"{value}:{self.requests}" if kind == "promote" else str(self.requests)}
            )
        elif kind == "paused":
            if value:
                self.store.annotate(**{ANNOTATION_PAUSED: "true"})
            elif ANNOTATION_PAUSED in annotations:
                self.store.remove_annotation(ANNOTATION_PAUSED)
        elif kind == "forget":
            self.store.remove_annotation(value)
        elif kind == "sync":
            self.store.sync()
        elif kind == "pod-ready":
            self.store.pod_ready(value)
        elif kind == "pod-fails":
            self.store.pod_fails(value)
        else:
            raise AssertionError(f"unknown action {action}")

    @initialize(
        provider=st.sampled_from(["replicas", "gateway-api"]),
        replicas=st.integers(1, 4),
        steps=st.sampled_from([[50], [20, 60], [10, 40, 80]]),
        failure_limit=st.integers(0, 1),
        inconclusive_limit=st.integers(0, 2),
    )
    def serving(
        self, provider: str, replicas: int, steps: list[int], failure_limit: int, inconclusive_limit: int
    ) -> None:
        """The ModelDeployment serves its first model, undisturbed, before the adversary starts."""
        model_deployment(
            self.store,
            rollout_spec(
                provider=provider,
                replicas=replicas,
                steps=steps,
                failure_limit=failure_limit,
                inconclusive_limit=inconclusive_limit,
            ),
        )
        self.permits[REVISIONS[0]] += 1
        for _ in range(replicas + 2):
            self._reconcile_cleanly()
            self.store.sync()
            while self.store.pod_ready(STABLE):
                pass
        self._reconcile_cleanly()
        assert self.status().get("stable", {}).get("uri") == MODELS[0]["uri"], self.status()
        self.capacity = self.stable_capacity()
        self.ready_to_check = True
        self.act(("model", 1))  # most interleavings then run a rollout

    @rule(action=USER_ACTIONS)
    def user(self, action: tuple[str, Any]) -> None:
        self.act(action)

    @rule(action=CLUSTER_ACTIONS)
    def cluster(self, action: tuple[str, Any]) -> None:
        self.act(action)

    @rule(seconds=st.sampled_from([1, 5, 20, 61, 130]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(mode=st.sampled_from(["pass", "pass", "fail", "no-data", "error"]))
    def prometheus_answers(self, mode: Literal["pass", "fail", "no-data", "error"]) -> None:
        self.prometheus.mode = mode

    @rule(fault=FAULTS, trigger=st.sampled_from(["key", "twice", "stale body"]), stale=st.integers(0, 40))
    def reconcile(self, fault: Fault | None, trigger: str, stale: int) -> None:
        async def work() -> None:
            if trigger == "twice":
                await asyncio.gather(
                    self.service.reconcile_key(NAME, NAMESPACE), self.service.reconcile_key(NAME, NAMESPACE)
                )
            elif trigger == "stale body" and self.bodies:
                await self.service.reconcile(self.bodies[stale % len(self.bodies)])
            else:
                await self.service.reconcile_key(NAME, NAMESPACE)

        interposer = self._run(work, fault)
        if not interposer.fired:
            self._after_clean_reconcile()

    @rule()
    def undisturbed_reconcile(self) -> None:
        """Most reconciles go well: without them few rollouts would get anywhere to be disturbed."""
        self._reconcile_cleanly()

    @rule(deployment=st.sampled_from([STABLE, CANARY]))
    def pod_starts(self, deployment: str) -> None:
        self.store.pod_ready(deployment)

    @rule()
    def operator_restarts(self) -> None:
        self.service = self._start_operator()

    # What must hold after every step.

    @invariant()
    def holds(self) -> None:
        if not self.ready_to_check:
            return
        EXPLORED.steps += 1
        self.bodies = [*self.bodies[-39:], copy.deepcopy(self.body())]
        self.check_committed_statuses()
        self.check_canary_creations()
        self.check_traffic()
        self.check_events()

    def check_committed_statuses(self) -> None:
        """Steps never go back within a rollout, and a rollout that ended never comes back."""
        for status in self.store.committed_statuses[self.statuses_seen :]:
            for entry in status.get("history") or []:
                self.ended.add((entry["revision"], entry["startedAt"]))
            for event in status.get("pendingEvents") or []:
                self.pending_names.add(event["name"])
            canary = status.get("canary")
            if canary is None:
                continue
            key = (canary["revision"], canary["startedAt"])
            assert key not in self.ended, f"the rollout {key}, which ended, came back: {canary}"
            reached = self.steps_reached.get(key, 0)
            assert canary["step"] >= reached, f"the rollout {key} went back from step {reached}: {canary}"
            self.steps_reached[key] = canary["step"]
        self.statuses_seen = len(self.store.committed_statuses)

    def check_canary_creations(self) -> None:
        """A canary Deployment is created, or switched to a model, only for a spec change or a retry."""
        for deployment, revision in self.store.model_changes[self.model_changes_seen :]:
            if deployment != CANARY:
                continue
            assert self.permits[revision] > 0, (
                f"a canary Deployment for {revision} was created without a spec change or retry asking for it"
            )
            self.permits[revision] -= 1
        self.model_changes_seen = len(self.store.model_changes)

    def check_traffic(self) -> None:
        weight = self.route_weight()
        ready_canary = self.store.ready_pods(CANARY)
        assert weight == 0 or ready_canary, f"the route sends {weight}% to a canary without ready pods"
        rejected = self.status().get("rejected")
        if rejected is not None and weight > 0:
            assert all(pod.revision != rejected["revision"] for pod in ready_canary), (
                f"the route sends {weight}% to the rejected model {rejected['revision']}"
            )
        capacity = self.stable_capacity()
        if self.spec()["traffic"]["provider"] == "replicas":
            assert capacity >= min(self.replicas_floor, self.capacity), (
                f"stable replicas + ready canary pods fell to {capacity}, below the spec's"
                f" {self.replicas_floor} (it was {self.capacity})"
            )
        self.capacity = capacity

    def check_events(self) -> None:
        """Every transition Event announces a committed transition, at most once per rollout."""
        rollouts: Counter[str] = Counter(revision for revision, _ in {*self.ended, *self.steps_reached})
        by_message: Counter[tuple[str, str]] = Counter()
        for event in self.store.posted:
            if event.name is None:
                assert event.reason in FAILURE_REASONS, f"an Event without a name: {event}"
                continue
            assert event.name in self.pending_names, f"an Event no committed status announced: {event}"
            if event.reason in ROLLOUT_REASONS:
                by_message[(event.reason, event.message)] += 1
        for (reason, message), count in by_message.items():
            revision = _first_model(message)
            assert revision is not None, f"a {reason} Event names no model: {message}"
            assert count <= rollouts[revision], (
                f"{count} {reason} Events {message!r} for {rollouts[revision]} rollouts of {revision}"
            )

    # The end: faults stop, time passes, the rollout must end.

    def teardown(self) -> None:
        try:
            if self.ready_to_check:
                self.finish()
        finally:
            self.loop.close()

    def finish(self) -> None:
        self.prometheus.mode = "pass"
        self.act(("paused", False))
        self.service = self._start_operator()
        self.wake_ups.append(self.now)  # a starting operator lists every ModelDeployment
        deadline = self.now + FINISH_TIME
        for _ in range(FINISH_RECONCILES):
            for deployment in (STABLE, CANARY):
                while self.store.pod_ready(deployment):
                    pass
            self.store.sync()
            self.holds()
            told = self.store.version != self.version_seen
            due = [wake_up for wake_up in self.wake_ups if wake_up <= self.now]
            if told or due:
                for wake_up in due:
                    self.wake_ups.remove(wake_up)
                self.version_seen = self.store.version
                self._reconcile_cleanly()
                continue
            if self.finished():
                break
            assert self.wake_ups, f"the rollout is not over and nothing wakes the operator: {self.status()}"
            self.now = max(self.now, min(self.wake_ups))
            assert self.now <= deadline, f"the rollout did not end within {FINISH_TIME}: {self.status()}"
        assert self.finished(), f"the rollout did not end in {FINISH_RECONCILES} reconciles: {self.status()}"
        history = self.status().get("history") or []
        EXPLORED.outcomes[history[0]["outcome"] if history else "no rollout"] += 1
        EXPLORED.steps_reached.update(self.steps_reached.values())
        unposted = self.pending_names - self.store.event_names
        assert not unposted, f"Events announced in a status but never posted: {unposted}"

    def finished(self) -> bool:
        status = self.status()
        return (
            status.get("canary") is None
            and ("Deployment", NAMESPACE, CANARY) not in self.store.objects
            and self.route_weight() == 0
            and not status.get("pendingEvents")
        )


LONG = os.environ.get("MODELDEPLOY_ADVERSARIAL") == "long"
PROFILE = settings(
    max_examples=3000 if LONG else 60,
    stateful_step_count=100 if LONG else 60,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_rollouts_stay_correct_under_any_interleaving_of_events_faults_and_crashes() -> None:
    run_state_machine_as_test(AdversarialReconcile, settings=PROFILE)
    print(
        f"\nadversarial reconcile: {EXPLORED.interleavings} interleavings, {EXPLORED.steps} steps,"
        f" {EXPLORED.reconciles} reconciles, faults fired {dict(EXPLORED.faults)},"
        f" last outcomes {dict(EXPLORED.outcomes)}, rollouts by step reached {dict(EXPLORED.steps_reached)}"
    )


def test_an_overdue_canary_goes_only_with_the_stable_deployment_back_at_its_full_size() -> None:
    # Found by the harness: at promotion the stable Deployment switches to the new model at the
    # size it had beside the canary (1 of 2); when its new pod cannot start, the canary goes once
    # the retire limit passes, and it went leaving the stable Deployment at 1 replica, so stable
    # replicas + ready canary pods fell below spec.replicas with nothing scheduled to fix it.
    machine = AdversarialReconcile()
    try:
        machine.serving(provider="replicas", replicas=2, steps=[50], failure_limit=0, inconclusive_limit=1)
        machine.undisturbed_reconcile()
        machine.pod_starts(CANARY)
        machine.undisturbed_reconcile()
        machine.user(("promote", "full"))
        machine.undisturbed_reconcile()
        machine.holds()
        assert machine.store.objects[("Deployment", NAMESPACE, STABLE)]["spec"]["replicas"] == 1
        machine.cluster(("pod-fails", STABLE))
        machine.undisturbed_reconcile()
        machine.time_passes(11 * 60)  # past the retire limit (the progress deadline, 10m)
        machine.undisturbed_reconcile()
        machine.holds()
        assert ("Deployment", NAMESPACE, CANARY) not in machine.store.objects
        assert machine.store.objects[("Deployment", NAMESPACE, STABLE)]["spec"]["replicas"] == 2
    finally:
        machine.loop.close()
