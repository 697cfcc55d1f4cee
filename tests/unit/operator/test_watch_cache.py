"""The watch cache: synced only once listed, current through watch events, never older than the
operator's own writes, and out of the way (reads go to the API) while it cannot answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError

from modeldeploy_operator import watchcache
from modeldeploy_operator.kinds import MODEL_DEPLOYMENT, WatchedKind, kind_named
from modeldeploy_operator.kube import KubeStorage
from modeldeploy_operator.watchcache import TOMBSTONE_SECONDS, WatchCache

DEPLOYMENT = kind_named("Deployment")
ROUTE = kind_named("HTTPRoute")


class Item:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj

    def to_dict(self) -> dict[str, Any]:
        return dict(self._obj)


class Listing:
    def __init__(self, items: list[dict[str, Any]], version: str) -> None:
        self._items, self.resourceVersion = items, version

    def __aiter__(self) -> AsyncIterator[Item]:
        async def items() -> AsyncIterator[Item]:
            for obj in self._items:
                yield Item(obj)

        return items()


class FakeClient:
    """Lists what `stored` holds (without kind, as the API server does for list items), then
    replays `events` on the watch and waits."""

    def __init__(self) -> None:
        self.stored: dict[str, list[dict[str, Any]]] = {"Deployment": [], "ModelDeployment": []}
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.watched_from: list[str | None] = []
        self.missing: set[str] = {"HTTPRoute"}

    def list(self, resource: WatchedKind, **_: Any) -> Listing:
        if resource.kind in self.missing:
            raise _api_error(404)
        return Listing(
            [{k: v for k, v in o.items() if k != "kind"} for o in self.stored[resource.kind]], "10"
        )

    async def watch(self, resource: WatchedKind, resource_version: str | None = None, **_: Any) -> Any:
        self.watched_from.append(resource_version)
        while True:
            event_type, obj = await self.events.get()
            if event_type == "DROP":
                raise ConnectionError("the watch connection was dropped")
            yield event_type, Item(obj)


def _api_error(code: int) -> ApiError:
    error = ApiError.__new__(ApiError)
    error.status = type("Status", (), {"code": code, "message": "not found"})()
    return error


def deployment(name: str, version: int, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ml", "resourceVersion": str(version), "labels": {}},
        "spec": {"replicas": replicas},
    }


async def started(client: FakeClient, kinds: tuple[WatchedKind, ...] = (DEPLOYMENT,)) -> WatchCache:
    cache = WatchCache(client, lambda kind: kind, kinds, [])  # type: ignore[arg-type]
    assert not cache.synced("Deployment", "ml")
    changes: list[str] = []
    cache.start(on_change=lambda kind, obj: changes.append(obj["metadata"]["name"]))
    await asyncio.wait_for(cache.until_synced(), 5)
    cache.changes = changes  # type: ignore[attr-defined]
    return cache


def test_the_cache_answers_once_listed_and_follows_the_watch() -> None:
    async def scenario() -> None:
        client = FakeClient()
        client.stored["Deployment"] = [deployment("iris-stable", 5)]
        cache = await started(client)
        assert client.watched_from == ["10"]  # watched from the list's version: nothing missed
        assert cache.knows("Deployment", "ml", "iris-stable")
        listed = cache.get("Deployment", "ml", "iris-stable")
        assert listed is not None and listed["kind"] == "Deployment"  # list items carry no kind
        await client.events.put(("MODIFIED", deployment("iris-stable", 11, replicas=3)))
        await client.events.put(("ADDED", deployment("iris-canary", 12)))
        await asyncio.sleep(0.05)
        assert cache.get("Deployment", "ml", "iris-stable")["spec"]["replicas"] == 3  # type: ignore[index]
        assert [d["metadata"]["name"] for d in cache.list("Deployment", "ml", {})] == [
            "iris-stable",
            "iris-canary",
        ]
        await client.events.put(("DELETED", deployment("iris-canary", 13)))
        await asyncio.sleep(0.05)
        assert cache.get("Deployment", "ml", "iris-canary") is None
        assert cache.changes == ["iris-stable", "iris-stable", "iris-canary", "iris-canary"]  # type: ignore[attr-defined]
        cache.stop()

    asyncio.run(scenario())


def test_the_operators_own_write_is_never_replaced_by_an_older_event() -> None:
    async def scenario() -> None:
        client = FakeClient()
        cache = await started(client)
        cache.put(deployment("iris-stable", 20, replicas=4))  # what an apply returned
        await client.events.put(("MODIFIED", deployment("iris-stable", 19, replicas=2)))  # the watch lags
        await asyncio.sleep(0.05)
        assert cache.get("Deployment", "ml", "iris-stable")["spec"]["replicas"] == 4  # type: ignore[index]
        cache.deleted("Deployment", "ml", "iris-stable")
        assert cache.knows("Deployment", "ml", "iris-stable")  # known to be gone
        assert cache.get("Deployment", "ml", "iris-stable") is None
        cache.stop()

    asyncio.run(scenario())


def test_an_object_the_api_server_says_changed_is_read_from_the_api_until_news_arrives() -> None:
    async def scenario() -> None:
        client = FakeClient()
        cache = await started(client, (MODEL_DEPLOYMENT,))
        cache.put(
            {
                "kind": "ModelDeployment",
                "metadata": {"name": "iris", "namespace": "ml", "resourceVersion": "30"},
            }
        )
        cache.outdated("ModelDeployment", "ml", "iris")  # a status write got 409
        assert not cache.knows("ModelDeployment", "ml", "iris")
        assert cache.list("ModelDeployment", "ml", {}) != []  # still listed (for the resync)
        cache.put(
            {
                "kind": "ModelDeployment",
                "metadata": {"name": "iris", "namespace": "ml", "resourceVersion": "31"},
            }
        )
        assert cache.knows("ModelDeployment", "ml", "iris")
        cache.stop()

    asyncio.run(scenario())


def test_a_kind_without_its_crd_counts_as_synced_and_empty() -> None:
    async def scenario() -> None:
        cache = await started(FakeClient(), (DEPLOYMENT, ROUTE))
        assert cache.synced("HTTPRoute", "ml")
        assert cache.list("HTTPRoute", "ml", {}) == []
        cache.stop()

    asyncio.run(scenario())


def test_nothing_is_cached_outside_the_synced_kinds() -> None:
    async def scenario() -> None:
        cache = WatchCache(FakeClient(), lambda kind: kind, (DEPLOYMENT,), [])  # type: ignore[arg-type]
        cache.put(deployment("iris-stable", 1))  # not started: not synced, the write is not kept
        assert not cache.knows("Deployment", "ml", "iris-stable")
        assert cache.list("Deployment", "ml", {}) == []

    asyncio.run(scenario())


def test_a_deleted_object_does_not_come_back_with_a_late_answer() -> None:
    # Before: a deletion's body handed to the cache (kopf's DELETED event), or an answer to a write
    # sent before the deletion, put the object back, and the operator reconciled it for ever.
    async def scenario() -> None:
        client = FakeClient()
        client.stored["Deployment"] = [deployment("iris-stable", 5)]
        cache = await started(client)
        await client.events.put(("DELETED", deployment("iris-stable", 9)))
        await asyncio.sleep(0.05)
        cache.put(deployment("iris-stable", 8))  # a status write answered before the deletion
        assert cache.get("Deployment", "ml", "iris-stable") is None
        cache.put(deployment("iris-stable", 12))  # created again afterwards
        assert cache.get("Deployment", "ml", "iris-stable") is not None
        cache.deleted("Deployment", "ml", "iris-stable")
        cache.put(deployment("iris-stable", 12))
        assert cache.get("Deployment", "ml", "iris-stable") is None
        cache.stop()

    asyncio.run(scenario())


def test_a_list_by_owner_reads_only_that_owners_children() -> None:
    async def scenario() -> None:
        client = FakeClient()
        cache = await started(client)
        for owner in ("iris", "wine"):
            for variant in ("stable", "canary"):
                obj = deployment(f"{owner}-{variant}", 5)
                obj["metadata"]["labels"] = {
                    "app.kubernetes.io/instance": owner,
                    "modeldeploy.io/variant": variant,
                }
                cache.put(obj)
        owned = cache.list("Deployment", "ml", {"app.kubernetes.io/instance": "iris"})
        assert [d["metadata"]["name"] for d in owned] == ["iris-canary", "iris-stable"]
        canary = cache.list(
            "Deployment", "ml", {"app.kubernetes.io/instance": "iris", "modeldeploy.io/variant": "canary"}
        )
        assert [d["metadata"]["name"] for d in canary] == ["iris-canary"]
        cache.deleted("Deployment", "ml", "iris-canary")
        assert [
            d["metadata"]["name"]
            for d in cache.list("Deployment", "ml", {"app.kubernetes.io/instance": "iris"})
        ] == ["iris-stable"]
        cache.stop()

    asyncio.run(scenario())


def test_a_deletion_is_remembered_for_a_while_not_for_ever() -> None:
    # Before: every deleted object stayed in the cache as its tombstone, whole, until the next
    # full list, so an operator whose pods came and went grew without bound.
    async def scenario() -> None:
        now = [0.0]
        cache = WatchCache(FakeClient(), lambda kind: kind, (DEPLOYMENT,), [], clock=lambda: now[0])  # type: ignore[arg-type]
        cache.start()
        await asyncio.wait_for(cache.until_synced(), 5)
        for index in range(3):
            cache.put(deployment(f"old-{index}", 5))
            cache.deleted("Deployment", "ml", f"old-{index}")
        now[0] = TOMBSTONE_SECONDS / 2
        cache.put(deployment("old-0", 4))  # a late answer, well within the time one can take
        assert cache.get("Deployment", "ml", "old-0") is None
        now[0] = TOMBSTONE_SECONDS + 1
        cache.put(deployment("recent", 5))
        cache.deleted("Deployment", "ml", "recent")
        assert len(cache._tombstones) == 1  # the three older ones expired when this one came
        cache.stop()

    asyncio.run(scenario())


def test_the_cache_keeps_what_the_reconcile_reads() -> None:
    async def scenario() -> None:
        client = FakeClient()
        client.stored["Pod"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "iris-1",
                    "namespace": "ml",
                    "resourceVersion": "3",
                    "labels": {"a": "b"},
                },
                "spec": {"containers": [{"name": "server", "image": "i"}]},
                "status": {"phase": "Running"},
            }
        ]
        applied = deployment("iris-stable", 4)
        applied["metadata"]["managedFields"] = [
            {"manager": "modeldeploy", "operation": "Apply", "time": "t", "fieldsV1": {"f:spec": {}}}
        ]
        cache = await started(client, (DEPLOYMENT, kind_named("Pod")))
        cache.put(applied)
        pod = cache.get("Pod", "ml", "iris-1")
        assert pod is not None and "spec" not in pod
        assert pod["status"] == {"phase": "Running"} and pod["metadata"]["labels"] == {"a": "b"}
        stored = cache.get("Deployment", "ml", "iris-stable")
        assert stored is not None and stored["spec"] == {"replicas": 1}
        assert stored["metadata"]["managedFields"] == [
            {"manager": "modeldeploy", "operation": "Apply", "time": "t"}
        ]
        assert "fieldsV1" in applied["metadata"]["managedFields"][0]  # the caller's object is its own
        cache.stop()

    asyncio.run(scenario())


def test_the_periodic_resync_lists_from_the_cache_once_it_holds_the_model_deployments() -> None:
    # Before: every resync listed every ModelDeployment from the API server, the one request an
    # idle operator still made besides its Lease.
    async def scenario() -> None:
        client = FakeClient()
        client.stored["ModelDeployment"] = [
            {
                "apiVersion": "modeldeploy.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": "3"},
            }
            for name, namespace in (("iris", "ml"), ("wine", "other"))
        ]
        listed: list[str] = []
        plain_list = client.list

        def counting_list(resource: WatchedKind, **options: Any) -> Listing:
            listed.append(resource.kind)
            return plain_list(resource, **options)

        client.list = counting_list  # type: ignore[method-assign]
        cache = await started(client, (MODEL_DEPLOYMENT,))
        storage = KubeStorage(client, "modeldeploy", cache=cache)  # type: ignore[arg-type]
        everywhere = await storage.list_model_deployments(None)
        in_ml = await storage.list_model_deployments("ml")
        assert listed == ["ModelDeployment"]  # the cache's own list at start-up, nothing since
        assert sorted(body["metadata"]["name"] for body in everywhere) == ["iris", "wine"]
        assert [body["metadata"]["name"] for body in in_ml] == ["iris"]
        cache.stop()

    asyncio.run(scenario())


def test_a_relist_after_a_dropped_watch_reports_only_what_changed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: every object listed again was reported as a change (a reconcile of every owner at
    # once), and one deleted while the watch was away was not reported at all.
    monkeypatch.setattr(watchcache, "RETRY_FIRST_SECONDS", 0.01)

    async def scenario() -> None:
        client = FakeClient()
        client.stored["Deployment"] = [deployment(name, 5) for name in ("same", "edited", "deleted")]
        cache = await started(client)
        cache.changes.clear()  # type: ignore[attr-defined]
        client.stored["Deployment"] = [deployment("same", 5), deployment("edited", 9), deployment("new", 10)]
        await client.events.put(("DROP", {}))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(client.watched_from) == 2:
                break
        assert sorted(cache.changes) == ["deleted", "edited", "new"]  # type: ignore[attr-defined]
        assert cache.get("Deployment", "ml", "deleted") is None
        cache.put(deployment("deleted", 5))  # a late answer about the deleted one
        assert cache.get("Deployment", "ml", "deleted") is None
        cache.stop()

    asyncio.run(scenario())
