"""Start-up time of `modeldeploy-server serve`: process start until /v2/health/ready answers 200.

Two artifacts, generated in a temporary directory: a small one (iris logistic regression) and a
random forest of about 100 MB, both skops files (the server's safe default). Each is started
`--runs` times, one after the other; the table gives the median, fastest and slowest run, and
the server's own "Loaded model ... in" time of its last run (reading, checking and warming up).

    .venv/bin/python benchmarks/server_startup.py --runs 3
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skops.io
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

SERVER = str(Path(sys.executable).parent / "modeldeploy-server")
LARGE_MODEL_BYTES = 100 * 1024 * 1024
_LOADED = re.compile(r"Loaded model .* in (?P<seconds>[0-9.]+)s")


def small_model(directory: Path) -> Path:
    features, labels = load_iris(return_X_y=True)
    path = directory / "small" / "iris.skops"
    path.parent.mkdir()
    skops.io.dump(LogisticRegression(max_iter=500).fit(features, labels), path)
    return path.parent


def large_model(directory: Path) -> Path:
    """A forest of fully grown trees, with trees added until the file is about 100 MB."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(100_000, 8))
    target = features @ rng.normal(size=8) + rng.normal(size=100_000)
    path = directory / "large" / "forest.skops"
    path.parent.mkdir()
    forest = RandomForestRegressor(n_estimators=1, warm_start=True, random_state=0, n_jobs=1)
    forest.fit(features, target)
    skops.io.dump(forest, path)
    per_tree = path.stat().st_size
    forest.set_params(n_estimators=max(1, round(LARGE_MODEL_BYTES / per_tree)))
    forest.fit(features, target)
    skops.io.dump(forest, path)
    return path.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def time_to_ready(model_dir: Path, timeout: float = 300) -> tuple[float, float | None]:
    """Seconds from starting the process to its first 200 from readiness, and its load time."""
    port = _free_port()
    environment = {
        **os.environ,
        "MODELDEPLOY_SERVER_MODEL_DIR": str(model_dir),
        "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
        "MODELDEPLOY_SERVER_HTTP_PORT": str(port),
        "MODELDEPLOY_SERVER_DRAIN_DELAY_SECONDS": "0",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [SERVER, "serve"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stdout.read() if process.stdout else ''}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError("the server did not become ready")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    loaded = _LOADED.search(output)
    return ready, float(loaded["seconds"]) if loaded else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modeldeploy-startup-") as scratch:
        models = {"small (iris)": small_model(Path(scratch)), "large (forest)": large_model(Path(scratch))}
        print("| model | artifact | process start -> ready (median, min-max) | model load (last run) |")
        print("|---|---|---|---|")
        for label, directory in models.items():
            size = sum(path.stat().st_size for path in directory.iterdir())
            results = [time_to_ready(directory) for _ in range(arguments.runs)]
            ready = [seconds for seconds, _ in results]
            load = results[-1][1]
            print(
                f"| {label} | {size / 1e6:.3g} MB | {statistics.median(ready):.2f} s "
                f"({min(ready):.2f}-{max(ready):.2f}) | {f'{load:.2f} s' if load is not None else '?'} |"
            )


if __name__ == "__main__":
    main()
