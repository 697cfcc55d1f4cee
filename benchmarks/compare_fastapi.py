"""Throughput and latency of modeldeploy-server against a bare FastAPI handler, in one run.

The reference is what a user would write by hand: one FastAPI route that parses the V2 body with
orjson, builds a numpy array and calls `predict` inline. Both serve the same iris logistic
regression to the same 1-row V2 request over loopback, run under uvicorn with uvloop and
httptools, one after the other for each cell, with `wrk` (Debian package `wrk`, installed by
scripts/install-system-deps.sh) at 8 and 64 connections and 1 and 2 worker processes. Prints a
table with the ratio; not a test. Run from the repository:
`.venv/bin/python benchmarks/compare_fastapi.py [--seconds 10]`.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import skops.io
from compare_mlserver import free_port, request_body, run_wrk, running
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

SERVER = Path(sys.executable).parent / "modeldeploy-server"
CONCURRENCIES = (8, 64)
WORKERS = (1, 2)

BARE_APP = """
import os

import numpy as np
import orjson
import skops.io
from fastapi import FastAPI, Request, Response

model = skops.io.load(os.environ["BARE_MODEL"], trusted=skops.io.get_untrusted_types(file=os.environ["BARE_MODEL"]))
app = FastAPI()


@app.post("/v2/models/iris/infer")
async def infer(request: Request) -> Response:
    body = orjson.loads(await request.body())
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    predictions = model.predict(rows)
    answer = {
        "model_name": "iris",
        "outputs": [
            {"name": "predict", "shape": [len(predictions)], "datatype": "INT64", "data": predictions.tolist()}
        ],
    }
    return Response(orjson.dumps(answer), media_type="application/json")


@app.get("/ready")
async def ready() -> Response:
    return Response()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load run")
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 1
    features, labels = load_iris(return_X_y=True)
    body = request_body(4, 1)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "model").mkdir()
        skops.io.dump(
            LogisticRegression(max_iter=1000).fit(features, labels), scratch / "model" / "model.skops"
        )
        (scratch / "bare_app.py").write_text(BARE_APP)
        rows = []
        for workers in WORKERS:
            port = free_port()
            ours = {
                **os.environ,
                "MODELDEPLOY_SERVER_MODEL_NAME": "iris",
                "MODELDEPLOY_SERVER_MODEL_DIR": str(scratch / "model"),
                "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
                "MODELDEPLOY_SERVER_HTTP_PORT": str(port),
                "MODELDEPLOY_SERVER_WORKERS": str(workers),
            }
            bare_port = free_port()
            bare = {**os.environ, "BARE_MODEL": str(scratch / "model" / "model.skops")}
            bare_command = [
                sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1",
                "--port", str(bare_port), "--workers", str(workers), "--no-access-log",
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            ]  # fmt: skip
            url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
            bare_url = f"http://127.0.0.1:{bare_port}/v2/models/iris/infer"
            for concurrency in CONCURRENCIES:
                cell = {}
                with running([str(SERVER), "serve"], f"http://127.0.0.1:{port}/v2/health/ready", ours):
                    run_wrk(url, body, 8, 2, scratch)  # warm-up
                    cell["ours"] = run_wrk(url, body, concurrency, arguments.seconds, scratch)
                with running(bare_command, f"http://127.0.0.1:{bare_port}/ready", bare, cwd=scratch):
                    run_wrk(bare_url, body, 8, 2, scratch)
                    cell["bare"] = run_wrk(bare_url, body, concurrency, arguments.seconds, scratch)
                rows.append((workers, concurrency, cell["ours"], cell["bare"]))
                print(_row(workers, concurrency, cell["ours"], cell["bare"]), flush=True)
    print("\n| workers, connections | modeldeploy-server | bare FastAPI | ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    for workers, concurrency, ours_result, bare_result in rows:
        print(_row(workers, concurrency, ours_result, bare_result))
    return 0


def _row(
    workers: int,
    concurrency: int,
    ours: tuple[float, float, float, int],
    bare: tuple[float, float, float, int],
) -> str:
    return (
        f"| {workers}, c={concurrency} | {ours[0]:,.0f} req/s, p99 {ours[2]:.1f} ms, errors {ours[3]} "
        f"| {bare[0]:,.0f} req/s, p99 {bare[2]:.1f} ms, errors {bare[3]} "
        f"| {ours[0] / bare[0]:.2f} | {ours[2] / bare[2]:.2f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
