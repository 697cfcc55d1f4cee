"""The server image's install steps (scripts/install-component.sh server) in a fresh virtualenv.

The installed server must fetch and serve an MLflow model directory without the mlflow package.
"""

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_helpers import free_port, v2_tensor

from install_helpers import install_component


def test_the_install_script_gives_a_working_server_without_dev_tools(
    tmp_path: Path, iris_classifier: Any
) -> None:
    import mlflow.sklearn

    venv = tmp_path / "venv"
    installed = install_component("server", venv)
    assert "\nscikit-learn==" in installed
    for absent in ("mlflow", "pytest", "moto", "kopf", "mypy"):
        assert f"\n{absent}==" not in installed, absent

    source = tmp_path / "source"
    mlflow.sklearn.save_model(iris_classifier, source / "iris")
    models = tmp_path / "models"
    subprocess.run(
        [
            str(venv / "bin" / "modeldeploy-server"),
            "fetch",
            "--uri",
            (source / "iris").as_uri(),
            "--dest",
            str(models),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    environment = {
        "PATH": os.environ["PATH"],
        "MODELDEPLOY_SERVER_MODEL_NAME": "iris",
        "MODELDEPLOY_SERVER_MODEL_DIR": str(models),
        "MODELDEPLOY_SERVER_HOST": "127.0.0.1",
        "MODELDEPLOY_SERVER_HTTP_PORT": str(port),
    }
    server = subprocess.Popen(
        [str(venv / "bin" / "modeldeploy-server"), "serve"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the installed server exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the installed server did not become ready")
            time.sleep(0.2)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/iris/infer",
            json={"inputs": [v2_tensor([[5.1, 3.5, 1.4, 0.2]])], "outputs": [{"name": "predict"}]},
        )
        assert reply.json()["outputs"][0]["data"] == [0]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
