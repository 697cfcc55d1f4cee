"""Helpers shared by the server tests."""

import socket
from pathlib import Path
from typing import Any

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
