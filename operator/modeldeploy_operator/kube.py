"""The one layer that talks to the Kubernetes API.

Everything above it works with plain dicts; client exceptions are turned into
:class:`KubernetesError` here, so handlers never see lightkube's types.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2  # lightkube's HTTP client: its errors are httpx2's, not httpx's
from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from modeldeploy_operator.crdgen import GROUP, KIND, PLURAL, VERSION
from modeldeploy_operator.kinds import CHILD_KINDS, WatchedKind
from modeldeploy_operator.metrics import METRICS
from modeldeploy_operator.watchcache import WatchCache

ModelDeploymentResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
# Kinds from CRDs that may not be installed (the traffic providers' routes): known to the client anyway.
for _crd_kind in CHILD_KINDS:
    if _crd_kind.from_crd:
        create_namespaced_resource(_crd_kind.group, _crd_kind.version, _crd_kind.kind, _crd_kind.plural)
Manifest = dict[str, Any]


def resource_of_kind(kind: WatchedKind) -> Any:
    """lightkube's resource class for a watched kind."""
    return _resource_of(kind.api_version, kind.kind)


class WriteFence:
    """Lets this process write only while it is known to hold the leader-election Lease.

    The Lease is valid on the API server until its renewTime plus its duration; this replica only
    knows its last renewal began at some moment, so it writes until that moment plus the renew
    deadline, which is shorter than the Lease: a standby can take over only after the old leader
    stopped writing, whatever its event loop was busy with. Without leader election it is open.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open_until: float | None = None

    def open_until(self, deadline: float) -> None:
        """Writes are allowed until `deadline` (on the fence's clock); called after each renewal."""
        self._open_until = deadline

    def close(self) -> None:
        self._open_until = float("-inf")

    def check(self, action: str) -> None:
        if self._open_until is not None and self._clock() >= self._open_until:
            raise KubernetesError(f"{action}: refused, this replica no longer holds the leader Lease")


class KubernetesError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when the API was unreachable)."""

    def __init__(self, message: str, status: int = 0, causes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.causes = causes
        """The reasons of the Kubernetes Status' causes (details.causes[].reason)."""

    @property
    def is_conflict(self) -> bool:
        return self.status == 409

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted: nothing can be created in it any more."""
        return self.status == 403 and "NamespaceTerminating" in self.causes


def _describe(action: str, kind: str, name: str, namespace: str | None) -> str:
    where = f" in namespace {namespace}" if namespace else ""
    return f"{action} {kind} {name}{where}"


@contextmanager
def _api_call(action: str) -> Iterator[None]:
    """Turns the client's exceptions into ours, saying what was being done."""
    try:
        yield
    except ApiError as error:
        details = error.status.details
        causes = tuple(cause.reason or "" for cause in (details.causes or [])) if details else ()
        raise KubernetesError(
            f"{action}: {error.status.message}", status=error.status.code or 0, causes=causes
        ) from error
    except httpx2.HTTPStatusError as error:
        # An answer without a Kubernetes Status body, such as 404 for an API group not installed.
        status = error.response.status_code
        raise KubernetesError(f"{action}: HTTP {status}", status=status) from error
    except httpx2.HTTPError as error:
        # A timeout's message is empty: its type is what says what happened.
        raise KubernetesError(
            f"{action}: Kubernetes API unreachable ({str(error) or type(error).__name__})"
        ) from error


def _resource_of(api_version: str, kind: str) -> Any:
    """lightkube's resource class for a kind (typed loosely: lightkube's own types are too narrow)."""
    return resource_registry.load(api_version, kind)


class KubeStorage:
    """Reads and writes the objects one ModelDeployment owns, with server-side apply."""

    def __init__(
        self,
        client: AsyncClient,
        field_manager: str,
        fence: WriteFence | None = None,
        cache: WatchCache | None = None,
    ) -> None:
        self._client = client
        self._field_manager = field_manager
        self._fence = fence if fence is not None else WRITE_FENCE
        self._cache = cache

    def _cached(self, kind: str, namespace: str) -> WatchCache | None:  # for lists
        """The watch cache when it holds `kind` in `namespace` as the API server last told it."""
        if self._cache is not None and self._cache.synced(kind, namespace):
            return self._cache
        return None

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under our field manager, forcing conflicts.

        Forcing takes back fields that a hand edit changed (drift correction); fields that
        we do not send, such as an HPA's replica count, stay with whoever owns them.
        """
        metadata = manifest["metadata"]
        self._fence.check(_describe("apply", manifest["kind"], metadata["name"], metadata.get("namespace")))
        METRICS.kubernetes_writes.labels("apply", manifest["kind"]).inc()
        with _api_call(_describe("apply", manifest["kind"], metadata["name"], metadata.get("namespace"))):
            applied: Any = await self._client.apply(
                codecs.from_dict(dict(manifest)), field_manager=self._field_manager, force=True
            )
        stored = dict(applied.to_dict())
        if self._cache is not None:
            self._cache.put(stored)
        return stored

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> Manifest | None:
        """The object as stored, or None when it does not exist."""
        if self._cache is not None and self._cache.knows(kind, namespace, name):
            METRICS.kubernetes_reads.labels("get", kind, "cache").inc()
            return self._cache.get(kind, namespace, name)
        METRICS.kubernetes_reads.labels("get", kind, "api").inc()
        try:
            with _api_call(_describe("get", kind, name, namespace)):
                found: Any = await self._client.get(
                    _resource_of(api_version, kind), name, namespace=namespace
                )
        except KubernetesError as error:
            if error.is_not_found:
                return None
            raise
        stored = {**dict(found.to_dict()), "apiVersion": api_version, "kind": kind}
        if self._cache is not None:
            self._cache.put(stored)
        return stored

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        """Deletes the object; False when it was already gone."""
        self._fence.check(_describe("delete", kind, name, namespace))
        METRICS.kubernetes_writes.labels("delete", kind).inc()
        try:
            with _api_call(_describe("delete", kind, name, namespace)):
                await self._client.delete(_resource_of(api_version, kind), name, namespace=namespace)
        except KubernetesError as error:
            if error.is_not_found:
                return False
            raise
        finally:
            if self._cache is not None:
                self._cache.deleted(kind, namespace, name)
        return True

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[Manifest]:
        cache = self._cached(kind, namespace)
        if cache is not None:
            METRICS.kubernetes_reads.labels("list", kind, "cache").inc()
            return cache.list(kind, namespace, labels)
        METRICS.kubernetes_reads.labels("list", kind, "api").inc()
        with _api_call(f"list {kind} in namespace {namespace}"):
            items = self._client.list(
                _resource_of(api_version, kind), namespace=namespace, labels=dict(labels)
            )
            return [dict(item.to_dict()) async for item in items]

    async def patch_status(
        self, name: str, namespace: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        """Merge-patches the status subresource (the spec is the user's, never written here).

        With `resource_version`, the API server applies the patch only to that version of the object
        and answers 409 otherwise: a status decided from an object that changed since is never written.
        """
        self._fence.check(_describe("patch status of", KIND, name, namespace))
        METRICS.kubernetes_writes.labels("patch-status", KIND).inc()
        patch: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        try:
            with _api_call(_describe("patch status of", KIND, name, namespace)):
                patched: Any = await self._client.patch(
                    ModelDeploymentResource.Status,
                    name,
                    patch,
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
        except KubernetesError as error:
            if error.is_conflict and self._cache is not None:
                # Changed since the cache saw it: the next read goes to the API server.
                self._cache.outdated(KIND, namespace, name)
            raise
        if self._cache is not None:
            self._cache.put({**dict(patched.to_dict()), "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND})

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str,
        name: str | None = None,
    ) -> bool:
        """Creates a core/v1 Event about `involved` (a ModelDeployment as read), named `name` when
        given; False when an Event of that name exists already (posted before a crash, say)."""
        metadata = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name or f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._fence.check(_describe("create", "Event", reason, metadata["namespace"]))
        METRICS.kubernetes_writes.labels("create", "Event").inc()
        try:
            with _api_call(_describe("create", "Event", reason, metadata["namespace"])):
                await self._client.create(codecs.from_dict(event))
        except KubernetesError as error:
            if name is not None and error.is_conflict:
                return False
            raise
        return True

    async def get_model_deployment(self, name: str, namespace: str) -> Manifest | None:
        return await self.get(f"{GROUP}/{VERSION}", KIND, name, namespace)

    @property
    def default_namespace(self) -> str:
        """The namespace of the kubeconfig's context (or the pod's own, in a cluster)."""
        return str(self._client.namespace)

    async def annotate(self, name: str, namespace: str, annotations: Mapping[str, str | None]) -> None:
        """Sets (or, for None, removes) annotations of a ModelDeployment with a merge patch; the spec
        is never touched."""
        METRICS.kubernetes_writes.labels("annotate", KIND).inc()
        with _api_call(_describe("annotate", KIND, name, namespace)):
            await self._client.patch(
                ModelDeploymentResource,
                name,
                {"metadata": {"annotations": dict(annotations)}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )

    async def list_model_deployments(self, namespace: str | None) -> list[Manifest]:
        """In one namespace, or in all when namespace is None (from the watch cache once it holds them:
        the periodic resync of an idle operator then asks the API server nothing)."""
        cache = self._cached(KIND, namespace or "")
        if cache is not None:
            METRICS.kubernetes_reads.labels("list", KIND, "cache").inc()
            return cache.list(KIND, namespace, {})
        METRICS.kubernetes_reads.labels("list", KIND, "api").inc()
        with _api_call(f"list {KIND} in {namespace or 'all namespaces'}"):
            items = self._client.list(ModelDeploymentResource, namespace=namespace or "*")
            return [dict(item) async for item in items]


# The process' own fence: leader election opens it, every KubeStorage write checks it.
WRITE_FENCE = WriteFence()


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a coordination.k8s.io Lease that leader election reads and writes."""

    holder: str
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str | None
    """None for a Lease that does not exist yet (written by create, not replace)."""


# Leases as plain dicts: lightkube's typed Lease writes times without the microseconds that the
# API server's MicroTime requires.
LeaseResource = create_namespaced_resource("coordination.k8s.io", "v1", "Lease", "leases")
MICRO_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class LeaseStore:
    """Reads and writes one Lease, with optimistic concurrency on its resourceVersion."""

    def __init__(self, client: AsyncClient, name: str, namespace: str) -> None:
        self._client = client
        self._name = name
        self._namespace = namespace

    async def read_lease(self) -> LeaseRecord | None:
        try:
            with _api_call(_describe("get", "Lease", self._name, self._namespace)):
                lease = await self._client.get(LeaseResource, self._name, namespace=self._namespace)
        except KubernetesError as error:
            if error.is_not_found:
                return None
            raise
        spec = lease.get("spec") or {}
        return LeaseRecord(
            holder=spec.get("holderIdentity") or "",
            duration_seconds=spec.get("leaseDurationSeconds") or 0,
            acquire_time=_micro_time(spec.get("acquireTime")),
            renew_time=_micro_time(spec.get("renewTime")),
            transitions=spec.get("leaseTransitions") or 0,
            resource_version=lease["metadata"]["resourceVersion"],
        )

    async def write_lease(self, record: LeaseRecord) -> None:
        """Creates or replaces the Lease; a 409 means another candidate wrote it first."""
        spec: dict[str, Any] = {
            "leaseDurationSeconds": record.duration_seconds,
            "leaseTransitions": record.transitions,
        }
        if record.holder:
            spec["holderIdentity"] = record.holder
        for key, value in (("acquireTime", record.acquire_time), ("renewTime", record.renew_time)):
            if value is not None:
                spec[key] = value.astimezone(UTC).strftime(MICRO_TIME_FORMAT)
        metadata: dict[str, Any] = {"name": self._name, "namespace": self._namespace}
        if record.resource_version is not None:
            metadata["resourceVersion"] = record.resource_version
        lease = LeaseResource.from_dict(
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        )
        METRICS.kubernetes_writes.labels("write", "Lease").inc()
        with _api_call(_describe("write", "Lease", self._name, self._namespace)):
            if record.resource_version is None:
                await self._client.create(lease)
            else:
                await self._client.replace(lease)
