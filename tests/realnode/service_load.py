"""Bounded V2 inference load for the real-node tests (Services and the Gateway), run inside the node's network namespace.

    python service_load.py URL PAYLOADS_JSON OUTPUT STOP_FILE MAX_SECONDS

PAYLOADS_JSON is a list of request bodies, sent in turn (the rollout tests send one row of each
iris class, so a model that fails on one class fails a third of the requests). Half the workers keep one connection
alive for every request (as a pooled client does); the others open a new connection per request.
Each request becomes one JSON line in OUTPUT: ``{"t": wall-clock seconds, "client":
"keepalive"|"new", "outcome": "ok"|"http 500"|error name, "version": model_version}``. It stops
by itself once STOP_FILE exists or MAX_SECONDS have passed, under an address-space ceiling. Only
the standard library, and no proxy: the address exists only in this namespace.
"""

from __future__ import annotations

import http.client
import itertools
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

WORKERS_PER_KIND = 2
PAUSE_SECONDS = 0.08  # about 10 requests per second per worker, 40 in all
TIMEOUT_SECONDS = 10.0
MEMORY_CEILING_BYTES = 1 << 30


def _one_request(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[str, str]:
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    reply = connection.getresponse()
    answer = reply.read()
    if reply.status != 200:
        return f"http {reply.status}", ""
    return "ok", str(json.loads(answer).get("model_version", ""))


def _worker(
    kind: str,
    url: str,
    bodies: list[bytes],
    deadline: float,
    stop: Path,
    out: IO[str],
    lock: threading.Lock,
) -> None:
    parts = urlsplit(url)
    connection: http.client.HTTPConnection | None = None
    for body in itertools.cycle(bodies):
        if time.monotonic() >= deadline or stop.exists():
            break
        if connection is None:
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port or 80, timeout=TIMEOUT_SECONDS
            )
        record: dict[str, Any] = {"t": time.time(), "client": kind}
        try:
            record["outcome"], record["version"] = _one_request(connection, parts.path, body)
        except (OSError, http.client.HTTPException) as error:
            record["outcome"], record["version"] = type(error).__name__, ""
            connection.close()
            connection = None
        if kind == "new" and connection is not None:
            connection.close()
            connection = None
        with lock:
            out.write(json.dumps(record) + "\n")
        time.sleep(PAUSE_SECONDS)
    if connection is not None:
        connection.close()


def main(argv: list[str]) -> None:
    url, payloads, output, stop_file, max_seconds = argv
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CEILING_BYTES, MEMORY_CEILING_BYTES))
    bodies = [json.dumps(payload).encode() for payload in json.loads(payloads)]
    deadline = time.monotonic() + float(max_seconds)
    lock = threading.Lock()
    with Path(output).open("w", buffering=1) as out:
        workers = [
            threading.Thread(
                target=_worker,
                # Each worker starts at another payload, so every class is asked at any moment.
                args=(kind, url, bodies[index:] + bodies[:index], deadline, Path(stop_file), out, lock),
            )
            for index, kind in enumerate(
                kind for kind in ("keepalive", "new") for _ in range(WORKERS_PER_KIND)
            )
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()


if __name__ == "__main__":
    main(sys.argv[1:])
