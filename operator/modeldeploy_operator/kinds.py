"""The one registry of the kinds the operator watches and owns.

The watch cache, the triggers of a reconcile, garbage collection, the client's knowledge of
kinds whose CRDs may be missing, and the test that the chart's RBAC covers them all read this
table: adding a child kind is one entry here plus its builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from .builders import LABEL_MANAGED_BY, MANAGER_NAME
from .crdgen import GROUP, KIND, PLURAL, VERSION

__all__ = [
    "CHILD_KINDS",
    "MANAGED_CHILDREN",
    "MODEL_DEPLOYMENT",
    "ROUTE_KINDS",
    "WATCHED_KINDS",
    "WatchedKind",
    "kind_named",
]

# Every child carries this label; watching only labelled objects keeps the operator's caches small.
MANAGED_CHILDREN = {LABEL_MANAGED_BY: MANAGER_NAME}


@dataclass(frozen=True)
class WatchedKind:
    """A kind the operator watches (and, for a child, applies and deletes)."""

    group: str
    version: str
    kind: str
    plural: str
    optional: bool = False
    """A child that exists only while the spec or a rollout asks for it: owned ones not wanted are deleted."""
    from_crd: bool = False
    """Its API comes from a CRD that may not be installed (Gateway API, Istio)."""
    applied: bool = True
    """Whether the operator writes it (pods are only watched: their Deployments make them)."""
    spec_read: bool = True
    """Whether the reconcile reads its spec: the watch cache keeps the spec only of kinds that do."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


MODEL_DEPLOYMENT = WatchedKind(GROUP, VERSION, KIND, PLURAL, applied=False)

CHILD_KINDS: tuple[WatchedKind, ...] = (
    # The stable Deployment is always wanted, so deleting unwanted ones only ever finds a canary.
    WatchedKind("apps", "v1", "Deployment", "deployments", optional=True),
    WatchedKind("", "v1", "Service", "services"),
    WatchedKind("", "v1", "Pod", "pods", applied=False, spec_read=False),
    WatchedKind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", optional=True),
    WatchedKind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", optional=True),
    WatchedKind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", optional=True, from_crd=True),
    WatchedKind(
        "networking.istio.io", "v1", "VirtualService", "virtualservices", optional=True, from_crd=True
    ),
)

WATCHED_KINDS: tuple[WatchedKind, ...] = (MODEL_DEPLOYMENT, *CHILD_KINDS)


def kind_named(kind: str) -> WatchedKind:
    """The watched kind called `kind` (KeyError for one the operator does not know)."""
    for watched in WATCHED_KINDS:
        if watched.kind == kind:
            return watched
    raise KeyError(kind)


# The route object each routing provider writes; named like the ModelDeployment.
ROUTE_KINDS = {"gateway-api": kind_named("HTTPRoute"), "istio": kind_named("VirtualService")}
