"""The README's `make demo` command, run as written: a good model promoted, a bad one rolled back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_promotes_a_good_model_and_rolls_back_a_bad_one(tmp_path: Path) -> None:
    demo = subprocess.run(
        [str(Path(sys.executable).parent / "modeldeploy-localcluster"), "demo", "--dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-5000:]
    assert "outcome: promoted: Every check passed at the last step" in output, output[-5000:]
    assert "outcome: rolledBack: Step" in output and "errorRate: canary" in output, output[-5000:]
    # The live view showed the rollout at its steps, and the refused manifest named its field.
    assert "Progress: [#####" in output and "step 2/2" in output
    assert "spec.replicas" in output
    assert "demo finished" in output
