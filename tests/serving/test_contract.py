"""The coupling with the operator: environment variable names and metric names.

The operator's analysis imports `metric_names`, and the builders' tests check the variables they set
against `settings`; both must import without the server's heavy dependencies, and their values must
not change by accident.
"""

import subprocess
import sys

from modeldeploy_serving import metric_names
from modeldeploy_serving.settings import ENV_PREFIX, ServerSettings


def test_environment_variable_names() -> None:
    names = {f"{ENV_PREFIX}{field.upper()}" for field in ServerSettings.model_fields}
    assert ENV_PREFIX == "MODELDEPLOY_SERVER_"
    assert {
        "MODELDEPLOY_SERVER_MODEL_NAME",
        "MODELDEPLOY_SERVER_MODEL_VERSION",
        "MODELDEPLOY_SERVER_VARIANT",
        "MODELDEPLOY_SERVER_NAMESPACE",
        "MODELDEPLOY_SERVER_MODEL_DIR",
        "MODELDEPLOY_SERVER_MODEL_FORMAT",
        "MODELDEPLOY_SERVER_MODEL_SHA256",
        "MODELDEPLOY_SERVER_HTTP_PORT",
        "MODELDEPLOY_SERVER_HOST",
        "MODELDEPLOY_SERVER_WORKERS",
        "MODELDEPLOY_SERVER_BATCHING_ENABLED",
        "MODELDEPLOY_SERVER_BATCH_MAX_SIZE",
        "MODELDEPLOY_SERVER_BATCH_WINDOW_MS",
        "MODELDEPLOY_SERVER_ALLOW_PICKLE",
        "MODELDEPLOY_SERVER_ON_VERSION_MISMATCH",
    } <= names


def test_settings_are_read_from_the_environment(monkeypatch: object) -> None:
    environment = {
        "MODELDEPLOY_SERVER_MODEL_NAME": "fraud",
        "MODELDEPLOY_SERVER_VARIANT": "canary",
        "MODELDEPLOY_SERVER_HTTP_PORT": "9000",
        "MODELDEPLOY_SERVER_BATCHING_ENABLED": "true",
        "MODELDEPLOY_SERVER_ON_VERSION_MISMATCH": "warn",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)  # type: ignore[attr-defined]
    settings = ServerSettings()
    assert (settings.model_name, settings.variant.value, settings.http_port) == ("fraud", "canary", 9000)
    assert settings.batching_enabled
    assert settings.on_version_mismatch.value == "warn"
    assert not settings.allow_pickle
    assert str(settings.model_dir) == "/mnt/models"


def test_metric_names() -> None:
    assert metric_names.REQUESTS_TOTAL == "modeldeploy_requests_total"
    assert metric_names.REQUEST_DURATION_SECONDS == "modeldeploy_request_duration_seconds"
    assert metric_names.PREDICTED_ROWS_TOTAL == "modeldeploy_predicted_rows_total"
    assert metric_names.PREDICTION_CLASS_TOTAL == "modeldeploy_prediction_class_total"
    assert metric_names.PREDICTION_VALUE == "modeldeploy_prediction_value"
    assert metric_names.MODEL_LOAD_SECONDS == "modeldeploy_model_load_seconds"
    assert metric_names.MODEL_INFO == "modeldeploy_model_info"
    assert metric_names.COMMON_LABELS == ("model", "namespace", "model_version", "variant")


def test_the_contract_modules_import_without_the_server_dependencies() -> None:
    probe = (
        "import sys\n"
        "import modeldeploy_serving.settings, modeldeploy_serving.metric_names\n"
        "heavy = {'numpy', 'sklearn', 'fastapi', 'prometheus_client', 'starlette'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
