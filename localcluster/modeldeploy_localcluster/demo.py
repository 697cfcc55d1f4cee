"""The README's demo: a real control plane, the operator, and a model deployed, changed and deleted.

Everything runs on 127.0.0.1; kwok plays the node, so the server pods become Ready without
running containers. Canary rollouts with live traffic join the demo as they are built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modeldeploy_localcluster.cluster import ClusterError, LocalCluster, free_port

Say = Callable[[str], None]
DEMO_IMAGE = "modeldeploy-server:demo"


class Demo:
    def __init__(self, cluster: LocalCluster, repo: Path, say: Say) -> None:
        self.cluster = cluster
        self.repo = repo
        self.say = say
        self.operator_log = cluster.workdir / "logs" / "operator.log"
        self.operator: subprocess.Popen[bytes] | None = None

    def show(self, *args: str) -> None:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
        print(self.cluster.kubectl(*args), end="", flush=True)

    def start_operator(self) -> None:
        self.cluster.kubectl("apply", "--server-side", "-f", str(self.repo / "crds"))
        self.cluster.wait_for_crds("crd/modeldeployments.modeldeploy.io")
        self.cluster.kubectl("create", "namespace", "modeldeploy-system")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "MODELDEPLOY_OPERATOR_SERVER_IMAGE": DEMO_IMAGE,
        }
        self.say(f"starting the operator (log: {self.operator_log})")
        with self.operator_log.open("wb") as log:
            self.operator = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "modeldeploy-operator"),
                    f"--liveness=http://127.0.0.1:{free_port()}/healthz",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "Became the leader" not in self.operator_log.read_text(errors="replace"):
            if self.operator.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"the operator did not start; log: {self.operator_log}")
            time.sleep(0.2)

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            self.operator.wait(timeout=30)

    def wait_ready(self) -> None:
        self.cluster.kubectl("wait", "--for=condition=Ready", "modeldeployment/iris", "--timeout=120s")

    def run(self) -> None:
        self.start_operator()
        self.say("1. an ML engineer applies examples/iris.yaml")
        self.show("apply", "-f", str(self.repo / "examples" / "iris.yaml"))
        started = time.monotonic()
        self.wait_ready()
        self.say(f"Ready {time.monotonic() - started:.1f}s after apply")
        self.show("get", "modeldeployments")
        self.show(
            "get", "deployments,services,poddisruptionbudgets,pods", "-l", "app.kubernetes.io/instance=iris"
        )
        self.show("get", "events", "--field-selector", "involvedObject.kind=ModelDeployment")

        self.say("2. more replicas: the spec changes, the Deployment follows")
        self.show("patch", "modeldeployment", "iris", "--type=merge", "-p", '{"spec": {"replicas": 3}}')
        self.wait_for(lambda: self.deployment()["status"].get("readyReplicas") == 3, "3 ready replicas")
        self.wait_ready()
        self.show("get", "modeldeployments")

        self.say("3. someone edits the Deployment by hand: the operator puts it back")
        self.show("set", "image", "deployment/iris-stable", "server=registry.invalid/tampered:1")
        self.wait_for(
            lambda: self.deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == DEMO_IMAGE,
            "the image to be restored",
        )
        self.show(
            "get",
            "deployment",
            "iris-stable",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}{'\\n'}",
        )

        self.say("4. a manifest with a mistake is refused by the API server, naming the field")
        bad = self.repo / "examples" / "invalid" / "negative-replicas.yaml"
        print(f"\n$ kubectl apply -f {bad.relative_to(self.repo)}")
        print(self.cluster.kubectl("apply", "-f", str(bad), check=False), end="")

        self.say("5. deleting the ModelDeployment removes everything it created")
        self.show("delete", "modeldeployment", "iris")
        self.wait_for(
            lambda: not self.cluster.kubectl(
                "get", "deployments,services", "-l", "app.kubernetes.io/instance=iris", "-o", "name"
            ).strip(),
            "the children to go",
        )
        self.show("get", "deployments,services", "-l", "app.kubernetes.io/instance=iris")

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", "deployment", "iris-stable", "-o", "json")
        )
        return found

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterError(f"demo: timed out waiting for {what}; operator log: {self.operator_log}")
            time.sleep(0.3)


def run_demo(workdir: Path, repo: Path, say: Say) -> None:
    with LocalCluster(workdir=workdir, progress=say) as cluster:
        demo = Demo(cluster, repo, say)
        try:
            demo.run()
        finally:
            demo.stop_operator()
        say("demo finished; `modeldeploy-localcluster up` starts a control plane to explore by hand")
