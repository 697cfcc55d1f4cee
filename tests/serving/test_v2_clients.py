"""Third-party V2 clients against the server: the protocol's own generated OpenAPI client and
Triton's HTTP client, which speak the Open Inference Protocol independently of this code."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from open_inference.openapi import client as oip
from open_inference.openapi.types import InferenceRequest, RequestInput, RequestOutput
from serving_helpers import RunningServer, make_settings, wait_until_ready

from modeldeploy_serving.app import create_app

SETOSA_AND_VIRGINICA = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
def generated_client(iris_skops_dir: Path) -> Iterator[oip.OpenInferenceClient]:
    with TestClient(create_app(make_settings(iris_skops_dir))) as transport:
        wait_until_ready(transport)
        yield oip.OpenInferenceClient(base_url=str(transport.base_url), httpx_client=transport)


def test_the_protocols_generated_client(generated_client: oip.OpenInferenceClient) -> None:
    generated_client.check_server_liveness()
    generated_client.check_server_readiness()
    generated_client.check_model_readiness("iris")
    generated_client.check_model_version_readiness("iris", "v1")
    assert generated_client.read_server_metadata().name == "modeldeploy"
    metadata = generated_client.read_model_metadata("iris")
    assert [tensor.name for tensor in metadata.outputs] == ["predict", "predict_proba"]
    assert generated_client.read_model_version_metadata("iris", "v1").versions == ["v1"]
    request = InferenceRequest(
        id="7",
        inputs=[RequestInput(name="input-0", shape=[2, 4], datatype="FP64", data=SETOSA_AND_VIRGINICA)],
        outputs=[RequestOutput(name="predict")],
    )
    response = generated_client.model_infer("iris", request=request)
    assert (response.id, response.model_name) == ("7", "iris")
    assert response.outputs[0].data.__root__ == [0, 2]
    assert generated_client.model_version_infer("iris", "v1", request=request).outputs[0].shape == [2]
    bad = InferenceRequest(inputs=[RequestInput(name="x", shape=[1, 3], datatype="FP64", data=[1, 2, 3])])
    with pytest.raises(oip.BadRequestError):
        generated_client.model_infer("iris", request=bad)


def test_tritons_http_client(iris_skops_dir: Path) -> None:
    import tritonclient.http as triton

    server = RunningServer(iris_skops_dir)
    try:
        server.wait_ready()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("iris")
        assert client.get_model_metadata("iris")["platform"] == "sklearn"
        features = triton.InferInput("input-0", [2, 4], "FP64")
        features.set_data_from_numpy(np.array(SETOSA_AND_VIRGINICA), binary_data=False)
        outputs: list[Any] = [
            triton.InferRequestedOutput("predict", binary_data=False),
            triton.InferRequestedOutput("predict_proba", binary_data=False),
        ]
        result = client.infer("iris", [features], outputs=outputs)
        assert result.as_numpy("predict").tolist() == [0, 2]
        assert result.as_numpy("predict_proba").shape == (2, 3)
        # The client's defaults: binary input tensors, binary outputs asked for (answered in JSON).
        binary = triton.InferInput("input-0", [2, 4], "FP32")
        binary.set_data_from_numpy(np.array(SETOSA_AND_VIRGINICA, dtype=np.float32))
        result = client.infer("iris", [binary], outputs=[triton.InferRequestedOutput("predict")])
        assert result.as_numpy("predict").tolist() == [0, 2]
    finally:
        server.stop()


def test_tritons_http_client_gets_binary_outputs(iris_skops_dir: Path) -> None:
    """Binary outputs as Triton's client asks for them: per output (its default, binary_data
    true) and for all outputs when it names none (binary_data_output); a 32-row batch goes
    binary both ways, and JSON outputs can still be mixed in."""
    import tritonclient.http as triton

    batch = np.tile(np.array(SETOSA_AND_VIRGINICA), (16, 1))
    expected = [0, 2] * 16
    server = RunningServer(iris_skops_dir)
    try:
        server.wait_ready()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        features = triton.InferInput("input-0", list(batch.shape), "FP64")
        features.set_data_from_numpy(batch)
        result = client.infer("iris", [features])
        outputs = {output["name"]: output for output in result.get_response()["outputs"]}
        assert set(outputs) == {"predict", "predict_proba"}
        assert all("data" not in output for output in outputs.values())
        assert outputs["predict"]["parameters"] == {"binary_data_size": 32 * 8}
        assert result.as_numpy("predict").tolist() == expected
        probabilities = result.as_numpy("predict_proba")
        assert probabilities.shape == (32, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
        mixed: list[Any] = [
            triton.InferRequestedOutput("predict", binary_data=True),
            triton.InferRequestedOutput("predict_proba", binary_data=False),
        ]
        result = client.infer("iris", [features], outputs=mixed)
        answered = {output["name"]: output for output in result.get_response()["outputs"]}
        assert "data" not in answered["predict"] and len(answered["predict_proba"]["data"]) == 96
        assert result.as_numpy("predict").tolist() == expected
        assert np.allclose(result.as_numpy("predict_proba"), probabilities)
    finally:
        server.stop()


def test_binary_outputs_over_plain_http(iris_skops_dir: Path) -> None:
    with TestClient(create_app(make_settings(iris_skops_dir))) as client:
        wait_until_ready(client)
        body = {
            "inputs": [
                {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": SETOSA_AND_VIRGINICA}
            ],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "predict"}, {"name": "predict_proba", "parameters": {"binary_data": False}}],
        }
        reply = client.post("/v2/models/iris/infer", json=body)
        assert reply.status_code == 200
        split = int(reply.headers["inference-header-content-length"])
        header = json.loads(reply.content[:split])
        assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
        assert np.frombuffer(reply.content[split:], dtype="<i8").tolist() == [0, 2]
        assert len(header["outputs"][1]["data"]) == 6
        reply = client.post(
            "/v2/models/iris/infer", json={**body, "parameters": {"binary_data_output": "yes"}}
        )
        assert reply.status_code == 400 and "binary_data_output" in reply.json()["error"]
