"""The data plane, driven directly without HTTP."""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from serving_helpers import make_settings, v2_tensor

from modeldeploy_serving.dataplane import DataPlane, WorkerGroup
from modeldeploy_serving.errors import InvalidInput, ModelNotFound, ModelNotReady
from modeldeploy_serving.metrics import ServerMetrics
from modeldeploy_serving.model import SklearnModel
from modeldeploy_serving.protocol import InferenceRequest, V1PredictRequest

T = TypeVar("T")
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def plane(tmp_path: Path, iris_classifier: Any, registry: CollectorRegistry) -> DataPlane:
    settings = make_settings(tmp_path)
    data_plane = DataPlane(settings, ServerMetrics(settings, registry))
    data_plane.serve_model(SklearnModel(iris_classifier))
    return data_plane


def infer(plane: DataPlane, body: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    return run(plane.infer("iris", version, InferenceRequest.model_validate(body)))


def test_infer_returns_every_output_by_default(plane: DataPlane) -> None:
    response = infer(plane, {"id": "42", "inputs": [v2_tensor([SETOSA, VIRGINICA])]})
    assert response["id"] == "42"
    assert response["model_name"] == "iris"
    assert response["model_version"] == "v1"
    predict, proba = response["outputs"]
    assert predict == {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 2]}
    assert proba["name"] == "predict_proba"
    assert proba["shape"] == [2, 3]
    assert np.allclose(np.sum(np.reshape(proba["data"], (2, 3)), axis=1), 1.0)


def test_infer_returns_only_the_requested_outputs(plane: DataPlane) -> None:
    response = infer(plane, {"inputs": [v2_tensor([SETOSA])], "outputs": [{"name": "predict_proba"}]})
    assert [output["name"] for output in response["outputs"]] == ["predict_proba"]
    assert response["id"]


def test_infer_accepts_one_input_per_feature(plane: DataPlane) -> None:
    columns = [
        {"name": f"f{index}", "shape": [2], "datatype": "FP32", "data": [SETOSA[index], VIRGINICA[index]]}
        for index in range(4)
    ]
    assert infer(plane, {"inputs": columns})["outputs"][0]["data"] == [0, 2]


def test_infer_with_a_version_in_the_url(plane: DataPlane) -> None:
    assert infer(plane, {"inputs": [v2_tensor([SETOSA])]}, version="v1")["outputs"][0]["data"] == [0]
    with pytest.raises(ModelNotFound, match="version 'v2'"):
        infer(plane, {"inputs": [v2_tensor([SETOSA])]}, version="v2")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [v2_tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])]}, "expects 4 features per row, got 5"),
        ({"inputs": [v2_tensor([[1.0, 2.0, 3.0]])]}, "expects 4 features per row, got 3"),
        (
            {"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": SETOSA}]},
            "shape [rows, features]",
        ),
        ({"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP64", "data": []}]}, "no rows"),
        (
            {"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP64", "data": SETOSA}]},
            "[rows, features]",
        ),
        ({"inputs": [v2_tensor([SETOSA]), v2_tensor([SETOSA])]}, "unique"),
        ({"inputs": [v2_tensor([SETOSA])], "outputs": [{"name": "explain"}]}, "unknown output(s) explain"),
        ({"inputs": [v2_tensor([[1.0, float("nan"), 1.0, 1.0]])]}, "the model rejected the input"),
        ({"inputs": [v2_tensor([["a", "b", "c", "d"]], datatype="BYTES")]}, "the model rejected the input"),
    ],
)
def test_bad_inference_requests_are_client_errors(
    plane: DataPlane, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        infer(plane, body)
    assert message in str(raised.value)


def test_an_unknown_model_is_not_found(plane: DataPlane) -> None:
    with pytest.raises(ModelNotFound, match="'other' is not served here"):
        run(plane.infer("other", None, InferenceRequest.model_validate({"inputs": [v2_tensor([SETOSA])]})))
    with pytest.raises(ModelNotFound):
        plane.model_metadata("other")
    with pytest.raises(ModelNotFound):
        plane.model_ready("other")


def test_nothing_is_ready_before_the_model_is_served(tmp_path: Path) -> None:
    plane = DataPlane(make_settings(tmp_path))
    assert plane.live()
    assert not plane.ready()
    assert not plane.model_ready("iris")
    with pytest.raises(ModelNotReady):
        plane.model_metadata("iris")
    with pytest.raises(ModelNotReady):
        run(plane.predict_v1("iris", V1PredictRequest(instances=[SETOSA])))


def test_metadata(plane: DataPlane) -> None:
    assert plane.server_metadata() == {
        "name": "modeldeploy",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    assert plane.model_metadata("iris", "v1") == {
        "name": "iris",
        "versions": ["v1"],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }
    assert plane.v1_models() == {"models": ["iris"]}
    assert plane.v1_model_status("iris") == {"name": "iris", "ready": True}


def test_v1_predict_with_instances_or_inputs(plane: DataPlane) -> None:
    assert run(plane.predict_v1("iris", V1PredictRequest(instances=[SETOSA, VIRGINICA]))) == {
        "predictions": [0, 2]
    }
    assert run(plane.predict_v1("iris", V1PredictRequest(inputs=[VIRGINICA]))) == {"predictions": [2]}


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (V1PredictRequest(), "exactly one of 'instances' and 'inputs'"),
        (V1PredictRequest(instances=[SETOSA], inputs=[SETOSA]), "exactly one of"),
        (V1PredictRequest(instances=[[1.0, 2.0]]), "expects 4 features per row, got 2"),
    ],
)
def test_bad_v1_requests_are_client_errors(
    plane: DataPlane, request_body: V1PredictRequest, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        run(plane.predict_v1("iris", request_body))


def test_predictions_are_counted_by_class(plane: DataPlane, registry: CollectorRegistry) -> None:
    infer(plane, {"inputs": [v2_tensor([SETOSA, SETOSA, VIRGINICA])], "outputs": [{"name": "predict"}]})
    infer(plane, {"inputs": [v2_tensor([VIRGINICA])], "outputs": [{"name": "predict_proba"}]})
    labels = {"model": "iris", "namespace": "ml", "model_version": "v1", "variant": "stable"}
    assert registry.get_sample_value("modeldeploy_predicted_rows_total", labels) == 4
    assert registry.get_sample_value("modeldeploy_prediction_class_total", {**labels, "class": "0"}) == 2
    assert registry.get_sample_value("modeldeploy_prediction_class_total", {**labels, "class": "2"}) == 2


def test_regression_predictions_feed_the_value_histogram(
    tmp_path: Path, diabetes_regressor: Any, registry: CollectorRegistry
) -> None:
    settings = make_settings(tmp_path, model_name="diabetes", variant="canary")
    plane = DataPlane(settings, ServerMetrics(settings, registry))
    plane.serve_model(SklearnModel(diabetes_regressor))
    assert [output["name"] for output in plane.model_metadata("diabetes")["outputs"]] == ["predict"]
    request = InferenceRequest.model_validate({"inputs": [v2_tensor([[0.0] * 10, [0.05] * 10])]})
    response = run(plane.infer("diabetes", None, request))
    assert response["outputs"][0]["datatype"] == "FP64"
    labels = {"model": "diabetes", "namespace": "ml", "model_version": "v1", "variant": "canary"}
    assert registry.get_sample_value("modeldeploy_prediction_value_count", labels) == 2
    assert registry.get_sample_value("modeldeploy_prediction_value_bucket", {**labels, "le": "+Inf"}) == 2


def test_string_labels_come_back_as_bytes(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    names = np.asarray(iris.target_names)[iris.target]
    plane = DataPlane(make_settings(tmp_path))
    plane.serve_model(SklearnModel(DecisionTreeClassifier().fit(iris.data, names)))
    response = infer(plane, {"inputs": [v2_tensor([SETOSA])], "outputs": [{"name": "predict"}]})
    assert response["outputs"][0] == {
        "name": "predict",
        "shape": [1],
        "datatype": "BYTES",
        "data": ["setosa"],
    }
    assert run(plane.predict_v1("iris", V1PredictRequest(instances=[SETOSA]))) == {"predictions": ["setosa"]}


def test_a_pipeline_fitted_on_named_columns_gets_a_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pandas
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pandas.DataFrame({"age": [20.0, 35.0, 50.0, 65.0], "city": ["oslo", "rome", "oslo", "rome"]})
    preprocess = ColumnTransformer([("city", OneHotEncoder(), ["city"])], remainder="passthrough")
    pipeline = make_pipeline(preprocess, LogisticRegression(C=1000)).fit(frame, [0, 1, 0, 1])
    plane = DataPlane(make_settings(tmp_path))
    plane.serve_model(SklearnModel(pipeline))
    assert "warm-up with zeros was rejected" in caplog.text
    columns = [
        {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["rome", "oslo"]},
        {"name": "age", "shape": [2], "datatype": "FP64", "data": [30.0, 30.0]},
    ]
    response = infer(plane, {"inputs": columns, "outputs": [{"name": "predict"}]})
    assert response["outputs"][0]["data"] == [1, 0]
    with pytest.raises(InvalidInput, match="the model rejected the input"):
        infer(plane, {"inputs": [{**columns[0], "data": ["paris", "oslo"]}, columns[1]]})
    by_row = V1PredictRequest(instances=[{"city": "rome", "age": 30.0}, {"age": 30.0, "city": "oslo"}])
    assert run(plane.predict_v1("iris", by_row)) == {"predictions": [1, 0]}
    by_column = V1PredictRequest(inputs={"city": ["rome", "oslo"], "age": [30.0, 30.0]})
    assert run(plane.predict_v1("iris", by_column)) == {"predictions": [1, 0]}
    assert run(plane.predict_v1("iris", V1PredictRequest(instances=[[30.0, "rome"]]))) == {"predictions": [1]}


def test_a_warm_up_with_the_artifacts_own_example_must_pass(tmp_path: Path, iris_classifier: Any) -> None:
    plane = DataPlane(make_settings(tmp_path))
    with pytest.raises(InvalidInput, match="expects 4 features"):
        plane.serve_model(SklearnModel(iris_classifier, example_rows=np.zeros((1, 3))))
    assert not plane.ready()


def test_with_peers_ready_only_when_every_worker_is(tmp_path: Path, iris_classifier: Any) -> None:
    peers = WorkerGroup(tmp_path, size=2)
    plane = DataPlane(make_settings(tmp_path), peers=peers)
    plane.serve_model(SklearnModel(iris_classifier))
    assert not plane.ready()
    (tmp_path / "ready-other-worker").touch()
    assert plane.ready()


def test_rows_answered_with_a_client_error_are_not_counted(
    tmp_path: Path, diabetes_regressor: Any, registry: CollectorRegistry
) -> None:
    settings = make_settings(tmp_path, model_name="diabetes")
    plane = DataPlane(settings, ServerMetrics(settings, registry))
    plane.serve_model(SklearnModel(diabetes_regressor))
    labels = {"model": "diabetes", "namespace": "ml", "model_version": "v1", "variant": "stable"}
    # Extreme inputs drive the linear model to infinity, which JSON cannot carry: a 400.
    extreme = [[1e308] * 10, [-1e308] * 10]
    with pytest.raises(InvalidInput, match="not finite"):
        run(plane.infer("diabetes", None, InferenceRequest.model_validate({"inputs": [v2_tensor(extreme)]})))
    with pytest.raises(InvalidInput, match="not finite"):
        run(plane.predict_v1("diabetes", V1PredictRequest.model_validate({"instances": extreme})))
    assert not registry.get_sample_value("modeldeploy_predicted_rows_total", labels)
    run(plane.infer("diabetes", None, InferenceRequest.model_validate({"inputs": [v2_tensor([[0.0] * 10])]})))
    assert registry.get_sample_value("modeldeploy_predicted_rows_total", labels) == 1
