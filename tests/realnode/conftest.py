"""Fixtures for tests on the images built here (podman) and on a real node (kubelet, containerd).

They need root and Debian packages (scripts/install-realnode-deps.sh, which
`modeldeploy-localcluster images` runs); images and binaries are cached under ~/.cache/modeldeploy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeldeploy_localcluster.cluster import LocalCluster, free_port
from modeldeploy_localcluster.images import BuiltImage, ensure_images
from modeldeploy_localcluster.iris_models import write_iris_models
from modeldeploy_localcluster.node import NODE_IP, RealNode

REPOSITORY = Path(__file__).resolve().parents[2]


def _progress(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def built_images() -> dict[str, BuiltImage]:
    if os.geteuid() != 0:
        pytest.skip("the images are built with podman as root (see README: tests on real pods)")
    return ensure_images(REPOSITORY, _progress)


@dataclass
class RealCluster:
    cluster: LocalCluster
    node: RealNode
    images: dict[str, BuiltImage]

    def in_netns(self, *command: str) -> list[str]:
        return self.node.in_netns(*command)


@pytest.fixture(scope="session")
def real_cluster(built_images: dict[str, BuiltImage]) -> Iterator[RealCluster]:
    """A control plane of its own (no kwok) and one real node, for the whole session."""
    cluster = LocalCluster(progress=_progress, advertise_address=NODE_IP, kwok=False)
    cluster.start()
    node = RealNode(cluster, built_images, progress=_progress)
    try:
        node.start()
        yield RealCluster(cluster, node, built_images)
    finally:
        node.stop()
        cluster.stop()
        _progress(f"real node timings: {node.timings}")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_iris_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_http_server(real_cluster: RealCluster, models: dict[str, Path]) -> Iterator[str]:
    """A plain HTTP server inside the node's namespace, serving the models as files."""
    root = models["v1"].parent
    port = free_port()
    command = [sys.executable, "-m", "http.server", "--bind", NODE_IP, str(port), "--directory", str(root)]
    process = subprocess.Popen(
        real_cluster.in_netns(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        assert process.poll() is None, "the model HTTP server did not start"
        yield f"http://{NODE_IP}:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
