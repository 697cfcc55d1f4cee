"""The HTTP endpoints in-process: status codes, bodies and metrics as the protocols define them."""

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import make_settings, v2_tensor, wait_until_ready

from modeldeploy_serving.app import ServerState, create_app
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.model import SklearnModel

SETOSA = [5.1, 3.5, 1.4, 0.2]
LABELS = {"model": "iris", "namespace": "ml", "model_version": "v1", "variant": "stable"}


@pytest.fixture
def client(iris_skops_dir: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(iris_skops_dir, max_request_bytes=64 * 1024))
    with TestClient(app) as test_client:
        wait_until_ready(test_client)
        yield test_client


def test_health_answers_with_status_codes_and_empty_bodies(client: TestClient) -> None:
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/iris/ready",
        "/v2/models/iris/versions/v1/ready",
    ):
        reply = client.get(path)
        assert (reply.status_code, reply.content) == (200, b""), path


def test_not_ready_until_the_model_is_served(tmp_path: Path, iris_classifier: Any) -> None:
    settings = make_settings(tmp_path)
    plane = DataPlane(settings)
    with TestClient(create_app(settings, data_plane=plane, load_model=False)) as test_client:
        assert test_client.get("/v2/health/live").status_code == 200
        assert test_client.get("/v2/health/ready").status_code == 400
        assert test_client.get("/v2/models/iris/ready").status_code == 400
        assert test_client.get("/v1/models/iris").json() == {"name": "iris", "ready": False}
        reply = test_client.post("/v2/models/iris/infer", json={"inputs": [v2_tensor([SETOSA])]})
        assert reply.status_code == 503
        assert reply.json() == {"error": "model 'iris' is not ready yet"}
        plane.serve_model(SklearnModel(iris_classifier))
        assert test_client.get("/v2/health/ready").status_code == 200


def test_metadata_endpoints(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "modeldeploy",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    metadata = client.get("/v2/models/iris").json()
    assert metadata["name"] == "iris"
    assert metadata["versions"] == ["v1"]
    assert metadata["platform"] == "sklearn"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["parameters"]["format"] == "skops"
    assert client.get("/v2/models/iris/versions/v1").json() == metadata
    assert client.get("/v1/models").json() == {"models": ["iris"]}
    assert client.get("/v1/models/iris").json() == {"name": "iris", "ready": True}


def test_v2_infer_and_v1_predict(client: TestClient) -> None:
    reply = client.post(
        "/v2/models/iris/versions/v1/infer",
        json={"id": "r1", "inputs": [v2_tensor([SETOSA])], "outputs": [{"name": "predict"}]},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "model_name": "iris",
        "model_version": "v1",
        "id": "r1",
        "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]}],
    }
    assert client.post("/v1/models/iris:predict", json={"instances": [SETOSA]}).json() == {"predictions": [0]}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_protocol_bodies_are_json_whatever_the_content_type(
    client: TestClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
    assert client.post("/v1/models/iris:predict", content=body, headers=headers).json() == {
        "predictions": [0]
    }


def binary_request(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + blob, {"inference-header-content-length": str(len(encoded))}


def test_binary_tensor_requests(client: TestClient) -> None:
    blob = np.array([SETOSA], dtype="<f8").tobytes()
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "parameters": {"binary_data_size": len(blob)}}
    body, headers = binary_request({"inputs": [tensor], "outputs": [{"name": "predict"}]}, blob)
    reply = client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["data"] == [0]
    reply = client.post("/v2/models/iris/infer", content=body[:-8], headers=headers)
    assert reply.status_code == 400
    assert "does not fit the body" in reply.json()["error"]
    reply = client.post(
        "/v2/models/iris/infer", content=b"{", headers={"inference-header-content-length": "1"}
    )
    assert reply.status_code == 400
    assert "cannot be read" in reply.json()["error"]
    reply = client.post(
        "/v2/models/iris/infer", content=b"{}", headers={"inference-header-content-length": "9"}
    )
    assert reply.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/v2/models/iris/infer", b'{"inputs": [', 400, "malformed JSON"),
        ("post", "/v2/models/iris/infer", b"[]", 400, "valid dictionary"),
        ("post", "/v2/models/iris/infer", b'{"inputs": []}', 400, "body.inputs"),
        (
            "post",
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "x"}]}',
            400,
            "body.inputs.0.shape: Field required",
        ),
        (
            "post",
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "FP64", "data": []}]}',
            400,
            "greater than or equal to 0",
        ),
        (
            "post",
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ["a", "b", "c", "d"]}]}',
            400,
            "needs numeric values, got string",
        ),
        (
            "post",
            "/v2/models/other/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}',
            404,
            "'other'",
        ),
        ("post", "/v2/models/iris/versions/v9/infer", b'{"inputs": []}', 400, "body.inputs"),
        ("get", "/v2/models/iris/versions/v9", None, 404, "version 'v9'"),
        ("get", "/v2/models/other/ready", None, 404, "'other'"),
        ("get", "/v1/models/other", None, 404, "'other'"),
        ("post", "/v1/models/iris:predict", b'{"instances": [[1, 2]]}', 400, "expects 4 features"),
        ("post", "/v1/models/iris:predict", b'{"instances": "rows"}', 400, "body.instances"),
        ("get", "/v3/anything", None, 404, "Not Found"),
        (
            "post",
            "/v2/models/iris/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP64", "data": [1]}]}
            ).encode(),
            400,
            "65 dimensions",
        ),
        (
            "post",
            "/v2/models/iris/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [2**62, 2**62, 0], "datatype": "FP64", "data": []}]}
            ).encode(),
            400,
            "too large",
        ),
        ("get", "/v2/models/iris/infer", None, 405, "Method Not Allowed"),
    ],
)
def test_bad_requests_get_a_4xx_with_an_error_message(
    client: TestClient, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    headers = {"content-type": "application/json"}
    reply = client.request(method, path, content=body, headers=headers)
    assert reply.status_code == status
    assert message in reply.json()["error"]
    assert client.post("/v1/models/iris:predict", json={"instances": [SETOSA]}).status_code == 200


def test_inputs_that_overflow_the_model_are_a_client_error(tmp_path: Path, diabetes_regressor: Any) -> None:
    settings = make_settings(tmp_path, model_name="diabetes")
    plane = DataPlane(settings)
    plane.serve_model(SklearnModel(diabetes_regressor))
    with TestClient(create_app(settings, data_plane=plane, load_model=False)) as test_client:
        extreme = [[1e308] * 10]
        reply = test_client.post("/v2/models/diabetes/infer", json={"inputs": [v2_tensor(extreme)]})
        assert reply.status_code == 400
        assert "not finite" in reply.json()["error"]
        reply = test_client.post("/v1/models/diabetes:predict", json={"instances": extreme})
        assert reply.status_code == 400


def test_oversize_bodies_are_refused_with_413(client: TestClient) -> None:
    rows = [SETOSA] * 4000
    reply = client.post("/v2/models/iris/infer", json={"inputs": [v2_tensor(rows)]})
    assert reply.status_code == 413
    assert "exceeds the limit of 65536 bytes" in reply.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(4000):
            yield b"[5.1, 3.5, 1.4, 0.2],"
        yield b"[5.1, 3.5, 1.4, 0.2]]}"

    streamed = client.post(
        "/v1/models/iris:predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert client.get("/v2/health/ready").status_code == 200


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_protocol_endpoint_and_code(client: TestClient) -> None:
    client.post("/v2/models/iris/infer", json={"inputs": [v2_tensor([SETOSA, SETOSA])]})
    client.post("/v2/models/iris/infer", content=b"{", headers={"content-type": "application/json"})
    client.post("/v1/models/iris:predict", json={"instances": [SETOSA]})
    found = samples(client)

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, frozenset({**LABELS, **labels}.items())))

    assert value("modeldeploy_requests_total", protocol="v2", endpoint="infer", code="200") == 1
    assert value("modeldeploy_requests_total", protocol="v2", endpoint="infer", code="400") == 1
    assert value("modeldeploy_requests_total", protocol="v1", endpoint="predict", code="200") == 1
    assert value("modeldeploy_request_duration_seconds_count", protocol="v2", endpoint="infer") == 2
    assert value("modeldeploy_predicted_rows_total") == 3
    assert value("modeldeploy_prediction_class_total", **{"class": "0"}) == 3
    load_seconds = value("modeldeploy_model_load_seconds")
    assert load_seconds is not None and load_seconds > 0
    info = [labels for (name, labels), _ in found.items() if name == "modeldeploy_model_info"]
    assert len(info) == 1
    info_labels = dict(info[0])
    assert info_labels["format"] == "skops"
    assert len(info_labels["digest"]) == 64
    assert {"sklearn_version", "python_version"} <= info_labels.keys()
    assert not any(
        name.startswith("modeldeploy_requests") and ("endpoint", "metrics") in labels
        for name, labels in found
    )


def test_the_openapi_document_describes_the_protocol_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v2/models/{model_name}/infer" in paths
    assert "/v1/models/{model_name}:predict" in paths
    assert "/metrics" not in paths


def test_a_model_that_fails_to_load_is_never_ready_and_stops_the_server(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"x")
    state = ServerState()
    stopped = threading.Event()
    state.request_shutdown = stopped.set
    app = create_app(make_settings(tmp_path), registry=CollectorRegistry(), state=state)
    with TestClient(app) as test_client:
        assert stopped.wait(10)
        assert test_client.get("/v2/health/ready").status_code == 400
    assert "ALLOW_PICKLE" in str(state.load_error)
