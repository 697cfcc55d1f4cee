"""Fixtures for tests on the images built here (podman) and on a real node (kubelet, containerd).

They need root and Debian packages (scripts/install-realnode-deps.sh, which
`modeldeploy-localcluster images` runs); images and binaries are cached under ~/.cache/modeldeploy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modeldeploy_localcluster.images import BuiltImage, ensure_images

REPOSITORY = Path(__file__).resolve().parents[2]


def _progress(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def built_images() -> dict[str, BuiltImage]:
    if os.geteuid() != 0:
        pytest.skip("the images are built with podman as root (see README: tests on real pods)")
    return ensure_images(REPOSITORY, _progress)
