"""The operator's configuration, read from `MODELDEPLOY_OPERATOR_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modeldeploy_operator.spec import check_prometheus_address

__all__ = ["ENV_PREFIX", "OperatorSettings"]

ENV_PREFIX = "MODELDEPLOY_OPERATOR_"


_ANY_PORT = ":*"


def _check_allowed(entry: str) -> str:
    check_prometheus_address(entry.removesuffix(_ANY_PORT))
    if entry.endswith(_ANY_PORT) and urlsplit(entry.removesuffix(_ANY_PORT)).port is not None:
        raise ValueError(f"{entry}: an entry ending in :* must not name a port too")
    return entry


def _without_port(address: str) -> str:
    """scheme://host of an address without a path, or '' when it has a path."""
    parts = urlsplit(address)
    if parts.path not in ("", "/"):
        return ""
    return f"{parts.scheme}://{parts.hostname}"


class OperatorSettings(BaseSettings):
    """Everything the operator needs besides the resources it watches."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch, comma-separated in the environment; every namespace when empty."""

    server_image: str = Field(default="ghcr.io/modeldeploy/modeldeploy-server:0.1.0", min_length=1)
    """Model-server image for ModelDeployments that do not name one in spec.server.image."""

    prometheus_address: Annotated[str, AfterValidator(check_prometheus_address)] = (
        "http://prometheus.monitoring.svc:9090"
    )
    """Prometheus HTTP API for analyses whose spec does not name one."""

    prometheus_allowed_addresses: Annotated[
        list[Annotated[str, AfterValidator(_check_allowed)]], NoDecode
    ] = Field(default_factory=list)
    """Further Prometheus addresses a spec's rollout.analysis.prometheusAddress may name, comma-separated
    in the environment (an entry ending in :* allows any port of its host); the operator's own
    prometheus_address is always allowed. Anyone who can edit a ModelDeployment picks that address, and
    the operator sends queries there: a spec naming an address outside this list gets inconclusive checks
    instead."""

    route_settle_seconds: float = Field(default=5.0, ge=0, le=300)
    """After a rollout, how long the route object (HTTPRoute, VirtualService) sends nothing to the
    canary before its Deployment is deleted: the time the Gateway or mesh needs to apply the route."""

    reconcile_workers: int = Field(default=16, ge=1, le=256)
    """How many ModelDeployments are reconciled at once (each one by one worker at a time). A reconcile
    mostly waits for the API server, so throughput grows with this until the API server is the limit:
    with 4, a thousand ModelDeployments created at once took minutes longer to become Ready."""

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

    @field_validator("namespaces", "prometheus_allowed_addresses", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def allows_prometheus(self, address: str) -> bool:
        """Whether analyses may query `address` (compared without a trailing slash)."""
        wanted = address.rstrip("/")
        for allowed in (self.prometheus_address, *self.prometheus_allowed_addresses):
            allowed = allowed.rstrip("/")
            if allowed.endswith(_ANY_PORT):
                origin = allowed.removesuffix(_ANY_PORT)
                if _without_port(wanted) == origin:
                    return True
            elif wanted == allowed:
                return True
        return False
