"""A ModelDeployment's children as the reconcile reads, applies and deletes them.

Reads come from the storage layer (the watch cache once synced). Applies skip a child that is
exactly as last applied and still holds every field we set, so an idle reconcile writes nothing.
Only children whose ownerReference names the ModelDeployment's UID are ever deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy_operator.builders import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_VARIANT,
    MANAGER_NAME,
    Owner,
    Variant,
    deployment_name,
    selector_labels,
)
from modeldeploy_operator.kinds import CHILD_KINDS, ROUTE_KINDS
from modeldeploy_operator.kube import KubernetesError, KubeStorage, Manifest
from modeldeploy_operator.spec import ModelDeploymentSpec

VARIANTS: tuple[Variant, ...] = ("stable", "canary")


@dataclass(frozen=True)
class StoredChildren:
    """The children a reconcile reads before it decides."""

    owner_name: str
    deployments: dict[str, Manifest]
    """The server Deployments this ModelDeployment controls, by variant."""
    pods: dict[str, list[Manifest]]
    """Their pods, by variant."""
    route: Manifest | None
    by_key: dict[tuple[str, str], Manifest | None]
    """Every child read, by (kind, name); None for one found missing."""


def holds_fields(stored: Any, wanted: Any) -> bool:
    """Whether `stored` has every field of `wanted` with the same value; fields only `stored` has
    (defaults, status, other managers' fields) do not matter. Lists must match item by item."""
    if isinstance(wanted, Mapping):
        return isinstance(stored, Mapping) and all(
            key in stored and holds_fields(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(holds_fields(item, wanted_item) for item, wanted_item in zip(stored, wanted, strict=True))
        )
    return bool(stored == wanted)


def controlled_by(child: Mapping[str, Any], owner_uid: str) -> bool:
    """Whether `child` names the ModelDeployment with this UID as its controller. Labels alone are
    anyone's to set: with the operator's delete rights, deleting by label would delete whatever a
    user labelled like a child, or the child of an earlier ModelDeployment of the same name."""
    return any(
        reference.get("uid") == owner_uid and reference.get("controller") is True
        for reference in child.get("metadata", {}).get("ownerReferences") or []
    )


class Children:
    """Reads, applies and deletes the children of ModelDeployments, remembering what it applied."""

    def __init__(self, storage: KubeStorage) -> None:
        self._storage = storage
        # Per object, per child (kind, name): what we last applied and the resourceVersion it produced.
        self._applied: defaultdict[tuple[str, str], dict[tuple[str, str], tuple[str, str]]] = defaultdict(
            dict
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drops what was remembered about a ModelDeployment that is gone."""
        self._applied.pop((namespace, name), None)

    async def apply(self, child: Manifest, stored: Mapping[tuple[str, str], Manifest | None]) -> Manifest:
        """Applies a child unless it is exactly as we last applied it and still holds every field
        we set (only its status, or fields of other managers, changed since). `stored` holds the
        children this reconcile has read already (None: found missing); others are read here.

        An idle reconcile then reads its children but writes nothing, not even a no-op apply, and
        neither does one after the controllers updated a Deployment's status. A child whose
        desired form changed is always applied, so fields we stopped setting are removed.
        """
        metadata = child["metadata"]
        applied_by_owner = self._applied[(metadata["namespace"], metadata["labels"][LABEL_INSTANCE])]
        key = (child["kind"], metadata["name"])
        fingerprint = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        last = applied_by_owner.get(key)
        if last is not None and last[0] == fingerprint:
            if key in stored:
                current = stored[key]
            else:
                current = await self._storage.get(
                    child["apiVersion"], child["kind"], metadata["name"], metadata["namespace"]
                )
            if current is not None and (
                current["metadata"]["resourceVersion"] == last[1] or holds_fields(current, child)
            ):
                return current
        applied = await self._storage.apply(child)
        applied_by_owner[key] = (fingerprint, applied["metadata"]["resourceVersion"])
        return applied

    async def read(self, owner: Owner, spec: ModelDeploymentSpec) -> StoredChildren:
        """The server Deployments this ModelDeployment controls, their pods and its route, as stored."""
        owned = {LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGER_NAME}
        deployments, pods = await asyncio.gather(
            self._storage.list_objects("apps/v1", "Deployment", owner.namespace, owned),
            self._storage.list_objects("v1", "Pod", owner.namespace, selector_labels(owner.name)),
        )
        route = None
        route_kind = ROUTE_KINDS.get(spec.traffic.provider)
        if route_kind is not None:
            route = await self._storage.get(
                route_kind.api_version, route_kind.kind, owner.name, owner.namespace
            )
        names = {deployment_name(owner.name, variant): variant for variant in VARIANTS}
        by_variant: dict[str, Manifest] = {
            names[deployment["metadata"]["name"]]: deployment
            for deployment in deployments
            if deployment["metadata"]["name"] in names and controlled_by(deployment, owner.uid)
        }
        pods_by_variant: dict[str, list[Manifest]] = {variant: [] for variant in VARIANTS}
        for pod in pods:
            variant = (pod["metadata"].get("labels") or {}).get(LABEL_VARIANT)
            if variant in pods_by_variant:
                pods_by_variant[variant].append(pod)
        # What was read here need not be read again before it is applied (None: it does not exist).
        by_key: dict[tuple[str, str], Manifest | None] = {
            ("Deployment", name): by_variant.get(variant) for name, variant in names.items()
        }
        if route_kind is not None:
            by_key[(route_kind.kind, owner.name)] = route
        return StoredChildren(
            owner_name=owner.name, deployments=by_variant, pods=pods_by_variant, route=route, by_key=by_key
        )

    async def delete_unwanted(self, owner: Owner, wanted_children: list[Manifest]) -> None:
        """Deletes the optional children this ModelDeployment controls that are not in `wanted_children`."""
        wanted = {(child["kind"], child["metadata"]["name"]) for child in wanted_children}
        owned = {LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGER_NAME}
        for child_kind in CHILD_KINDS:
            if not (child_kind.optional and child_kind.applied):
                continue
            kind, api_version = child_kind.kind, child_kind.api_version
            try:
                existing_children = await self._storage.list_objects(
                    api_version, kind, owner.namespace, owned
                )
            except KubernetesError as error:
                if error.is_not_found:  # the kind's CRD is not installed (no Gateway API, no Istio)
                    continue
                raise
            for existing in existing_children:
                name = existing["metadata"]["name"]
                if (kind, name) not in wanted and controlled_by(existing, owner.uid):
                    await self._storage.delete(api_version, kind, name, owner.namespace)
