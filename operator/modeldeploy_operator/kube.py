"""The one layer that talks to the Kubernetes API.

Everything above it works with plain dicts; client exceptions are turned into
:class:`KubernetesError` here, so handlers never see lightkube's types.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from modeldeploy_operator.crdgen import GROUP, KIND, PLURAL, VERSION

ModelDeploymentResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
Manifest = dict[str, Any]


class KubernetesError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when the API was unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def is_conflict(self) -> bool:
        return self.status == 409

    @property
    def is_not_found(self) -> bool:
        return self.status == 404


def _describe(action: str, kind: str, name: str, namespace: str | None) -> str:
    where = f" in namespace {namespace}" if namespace else ""
    return f"{action} {kind} {name}{where}"


@contextmanager
def _api_call(action: str) -> Iterator[None]:
    """Turns the client's exceptions into ours, saying what was being done."""
    try:
        yield
    except ApiError as error:
        raise KubernetesError(f"{action}: {error.status.message}", status=error.status.code or 0) from error
    except httpx.HTTPError as error:
        raise KubernetesError(f"{action}: Kubernetes API unreachable ({error})") from error


def _resource_of(api_version: str, kind: str) -> Any:
    """lightkube's resource class for a kind (typed loosely: lightkube's own types are too narrow)."""
    return resource_registry.load(api_version, kind)


class KubeStorage:
    """Reads and writes the objects one ModelDeployment owns, with server-side apply."""

    def __init__(self, client: AsyncClient, field_manager: str) -> None:
        self._client = client
        self._field_manager = field_manager

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under our field manager, forcing conflicts.

        Forcing takes back fields that a hand edit changed (drift correction); fields that
        we do not send, such as an HPA's replica count, stay with whoever owns them.
        """
        metadata = manifest["metadata"]
        with _api_call(_describe("apply", manifest["kind"], metadata["name"], metadata.get("namespace"))):
            applied: Any = await self._client.apply(
                codecs.from_dict(dict(manifest)), field_manager=self._field_manager, force=True
            )
        return dict(applied.to_dict())

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> Manifest | None:
        """The object as stored, or None when it does not exist."""
        try:
            with _api_call(_describe("get", kind, name, namespace)):
                found: Any = await self._client.get(
                    _resource_of(api_version, kind), name, namespace=namespace
                )
        except KubernetesError as error:
            if error.is_not_found:
                return None
            raise
        return dict(found.to_dict())

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        """Deletes the object; False when it was already gone."""
        try:
            with _api_call(_describe("delete", kind, name, namespace)):
                await self._client.delete(_resource_of(api_version, kind), name, namespace=namespace)
        except KubernetesError as error:
            if error.is_not_found:
                return False
            raise
        return True

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[Manifest]:
        with _api_call(f"list {kind} in namespace {namespace}"):
            items = self._client.list(
                _resource_of(api_version, kind), namespace=namespace, labels=dict(labels)
            )
            return [dict(item.to_dict()) async for item in items]

    async def patch_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> None:
        """Merge-patches the status subresource (the spec is the user's, never written here)."""
        with _api_call(_describe("patch status of", KIND, name, namespace)):
            await self._client.patch(
                ModelDeploymentResource.Status,
                name,
                {"status": dict(status)},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )

    async def get_model_deployment(self, name: str, namespace: str) -> Manifest | None:
        return await self.get(f"{GROUP}/{VERSION}", KIND, name, namespace)
