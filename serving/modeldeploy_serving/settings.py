"""The server's configuration, read from `MODELDEPLOY_SERVER_*` environment variables.

The operator sets these variables on the pods it builds; its tests import this module to check
that every name it sets is a field here (tests/unit/test_builders.py), so it must stay
importable without the ML libraries or the web framework.
"""

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MODELDEPLOY_SERVER_"


class Variant(StrEnum):
    """Which side of a rollout this server is."""

    STABLE = "stable"
    CANARY = "canary"


class ModelFormat(StrEnum):
    """How to read the artifact in the model directory."""

    AUTO = "auto"
    SKLEARN = "sklearn"
    MLFLOW = "mlflow"


class VersionMismatchPolicy(StrEnum):
    """What to do when the artifact was saved with other library versions than the server has."""

    REFUSE = "refuse"
    WARN = "warn"


class ServerSettings(BaseSettings):
    """Everything `modeldeploy-server serve` needs; the operator sets these on the pod."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, protected_namespaces=())

    model_name: str = Field(default="model", min_length=1)
    """The ModelDeployment's name: the model name in URLs and the `model` label of every metric."""

    model_version: str = ""
    """A label for the model shown in metadata and metrics (the spec's `model.version`)."""

    variant: Variant = Variant.STABLE
    """Whether this pod serves the stable model or the canary."""

    namespace: str = ""
    """The ModelDeployment's namespace, for the `namespace` label of every metric."""

    model_dir: Path = Path("/mnt/models")
    """Where `modeldeploy-server fetch` put the artifact (a file or a directory)."""

    model_format: ModelFormat = ModelFormat.AUTO
    """The artifact's format; `auto` recognises MLflow model directories and file extensions."""

    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    """If set, the server refuses to load an artifact with another digest."""

    http_port: int = Field(default=8080, ge=1, le=65535)
    """The port of the HTTP server (V1, V2 and /metrics)."""

    host: str = "0.0.0.0"  # noqa: S104 - a pod must accept traffic from its Service
    """The address to bind."""

    workers: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the port; each loads its own copy of the model."""

    prediction_threads: int = Field(default=2, ge=1, le=64)
    """Threads per worker that run predictions, so the event loop keeps serving meanwhile."""

    batching_enabled: bool = False
    """Merge concurrent requests that arrive within a short window into one `predict` call."""

    batch_max_size: int = Field(default=32, ge=1, le=65536)
    """The most rows a merged batch may hold."""

    batch_window_ms: float = Field(default=2.0, ge=0, le=1000)
    """How long the first request of a batch waits for others to join it."""

    allow_pickle: bool = False
    """Allow joblib/pickle artifacts. They can run arbitrary code when loaded: enable only for
    artifacts from a trusted source. The safe default accepts skops files only."""

    skops_trusted_types: str = ""
    """Comma-separated types to trust in skops artifacts beyond skops' defaults and scikit-learn's
    own classes (for example a custom transformer's `mypackage.MyTransformer`)."""

    on_version_mismatch: VersionMismatchPolicy = VersionMismatchPolicy.REFUSE
    """Refuse to serve (or only warn) when the artifact's scikit-learn version differs."""

    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Larger request bodies are answered with 413."""

    inline_predict_max_ms: float = Field(default=2.0, ge=0, le=1000)
    """Small predictions that take less than this (a moving average) run on the event loop,
    without a thread hop; slower ones, and any with more than `inline_max_rows` rows, run on the
    prediction threads. 0 sends every prediction to the threads."""

    inline_max_rows: int = Field(default=64, ge=0)
    """Requests with more rows run their prediction (and the encoding of its answer) off the
    event loop."""

    inline_body_max_bytes: int = Field(default=64 * 1024, ge=0)
    """Request bodies larger than this are parsed and decoded off the event loop, so it keeps
    answering health checks meanwhile."""

    large_requests_at_once: int = Field(default=2, ge=1, le=64)
    """How many large bodies (over `inline_body_max_bytes`) are decoded at the same time; the
    others wait their turn, which bounds the memory that decoding takes."""

    graceful_shutdown_seconds: float = Field(default=25.0, ge=0)
    """How long in-flight requests may take to finish after SIGTERM (after the drain delay)."""

    drain_delay_seconds: float = Field(default=5.0, ge=0, le=600)
    """After SIGTERM, how long the server reports not-ready but keeps accepting and serving, while
    load balancers stop sending it traffic; every response meanwhile closes its connection. The
    operator's pods sleep in a preStop hook while their endpoint goes, then set 2 s: long enough
    for keep-alive clients still routed here to be told to leave."""

    idle_connection_timeout_seconds: float = Field(default=120.0, gt=0)
    """A connection that sends nothing for this long (after it opens or after a response) is
    closed. Longer than the upstream idle timeouts of common proxies (60-90 s), so that a proxy
    closes an idle connection before the server does and never reuses one being closed."""

    request_read_timeout_seconds: float = Field(default=30.0, gt=0)
    """A request whose header and body have not all arrived this long after its first byte is
    dropped (slow clients holding connections: slowloris)."""

    max_connections: int = Field(default=2048, ge=1)
    """Open connections per worker process. Past it a new connection closes the quietest idle or
    still-sending one, so health probes still get in; it is lowered to fit the open-file limit."""

    max_requests_per_connection: int = Field(default=1000, ge=0)
    """After this many requests on one connection its response says `Connection: close`, so
    keep-alive clients reconnect and spread over the pods behind a Service. 0: no limit."""

    max_connection_age_seconds: float = Field(default=30.0, ge=0)
    """The first response after a connection is this old says `Connection: close` (see
    `max_requests_per_connection`). 0: no limit."""

    @property
    def trusted_types(self) -> frozenset[str]:
        """`skops_trusted_types` as a set of names."""
        return frozenset(name.strip() for name in self.skops_trusted_types.split(",") if name.strip())
