"""The local control plane behaves like a cluster in the ways modeldeploy depends on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lightkube import ApiError, Client
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Pod

from kube_helpers import exists, wait_until
from modeldeploy_localcluster.cluster import LocalCluster, process_alive, remove_abandoned_workdirs

pytestmark = pytest.mark.cluster


def test_deployment_pods_become_running_and_ready(kube: Client, namespace: str) -> None:
    labels = {"app": "web"}
    kube.create(
        Deployment(
            metadata=ObjectMeta(name="web", namespace=namespace),
            spec=DeploymentSpec(
                replicas=2,
                selector=LabelSelector(matchLabels=labels),
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels=labels),
                    spec=PodSpec(containers=[Container(name="web", image="example.invalid/web:1")]),
                ),
            ),
        )
    )

    def two_pods_ready() -> bool:
        pods = list(kube.list(Pod, namespace=namespace, labels=labels))
        ready = [
            pod
            for pod in pods
            if pod.status
            and pod.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        ]
        return len(ready) == 2

    wait_until(two_pods_ready, "2 Running and Ready pods")
    wait_until(
        lambda: (kube.get(Deployment, "web", namespace=namespace).status.availableReplicas or 0) == 2,
        "the Deployment to report 2 available replicas",
    )


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(kube: Client, namespace: str) -> None:
    owner = kube.create(ConfigMap(metadata=ObjectMeta(name="owner", namespace=namespace)))
    assert owner.metadata is not None and owner.metadata.uid is not None
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(
                name="dependent",
                namespace=namespace,
                ownerReferences=[
                    OwnerReference(apiVersion="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
                ],
            )
        )
    )
    kube.delete(ConfigMap, "owner", namespace=namespace)

    wait_until(lambda: not exists(kube, ConfigMap, "dependent", namespace), "the dependent to be collected")


WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.localcluster.test
    spec:
      group: localcluster.test
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  required: [minReplicas, maxReplicas]
                  properties:
                    minReplicas: {type: integer, minimum: 0}
                    maxReplicas: {type: integer}
                  x-kubernetes-validations:
                    - rule: self.minReplicas <= self.maxReplicas
                      message: spec.minReplicas must not exceed spec.maxReplicas
    """
)


def _widget(name: str, namespace: str, low: int, high: int) -> str:
    return json.dumps(
        {
            "apiVersion": "localcluster.test/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"minReplicas": low, "maxReplicas": high},
        }
    )


def test_crd_cel_rule_rejects_a_bad_object_through_kubectl(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=WIDGET_CRD)
    cluster.wait_for_crds("crd/widgets.localcluster.test")

    cluster.kubectl("apply", "-f", "-", input_text=_widget("good", namespace, 1, 3))
    rejected = cluster.kubectl("apply", "-f", "-", input_text=_widget("bad", namespace, 5, 3), check=False)

    assert "spec.minReplicas must not exceed spec.maxReplicas" in rejected
    assert 'The Widget "bad" is invalid: spec:' in rejected
    assert "bad" not in cluster.kubectl("get", "widgets", "-n", namespace, "-o", "name")


def test_server_side_apply_with_a_field_manager_from_the_python_client(kube: Client, namespace: str) -> None:
    desired = ConfigMap(
        metadata=ObjectMeta(name="applied", namespace=namespace), data={"model": "iris", "weight": "10"}
    )
    kube.apply(desired, field_manager="modeldeploy")

    stored = kube.get(ConfigMap, "applied", namespace=namespace)
    assert stored.data == {"model": "iris", "weight": "10"}
    assert stored.metadata is not None
    assert [entry.manager for entry in stored.metadata.managedFields or []] == ["modeldeploy"]

    # Another manager may not take a field that modeldeploy owns without forcing...
    contender = ConfigMap(metadata=ObjectMeta(name="applied", namespace=namespace), data={"weight": "99"})
    with pytest.raises(ApiError) as conflict:
        kube.apply(contender, field_manager="someone-else")
    assert conflict.value.status.code == 409

    # ...and re-applying our own state is a no-op that keeps our ownership.
    kube.apply(desired, field_manager="modeldeploy")
    again = kube.get(ConfigMap, "applied", namespace=namespace)
    assert again.metadata is not None and stored.metadata is not None
    assert again.metadata.resourceVersion == stored.metadata.resourceVersion


def _port_is_listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_starting_and_stopping_twice_leaves_no_process_or_port(tmp_path: Path) -> None:
    for round_number in (1, 2):
        workdir = tmp_path / f"round-{round_number}"
        with LocalCluster(workdir=workdir) as cluster:
            assert "Ready" in cluster.kubectl("get", "nodes", "--no-headers")
            pids = [component.pid for component in cluster.components]
            ports = list(cluster.ports.values())
            assert len(pids) == 5
            assert _port_is_listening(cluster.ports["apiserver"])
        leftovers = [pid for pid in pids if process_alive(pid)]
        listening = [port for port in ports if _port_is_listening(port)]
        assert leftovers == []
        assert listening == []


STARTS_A_CLUSTER_AND_HANGS = """
import json, sys, time
from modeldeploy_localcluster.cluster import LocalCluster
cluster = LocalCluster()
cluster.start()
print(json.dumps({"pids": [c.pid for c in cluster.components], "workdir": str(cluster.workdir)}), flush=True)
time.sleep(600)
"""


def test_a_killed_test_process_takes_its_cluster_along() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_CLUSTER_AND_HANGS], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    assert all(process_alive(pid) for pid in started["pids"])

    owner.kill()
    owner.wait()

    wait_until(
        lambda: not any(process_alive(pid) for pid in started["pids"]),
        "the components of a killed owner to exit",
        timeout=15,
    )
    # The next cluster sweeps the work directory the killed process could not remove.
    assert Path(started["workdir"]) in remove_abandoned_workdirs(Path(started["workdir"]).parent)
