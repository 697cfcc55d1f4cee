"""The ModelDeployment resource (modeldeploy.io/v1alpha1) as typed models.

These models are the single source of the CRD: `crdgen` turns their JSON schema
into the structural OpenAPI schema, attribute docstrings become field
descriptions, and each cross-field rule exists twice on purpose: as a CEL rule
(`json_schema_extra`) that the API server enforces, and as a pydantic validator
with the same message, so the operator and the unit tests reject exactly what
the API server rejects.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "DURATION_PATTERN",
    "METADATA_NAME_MAX_LENGTH",
    "METADATA_NAME_MESSAGE",
    "METADATA_NAME_PATTERN",
    "MODEL_URI_HELP",
    "MODEL_URI_PATTERN",
    "RESERVED_ENV_PREFIX",
    "Analysis",
    "Autoscaling",
    "Batching",
    "CanaryStatus",
    "CheckResult",
    "Condition",
    "CustomCheck",
    "EnvVar",
    "ErrorRateCheck",
    "GatewayParentRef",
    "GatewayTraffic",
    "HistoryEntry",
    "IstioTraffic",
    "LatencyCheck",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSource",
    "ObjectMeta",
    "PodDisruptionBudget",
    "PredictionShiftCheck",
    "RejectedModel",
    "Resources",
    "Rollout",
    "ServerSpec",
    "StableModel",
    "Traffic",
    "parse_duration",
]

# Printable ASCII without the space ("!" to "~"): a URI never contains
# whitespace, and a class without backslashes or quotes means the same regex
# text works unchanged in Python, in the CRD and inside a CEL string literal.
_URI_CHAR = "[!-~]"
_DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
MODEL_URI_PATTERN = (
    "^("
    f"/{_URI_CHAR}*"
    f"|file:///{_URI_CHAR}*"
    f"|pvc://{_DNS_SUBDOMAIN}(/{_URI_CHAR}*)?"
    f"|https?://[-a-zA-Z0-9.:@_]+(/{_URI_CHAR}*)?"
    f"|s3://[a-z0-9][-a-z0-9.]{{1,61}}[a-z0-9](/{_URI_CHAR}*)?"
    f"|gs://[a-z0-9][-a-z0-9._]{{1,220}}[a-z0-9](/{_URI_CHAR}*)?"
    "|models:/[-a-zA-Z0-9._]+(/[-a-zA-Z0-9._]+|@[-a-zA-Z0-9_]+)"
    f"|runs:/[a-zA-Z0-9]+/{_URI_CHAR}+"
    ")$"
)
MODEL_URI_HELP = (
    "spec.model.uri must be an absolute path, file:///PATH, pvc://CLAIM/PATH, http(s)://HOST/PATH, "
    "s3://BUCKET/KEY, gs://BUCKET/OBJECT, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"
)

# Go's time.ParseDuration syntax without signs: "30s", "1m30s", "1.5h".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_SECONDS_PER_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")

# The model server reads its settings from variables with this prefix; letting
# users set them too would let a manifest silently contradict the operator.
RESERVED_ENV_PREFIX = "MODELDEPLOY_SERVER_"

# Kubernetes' resource.Quantity syntax ("500m", "2Gi", "1e3"), as the API server checks it.
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY_PATTERN = rf"^(\+|-)?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"


def parse_duration(text: str) -> timedelta:
    """Convert a duration string validated by `DURATION_PATTERN` ("1m30s") to a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration like 30s, 5m or 1h30m: {text!r}")
    seconds = sum(float(amount) * _SECONDS_PER_UNIT[unit] for amount, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def _check_model_uri(uri: str) -> str:
    if not re.fullmatch(MODEL_URI_PATTERN, uri):
        raise ValueError(MODEL_URI_HELP)
    return uri


PROMETHEUS_ADDRESS_HELP = (
    "must be an http or https URL with a host and, if given, a port from 1 to 65535, without"
    " credentials, query or fragment (for example http://prometheus.monitoring.svc:9090)"
)


def check_prometheus_address(address: str) -> str:
    """`address` if it is a URL the operator can query (the CRD's CEL rule says the same), else ValueError."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{PROMETHEUS_ADDRESS_HELP}: {error}") from error
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == 0
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or not re.fullmatch(r"[!-~]+", address)
    ):
        raise ValueError(PROMETHEUS_ADDRESS_HELP)
    return address


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    validation = {"rule": rule, "message": message}
    if field_path is not None:
        validation["fieldPath"] = field_path
    return validation


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=64)]

# The built-in checks, by the names status shows; a custom check may not take one of them.
SAMPLES = "samples"
ERROR_RATE = "errorRate"
LATENCY = "latency"
PREDICTION_SHIFT = "predictionShift"
BUILT_IN_CHECKS = (SAMPLES, ERROR_RATE, LATENCY, PREDICTION_SHIFT)
# Strict integers, so a string like "2" stays the string the user wrote (as the API server keeps it).
Quantity = Annotated[
    Annotated[int, Field(strict=True)] | Annotated[str, Field(pattern=_QUANTITY_PATTERN)],
    Field(union_mode="left_to_right"),
]
# A replica count or a percentage, as Kubernetes' IntOrString fields take it.
IntOrPercent = Annotated[
    Annotated[int, Field(ge=0, strict=True)] | Annotated[str, Field(pattern=r"^[0-9]{1,3}%$")],
    Field(union_mode="left_to_right"),
]
ShortString = Annotated[str, Field(min_length=1, max_length=253)]
# Scheduling objects are passed to the pod spec as they are; the API server
# validates them there, so copying their schema here would only go stale.
OpaqueObject = dict[str, Any]


class CamelModel(BaseModel):
    """Base for the resource's models: camelCase in YAML, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )


class ModelSource(CamelModel):
    """Where the model artifact comes from and how to load it."""

    uri: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_check_model_uri)] = Field(
        json_schema_extra=_validations(_cel(f'self.matches("{MODEL_URI_PATTERN}")', MODEL_URI_HELP))
    )
    """Location of the artifact: an absolute path or file:/// URI inside the server image,
    pvc://CLAIM/PATH, http(s)://, s3://, gs://, or an MLflow models:/NAME/VERSION, models:/NAME@ALIAS or
    runs:/RUN_ID/PATH URI."""

    format: Literal["auto", "sklearn", "mlflow"] = "auto"
    """How the server loads the artifact; auto detects it from the artifact's files."""

    version: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """A label for this model (for example a release number), shown in status and in metrics."""

    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")] | None = None
    """Expected SHA-256 digest (64 lowercase hex digits) of the artifact; the server refuses any other."""


class Resources(CamelModel):
    """Compute resources of the model-server container."""

    requests: dict[str, Quantity] = Field(default_factory=dict, json_schema_extra={"maxProperties": 32})
    """Minimum resources, by name (cpu, memory, nvidia.com/gpu, ...)."""

    limits: dict[str, Quantity] = Field(default_factory=dict, json_schema_extra={"maxProperties": 32})
    """Maximum resources, by name; extended resources such as nvidia.com/gpu are passed through."""


class EnvVar(CamelModel):
    """An environment variable for the model server, for example credentials for s3:// or models:/."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern="^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Name of the variable."""

    value: str | None = None
    """Literal value."""

    value_from: OpaqueObject | None = None
    """Source of the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), as in a pod spec."""


class Batching(CamelModel):
    """Server-side batching of concurrent prediction requests."""

    enabled: bool = False
    """Whether the server groups concurrent requests into one prediction call."""

    max_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Largest number of requests in one batch."""

    window_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    """How long, in milliseconds, the server waits for more requests before predicting."""


def _env_names_not_reserved(env: list[EnvVar]) -> list[EnvVar]:
    reserved = [item.name for item in env if item.name.startswith(RESERVED_ENV_PREFIX)]
    if reserved:
        raise ValueError(
            f"spec.server.env must not set {RESERVED_ENV_PREFIX}* variables, the operator sets them"
        )
    if len({item.name for item in env}) != len(env):
        raise ValueError("spec.server.env names must be unique")
    return env


class ServerSpec(CamelModel):
    """The model-server pods."""

    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Server image; the operator's default image when unset."""

    resources: Resources = Field(default_factory=Resources)
    """Resource requests and limits of the server container (GPU requests included)."""

    env: Annotated[list[EnvVar], AfterValidator(_env_names_not_reserved)] = Field(
        default_factory=list,
        json_schema_extra={
            "maxItems": 64,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **_validations(
                _cel(
                    f"self.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
                    f"spec.server.env must not set {RESERVED_ENV_PREFIX}* variables, the operator sets them",
                )
            ),
        },
    )
    """Extra environment variables for the fetch step and the server (credentials, MLflow tracking URI)."""

    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Number of server worker processes per pod."""

    batching: Batching = Field(default_factory=Batching)
    """Server-side batching of prediction requests."""


class Autoscaling(CamelModel):
    """A HorizontalPodAutoscaler for the stable pods; it then owns their replica count."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.minReplicas <= self.maxReplicas",
                "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Fewest replicas the autoscaler keeps."""

    max_replicas: Annotated[int, Field(ge=1)]
    """Most replicas the autoscaler creates."""

    target_cpu_utilization_percentage: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=80, alias="targetCPUUtilizationPercentage"
    )
    """Average CPU use, as a percentage of the CPU request, that the autoscaler aims for."""

    @model_validator(mode="after")
    def _min_at_most_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"
            )
        return self


class PodDisruptionBudget(CamelModel):
    """A PodDisruptionBudget for the stable pods; set exactly one of the two fields."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.minAvailable) != has(self.maxUnavailable)",
                "spec.podDisruptionBudget must set exactly one of minAvailable and maxUnavailable",
            )
        )
    )

    min_available: IntOrPercent | None = None
    """Pods (a number or a percentage like "50%") that must stay available during voluntary disruptions."""

    max_unavailable: IntOrPercent | None = None
    """Pods (a number or a percentage like "25%") that may be unavailable during voluntary disruptions."""

    @model_validator(mode="after")
    def _exactly_one(self) -> PodDisruptionBudget:
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError(
                "spec.podDisruptionBudget must set exactly one of minAvailable and maxUnavailable"
            )
        return self


class GatewayParentRef(CamelModel):
    """A Gateway API Gateway (or listener of one) that the HTTPRoute attaches to."""

    name: ShortString
    """Name of the Gateway."""

    namespace: ShortString | None = None
    """Namespace of the Gateway; the ModelDeployment's namespace when unset."""

    section_name: ShortString | None = None
    """Listener of the Gateway to attach to; all listeners when unset."""


class GatewayTraffic(CamelModel):
    """Settings of the gateway-api provider (an HTTPRoute with weighted backends)."""

    parent_refs: list[GatewayParentRef] = Field(min_length=1, max_length=16)
    """Gateways the HTTPRoute attaches to."""

    hostnames: list[ShortString] = Field(default_factory=list, max_length=16)
    """Host names the HTTPRoute matches; all host names of the Gateway when empty."""


class IstioTraffic(CamelModel):
    """Settings of the istio provider (a VirtualService with weighted routes)."""

    gateways: list[ShortString] = Field(default_factory=list, max_length=16)
    """Istio gateways the VirtualService applies to; the mesh only when empty."""

    hosts: list[ShortString] = Field(default_factory=list, max_length=16)
    """Host names the VirtualService matches; the entry Service's name when empty."""

    mirror: bool = False
    """Send the canary a copy of its share of the requests instead of the requests themselves: the
    stable model answers every client, the canary's answers are discarded but still measured."""


class Traffic(CamelModel):
    """How requests are split between the stable and the canary model."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.provider != 'gateway-api' || has(self.gateway)",
                "spec.traffic.gateway is required when spec.traffic.provider is gateway-api",
                ".gateway",
            ),
            _cel(
                "!has(self.gateway) || self.provider == 'gateway-api'",
                "spec.traffic.gateway may only be set when spec.traffic.provider is gateway-api",
                ".gateway",
            ),
            _cel(
                "!has(self.istio) || self.provider == 'istio'",
                "spec.traffic.istio may only be set when spec.traffic.provider is istio",
                ".istio",
            ),
        )
    )

    provider: Literal["replicas", "gateway-api", "istio"] = "replicas"
    """replicas: one Service over stable and canary pods, the weight approximated by replica counts;
    gateway-api: an HTTPRoute with exact weights; istio: a VirtualService with exact weights."""

    gateway: GatewayTraffic | None = None
    """Settings of the gateway-api provider."""

    istio: IstioTraffic | None = None
    """Settings of the istio provider."""

    @model_validator(mode="after")
    def _provider_settings_match(self) -> Traffic:
        if self.provider == "gateway-api" and self.gateway is None:
            raise ValueError("spec.traffic.gateway is required when spec.traffic.provider is gateway-api")
        if self.gateway is not None and self.provider != "gateway-api":
            raise ValueError("spec.traffic.gateway may only be set when spec.traffic.provider is gateway-api")
        if self.istio is not None and self.provider != "istio":
            raise ValueError("spec.traffic.istio may only be set when spec.traffic.provider is istio")
        return self


class ErrorRateCheck(CamelModel):
    """Compares the share of failed (5xx) requests of the canary with a bound and with the stable model."""

    enabled: bool = True
    """Whether this check runs."""

    max_ratio: Annotated[float, Field(ge=0, le=1)] | None = 0.01
    """Highest allowed share of failed requests (0.01 is 1%); with method statistical, the canary fails
    only when an exact binomial test shows its share above this."""

    max_increase: Annotated[float, Field(ge=0, le=1)] | None = None
    """Highest allowed excess of the canary's failed-request share over the stable model's (0.005 is half a
    percentage point). With method statistical the excess is always tested (two proportions with their
    sample sizes) and unset means 0: any excess the data shows beyond chance fails."""


class LatencyCheck(CamelModel):
    """Compares a latency quantile of the canary with a bound and with the stable model."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!self.enabled || has(self.maxSeconds) || has(self.maxIncreaseRatio)",
                "spec.rollout.analysis.latency needs maxSeconds or maxIncreaseRatio when enabled",
            )
        )
    )

    enabled: bool = True
    """Whether this check runs."""

    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.99
    """Latency quantile compared, for example 0.99."""

    max_seconds: Annotated[float, Field(gt=0)] | None = None
    """Highest allowed latency at the quantile, in seconds."""

    max_increase_ratio: Annotated[float, Field(ge=1)] | None = 1.5
    """Highest allowed ratio of the canary's latency to the stable model's at the quantile. With method
    statistical it is the tolerance of two tests on the histogram buckets: the share of canary requests
    slower than this ratio times the stable model's quantile, and the whole distribution's ranks against
    the stable model's slowed by this ratio."""

    ignore_below_seconds: Annotated[float, Field(ge=0)] = 0.025
    """A canary latency up to this passes the comparison with the stable model whatever the ratio: at a few
    milliseconds, differences are the machine's noise rather than a regression (maxSeconds still applies).
    With method statistical, requests up to this count as equally fast."""

    @model_validator(mode="after")
    def _has_a_bound(self) -> LatencyCheck:
        if self.enabled and self.max_seconds is None and self.max_increase_ratio is None:
            raise ValueError(
                "spec.rollout.analysis.latency needs maxSeconds or maxIncreaseRatio when enabled"
            )
        return self


class PredictionShiftCheck(CamelModel):
    """Compares the distribution of the canary's predictions with the stable model's."""

    enabled: bool = True
    """Whether this check runs."""

    max_shift: Annotated[float, Field(gt=0)] = 0.2
    """Highest allowed population stability index between the two prediction distributions. With method
    statistical, the true shift: the PSI measured on samples is biased upward by about
    (classes - 1) x (1/canary requests + 1/stable requests), which the test allows for."""


class CustomCheck(CamelModel):
    """A PromQL query about the canary whose result must stay within bounds. The query may use {{name}},
    {{namespace}}, {{variant}} and {{window}} (or its synonym {{interval}}, a range like 300s), which the
    operator fills in for each evaluation."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.min) || has(self.max)",
                "spec.rollout.analysis.custom[].min or max must be set",
            ),
            _cel(
                "!has(self.min) || !has(self.max) || self.min <= self.max",
                "spec.rollout.analysis.custom[].min must be less than or equal to max",
                ".min",
            ),
            _cel(
                "!(self.name in [" + ", ".join(f"'{name}'" for name in BUILT_IN_CHECKS) + "])",
                "spec.rollout.analysis.custom[].name must not be the name of a built-in check ("
                + ", ".join(BUILT_IN_CHECKS)
                + ")",
                ".name",
            ),
        )
    )

    name: Annotated[str, Field(pattern="^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    """Name of the check, shown in status."""

    query: Annotated[str, Field(min_length=1, max_length=4096)]
    """PromQL query returning one number."""

    min: float | None = None
    """Lowest passing value."""

    max: float | None = None
    """Highest passing value."""

    @model_validator(mode="after")
    def _bounds(self) -> CustomCheck:
        if self.min is None and self.max is None:
            raise ValueError("spec.rollout.analysis.custom[].min or max must be set")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("spec.rollout.analysis.custom[].min must be less than or equal to max")
        return self


def _custom_names_unique(checks: list[CustomCheck]) -> list[CustomCheck]:
    if len({check.name for check in checks}) != len(checks):
        raise ValueError("spec.rollout.analysis.custom names must be unique")
    for index, check in enumerate(checks):
        if check.name in BUILT_IN_CHECKS:
            raise ValueError(
                f"spec.rollout.analysis.custom[{index}].name: {check.name} is the name of a built-in check"
            )
    return checks


class Analysis(CamelModel):
    """How each rollout step is judged, from the servers' own Prometheus metrics."""

    prometheus_address: (
        Annotated[
            str,
            Field(
                pattern="^https?://[!-~]+$",
                max_length=2048,
                json_schema_extra=_validations(
                    _cel(
                        "isURL(self) && url(self).getScheme() in ['http', 'https']"
                        " && url(self).getHostname() != '' && !self.contains('@')"
                        " && url(self).getQuery().size() == 0 && !self.contains('#')"
                        " && (url(self).getPort() == '' || (int(url(self).getPort()) >= 1"
                        " && int(url(self).getPort()) <= 65535))",
                        f"spec.rollout.analysis.prometheusAddress {PROMETHEUS_ADDRESS_HELP}",
                    )
                ),
            ),
            AfterValidator(check_prometheus_address),
        ]
        | None
    ) = None
    """Base URL of the Prometheus HTTP API; the operator's default when unset."""

    min_samples: Annotated[int, Field(ge=1)] = 50
    """Fewest requests the canary must serve in a step before its checks give a verdict; checks that
    compare with the stable model (maxIncrease, maxIncreaseRatio, predictionShift) need as many from
    the stable model too."""

    error_rate: ErrorRateCheck = Field(default_factory=ErrorRateCheck)
    """Built-in check of failed requests."""

    latency: LatencyCheck = Field(default_factory=LatencyCheck)
    """Built-in check of request latency."""

    prediction_shift: PredictionShiftCheck = Field(default_factory=PredictionShiftCheck)
    """Built-in check of the prediction distribution."""

    custom: Annotated[list[CustomCheck], AfterValidator(_custom_names_unique)] = Field(
        default_factory=list,
        json_schema_extra={
            "maxItems": 16,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    """Extra checks written in PromQL."""

    on_no_data: Literal["hold", "fail"] = "hold"
    """What a step without enough data means: hold keeps the step going (until inconclusiveLimit or
    progressDeadline), fail counts it as a failed check. No data never promotes."""

    method: Literal["threshold", "statistical"] = "threshold"
    """How the built-in checks judge a window: threshold compares each value with its bound; statistical
    tests whether the canary is worse than the bound or the stable model by more than the stated
    tolerances (maxRatio, maxIncrease, maxSeconds, maxIncreaseRatio, maxShift), given how many requests
    each variant served, and fails it only on evidence beyond falseRollbackRate. Custom checks always
    compare with their bounds."""

    false_rollback_rate: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """With method statistical: the highest chance that a rollout rolls back a model within all its
    tolerances, over the whole rollout. It is split evenly over the steps and over the tests of each
    step's window (Bonferroni); a step that needs another window (after an inconclusive or a tolerated
    failed one) spends its share again."""

    # How many windows share falseRollbackRate: the rollout's steps, set by Rollout from its steps, which
    # this part of the spec does not see; an Analysis on its own judges one window.
    _windows: int = PrivateAttr(default=1)

    @property
    def windows(self) -> int:
        """How many analysis windows share falseRollbackRate (the rollout's steps)."""
        return self._windows


def _strictly_increasing(steps: list[int]) -> list[int]:
    if any(later <= earlier for earlier, later in pairwise(steps)):
        raise ValueError("spec.rollout.steps must be strictly increasing")
    return steps


class Rollout(CamelModel):
    """How a new model replaces the stable one: traffic steps, each judged by analysis."""

    steps: Annotated[list[Annotated[int, Field(ge=1, le=99)]], AfterValidator(_strictly_increasing)] = Field(
        default=[10, 50],
        min_length=1,
        max_length=20,
        json_schema_extra=_validations(
            _cel(
                "self.isSorted() && self.all(w, self.indexOf(w) == self.lastIndexOf(w))",
                "spec.rollout.steps must be strictly increasing",
            )
        ),
    )
    """Percentages of traffic (1 to 99, strictly increasing) the canary receives, one step after another,
    before it is promoted to 100%."""

    step_duration: Duration = "5m"
    """How long each step lasts; its analysis covers this window."""

    analysis: Analysis = Field(default_factory=Analysis)
    """How each step is judged."""

    failure_limit: Annotated[int, Field(ge=0)] = 0
    """Failed analysis windows tolerated over the whole rollout before it is rolled back (a failed window
    within the limit is analysed again at the same step); 0 rolls back at the first failure."""

    inconclusive_limit: Annotated[int, Field(ge=0)] = 3
    """Analysis windows in a row without a verdict (too little data, Prometheus unreachable) tolerated
    before the rollout is rolled back."""

    wait_for_samples: bool = True
    """A window in which the canary, or the stable model a check compares with, served fewer than
    analysis.minSamples requests is extended rather than analysed again from scratch: its requests keep
    counting and it ends when the traffic seen so far says both will have enough (at the latest at the
    progress deadline), so a model with little traffic is judged on as many requests as a busy one.
    Such a window does not count against inconclusiveLimit. false (or analysis.onNoData fail) starts a
    new window and counts it."""

    progress_deadline: Duration = "30m"
    """Longest time one step may last before the rollout is rolled back; never shorter than stepDuration,
    and time paused does not count."""

    @model_validator(mode="after")
    def _analysis_knows_the_steps(self) -> Rollout:
        # The analysis splits the rollout's falseRollbackRate over its windows, one per step.
        self.analysis._windows = len(self.steps)
        return self


class ModelDeploymentSpec(CamelModel):
    """Desired state: which model to serve, how, and how to roll out a new one."""

    model: ModelSource
    """The model to serve; changing it starts a rollout."""

    replicas: Annotated[int, Field(ge=0)] = 1
    """Number of stable server pods; the autoscaler's starting point when autoscaling is set."""

    server: ServerSpec = Field(default_factory=ServerSpec)
    """Image, resources, environment and serving options of the model-server pods."""

    autoscaling: Autoscaling | None = None
    """Scale the stable pods with a HorizontalPodAutoscaler instead of replicas."""

    pod_disruption_budget: PodDisruptionBudget | None = None
    """Protect the stable pods with a PodDisruptionBudget."""

    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict)
    """Node labels the server pods must be scheduled on, as in a pod spec."""

    tolerations: list[OpaqueObject] = Field(default_factory=list, max_length=64)
    """Tolerations of the server pods, as in a pod spec."""

    affinity: OpaqueObject | None = None
    """Affinity of the server pods, as in a pod spec."""

    progress_deadline: Duration = "10m"
    """How long server pods may take to become ready after a change before the ModelDeployment is
    reported Stalled."""

    traffic: Traffic = Field(default_factory=Traffic)
    """How requests reach the stable and the canary model during a rollout."""

    rollout: Rollout = Field(default_factory=Rollout)
    """How a new model replaces the stable one."""


class Condition(CamelModel):
    """A condition in the Kubernetes convention (kstatus: Ready, Progressing, Reconciling, Stalled)."""

    type: Annotated[str, Field(max_length=64)]
    """Kind of condition."""

    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""

    reason: Annotated[str, Field(max_length=128)]
    """Why, as one CamelCase word."""

    message: Annotated[str, Field(max_length=4096)] = ""
    """Why, for people."""

    last_transition_time: datetime
    """When the status last changed."""

    observed_generation: Annotated[int, Field(ge=0)]
    """The resource generation this condition describes."""


class StableModel(CamelModel):
    """The model that serves all traffic outside of a rollout."""

    uri: str
    """Location of the artifact."""

    format: Literal["auto", "sklearn", "mlflow"] = "auto"
    """How the server loads the artifact."""

    version: str | None = None
    """Version label of the model."""

    digest: str | None = None
    """SHA-256 digest of the artifact, when known."""

    since: datetime
    """When this model became the stable one."""

    def source(self) -> ModelSource:
        """The model as the builders take it, to rebuild the stable Deployment from status alone."""
        return ModelSource(uri=self.uri, format=self.format, version=self.version, sha256=self.digest)


class CheckResult(CamelModel):
    """The last evaluation of one analysis check."""

    name: str
    """Name of the check (errorRate, latency, predictionShift or a custom check)."""

    query: str = ""
    """The PromQL query as it was sent."""

    value: float | None = None
    """The canary's value; unset when there was no data."""

    baseline: float | None = None
    """The stable model's value over the same window, where the check compares."""

    baseline_query: str = ""
    """The PromQL query of the stable model's value, where the check compares."""

    samples: float | None = None
    """Requests the canary served in the window."""

    stable_samples: float | None = None
    """Requests the stable model served in the window."""

    samples_needed: float | None = None
    """Set when the check had no verdict for lack of requests: how many the canary, and the stable model
    where the check compares with it, must serve in a window before it gives one."""

    test: str | None = None
    """With method statistical: the test that decided (exact-binomial, conditional-binomial,
    berger-boos-binomial, mann-whitney or noncentral-chi2); the message names the check's other tests."""

    effect: float | None = None
    """With method statistical: the effect the test measured (an excess of failed-request shares, a share
    of slow requests, the chance that a canary request is slower, a PSI corrected for the sample sizes)."""

    effect_low: float | None = None
    """Lower end of the effect's interval at confidence 1 - 2 x alpha: the test fails when it is above
    the tolerance."""

    effect_high: float | None = None
    """Upper end of the effect's interval at confidence 1 - 2 x alpha."""

    tolerance: float | None = None
    """With method statistical: the largest effect that is not a regression."""

    p_value: float | None = None
    """With method statistical: the chance of evidence this strong against a canary exactly at the
    tolerance; the check fails when it is below alpha."""

    alpha: float | None = None
    """With method statistical: the share of falseRollbackRate this test may spend in this window."""

    verdict: Literal["pass", "fail", "inconclusive"]
    """Outcome of the check."""

    message: str = ""
    """Why, for people."""


class CanaryStatus(CamelModel):
    """The rollout in progress."""

    uri: str
    """Location of the canary artifact."""

    format: Literal["auto", "sklearn", "mlflow"] | None = None
    """How the server loads the canary artifact; auto when unset."""

    version: str | None = None
    """Version label of the canary model."""

    digest: str | None = None
    """Expected SHA-256 digest of the canary artifact, when pinned."""

    revision: str
    """Hash of the canary model, to tell whether the spec still asks for this rollout."""

    weight: Annotated[int, Field(ge=0, le=100)]
    """Percentage of traffic the canary receives."""

    effective_weight: Annotated[float, Field(ge=0, le=100)] | None = None
    """Percentage of traffic the canary actually receives; differs from weight where the replicas
    provider can only approximate it by pod counts."""

    step: Annotated[int, Field(ge=0)]
    """Index of the current step in spec.rollout.steps."""

    started_at: datetime | None = None
    """When the rollout began; stepStartedAt where a status from before this field lacks it."""

    step_started_at: datetime
    """When the current step began; the progress deadline counts from here."""

    analysis_started_at: datetime | None = None
    """When the current analysis window began (stepStartedAt when unset); a step that ends without passing
    (within the limits) runs another window."""

    analysis_ends_at: datetime | None = None
    """When the current analysis window ends, where it was extended because a variant had served too few
    requests (spec.rollout.waitForSamples); stepDuration after analysisStartedAt when unset."""

    paused_at: datetime | None = None
    """When the rollout was paused through the modeldeploy.io/paused annotation; unset while it runs."""

    pods_ready_at: datetime | None = None
    """When every canary pod the current step needs was seen ready (unset again at each new step and
    whenever one stops being ready); until then the canary gets only the traffic its ready pods can
    take and the step's analysis window waits, as a window has to measure the step's traffic."""

    failures: Annotated[int, Field(ge=0)] = 0
    """Failed analysis windows so far."""

    inconclusive: Annotated[int, Field(ge=0)] = 0
    """Analysis windows in a row without a verdict."""

    checks: list[CheckResult] = Field(default_factory=list, max_length=32)
    """The last result of each check."""

    def source(self) -> ModelSource:
        """The canary model as the builders take it, to rebuild the canary Deployment from status alone."""
        return ModelSource(
            uri=self.uri, format=self.format or "auto", version=self.version, sha256=self.digest
        )


class HistoryEntry(CamelModel):
    """A finished rollout."""

    uri: str
    """Location of the model rolled out."""

    version: str | None = None
    """Version label of the model rolled out."""

    revision: str | None = None
    """Hash of the model rolled out."""

    outcome: Literal["promoted", "rolledBack", "aborted", "superseded", "cancelled"]
    """How the rollout ended: superseded by a newer model, cancelled by a spec back at the stable model."""

    reason: Annotated[str, Field(max_length=128)] | None = None
    """Why it ended so, as one CamelCase word."""

    started_at: datetime
    """When the rollout began."""

    finished_at: datetime
    """When the rollout ended."""

    message: str = ""
    """Why it ended so, for people."""

    checks: list[CheckResult] | None = Field(default=None, max_length=32)
    """The checks of the rollout's last analysed window, as status.canary.checks held them when it ended
    (the evidence of an analysis' verdict); kept on the newest entry only."""


class PendingEvent(CamelModel):
    """An Event the operator decided on but has not yet been seen to post."""

    name: Annotated[str, Field(max_length=253)]
    """The Event's object name, fixed when the transition was decided, so posting it twice stores it once."""

    type: Literal["Normal", "Warning"]
    """Normal or Warning."""

    reason: Annotated[str, Field(max_length=128)]
    """The Event's reason (CamelCase)."""

    message: Annotated[str, Field(max_length=1024)]
    """The Event's message."""


class RejectedModel(CamelModel):
    """A model whose rollout was rolled back or aborted while the spec still names it."""

    uri: str
    """Location of the rejected artifact."""

    version: str | None = None
    """Version label of the rejected model."""

    revision: str
    """Hash of the rejected model; a spec naming any other model starts a new rollout."""

    reason: Annotated[str, Field(max_length=128)]
    """Why it was rejected, as one CamelCase word."""

    message: str = ""
    """Why it was rejected, for people."""

    at: datetime
    """When it was rejected."""


class ModelDeploymentStatus(CamelModel):
    """Observed state, written only by the operator."""

    # Other controllers may keep their own keys in status (kopf records its progress there);
    # reading a status must not fail on them.
    model_config = ConfigDict(extra="ignore")

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The resource generation this status describes."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Progressing, Reconciling (a Deployment or a canary rollout in progress) and Stalled, in the kstatus conventions."""

    phase: Literal["Pending", "Progressing", "Ready", "Stalled", "Failed"] | None = None
    """One-word summary of the conditions."""

    stable: StableModel | None = None
    """The model serving outside of a rollout."""

    canary: CanaryStatus | None = None
    """The rollout in progress, if any."""

    history: list[HistoryEntry] = Field(default_factory=list, max_length=10)
    """The latest finished rollouts, newest first."""

    rejected: RejectedModel | None = None
    """The model the spec names but the last rollout rejected; it is not rolled out again until the
    spec changes or the modeldeploy.io/retry annotation asks for it."""

    handled_requests: dict[str, str] | None = Field(default=None, json_schema_extra={"maxProperties": 16})
    """Manual requests (annotation name to value) already acted on, so a request left in the
    annotations acts once; removing the annotation forgets it."""

    url: str | None = None
    """In-cluster URL of the entry Service."""

    replicas: Annotated[int, Field(ge=0)] | None = None
    """Server pods that exist (for the scale subresource)."""

    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Server pods that are ready."""

    selector: str | None = None
    """Label selector of the server pods (for the scale subresource)."""

    pending_events: list[PendingEvent] | None = Field(default=None, max_length=32)
    """Events of transitions written in this status but not yet posted. The operator posts them under
    these names right after the status write and then clears the list; after a crash in between, the
    next reconcile posts them, so every transition is announced once."""


METADATA_NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
METADATA_NAME_MAX_LENGTH = 56
METADATA_NAME_MESSAGE = (
    f"metadata.name must be at most {METADATA_NAME_MAX_LENGTH} characters, start with a lowercase letter and "
    "contain only lowercase letters, digits and '-', because child objects append -canary to it"
)


def _check_name(name: str) -> str:
    if len(name) > METADATA_NAME_MAX_LENGTH or not re.fullmatch(METADATA_NAME_PATTERN, name):
        raise ValueError(METADATA_NAME_MESSAGE)
    return name


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, AfterValidator(_check_name)]
    """Name of the ModelDeployment; Service names must be DNS-1035 labels of at most 63 characters."""

    namespace: str | None = None
    """Namespace of the ModelDeployment."""


class ModelDeployment(CamelModel):
    """A whole ModelDeployment manifest, as kubectl applies it."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["modeldeploy.io/v1alpha1"]
    """API version of the resource."""

    kind: Literal["ModelDeployment"]
    """Kind of the resource."""

    metadata: ObjectMeta
    """Standard object metadata."""

    spec: ModelDeploymentSpec
    """Desired state."""

    status: ModelDeploymentStatus | None = None
    """Observed state."""
