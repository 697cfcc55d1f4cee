"""Builds the project's two images here, without a registry and without network inside the build.

The base image is made of Debian packages (mmdebstrap; a stand-in for the pinned python image the
Dockerfile names), the wheels are downloaded on the host into a wheelhouse, and both Dockerfile
targets are built with podman and `--network=none`, installing from that wheelhouse only. Every
step is cached by a hash of what goes into it, so a warm run only checks that the images exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modeldeploy_localcluster.build import BuildError, Progress, _exclusive, _run_logged, _say, cache_root

TARGETS = ("server", "operator")
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_SOURCES = (
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main",
)
# What the images install from the build context (see .dockerignore); the content hash covers these.
CONTEXT_PATHS = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "scripts/install-component.sh",
    "operator",
    "serving",
    "localcluster",
)
WHEELHOUSE_MOUNT = "/wheelhouse"


@dataclass(frozen=True)
class BuiltImage:
    """One image in podman's storage, and its docker-archive for containerd."""

    target: str
    name: str
    archive: Path
    size_bytes: int
    built_seconds: float | None  # None when it came from the cache


def content_hash(parts: Iterable[tuple[str, bytes]]) -> str:
    """A hash of named contents that does not depend on their order, nor let two parts blur."""
    digest = hashlib.sha256()
    for name, data in sorted(parts):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def base_recipe_hash() -> str:
    recipe = json.dumps([DEBIAN_SUITE, BASE_PACKAGES, DEBIAN_SOURCES]).encode()
    return content_hash([("base", recipe)])[:16]


def base_image_name() -> str:
    return f"localhost/modeldeploy-python-base:{base_recipe_hash()}"


def context_files(repository: Path) -> list[str]:
    """The files under CONTEXT_PATHS that git knows or would track (so caches and builds stay out)."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *CONTEXT_PATHS],
        cwd=repository,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"cannot list the build context with git: {result.stderr.decode().strip()}")
    names = {name for name in result.stdout.decode().split("\0") if name}
    return sorted(name for name in names if (repository / name).is_file())


def image_hash(repository: Path, target: str, wheel_names: list[str], base_image: str) -> str:
    parts = [(name, (repository / name).read_bytes()) for name in context_files(repository)]
    parts.append(("\0wheels", "\n".join(sorted(wheel_names)).encode()))
    parts.append(("\0base", base_image.encode()))
    parts.append(("\0target", target.encode()))
    return content_hash(parts)[:16]


def wheelhouse_key(pyproject: bytes, python_tag: str) -> str:
    return content_hash([("pyproject.toml", pyproject), ("python", python_tag.encode())])[:16]


def ensure_build_tools(repository: Path, progress: Progress) -> None:
    """podman, mmdebstrap and the node's Debian packages (installs only what is missing)."""
    script = repository / "scripts" / "install-realnode-deps.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{script.name} failed: {(result.stdout + result.stderr).strip()[-2000:]}")
    if result.stdout.strip():
        progress(result.stdout.strip())


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False)


def _image_exists(name: str) -> bool:
    return _podman("image", "exists", name).returncode == 0


def _image_size(name: str) -> int:
    result = _podman("image", "inspect", "--format", "{{.Size}}", name)
    if result.returncode != 0:
        raise BuildError(f"podman cannot inspect {name}: {result.stderr.strip()}")
    return int(result.stdout.strip())


def _logs() -> Path:
    logs = cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs


def ensure_base_image(progress: Progress) -> str:
    name = base_image_name()
    if _image_exists(name):
        return name
    with _exclusive(cache_root() / "locks" / "base-image.lock"):
        if _image_exists(name):
            return name
        log = _logs() / "image-base.log"
        log.write_text("")
        work = Path(tempfile.mkdtemp(prefix="modeldeploy-base-"))
        try:
            rootfs = work / "rootfs.tar"
            command = [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                *DEBIAN_SOURCES,
            ]
            _run_logged("base image (mmdebstrap)", command, work, log, dict(os.environ), progress)
            _run_logged(
                "base image (podman import)",
                ["podman", "import", "--change", 'CMD ["python3"]', str(rootfs), name],
                work,
                log,
                dict(os.environ),
                progress,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return name


def ensure_wheelhouse(repository: Path, progress: Progress) -> Path:
    """Wheels for both images' dependencies, downloaded on the host (the build has no network)."""
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    key = wheelhouse_key((repository / "pyproject.toml").read_bytes(), python_tag)
    target = cache_root() / "wheelhouse" / key
    if target.is_dir():
        return target
    with _exclusive(cache_root() / "locks" / "wheelhouse.lock"):
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="download-", dir=target.parent))
        try:
            command = [
                sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--dest", str(staging), "--only-binary=:all:", "--no-binary=modeldeploy",
                f"{repository}[serving,operator]", "pip", "setuptools", "wheel",
            ]  # fmt: skip
            _run_logged("wheelhouse (pip download)", command, repository, _logs() / "wheelhouse.log",
                        dict(os.environ), progress)  # fmt: skip
            for own in staging.glob("modeldeploy-*"):
                own.unlink()
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_image(
    repository: Path, target: str, base: str, wheelhouse: Path, progress: Progress
) -> BuiltImage:
    wheels = sorted(path.name for path in wheelhouse.iterdir())
    tag = image_hash(repository, target, wheels, base)
    name = f"localhost/modeldeploy-{target}:{tag}"
    archive = cache_root() / "images" / f"modeldeploy-{target}-{tag}.tar"
    with _exclusive(cache_root() / "locks" / f"image-{target}.lock"):
        if _image_exists(name) and archive.is_file():
            return BuiltImage(target, name, archive, _image_size(name), None)
        log = _logs() / f"image-{target}.log"
        log.write_text("")
        started = time.monotonic()
        if not _image_exists(name):
            command = [
                "podman", "build", "--network=none", "--target", target,
                "--build-arg", f"PYTHON_IMAGE={base}",
                "--build-arg", f"WHEELHOUSE={WHEELHOUSE_MOUNT}",
                "--volume", f"{wheelhouse}:{WHEELHOUSE_MOUNT}:ro",
                "--tag", name, str(repository),
            ]  # fmt: skip
            _run_logged(f"image {target}", command, repository, log, dict(os.environ), progress)
        archive.parent.mkdir(parents=True, exist_ok=True)
        for stale in archive.parent.glob(f"modeldeploy-{target}-*.tar"):
            stale.unlink()
        partial = archive.with_suffix(".partial")
        save = ["podman", "save", "--format", "docker-archive", "--output", str(partial), name]
        partial.unlink(missing_ok=True)
        _run_logged(f"image {target} (podman save)", save, repository, log, dict(os.environ), progress)
        partial.rename(archive)
        return BuiltImage(target, name, archive, _image_size(name), time.monotonic() - started)


def ensure_images(repository: Path, progress: Progress = _say) -> dict[str, BuiltImage]:
    """Both images, built or found in the cache; prints their sizes."""
    ensure_build_tools(repository, progress)
    base = ensure_base_image(progress)
    wheelhouse = ensure_wheelhouse(repository, progress)
    images = {target: ensure_image(repository, target, base, wheelhouse, progress) for target in TARGETS}
    for image in images.values():
        how = "cached" if image.built_seconds is None else f"built in {image.built_seconds:.0f}s"
        progress(f"{image.name}: {image.size_bytes / 1e6:.0f} MB ({how})")
    return images
