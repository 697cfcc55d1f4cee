"""The names of the server's Prometheus series and their labels.

The operator's analysis builds its queries from these names, so this module must stay
importable without the server's dependencies; a contract test pins the values.
"""

REQUESTS_TOTAL = "modeldeploy_requests_total"
REQUEST_DURATION_SECONDS = "modeldeploy_request_duration_seconds"
PREDICTED_ROWS_TOTAL = "modeldeploy_predicted_rows_total"
PREDICTION_CLASS_TOTAL = "modeldeploy_prediction_class_total"
PREDICTION_VALUE = "modeldeploy_prediction_value"
MODEL_LOAD_SECONDS = "modeldeploy_model_load_seconds"
MODEL_INFO = "modeldeploy_model_info"

# Carried by every series, so the analysis can tell the canary from the stable model.
LABEL_MODEL = "model"
LABEL_NAMESPACE = "namespace"
LABEL_MODEL_VERSION = "model_version"
LABEL_VARIANT = "variant"
COMMON_LABELS = (LABEL_MODEL, LABEL_NAMESPACE, LABEL_MODEL_VERSION, LABEL_VARIANT)

LABEL_PROTOCOL = "protocol"
LABEL_ENDPOINT = "endpoint"
LABEL_CODE = "code"
LABEL_CLASS = "class"
LABEL_DIGEST = "digest"
LABEL_FORMAT = "format"
LABEL_SKLEARN_VERSION = "sklearn_version"
LABEL_PYTHON_VERSION = "python_version"
