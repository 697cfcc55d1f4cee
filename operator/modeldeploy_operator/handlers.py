"""kopf handlers: thin adapters that turn every trigger into a key for the reconcile queue.

A ModelDeployment is reconciled when any event about it arrives (kopf lists every object at
start-up, then watches), when one of its children changes (so a hand edit is put back at
once; the watch cache, which keeps the children for the reconcile to read, reports those), and
periodically as a safety net. No handler acts on the body it was given: each only names the
object, and a worker reconciles it as stored when its turn comes (see reconcile.py).
Run with ``modeldeploy-operator`` (or ``kopf run -m modeldeploy_operator.handlers``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import kopf
from lightkube import AsyncClient, KubeConfig

from modeldeploy_operator.builders import LABEL_INSTANCE
from modeldeploy_operator.crdgen import GROUP, KIND, PLURAL, VERSION
from modeldeploy_operator.kinds import MODEL_DEPLOYMENT, WATCHED_KINDS, WatchedKind
from modeldeploy_operator.kube import KubernetesError, KubeStorage, resource_of_kind
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.reconcile import COALESCE_SECONDS, Reconciler
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.watchcache import WatchCache

# A safety net only: children's events trigger reconciles as things change.
RESYNC_SECONDS = 300.0
_logger = logging.getLogger("modeldeploy.operator")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings = OperatorSettings()
    # Only warnings of kopf's own become Events: the reconcile posts the Events that matter itself.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    client = AsyncClient(config=KubeConfig.from_env(), field_manager=operator_settings.field_manager)
    memo["client"] = client
    memo["http"] = httpx.AsyncClient()
    cache = WatchCache(client, resource_of_kind, WATCHED_KINDS, operator_settings.namespaces)
    reconciler = Reconciler(
        KubeStorage(client, operator_settings.field_manager, cache=cache),
        operator_settings,
        PrometheusClient(memo["http"]),
    )
    cache.start(on_change=lambda kind, obj: _child_changed(reconciler, kind, obj))
    memo["cache"] = cache
    memo["reconciler"] = reconciler
    memo["resync"] = asyncio.create_task(_resync_forever(reconciler, operator_settings.namespaces))


async def _resync_forever(reconciler: Reconciler, namespaces: list[str]) -> None:
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            await reconciler.resync(namespaces)
        except KubernetesError as error:
            _logger.warning("Periodic resync failed, trying again later: %s", error)


@kopf.on.cleanup()
async def stop_background_work(memo: kopf.Memo, **_: Any) -> None:
    # The clients stay open: handlers still finishing may use them, and the process is ending.
    memo["resync"].cancel()
    memo["reconciler"].close()
    memo["cache"].stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_changed(
    name: str | None,
    namespace: str | None,
    body: kopf.Body,
    type: str | None,  # kopf's name for the event type
    memo: kopf.Memo,
    **_: Any,
) -> None:
    # Level-triggered: any event, the start-up listing and deletions included, only names the object.
    if name and namespace:
        # What kopf saw is what is stored as of this event (gone, for a deletion): the cache takes
        # it unless it has newer.
        cache: WatchCache = memo["cache"]
        if type == "DELETED":
            cache.deleted(KIND, namespace, name)
        else:
            cache.put(body)
        reconciler: Reconciler = memo["reconciler"]
        reconciler.requeue(name, namespace)


def _child_changed(reconciler: Reconciler, kind: WatchedKind, obj: Mapping[str, Any]) -> None:
    if kind == MODEL_DEPLOYMENT:
        return  # kopf's handler above triggers those
    metadata = obj.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(LABEL_INSTANCE)
    namespace = metadata.get("namespace")
    if owner and namespace:
        # Child events come in bursts (every pod of a rollout changes several times): one reconcile
        # a moment later, reading everything afresh, covers the burst.
        reconciler.requeue(owner, namespace, COALESCE_SECONDS)


@kopf.on.probe(id="reconciler")
async def reconciler_ready(memo: kopf.Memo, **_: Any) -> bool:
    return "reconciler" in memo
