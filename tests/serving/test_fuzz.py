"""Fuzzing every endpoint from the server's own OpenAPI document: bad input never gives a 5xx."""

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modeldeploy_serving.app import create_app
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.model import SklearnModel
from modeldeploy_serving.settings import ServerSettings


def _ready_app() -> Any:
    features, labels = load_iris(return_X_y=True)
    server_settings = ServerSettings(model_name="iris", model_version="v1", model_dir=Path("/nonexistent"))
    plane = DataPlane(server_settings)
    plane.serve_model(SklearnModel(LogisticRegression(max_iter=300).fit(features, labels)))
    return create_app(server_settings, data_plane=plane, load_model=False)


schema = schemathesis.openapi.from_asgi("/openapi.json", _ready_app())


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.content:
        assert isinstance(response.json()["error"], str)
