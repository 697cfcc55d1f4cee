"""Rollouts under faults of the control plane and of the leader's connection to it.

These tests break the control plane on purpose (kube-apiserver and etcd restarted, a leader cut off
from the API server), so they run on a cluster of their own, started for this module (about 5 s),
with an audit log of every write the operators make. The rollouts are those of test_canary.py: the
real operator, Prometheus, and stand-in server processes following the operator's Deployments.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_canary import STEP_SECONDS, CanaryRecorder, Rollouts, running_rollouts

from audit_timeline import is_lease_write, operator_writes_policy, overlapping_leaders, turns, write_requests
from kube_helpers import wait_until
from modeldeploy_localcluster.cluster import LocalCluster
from modeldeploy_localcluster.local_operator import metric_total
from modeldeploy_localcluster.standins import PrometheusProcess
from operator_harness import (
    CLUSTER_RULES,
    LEADER_ELECTION_RULES,
    LEASE_SECONDS,
    NAMESPACED_RULES,
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    OperatorProcess,
    install_crd_and_rbac,
    role_and_binding,
    rules,
    service_account,
    service_account_kubeconfig,
    steered_rollout_manifest,
)
from tcp_proxy import FreezableProxy

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

LEASE_NAME = "modeldeploy-operator"
STANDBY_ACCOUNT = "modeldeploy-operator-b"


def user_of(account: str) -> str:
    return f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"


@pytest.fixture(scope="module")
def faulty_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(audit_policy=operator_writes_policy(OPERATOR_NAMESPACE)) as cluster:
        install_crd_and_rbac(cluster)
        yield cluster


@pytest.fixture
def fault_namespace(faulty_cluster: LocalCluster) -> Iterator[str]:
    name = f"f-{uuid.uuid4().hex[:8]}"
    faulty_cluster.kubectl("create", "namespace", name)
    wait_until(
        lambda: bool(faulty_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False)),
        f"service account default in {name}",
    )
    yield name
    faulty_cluster.kubectl("delete", "namespace", name, "--wait=false")


def start_operator(
    cluster: LocalCluster,
    workdir: Path,
    account: str,
    server: str | None = None,
    leader_election: bool = True,
) -> OperatorProcess:
    """An operator as `account`, talking to `server` (a proxy's address) or to the API server itself."""
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = service_account_kubeconfig(cluster, workdir / "kubeconfig", account)
    if server is not None:
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = server
        kubeconfig.write_text(yaml.safe_dump(config))
    election = {
        "MODELDEPLOY_OPERATOR_LEADER_ELECTION": str(leader_election).lower(),
    }
    operator = OperatorProcess(kubeconfig, workdir / "operator.log", extra_env=election)
    operator.start()
    return operator


def stop_operator(operator: OperatorProcess) -> None:
    operator.stop()
    # A handler that crashed is a bug even when the test passed.
    assert "Traceback" not in operator.log_text(), operator.log_text()[-5000:]


def leads(operator: OperatorProcess) -> bool:
    return metric_total(operator.metrics(), "modeldeploy_operator_leader") == 1


def stable_replicas(cluster: LocalCluster, namespace: str) -> int | None:
    """The stable Deployment's replicas, None before the operator has created it."""
    found = cluster.kubectl(
        "get",
        "deployment",
        "iris-stable",
        "-n",
        namespace,
        "--ignore-not-found",
        "-o",
        "jsonpath={.spec.replicas}",
    )
    return int(found) if found.strip() else None


def reconcile_failed(status: dict[str, object]) -> list[object]:
    conditions = status.get("conditions", [])
    assert isinstance(conditions, list)
    return [c for c in conditions if isinstance(c, dict) and c.get("type") == "ReconcileFailed"]


def assert_promoted_once_step_by_step(
    rollouts: Rollouts, recorder: CanaryRecorder, outcome: dict[str, object]
) -> None:
    """The outcome of an undisturbed rollout of a good model: promoted, steps never back, one Event per
    transition, no failure left in the status."""
    history = outcome["history"]
    assert isinstance(history, list) and history[0]["outcome"] == "promoted", history
    steps = [sample["step"] for sample in recorder.samples]
    assert steps == sorted(steps), steps
    began = {(sample["step"], sample["stepStartedAt"]) for sample in recorder.samples}
    assert len(began) == len({step for step, _ in began}), began
    assert rollouts.events("RolloutStarted") == 1
    assert rollouts.events("StepAdvanced") == 1
    assert rollouts.events("Promoted") == 1
    assert rollouts.events("RolledBack") == 0
    assert reconcile_failed(outcome) == [], outcome["conditions"]


# The tests' Lease (3 s) is far shorter than either outage: the leader loses it, stops kopf, and takes
# it back in the same process once the API server answers. (Without leader election kopf runs on; see
# the long-outage test below.)
# etcd stops and starts within a second, which the API server rides out by waiting; down for longer
# than the Lease, it is an outage every client sees.
ETCD_DOWN_SECONDS = 2 * LEASE_SECONDS


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_rollout_restarted_under_its_feet_ends_as_an_undisturbed_one(
    component: str,
    faulty_cluster: LocalCluster,
    fault_namespace: str,
    prometheus: PrometheusProcess,
    iris_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    operator = start_operator(faulty_cluster, tmp_path / "operator", SERVICE_ACCOUNT)
    try:
        with running_rollouts(
            faulty_cluster, fault_namespace, prometheus, tmp_path / "stand-ins"
        ) as rollouts:
            rollouts.deploy_stable(iris_models["v1"], "v1")
            rollouts.start_rollout(iris_models["v1-retrained"], "v2")
            recorder = CanaryRecorder(rollouts)
            # Mid-step: the first step's analysis window is running.
            time.sleep(STEP_SECONDS / 2)
            down = ETCD_DOWN_SECONDS if component == "etcd" else 0.0
            outage = faulty_cluster.restart(component, down_seconds=down)
            outcome = rollouts.wait_for_outcome()
            recorder.stop()

            assert_promoted_once_step_by_step(rollouts, recorder, outcome)
            assert outcome["stable"]["version"] == "v2"  # type: ignore[index]
            # The same process did all of it, and reconciles again: it never needed a restart.
            assert operator.process is not None and operator.process.poll() is None
            assert leads(operator)
            # Its watches work: a hand edit of a child is put back at once (no timer would notice it).
            faulty_cluster.kubectl(
                "scale", "deployment", "iris-stable", "-n", fault_namespace, "--replicas=5"
            )
            wait_until(
                lambda: stable_replicas(faulty_cluster, fault_namespace) == 2,
                "the operator to put the stable Deployment's replicas back",
                timeout=30,
            )
            lost = "lost the leader-election Lease" in operator.log_text()
            print(f"{component} restart: API server not ready for {outage:.1f}s; Lease lost: {lost}")
    finally:
        stop_operator(operator)


# Longer than kopf's default retries of a failed watch request (1+1+2+3+5+8+13+21 = 54 s), after which
# kopf gave a watch up for good and the operator, still live, never heard of that kind again.
LONG_OUTAGE_SECONDS = 56


def test_the_watches_come_back_after_an_api_server_outage_longer_than_kopfs_retries(
    faulty_cluster: LocalCluster, fault_namespace: str, tmp_path: Path
) -> None:
    # One replica without leader election (the chart allows it): nothing restarts kopf after an outage.
    operator = start_operator(faulty_cluster, tmp_path / "operator", SERVICE_ACCOUNT, leader_election=False)
    try:
        faulty_cluster.kubectl(
            "apply", "-n", fault_namespace, "-f", "-", input_text=steered_rollout_manifest("v1")
        )
        wait_until(lambda: stable_replicas(faulty_cluster, fault_namespace) == 2, "the stable Deployment")

        outage = faulty_cluster.restart("kube-apiserver", down_seconds=LONG_OUTAGE_SECONDS)

        # A change to the ModelDeployment (only its watch tells) and a hand edit of a child (only the
        # children's watch tells) are both acted on.
        faulty_cluster.kubectl(
            "patch", "md", "iris", "-n", fault_namespace, "--type=merge", "-p", '{"spec": {"replicas": 3}}'
        )
        wait_until(
            lambda: stable_replicas(faulty_cluster, fault_namespace) == 3,
            "the operator to follow a spec change made after the outage",
            timeout=30,
        )
        faulty_cluster.kubectl("scale", "deployment", "iris-stable", "-n", fault_namespace, "--replicas=7")
        wait_until(
            lambda: stable_replicas(faulty_cluster, fault_namespace) == 3,
            "the operator to put back a hand edit made after the outage",
            timeout=30,
        )
        assert operator.process is not None and operator.process.poll() is None
        print(f"API server away for {outage:.1f}s")
    finally:
        stop_operator(operator)
        restart_the_controllers(faulty_cluster)


def restart_the_controllers(cluster: LocalCluster) -> None:
    """After an outage this long the cluster's own controllers (client-go informers) back off for up to a
    minute more before they watch again: 78 s passed before a new Deployment had pods here, and a CI run
    of the next test in this module timed out waiting for its ModelDeployment to be Ready. Started
    afresh they list at once, and the module's next test gets a working cluster."""
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        cluster.restart(component)


def install_standby_account(cluster: LocalCluster) -> None:
    """A second service account with the operator's rights, so the audit log tells the replicas apart."""
    objects = [
        service_account(STANDBY_ACCOUNT),
        *role_and_binding(
            STANDBY_ACCOUNT,
            [*rules(NAMESPACED_RULES), *rules(CLUSTER_RULES)],
            service_account=STANDBY_ACCOUNT,
        ),
        *role_and_binding(
            STANDBY_ACCOUNT, rules(LEADER_ELECTION_RULES), OPERATOR_NAMESPACE, service_account=STANDBY_ACCOUNT
        ),
    ]
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(objects))


def test_a_leader_cut_off_from_the_api_server_never_writes_beside_its_successor(
    faulty_cluster: LocalCluster,
    fault_namespace: str,
    prometheus: PrometheusProcess,
    iris_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    install_standby_account(faulty_cluster)
    leader_user, standby_user = user_of(SERVICE_ACCOUNT), user_of(STANDBY_ACCOUNT)
    with FreezableProxy("127.0.0.1", faulty_cluster.ports["apiserver"]).running() as proxy:
        a = start_operator(faulty_cluster, tmp_path / "a", SERVICE_ACCOUNT, f"https://127.0.0.1:{proxy.port}")
        wait_until(lambda: leads(a), "operator A to lead")
        b = start_operator(faulty_cluster, tmp_path / "b", STANDBY_ACCOUNT)
        try:
            with running_rollouts(
                faulty_cluster, fault_namespace, prometheus, tmp_path / "stand-ins"
            ) as rollouts:
                rollouts.deploy_stable(iris_models["v1"], "v1")
                rollouts.start_rollout(
                    iris_models["v1-retrained"], "v2", steps=[20, 40, 60], inconclusiveLimit=20
                )
                recorder = CanaryRecorder(rollouts)
                assert not leads(b)
                # A advances the first step (so the canary serves and is analysed), then, mid-step, when
                # A has nothing to write until the window ends, it is cut off; the window ends during
                # the freeze, so A's timer fires while it cannot reach the API server.
                # The first verdict waits for the canary's stand-in, which took 100 s to start at a load
                # average of 25 on this machine.
                wait_until(
                    lambda: rollouts.status()["canary"]["step"] == 1, "A to advance a step", timeout=180
                )
                time.sleep(STEP_SECONDS / 2)
                proxy.freeze()
                frozen_at = time.monotonic()
                wait_until(
                    lambda: leads(b), "operator B to take the Lease over", timeout=4 * LEASE_SECONDS + 10
                )
                taken_over = time.monotonic() - frozen_at
                # B goes on with the rollout while A, cut off, still believes it may lead.
                wait_until(
                    lambda: rollouts.status().get("canary", {}).get("step", 99) > 1,
                    "B to advance the step",
                    timeout=90,
                )
                # A's window ended inside the freeze, whatever the timing: its timer fired while cut off.
                time.sleep(max(0.0, frozen_at + STEP_SECONDS - time.monotonic()))
                proxy.thaw()
                thawed_after = time.monotonic() - frozen_at
                # A learns that it lost the Lease and waits as a standby, in the same process.
                wait_until(lambda: not leads(a), "A to stop leading once it reaches the API server again")
                time.sleep(2 * LEASE_SECONDS)  # room for anything A still had queued to reach the server
                assert a.process is not None and a.process.poll() is None, a.log_text()[-3000:]
                # B stops (releasing the Lease): A takes it back and finishes the rollout.
                b.stop()
                wait_until(lambda: leads(a), "A to take the Lease back", timeout=4 * LEASE_SECONDS + 10)
                outcome = rollouts.wait_for_outcome()
                recorder.stop()
        finally:
            b.stop()
            a.stop()
            # Shown by pytest only when the test failed: which replica did what, and when.
            for name, replica in (("A", a), ("B", b)):
                print(f"--- the end of operator {name}'s log:\n{replica.log_text()[-6000:]}")
    for operator in (a, b):
        assert "Traceback" not in operator.log_text(), operator.log_text()[-5000:]

    writes = write_requests(faulty_cluster.audit_events(), [leader_user, standby_user])
    problems = overlapping_leaders(writes, OPERATOR_NAMESPACE, LEASE_NAME)
    assert problems == [], "\n".join(problems)
    who = turns(writes)
    print(f"B led {taken_over:.1f}s after the freeze; thawed after {thawed_after:.1f}s; turns: {who}")
    # A led, B took over (and wrote more than the Lease), A led again; each turn began with the Lease.
    assert [user for user, _ in who] == [leader_user, standby_user, leader_user], who
    assert who[1][1] > 1, who
    b_first = next(write for write in writes if write.user == standby_user and write.accepted)
    assert is_lease_write(b_first, OPERATOR_NAMESPACE, LEASE_NAME), b_first
    # And the rollout ended as an undisturbed one: promoted, step by step, each transition told once.
    history = outcome["history"]
    assert history[0]["outcome"] == "promoted", history
    steps = [sample["step"] for sample in recorder.samples]
    assert steps == sorted(steps), steps
    assert rollouts.events("StepAdvanced") == 2
    assert rollouts.events("Promoted") == 1
    assert reconcile_failed(outcome) == [], outcome["conditions"]
