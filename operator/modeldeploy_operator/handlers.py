"""kopf handlers: thin adapters that turn every trigger into one reconcile.

A ModelDeployment is reconciled when it is created, changed or found at start-up, when
one of its children changes (so a hand edit is put back at once), and periodically as a
safety net. Run with ``modeldeploy-operator`` (or ``kopf run -m modeldeploy_operator.handlers``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import httpx
import kopf
from lightkube import AsyncClient, KubeConfig

from modeldeploy_operator.builders import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER_NAME
from modeldeploy_operator.crdgen import GROUP, PLURAL, VERSION
from modeldeploy_operator.kube import KubernetesError, KubeStorage
from modeldeploy_operator.metrics import METRICS
from modeldeploy_operator.prometheus import PrometheusClient
from modeldeploy_operator.reconcile import Outcome, Reconciler
from modeldeploy_operator.settings import OperatorSettings

# A safety net only: children's events trigger reconciles as things change.
RESYNC_SECONDS = 300.0
RETRY_DELAY_SECONDS = 15.0
MANAGED_CHILDREN = {LABEL_MANAGED_BY: MANAGER_NAME}
_logger = logging.getLogger("modeldeploy.operator")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings = OperatorSettings()
    # kopf's own bookkeeping lives under our prefix, and only warnings become Events:
    # the reconcile posts the Events that matter (Ready, Stalled) itself.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.modeldeploy.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.modeldeploy.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    client = AsyncClient(config=KubeConfig.from_env(), field_manager=operator_settings.field_manager)
    memo["client"] = client
    memo["http"] = httpx.AsyncClient()
    reconciler = Reconciler(
        KubeStorage(client, operator_settings.field_manager),
        operator_settings,
        PrometheusClient(memo["http"]),
        on_outcome=lambda body, outcome: _report(kopf.Body(cast(kopf.RawBody, body)), outcome),
    )
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


def _report(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        METRICS.events.labels(event.type, event.reason).inc()
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_model_deployment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo["reconciler"]
    try:
        outcome = await reconciler.reconcile(body)
    except KubernetesError as error:
        # Retried later by kopf, never in a tight loop.
        raise kopf.TemporaryError(str(error), delay=RETRY_DELAY_SECONDS) from error
    _report(body, outcome)


async def _reconcile_owner(meta: kopf.Meta, namespace: str | None, memo: kopf.Memo) -> None:
    name = meta.get("labels", {}).get(LABEL_INSTANCE)
    if not name or not namespace:
        return
    reconciler: Reconciler = memo["reconciler"]
    try:
        reconciled = await reconciler.reconcile_by_name(name, namespace)
    except KubernetesError as error:
        # The periodic resync catches up; a child's event is not worth a retry loop.
        _logger.warning(
            "Reconcile of ModelDeployment %s/%s after a child changed failed: %s", namespace, name, error
        )
        return
    if reconciled is None:
        return
    owner, outcome = reconciled
    _report(kopf.Body(cast(kopf.RawBody, owner)), outcome)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_CHILDREN)
@kopf.on.event("", "v1", "services", labels=MANAGED_CHILDREN)
@kopf.on.event("", "v1", "pods", labels=MANAGED_CHILDREN)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED_CHILDREN)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED_CHILDREN)
@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=MANAGED_CHILDREN)
@kopf.on.event("networking.istio.io", "v1", "virtualservices", labels=MANAGED_CHILDREN)
async def child_changed(meta: kopf.Meta, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_owner(meta, namespace, memo)


@kopf.on.probe(id="reconciler")
async def reconciler_ready(memo: kopf.Memo, **_: Any) -> bool:
    return "reconciler" in memo
