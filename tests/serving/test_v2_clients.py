"""Third-party V2 clients against the server: the protocol's own generated OpenAPI client and
Triton's HTTP client, which speak the Open Inference Protocol independently of this code."""

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
