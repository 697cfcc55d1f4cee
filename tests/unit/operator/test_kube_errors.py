"""The storage layer turns the client's failures into KubernetesError, whatever HTTP library raised them."""

from __future__ import annotations

import asyncio
import socket

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User

from modeldeploy_operator.kube import KubernetesError, KubeStorage


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
