"""The image cache keys: what changes them and what must not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from modeldeploy_localcluster import images


def test_content_hash_ignores_order_but_not_boundaries() -> None:
    assert images.content_hash([("a", b"1"), ("b", b"2")]) == images.content_hash([("b", b"2"), ("a", b"1")])
    # Moving bytes from one file into the next is a different context.
    assert images.content_hash([("a", b"12"), ("b", b"")]) != images.content_hash([("a", b"1"), ("b", b"2")])


def _repository(root: Path) -> Path:
    for relative in ("Dockerfile", "pyproject.toml", "serving/modeldeploy_serving/app.py", "docs/x.md"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative)
    (root / ".gitignore").write_text("__pycache__/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_image_hash_follows_installed_sources_only(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    before = images.image_hash(repository, "server", ["numpy-2.whl"], "base:1")

    (repository / "docs" / "x.md").write_text("documentation is not in the image")
    cache = repository / "serving" / "modeldeploy_serving" / "__pycache__"
    cache.mkdir()
    (cache / "app.cpython-311.pyc").write_bytes(b"\0")
    assert images.image_hash(repository, "server", ["numpy-2.whl"], "base:1") == before

    (repository / "serving" / "modeldeploy_serving" / "app.py").write_text("changed")
    assert images.image_hash(repository, "server", ["numpy-2.whl"], "base:1") != before


def test_image_hash_differs_by_target_wheels_and_base(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    server = images.image_hash(repository, "server", ["numpy-2.whl"], "base:1")
    assert images.image_hash(repository, "operator", ["numpy-2.whl"], "base:1") != server
    assert images.image_hash(repository, "server", ["numpy-3.whl"], "base:1") != server
    assert images.image_hash(repository, "server", ["numpy-2.whl"], "base:2") != server


def test_wheelhouse_key_follows_dependencies_and_python() -> None:
    key = images.wheelhouse_key(b"dependencies = []", "cp311")
    assert images.wheelhouse_key(b"dependencies = ['x']", "cp311") != key
    assert images.wheelhouse_key(b"dependencies = []", "cp312") != key
