"""Third-party CRDs for tests, from their published Go modules at test time (never committed)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_localcluster.cluster import LocalCluster


def go_module_dir(module: str, version: str) -> Path:
    """The module's source folder in the Go module cache, downloaded through the module proxy."""
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    if result.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


def install_crds(cluster: LocalCluster, documents: list[dict[str, Any]]) -> list[str]:
    """Applies CRDs server-side (some are too large for client-side apply) and waits until served."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input_text=yaml.safe_dump_all(documents)
    )
    names = [f"crd/{document['metadata']['name']}" for document in documents]
    cluster.wait_for_crds(*names)
    return names


def crd_documents(path: Path, kinds: set[str]) -> list[dict[str, Any]]:
    """The CRDs for `kinds` among the YAML documents of a file."""
    return [
        document
        for document in yaml.safe_load_all(path.read_text())
        if document
        and document.get("kind") == "CustomResourceDefinition"
        and document["spec"]["names"]["kind"] in kinds
    ]
