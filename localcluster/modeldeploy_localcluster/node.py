"""A real node beside the local control plane: containerd, kubelet, kube-proxy and CoreDNS.

Everything runs inside a network namespace this run creates, so the kubelet's and kube-proxy's
iptables rules, the CNI bridge and the pods' addresses go away with it; nothing touches the
host's addresses or iptables. The control plane stays on the host's 127.0.0.1: a forwarder
(netns_forward) makes the API server reachable at NODE_IP inside the namespace, which is also
the address the API server advertises for the `kubernetes` Service. See
/work/shared/design/REAL-NODE.md for why each setting is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.build import (
    NodeBinaries,
    Progress,
    _exclusive,
    _run_logged,
    cache_root,
    ensure_node_binaries,
)
from modeldeploy_localcluster.cluster import (
    SERVICE_CLUSTER_IP_RANGE,
    ClusterError,
    Component,
    LocalCluster,
    launch_component,
    process_alive,
    stop_components,
)
from modeldeploy_localcluster.images import BuiltImage, content_hash

NODE_NAME = "realnode-0"
NODE_IP = "10.213.0.1"
NODE_POD_SUBNET = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "localhost/pause:catatonit"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_MOUNT = Path("/sys/fs/cgroup")
NODE_READY_TIMEOUT_SECONDS = 180.0
POD_DELETE_TIMEOUT_SECONDS = 90.0


def containerd_config(workdir: Path) -> str:
    """containerd 2's CRI settings for this VM (root without CAP_SYS_RESOURCE, cgroup v1)."""
    state = workdir / "containerd"
    return f"""version = 3
root = "{state / "root"}"
state = "{state / "state"}"

[grpc]
  address = "{state / "containerd.sock"}"

[ttrpc]
  address = "{state / "containerd.sock.ttrpc"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{workdir / "cni" / "net.d"}"
"""


def cni_conflist(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "modeldeploy-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "mdbr0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(workdir: Path, cgroup_root: str) -> dict[str, Any]:
    """``cgroup_root`` is the node's own: two nodes on one host would otherwise share /kubepods,
    and each kubelet removes the pod cgroups it does not know, killing the other node's pods."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # kubelet 1.36 refuses cgroup v1 (this VM's hybrid hierarchy) unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{workdir / 'containerd' / 'containerd.sock'}",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(workdir / "pki" / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(workdir / "node" / "resolv.conf"),
        "podLogsDir": str(workdir / "node" / "pod-logs"),
        # A shared, busy disk: the defaults would evict or garbage-collect the test images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 30,
        "serializeImagePulls": False,
    }


def corefile(kubeconfig: Path) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


def mounts_under(mounts_text: str, root: Path) -> list[str]:
    """Mount points at or below root, deepest first (the order they can be unmounted in)."""
    prefix = str(root).rstrip("/") + "/"
    points = [line.split()[1] for line in mounts_text.splitlines() if len(line.split()) > 1]
    ours = {point for point in points if point.startswith(prefix) or point == str(root)}
    return sorted(ours, key=lambda point: (point.count("/"), point), reverse=True)


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise ClusterError(f"{what} failed: {' '.join(command)}: {(result.stdout + result.stderr).strip()}")
    return result.stdout


def ensure_pause_image(progress: Progress) -> Path:
    """A pause image holding Debian's static catatonit (no registry here), as a docker-archive."""
    catatonit = Path("/usr/bin/catatonit")
    containerfile = 'FROM scratch\nCOPY catatonit /catatonit\nENTRYPOINT ["/catatonit", "-P"]\n'
    key = content_hash([("catatonit", catatonit.read_bytes()), ("Containerfile", containerfile.encode())])
    archive = cache_root() / "images" / f"pause-{key[:16]}.tar"
    if archive.is_file():
        return archive
    with _exclusive(cache_root() / "locks" / "image-pause.lock"):
        if archive.is_file():
            return archive
        archive.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="modeldeploy-pause-"))
        log = cache_root() / "logs" / "image-pause.log"
        try:
            shutil.copy2(catatonit, work / "catatonit")
            (work / "Containerfile").write_text(containerfile)
            env = dict(os.environ)
            build = ["podman", "build", "--network=none", "-t", PAUSE_IMAGE, "-f", "Containerfile", "."]
            _run_logged("pause image", build, work, log, env, progress)
            partial = archive.with_suffix(".partial")
            save = ["podman", "save", "--format", "docker-archive", "-o", str(partial), PAUSE_IMAGE]
            _run_logged("pause image (podman save)", save, work, log, env, progress)
            partial.rename(archive)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return archive


class RealNode:
    """One kubelet node in its own network namespace, registered with ``cluster``.

    ``cluster`` must have been made with ``advertise_address=NODE_IP`` (so the `kubernetes`
    Service points where pods can reach the API server) and without kwok.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        images: dict[str, BuiltImage],
        binaries: NodeBinaries | None = None,
        progress: Progress | None = None,
        detach: bool = False,
    ) -> None:
        self.detach = detach
        self._progress: Progress = progress or (lambda message: None)
        self.cluster = cluster
        self.images = images
        self.binaries = binaries or ensure_node_binaries(self._progress)
        self.netns = f"modeldeploy-{uuid.uuid4().hex[:8]}"
        self.cgroup_root = f"/{self.netns}"
        self.workdir = cluster.workdir
        self.components: list[Component] = []
        self.node_kubeconfig = self.workdir / "node" / "kubeconfig"
        self.timings: dict[str, float] = {}
        self._commands: dict[str, list[str]] = {}

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def in_netns(self, *command: str) -> list[str]:
        """A command line that runs inside the node's network namespace (mounts stay the host's)."""
        return ["nsenter", f"--net={self.netns_path}", "--", *command]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        if os.geteuid() != 0:
            raise ClusterError("a real node needs root (network namespace, containerd, kubelet)")
        for tool in ("nsenter", "ip", RUNC, f"{CNI_BIN_DIR}/bridge", "/usr/bin/catatonit", "podman"):
            if shutil.which(tool) is None and not Path(tool).exists():
                raise ClusterError(f"{tool} is missing: run scripts/install-realnode-deps.sh")
        pause = ensure_pause_image(self._progress)
        try:
            self._create_netns()
            self._create_cgroup_root()
            self._write_configs()
            self._launch(
                "apiserver-forward",
                [
                    sys.executable, "-m", "modeldeploy_localcluster.netns_forward",
                    self.netns_path, NODE_IP, str(self.cluster.ports["apiserver"]),
                    str(self.cluster.ports["apiserver"]),
                ],
            )  # fmt: skip
            self._launch(
                "containerd",
                self.in_netns(
                    str(self.binaries.containerd), "--config", str(self.workdir / "containerd.toml")
                ),
            )
            self._wait_for("containerd", lambda: (self.workdir / "containerd" / "containerd.sock").exists())
            imported = time.monotonic()
            for archive in [pause, *(image.archive for image in self.images.values())]:
                self.ctr("images", "import", str(archive))
            self.timings["image import"] = time.monotonic() - imported
            self._launch(
                "coredns",
                self.in_netns(str(self.binaries.coredns), "-conf", str(self.workdir / "node" / "Corefile")),
            )
            self._launch(
                "kubelet",
                self.in_netns(
                    str(self.binaries.kubelet),
                    f"--config={self.workdir / 'node' / 'kubelet.yaml'}",
                    f"--kubeconfig={self.node_kubeconfig}",
                    f"--root-dir={self.workdir / 'kubelet'}",
                    f"--cert-dir={self.workdir / 'kubelet' / 'pki'}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-ip={NODE_IP}",
                    "--v=1",
                ),
            )
            self._launch(
                "kube-proxy",
                self.in_netns(
                    str(self.binaries.kube_proxy),
                    f"--kubeconfig={self.node_kubeconfig}",
                    f"--hostname-override={NODE_NAME}",
                    "--proxy-mode=iptables",
                    f"--cluster-cidr={NODE_POD_SUBNET}",
                    # These are host-wide sysctls; leave them alone.
                    "--conntrack-max-per-core=0",
                    "--conntrack-tcp-timeout-established=0",
                    "--conntrack-tcp-timeout-close-wait=0",
                    "--v=1",
                ),
            )
            self._wait_for("kubelet (node Ready)", self._node_ready, NODE_READY_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        self.timings["node up"] = time.monotonic() - started
        self._progress(f"real node {NODE_NAME} ready in {self.timings['node up']:.1f}s (netns {self.netns})")

    def stop(self) -> None:
        started = time.monotonic()
        # Pods first, through the API: the kubelet then removes sandboxes, mounts and CNI leases.
        # Their controllers go first, or they would make new pods.
        if any(c.name == "kubelet" for c in self.components):
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                self.cluster.kubectl(
                    "delete", "modeldeployments,deployments,replicasets,statefulsets,daemonsets,jobs",
                    "--all", "--all-namespaces", "--wait=false",
                )  # fmt: skip
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                self.cluster.kubectl(
                    "delete", "pods", "--all", "--all-namespaces", "--grace-period=5",
                    f"--timeout={POD_DELETE_TIMEOUT_SECONDS:.0f}s", "--wait=true",
                )  # fmt: skip
        stop_components(self.components, self._progress)
        self.components.clear()
        mounts = Path("/proc/self/mounts").read_text()
        for point in mounts_under(mounts, self.workdir):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        self._remove_cgroup_root()
        self.timings["node down"] = time.monotonic() - started

    # -- helpers ---------------------------------------------------------------------------------

    def _create_netns(self) -> None:
        _run(["ip", "netns", "add", self.netns], "creating the node's network namespace")
        _run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], "bringing lo up")
        _run(
            ["ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
            "adding the node address",
        )
        # Clients inside the namespace need a route to the Service range before kube-proxy's
        # OUTPUT rules can rewrite the destination; a veth pair local to the namespace carries it
        # (this kernel has no dummy interfaces).
        for command in (
            ["ip", "link", "add", "mdnode0", "type", "veth", "peer", "name", "mdnode1"],
            ["ip", "link", "set", "mdnode0", "up"],
            ["ip", "link", "set", "mdnode1", "up"],
            ["ip", "route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", "mdnode0", "src", NODE_IP],
        ):
            _run(["ip", "netns", "exec", self.netns, *command], "routing the Service range")

    def _cgroup_root_dirs(self) -> list[Path]:
        """The node's cgroup root in every cgroup v1 hierarchy (and the unified one) of this host."""
        hierarchies = [path for path in CGROUP_MOUNT.iterdir() if path.is_dir() and not path.is_symlink()]
        return [path / self.cgroup_root.lstrip("/") for path in hierarchies]

    def _create_cgroup_root(self) -> None:
        # The kubelet refuses a cgroupRoot that does not exist; it makes kubepods inside.
        for directory in self._cgroup_root_dirs():
            directory.mkdir(exist_ok=True)

    def _remove_cgroup_root(self) -> None:
        """Removes the node's cgroups, deepest first (rmdir works once no process is left in one)."""
        for root in self._cgroup_root_dirs():
            if root.is_dir():
                for directory in sorted(
                    (d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)
                ):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()

    def _write_configs(self) -> None:
        node = self.workdir / "node"
        (node / "pod-logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.workdir / "containerd").mkdir(parents=True, exist_ok=True)
        (self.workdir / "containerd.toml").write_text(containerd_config(self.workdir))
        (self.workdir / "cni" / "net.d" / "10-modeldeploy.conflist").write_text(
            json.dumps(cni_conflist(self.workdir), indent=2)
        )
        (node / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(self.workdir, self.cgroup_root)))
        # Names outside the cluster domain do not resolve: tests reach nothing outside.
        (node / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
        kubeconfig = yaml.safe_load(self.cluster.kubeconfig.read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = (
            f"https://{NODE_IP}:{self.cluster.ports['apiserver']}"
        )
        self.node_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        (node / "Corefile").write_text(corefile(self.node_kubeconfig))

    def restart(self, name: str) -> None:
        """Stops one of the node's programs (SIGTERM, as its service manager would) and starts it
        again with the same command line, then waits for the node to be Ready: a kubelet restart
        on a node upgrade or a crash. The pods' containers keep running meanwhile."""
        (component,) = [c for c in self.components if c.name == name]
        stop_components([component], self._progress)
        self.components.remove(component)
        stopped = datetime.now(UTC)
        self._launch(name, self._commands[name])
        # The Node stays Ready for its lease's duration: only a renewal shows the kubelet is back.
        self._wait_for(
            f"the node's Lease renewed after {name} restarted",
            lambda: self._node_ready() and self._lease_renewed_after(stopped),
            NODE_READY_TIMEOUT_SECONDS,
        )

    def _lease_renewed_after(self, moment: datetime) -> bool:
        renewed = self.cluster.kubectl(
            "get",
            "lease",
            NODE_NAME,
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
            check=False,
        ).strip()
        return bool(renewed) and datetime.fromisoformat(renewed.replace("Z", "+00:00")) > moment

    def _launch(self, name: str, command: list[str]) -> None:
        self._commands[name] = command
        log_path = self.workdir / "logs" / f"{name}.log"
        self._progress(f"starting {name} (log: {log_path})")
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.binaries.containerd.parent), env.get("PATH", "")])
        _, component = launch_component(name, command, log_path, self.workdir, self.detach, env)
        self.components.append(component)

    def ctr(self, *args: str) -> str:
        """containerd's own client on the node's Kubernetes namespace (`ctr tasks kill ID`, ...)."""
        socket_path = self.workdir / "containerd" / "containerd.sock"
        return _run([str(self.binaries.ctr), "--address", str(socket_path), "-n", "k8s.io", *args], "ctr")

    def check_alive(self, components: list[Component] | None = None) -> None:
        """Raises naming the first of ``components`` (the node's own by default) that has exited."""
        for component in self.components if components is None else components:
            if not process_alive(component.pid):
                tail = "".join(Path(component.log).read_text(errors="replace").splitlines(True)[-15:])
                raise ClusterError(f"{component.name} exited; log: {component.log}\n{tail}")

    def _wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(ClusterError, OSError):
                if ready():
                    return
            time.sleep(0.5)
        logs = ", ".join(f"{c.name}: {c.log}" for c in self.components)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; logs: {logs}")

    def _node_ready(self) -> bool:
        ready = '{.status.conditions[?(@.type=="Ready")].status}'
        output = self.cluster.kubectl("get", "node", NODE_NAME, "-o", f"jsonpath={ready}", check=False)
        return output.strip() == "True"
