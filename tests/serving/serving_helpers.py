"""Helpers shared by the server tests."""

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from modeldeploy_serving.settings import ServerSettings


def make_settings(model_dir: Path, **overrides: Any) -> ServerSettings:
    """Settings for tests: the model is called `iris` unless said otherwise."""
    values: dict[str, Any] = {
        "model_name": "iris",
        "model_version": "v1",
        "namespace": "ml",
        "model_dir": model_dir,
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return ServerSettings(**values)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def v2_tensor(rows: list[list[float]], name: str = "input-0", datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": rows}


def wait_until_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model did not become ready"
        time.sleep(0.05)


SERVER = str(Path(sys.executable).parent / "modeldeploy-server")


class RunningServer:
    def __init__(
        self,
        model_dir: Path,
        memory_limit_bytes: int | None = None,
        file_limit: int | None = None,
        **settings: str,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "MODELDEPLOY_SERVER_MODEL_NAME": "iris",
            "MODELDEPLOY_SERVER_MODEL_VERSION": "v1",
            "MODELDEPLOY_SERVER_NAMESPACE": "ml",
            "MODELDEPLOY_SERVER_MODEL_DIR": str(model_dir),
            "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
            "MODELDEPLOY_SERVER_HTTP_PORT": str(self.port),
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        environment.update({f"MODELDEPLOY_SERVER_{name.upper()}": value for name, value in settings.items()})

        def limit_memory() -> None:
            # A safety net for tests of memory amplification: a regression fails the request
            # (or the server) instead of taking memory from everything else on the machine.
            if memory_limit_bytes is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
            if file_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

        self.process = subprocess.Popen(
            [SERVER, "serve"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=limit_memory,
        )

    def peak_rss_bytes(self) -> int:
        """The most memory the server process has had resident so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read() if self.process.stdout else ""
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
