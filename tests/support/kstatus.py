"""kstatus, the computation Flux (and kpt) use to tell whether an object has reconciled, built from
its published Go module (sigs.k8s.io/cli-utils) around a small main, and cached by version."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from modeldeploy_localcluster.build import cache_root

CLI_UTILS_VERSION = "v0.37.2"
MAIN = Path(__file__).with_name("kstatus") / "main.go"


def kstatus_binary() -> Path:
    target = cache_root() / "bin" / f"kstatus-{CLI_UTILS_VERSION}" / "kstatus"
    if os.access(target, os.X_OK):
        return target
    lock = cache_root() / "locks" / f"kstatus-{CLI_UTILS_VERSION}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.access(target, os.X_OK):
            return target
        with tempfile.TemporaryDirectory(prefix="modeldeploy-build-kstatus-") as work:
            (Path(work) / "go.mod").write_text(
                "module modeldeploy.invalid/build/kstatus\n\ngo 1.26.0\n\n"
                f"require sigs.k8s.io/cli-utils {CLI_UTILS_VERSION}\n"
            )
            shutil.copy(MAIN, Path(work) / "main.go")
            built = Path(work) / "kstatus"
            result = subprocess.run(
                ["go", "build", "-mod=mod", "-trimpath", "-ldflags", "-s -w", "-o", str(built), "."],
                cwd=work,
                env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"building kstatus {CLI_UTILS_VERSION} failed:\n{result.stdout}{result.stderr}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(built, target)
    return target


def kstatus(body: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as kstatus computes them for this object, e.g. ("InProgress", "...")."""
    result = subprocess.run(
        [str(kstatus_binary())],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    status, _, message = result.stdout.strip().partition("\t")
    return status, message
