"""Starts and stops a real control plane on 127.0.0.1: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok simulating one node."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from modeldeploy_localcluster import certs
from modeldeploy_localcluster.build import Binaries, Progress, ensure_binaries

NODE_NAME = "kwok-node-0"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 120.0
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A component failed to start or the cluster never became ready; names the component and log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: if the test process dies, the kernel kills the component too.

    SIGKILL rather than SIGTERM: a kube-apiserver whose etcd is gone takes long to shut down
    gracefully, and a test cluster's state is disposable.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def launch_component(
    name: str,
    command: list[str],
    log_path: Path,
    cwd: Path,
    detach: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Component]:
    """Starts one background program of the local cluster, its output appended to ``log_path``.

    stdin is /dev/null and the program gets a session of its own (stopped by process group); it
    dies with the caller unless ``detach`` (a cluster left running for `down` to stop).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent,
            cwd=cwd,
            env=env,
        )
    return process, Component(name=name, pid=process.pid, log=str(log_path))


WORKDIR_PREFIX = "modeldeploy-cluster-"
OWNER_FILE = "owner.pid"


def remove_abandoned_workdirs(parent: Path) -> list[Path]:
    """Deletes work directories left by test processes that were killed before they could clean up."""
    removed = []
    for workdir in parent.glob(f"{WORKDIR_PREFIX}*"):
        owner = workdir / OWNER_FILE
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(pid):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(workdir)
    return removed


@dataclass
class Component:
    name: str
    pid: int
    log: str


@dataclass
class ClusterState:
    """What `down` needs to stop a detached cluster; written to state.json in the work directory."""

    workdir: str
    kubeconfig: str
    apiserver_url: str
    ports: dict[str, int]
    components: list[Component] = field(default_factory=list)

    def save(self) -> None:
        (Path(self.workdir) / "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> ClusterState:
        raw = json.loads((workdir / "state.json").read_text())
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)


def kubeconfig_document(server: str, paths: certs.CertificatePaths) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(paths.ca_cert)}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(paths.admin_cert),
                    "client-key": str(paths.admin_key),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }


def node_manifest() -> dict[str, Any]:
    """A fake node that kwok adopts (by the annotation) and reports Ready."""
    # Generous, so benchmarks can run hundreds of server pods on the one fake node.
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000", "nvidia.com/gpu": "8"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state so a dead child is not counted as running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_components(components: list[Component], progress: Progress) -> None:
    """Stops components newest first, by process group, and waits until each has exited."""
    for component in reversed(components):
        if not process_alive(component.pid):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while process_alive(component.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(component.pid, os.WNOHANG)
            time.sleep(0.1)
        if process_alive(component.pid):
            progress(f"{component.name} (pid {component.pid}) ignored SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(component.pid, 0)


class LocalCluster:
    """One control plane in a work directory. Use as a context manager, or start/stop.

    With ``detach=False`` (tests) every component also dies with the Python process, so an
    interrupted test run leaves nothing behind; ``detach=True`` (the CLI's `up --detach`)
    keeps them running until `down`.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        binaries: Binaries | None = None,
        detach: bool = False,
        progress: Progress | None = None,
        advertise_address: str | None = None,
        kwok: bool = True,
        audit_policy: dict[str, Any] | None = None,
    ) -> None:
        """``advertise_address`` (not loopback) is where pods of a real node reach the API server:
        the `kubernetes` Service's endpoint. ``kwok=False`` leaves the node to a real kubelet.
        With ``audit_policy`` (an audit.k8s.io/v1 Policy), kube-apiserver writes the requests it
        selects to `audit_log`, one JSON event a line."""
        self._progress: Progress = progress or (lambda message: None)
        self.advertise_address = advertise_address
        self.with_kwok = kwok
        self.binaries = binaries or ensure_binaries(self._progress)
        self._owns_workdir = workdir is None
        if workdir is None:
            remove_abandoned_workdirs(Path(tempfile.gettempdir()))
            workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (workdir / OWNER_FILE).write_text(str(os.getpid()))
        self.workdir = workdir
        self.detach = detach
        self.audit_policy = audit_policy
        self.audit_log = self.workdir / "audit.log"
        self.components: list[Component] = []
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, list[str]] = {}
        self.ports = {
            name: free_port()
            for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok")
        }
        self.apiserver_url = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self._certs: certs.CertificatePaths | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        extra_ips = (self.advertise_address,) if self.advertise_address else ()
        self._certs = certs.generate(self.workdir / "pki", extra_ips)
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(self.apiserver_url, self._certs)))
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_for("kube-apiserver", self._apiserver_ready)
            self._start_controller_manager()
            self._start_scheduler()
            if self.with_kwok:
                self._start_kwok()
                self._create_node()
                self._wait_for("kwok node", self._node_ready)
            self._wait_for("kube-controller-manager (default service account)", self._default_sa_exists)
        except BaseException:
            self.stop()
            raise
        self._progress(
            f"control plane ready in {time.monotonic() - started:.1f}s; KUBECONFIG={self.kubeconfig}"
        )

    def stop(self) -> None:
        stop_components(self.components, self._progress)
        self.components.clear()
        self._processes.clear()
        if self._owns_workdir and not self.detach:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, name: str, down_seconds: float = 0.0) -> float:
        """Stops one component (by its PID, as `stop` does) and, after `down_seconds`, starts it again
        with the same command: arguments, data directory and ports. Returns once the API server answers
        /readyz again (which also checks etcd), with the seconds from the stop until then."""
        position = next((i for i, c in enumerate(self.components) if c.name == name), None)
        if position is None:
            raise ClusterError(f"no running component named {name}")
        started = time.monotonic()
        stop_components([self.components.pop(position)], self._progress)
        time.sleep(down_seconds)
        self._launch(name, self._commands[name])
        # Back in its place, so `stop` still stops the components in the reverse order of their start.
        self.components.insert(position, self.components.pop())
        if self.detach:
            self.state().save()
        self._wait_for(f"kube-apiserver after restarting {name}", self._apiserver_ready)
        return time.monotonic() - started

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far, in the order the API server wrote them."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()
        # The API server may be writing the last line right now; only whole lines are events.
        return [json.loads(line) for line in lines if line.endswith("}")]

    def state(self) -> ClusterState:
        return ClusterState(
            workdir=str(self.workdir),
            kubeconfig=str(self.kubeconfig),
            apiserver_url=self.apiserver_url,
            ports=self.ports,
            components=list(self.components),
        )

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        """Runs kubectl against this cluster and returns its standard output."""
        result = subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout if check else result.stdout + result.stderr

    def wait_for_crds(self, *names: str, timeout: float = 60.0) -> None:
        """Waits until each CRD (`crd/NAME`) is Established.

        Not `kubectl wait`: right after an apply a CRD may have no status yet, and kubectl then
        fails at once ("accessor error: <nil>") instead of waiting.
        """
        established = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        for name in names:
            while self.kubectl("get", name, "-o", f"jsonpath={established}", check=False).strip() != "True":
                if time.monotonic() > deadline:
                    raise ClusterError(f"{name} was not Established within {timeout:.0f}s")
                time.sleep(0.2)

    # -- components ------------------------------------------------------------------------------

    def _launch(self, name: str, command: list[str]) -> None:
        log_path = self.workdir / "logs" / f"{name}.log"
        self._progress(f"starting {name} (log: {log_path})")
        process, component = launch_component(name, command, log_path, self.workdir, self.detach)
        self._processes[name] = process
        self._commands[name] = command
        self.components.append(component)
        if self.detach:
            self.state().save()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        assert self._certs is not None
        c = self._certs
        self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                *self._advertise_flags(),
                f"--secure-port={self.ports['apiserver']}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                f"--client-ca-file={c.ca_cert}",
                f"--tls-cert-file={c.apiserver_cert}",
                f"--tls-private-key-file={c.apiserver_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={c.service_account_public_key}",
                f"--service-account-signing-key-file={c.service_account_key}",
                "--allow-privileged=true",
                *self._audit_flags(),
                "--v=1",
            ],
        )

    def _audit_flags(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self.audit_policy))
        # The log backend's default mode is blocking: an event is written before the answer is sent,
        # so a test that got its answer finds the event in the file.
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}"]

    def _advertise_flags(self) -> list[str]:
        if self.advertise_address is None:
            # Loopback cannot be an endpoint, and nothing outside this host would reach it anyway.
            return ["--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        return [f"--advertise-address={self.advertise_address}"]

    def _component_kubeconfig_flags(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self) -> None:
        assert self._certs is not None
        c = self._certs
        self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                *self._component_kubeconfig_flags(),
                f"--secure-port={self.ports['controller_manager']}",
                f"--root-ca-file={c.ca_cert}",
                f"--service-account-private-key-file={c.service_account_key}",
                f"--cluster-signing-cert-file={c.ca_cert}",
                f"--cluster-signing-key-file={c.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # kwok's heartbeats can lag on a busy two-core machine; a simulated node that
                # flaps to NotReady would make every pod unready, which no test wants.
                "--node-monitor-grace-period=1h",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        self._launch(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                *self._component_kubeconfig_flags(),
                f"--secure-port={self.ports['scheduler']}",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        stages = [(self.binaries.kwok_module_dir / relative).read_text() for relative in KWOK_STAGE_FILES]
        config = self.workdir / "kwok-stages.yaml"
        config.write_text("\n---\n".join(stages))
        self._launch(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=true",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.200.0.1",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ],
        )

    # -- readiness -------------------------------------------------------------------------------

    def _check_components_alive(self) -> None:
        for component in self.components:
            process = self._processes.get(component.name)
            if process is not None and process.poll() is not None:
                tail = "".join(Path(component.log).read_text(errors="replace").splitlines(True)[-15:])
                raise ClusterError(
                    f"{component.name} exited with code {process.returncode}; log: {component.log}\n{tail}"
                )

    def _wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error = ""
        while time.monotonic() < deadline:
            self._check_components_alive()
            try:
                if ready():
                    return
            except (OSError, ClusterError, ssl.SSLError) as error:
                last_error = str(error)
            time.sleep(0.25)
        logs = ", ".join(f"{c.name}: {c.log}" for c in self.components)
        raise ClusterError(f"timed out waiting for {what} ({last_error}); logs: {logs}")

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._certs is not None
        context = ssl.create_default_context(cafile=str(self._certs.ca_cert))
        context.load_cert_chain(str(self._certs.admin_cert), str(self._certs.admin_key))
        return context

    def _get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.apiserver_url + path)  # noqa: S310 - fixed https URL
        try:
            with urllib.request.urlopen(request, context=self._ssl_context(), timeout=5) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def _apiserver_ready(self) -> bool:
        status, _ = self._get("/readyz")
        return status == 200

    def _create_node(self) -> None:
        self.kubectl("apply", "-f", "-", input_text=json.dumps(node_manifest()))

    def _node_ready(self) -> bool:
        status, body = self._get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _default_sa_exists(self) -> bool:
        status, _ = self._get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200
