"""Runs the images' install script into a fresh virtualenv, as the Dockerfile's build stages do."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def install_component(component: str, venv: Path) -> str:
    """Installs `server` or `operator` into `venv`; returns `pip freeze`, lower-cased, one per line."""
    subprocess.run(
        ["bash", str(REPOSITORY / "scripts" / "install-component.sh"), component, str(venv), str(REPOSITORY)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    return f"\n{frozen}"
