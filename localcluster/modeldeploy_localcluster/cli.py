"""`modeldeploy-localcluster`: build, start and stop the local control plane from a shell."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from modeldeploy_localcluster.build import (
    BuildError,
    ensure_binaries,
    ensure_gateway_binary,
    ensure_node_binaries,
    ensure_prometheus_binary,
)
from modeldeploy_localcluster.cluster import ClusterError, ClusterState, LocalCluster, stop_components
from modeldeploy_localcluster.demo import run_demo
from modeldeploy_localcluster.images import ensure_images
from modeldeploy_localcluster.node import NODE_IP, RealNode

DEFAULT_DIR = Path(".localcluster")


def _say(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


def _wait_for_interrupt() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _up_real_node(directory: Path) -> None:
    """A control plane without kwok and one real node (root), until Ctrl-C."""
    images = ensure_images(Path.cwd(), _say)
    started = time.monotonic()
    cluster = LocalCluster(workdir=directory.resolve(), progress=_say, advertise_address=NODE_IP, kwok=False)
    cluster.start()
    node = RealNode(cluster, images, progress=_say)
    try:
        node.start()
        _say(f"control plane and real node up in {time.monotonic() - started:.1f}s")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"# clients reach ClusterIPs from inside the node: nsenter --net={node.netns_path} CMD")
        for image in images.values():
            print(f"# {image.target} image: {image.name}")
        _say("running; press Ctrl-C to stop")
        _wait_for_interrupt()
    finally:
        stopping = time.monotonic()
        node.stop()
        cluster.stop()
        _say(f"stopped in {time.monotonic() - stopping:.1f}s")


def _up(directory: Path, detach: bool, real_node: bool = False) -> None:
    state_file = directory / "state.json"
    if state_file.exists():
        _say(f"{state_file} exists: a cluster may still run there; `modeldeploy-localcluster down` first")
        raise SystemExit(1)
    if real_node:
        if detach:
            raise ClusterError("--real-node runs in the foreground only (Ctrl-C stops it)")
        _up_real_node(directory)
        return
    cluster = LocalCluster(workdir=directory.resolve(), detach=detach, progress=_say)
    cluster.start()
    cluster.state().save()
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    if detach:
        _say("running in the background; stop it with `modeldeploy-localcluster down`")
        return
    _say("running; press Ctrl-C to stop")
    try:
        _wait_for_interrupt()
    finally:
        cluster.stop()
        state_file.unlink(missing_ok=True)
        _say("stopped")


def _down(directory: Path) -> None:
    state_file = directory / "state.json"
    if not state_file.exists():
        _say(f"no cluster state in {directory}")
        return
    state = ClusterState.load(directory)
    stop_components(state.components, _say)
    state_file.unlink()
    _say(f"stopped {len(state.components)} components")


def _demo(directory: Path) -> None:
    repo = Path.cwd()
    if not (repo / "crds").is_dir() or not (repo / "examples").is_dir():
        raise ClusterError("run the demo from the repository root (it applies crds/ and examples/)")
    run_demo(directory.resolve() / "demo", repo, _say)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modeldeploy-localcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or find cached) etcd, Kubernetes, kwok and helm")
    build.add_argument(
        "--real-node", action="store_true", help="also containerd, kubelet, kube-proxy and CoreDNS"
    )
    build.add_argument(
        "--gateway",
        action="store_true",
        help="also Traefik, the Gateway API implementation of the real-node tests",
    )
    build.add_argument(
        "--prometheus",
        action="store_true",
        help="also Prometheus with Kubernetes discovery, which the real-node tests run",
    )
    commands.add_parser(
        "images", help="build (or find cached) the server and operator images with podman, offline"
    )
    for name, text in (
        ("up", "start a control plane and wait (Ctrl-C stops it)"),
        ("down", "stop a control plane started with `up --detach`"),
        ("demo", "start a control plane and the operator, deploy, change and delete a model"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="work directory (default: %(default)s)"
        )
        if name == "up":
            sub.add_argument("--detach", action="store_true", help="leave it running in the background")
            sub.add_argument(
                "--real-node",
                action="store_true",
                help="no kwok: a real kubelet node (root) in a network namespace, running the images",
            )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            binaries = ensure_binaries(_say)
            for name, path in vars(binaries).items():
                print(f"{name}: {path}")
            if args.real_node:
                for name, path in vars(ensure_node_binaries(_say)).items():
                    print(f"{name}: {path}")
            if args.gateway:
                print(f"traefik: {ensure_gateway_binary(_say)}")
            if args.prometheus:
                print(f"prometheus: {ensure_prometheus_binary(_say)}")
        elif args.command == "images":
            for image in ensure_images(Path.cwd()).values():
                print(f"{image.target}: {image.name} {image.archive}")
        elif args.command == "up":
            _up(args.dir, args.detach, args.real_node)
        elif args.command == "down":
            _down(args.dir)
        else:
            _demo(args.dir)
    except (BuildError, ClusterError) as error:
        _say(f"error: {error}")
        raise SystemExit(1) from error
