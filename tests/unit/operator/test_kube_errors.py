"""The storage layer turns the client's failures into KubernetesError, whatever HTTP library raised them."""

from __future__ import annotations

import asyncio
import socket

import httpx2
import pytest
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.models.meta_v1 import Status

from modeldeploy_operator.kube import KubernetesError, KubeStorage, _api_call


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_unreachable_api_server_is_a_kubernetes_error() -> None:
    async def read() -> None:
        config = KubeConfig.from_one(
            cluster=Cluster(server=f"http://127.0.0.1:{unused_port()}"), user=User(token="not-used")
        )
        client = AsyncClient(config=config)
        try:
            await KubeStorage(client, "modeldeploy").get("apps/v1", "Deployment", "iris-stable", "ml")
        finally:
            await client.close()

    with pytest.raises(KubernetesError) as raised:
        asyncio.run(read())
    assert raised.value.status == 0
    assert "get Deployment iris-stable in namespace ml" in str(raised.value)
    assert "unreachable" in str(raised.value)


def test_a_timeout_says_it_was_one() -> None:
    # Before: "Kubernetes API unreachable ()", since a timeout's message is empty; a loaded API
    # server that answers after the client's 10 s looked like an unknown failure.
    async def read(port: int) -> None:
        config = KubeConfig.from_one(
            cluster=Cluster(server=f"http://127.0.0.1:{port}"), user=User(token="not-used")
        )
        client = AsyncClient(config=config, timeout=httpx2.Timeout(0.2))
        try:
            await KubeStorage(client, "modeldeploy").get("apps/v1", "Deployment", "iris-stable", "ml")
        finally:
            await client.close()

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(KubernetesError) as raised:
            asyncio.run(read(silent.getsockname()[1]))
    assert "unreachable (ReadTimeout)" in str(raised.value)


def test_a_refusal_in_a_namespace_being_deleted_is_told_apart() -> None:
    status = Status.from_dict(
        {
            "code": 403,
            "reason": "Forbidden",
            "message": "unable to create new content in namespace ml because it is being terminated",
            "details": {
                "causes": [{"reason": "NamespaceTerminating", "message": "namespace ml is being terminated"}]
            },
        }
    )
    with pytest.raises(KubernetesError) as raised, _api_call("apply Deployment iris-stable"):
        raise ApiError(status=status)
    assert raised.value.is_namespace_terminating
    assert not KubernetesError("create Event: forbidden", status=403).is_namespace_terminating
