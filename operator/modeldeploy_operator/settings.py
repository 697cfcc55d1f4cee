"""The operator's configuration, read from `MODELDEPLOY_OPERATOR_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ENV_PREFIX", "OperatorSettings"]

ENV_PREFIX = "MODELDEPLOY_OPERATOR_"


class OperatorSettings(BaseSettings):
    """Everything the operator needs besides the resources it watches."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch, comma-separated in the environment; every namespace when empty."""

    server_image: str = Field(default="ghcr.io/modeldeploy/modeldeploy-server:0.1.0", min_length=1)
    """Model-server image for ModelDeployments that do not name one in spec.server.image."""

    prometheus_address: str = Field(default="http://prometheus.monitoring.svc:9090", pattern="^https?://")
    """Prometheus HTTP API for analyses whose spec does not name one."""

    log_format: Literal["text", "json"] = "text"
    """text for people, json for log collectors."""

    field_manager: str = Field(default="modeldeploy", min_length=1)
    """Server-side apply field manager that owns every field the operator writes."""

    allow_pickle: bool = False
    """Whether model servers may load pickle/joblib artifacts, which can run arbitrary code when loaded;
    off by default so only safe formats load."""

    leader_election: bool = True
    """Run only while holding a Lease, so that several replicas never reconcile at once."""

    leader_election_namespace: str = Field(default="modeldeploy-system", min_length=1)
    """Namespace of the leader-election Lease (the chart sets it to the operator's own namespace)."""

    leader_election_lease_name: str = Field(default="modeldeploy-operator", min_length=1)
    """Name of the leader-election Lease."""

    leader_election_lease_seconds: int = Field(default=15, ge=1)
    """How long a leader that stopped renewing keeps the Lease before a standby takes over."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value
