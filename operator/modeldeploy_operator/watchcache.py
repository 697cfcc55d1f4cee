"""A watch cache: the watched kinds as the API server last told them, kept current by list + watch.

The reconcile reads ModelDeployments and their children from here once a kind is synced (listed,
then watched from the list's resourceVersion), so an idle reconcile asks the API server nothing,
as controller-runtime's informers do. Until a kind is synced, after a watch fails, or for a
namespace outside the watched ones, reads go to the API server. What the operator writes is put
in the cache at once (write-through), so its next reconcile never reads its own write as missing;
an event older than what the cache holds is ignored. Each change is also handed to `on_change`,
which turns it into a reconcile trigger.

The cache keeps what the reconcile reads, not every byte the API server sends: managedFields
entries without their field sets (the reconcile reads only who applied and when), and Pods without
their spec (only their labels and status are read). Both are most of an object's size, every read
copies what it returns, and a thousand ModelDeployments cache several thousand children.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2  # lightkube's HTTP client
from lightkube import ApiError, AsyncClient

from modeldeploy_operator.builders import LABEL_INSTANCE
from modeldeploy_operator.kinds import MANAGED_CHILDREN, MODEL_DEPLOYMENT, WatchedKind
from modeldeploy_operator.metrics import METRICS

Manifest = dict[str, Any]
_logger = logging.getLogger("modeldeploy.watchcache")

# How long one watch request stays open before it is renewed (the server ends it then).
WATCH_SECONDS = 290
# After a failed list or watch: the first wait, doubled up to the last.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# A kind whose CRD is not installed is looked for again this often.
MISSING_KIND_SECONDS = 60.0
# How long a deletion is remembered: far longer than a late answer to a write takes to come back,
# short enough that pods coming and going for months do not pile up.
TOMBSTONE_SECONDS = 300.0

OnChange = Callable[[WatchedKind, Manifest], None]


def _version(obj: Mapping[str, Any]) -> int | None:
    raw = obj.get("metadata", {}).get("resourceVersion")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None  # opaque: no order can be told


def _not_older(candidate: Mapping[str, Any], cached: Mapping[str, Any] | None) -> bool:
    if cached is None:
        return True
    new, old = _version(candidate), _version(cached)
    return new is None or old is None or new >= old


def _labels_match(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(key) == value for key, value in labels.items())


class WatchCache:
    """Objects of `kinds` in `namespaces` (every namespace when empty), kept by list + watch."""

    def __init__(
        self,
        client: AsyncClient,
        resources: Callable[[WatchedKind], Any],
        kinds: Sequence[WatchedKind],
        namespaces: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock
        self._resources = resources
        self._kinds = list(kinds)
        self._scopes: list[str | None] = [*namespaces] or [None]
        self._on_change: OnChange | None = None
        # (kind, namespace, name) -> object
        self._objects: dict[tuple[str, str, str], Manifest] = {}
        # (kind, namespace, instance label) -> names: the reconcile lists one ModelDeployment's
        # children, and scanning every cached object for each list made it grow with the total.
        self._by_instance: dict[tuple[str, str, str], set[str]] = {}
        # (kind, namespace or "") that are listed and watched; a missing CRD counts as an empty kind.
        self._synced: set[tuple[str, str]] = set()
        # Objects known to have changed since the cache saw them: read from the API until an event comes.
        self._stale: set[tuple[str, str, str]] = set()
        # Deleted objects: the version of their deletion and when it was seen (monotonic clock),
        # oldest first. A late answer to an earlier write (or a trigger's body) must not bring them back.
        self._tombstones: OrderedDict[tuple[str, str, str], tuple[Manifest, float]] = OrderedDict()
        self._without_spec = {kind.kind for kind in kinds if not kind.spec_read}
        self._tasks: list[asyncio.Task[None]] = []
        self._all_synced = asyncio.Event()

    def start(self, on_change: OnChange | None = None) -> None:
        """Lists and watches every kind in the background, handing each change to `on_change`."""
        self._on_change = on_change
        for kind in self._kinds:
            for scope in self._scopes:
                self._tasks.append(asyncio.create_task(self._follow(kind, scope)))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def until_synced(self) -> None:
        """Returns once every kind has been synced (reads fall back to the API until then)."""
        await self._all_synced.wait()

    def _mark_synced(self, key: tuple[str, str]) -> None:
        self._synced.add(key)
        if {(kind.kind, scope or "") for kind in self._kinds for scope in self._scopes} <= self._synced:
            self._all_synced.set()

    def synced(self, kind: str, namespace: str) -> bool:
        return (kind, "") in self._synced or (kind, namespace) in self._synced

    def knows(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the cache can answer for this object (its kind synced, the object not stale)."""
        return self.synced(kind, namespace) and (kind, namespace, name) not in self._stale

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        found = self._objects.get((kind, namespace, name))
        return None if found is None else _copy(found)

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str]) -> list[Manifest]:
        """The cached objects of `kind` in `namespace` (in every namespace for None) with `labels`."""
        instance = labels.get(LABEL_INSTANCE)
        if instance is not None and namespace is not None:
            names = sorted(self._by_instance.get((kind, namespace, instance), ()))
            candidates = [self._objects[(kind, namespace, name)] for name in names]
        else:
            candidates = [
                obj for (k, ns, _), obj in self._objects.items() if k == kind and namespace in (None, ns)
            ]
        return [_copy(obj) for obj in candidates if _labels_match(obj, labels)]

    def _store(self, key: tuple[str, str, str], obj: Manifest) -> None:
        """Keeps `obj` (the cache's own: trimmed in place) under `key`."""
        self._drop(key)
        _trim(obj, keep_spec=key[0] not in self._without_spec)
        self._objects[key] = obj
        instance = (obj.get("metadata", {}).get("labels") or {}).get(LABEL_INSTANCE)
        if instance is not None:
            self._by_instance.setdefault((key[0], key[1], str(instance)), set()).add(key[2])

    def _drop(self, key: tuple[str, str, str]) -> Manifest | None:
        gone = self._objects.pop(key, None)
        instance = (
            None if gone is None else (gone.get("metadata", {}).get("labels") or {}).get(LABEL_INSTANCE)
        )
        if instance is not None:
            names = self._by_instance.get((key[0], key[1], str(instance)))
            if names is not None:
                names.discard(key[2])
                if not names:
                    del self._by_instance[(key[0], key[1], str(instance))]
        return gone

    def put(self, obj: Mapping[str, Any]) -> None:
        """Records an object the operator wrote (or read fresh), unless the cache holds a newer one."""
        key = _key(obj)
        if key is None or not self.synced(key[0], key[1]):
            return
        tombstone = self._tombstones.get(key)
        if tombstone is not None and _not_older(tombstone[0], obj):
            return  # deleted at or after this version
        if _not_older(obj, self._objects.get(key)):
            self._store(key, _copy(obj))
            self._stale.discard(key)

    def deleted(self, kind: str, namespace: str, name: str) -> None:
        """Drops an object that was deleted; versions up to the last one seen stay gone."""
        gone = self._drop((kind, namespace, name))
        if gone is not None:
            self._bury((kind, namespace, name), gone)

    def _bury(self, key: tuple[str, str, str], gone: Manifest) -> None:
        now = self._clock()
        self._tombstones.pop(key, None)
        self._tombstones[key] = ({"metadata": {"resourceVersion": _version_text(gone)}}, now)
        while self._tombstones:
            oldest, (_, buried_at) = next(iter(self._tombstones.items()))
            if now - buried_at < TOMBSTONE_SECONDS:
                break
            del self._tombstones[oldest]

    def outdated(self, kind: str, namespace: str, name: str) -> None:
        """Marks an object the API server says changed since the cache saw it (a 409): `knows` is
        False for it until a newer version arrives, so it is read from the API meanwhile."""
        self._stale.add((kind, namespace, name))

    async def _follow(self, kind: WatchedKind, scope: str | None) -> None:
        failures = 0
        labels: Any = None if kind == MODEL_DEPLOYMENT else dict(MANAGED_CHILDREN)
        resource = self._resources(kind)
        scope_key = (kind.kind, scope or "")
        while True:
            try:
                version = await self._relist(kind, resource, scope, labels)
                self._mark_synced(scope_key)
                failures = 0
                async for event_type, item in self._client.watch(
                    resource,
                    namespace=scope or "*",
                    labels=labels,
                    resource_version=version,
                    server_timeout=WATCH_SECONDS,
                ):
                    self._observe(kind, event_type, _typed(kind, dict(item.to_dict())))
            except asyncio.CancelledError:
                raise
            except (ApiError, httpx2.HTTPStatusError) as error:
                self._synced.discard(scope_key)
                if kind.from_crd and _status_code(error) == 404:
                    # The CRD is not installed: nothing of this kind exists until it is.
                    self._drop_scope(kind.kind, scope)
                    self._mark_synced(scope_key)
                    await asyncio.sleep(MISSING_KIND_SECONDS)
                    continue
                failures += 1
                await self._back_off(kind, scope, failures, error)
            except Exception as error:  # any failure of the connection: relist after a pause
                self._synced.discard(scope_key)
                failures += 1
                await self._back_off(kind, scope, failures, error)

    async def _relist(self, kind: WatchedKind, resource: Any, scope: str | None, labels: Any) -> str:
        listing = self._client.list(resource, namespace=scope or "*", labels=labels)
        items = [_typed(kind, dict(item.to_dict())) async for item in listing]
        METRICS.watch_cache_lists.labels(kind.kind).inc()
        before = self._drop_scope(kind.kind, scope)
        self._stale = {key for key in self._stale if key[0] != kind.kind}
        self._tombstones = OrderedDict(
            (key, buried) for key, buried in self._tombstones.items() if key[0] != kind.kind
        )
        changed = []
        for item in items:
            key = _key(item)
            if key is not None:
                known = before.pop(key, None)
                self._store(key, item)
                if known is None or _version(known) is None or _version(known) != _version(item):
                    changed.append(item)
        for key, gone in before.items():  # deleted while the watch was away
            self._bury(key, gone)
            changed.append(gone)
        # Only what changed since the cache last saw it is news: a relist after a dropped watch
        # would otherwise reconcile every ModelDeployment at once.
        if self._on_change is not None:
            for item in changed:
                self._on_change(kind, item)
        return str(listing.resourceVersion)

    def _observe(self, kind: WatchedKind, event_type: str, obj: Manifest) -> None:
        key = _key(obj)
        if key is None:
            return
        cached = self._objects.get(key)
        if not _not_older(obj, cached):
            return  # the operator's own later write is there already
        self._stale.discard(key)
        if event_type == "DELETED":
            self._drop(key)
            self._bury(key, obj)
        else:
            self._store(key, obj)
            self._tombstones.pop(key, None)
        if self._on_change is not None:
            self._on_change(kind, obj)

    def _drop_scope(self, kind: str, scope: str | None) -> dict[tuple[str, str, str], Manifest]:
        """Drops the cached objects of `kind` in `scope` (every namespace for None); returns them."""
        dropped = {}
        for key in [k for k in self._objects if k[0] == kind and (scope is None or k[1] == scope)]:
            gone = self._drop(key)
            if gone is not None:
                dropped[key] = gone
        return dropped

    async def _back_off(self, kind: WatchedKind, scope: str | None, failures: int, error: Exception) -> None:
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(failures - 1, 10))
        where = f" in namespace {scope}" if scope else ""
        _logger.warning(
            "Watch of %s%s failed (%s); listing again in %.0fs, reading from the API meanwhile",
            kind.plural,
            where,
            " ".join(str(error).split()) or type(error).__name__,
            delay,
        )
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not cryptography


def _status_code(error: ApiError | httpx2.HTTPStatusError) -> int:
    # A missing API group answers 404 without a Kubernetes Status body: lightkube raises httpx's error.
    if isinstance(error, ApiError):
        return int(error.status.code or 0)
    return error.response.status_code


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    metadata = obj.get("metadata") or {}
    kind, namespace, name = obj.get("kind"), metadata.get("namespace"), metadata.get("name")
    if not (kind and namespace and name):
        return None
    return str(kind), str(namespace), str(name)


def _version_text(obj: Mapping[str, Any]) -> Any:
    return obj.get("metadata", {}).get("resourceVersion")


def _trim(obj: Manifest, keep_spec: bool) -> None:
    metadata = obj.get("metadata") or {}
    entries = metadata.get("managedFields")
    if entries:
        metadata["managedFields"] = [{k: v for k, v in e.items() if k != "fieldsV1"} for e in entries]
    if not keep_spec:
        obj.pop("spec", None)


def _copy(obj: Mapping[str, Any]) -> Manifest:
    # Callers modify what they read (status dicts, say); the cached object must not change with them.
    return copy.deepcopy(dict(obj))


def _typed(kind: WatchedKind, obj: Manifest) -> Manifest:
    # Items of a list come without apiVersion and kind; the cache keys by kind.
    obj["apiVersion"] = obj.get("apiVersion") or kind.api_version
    obj["kind"] = obj.get("kind") or kind.kind
    return obj
