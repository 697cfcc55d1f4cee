from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from kube_helpers import exists, wait_until


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    """A namespace of the test's own, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name)))
    # Pods are refused until the service-account controller has made `default` here.
    wait_until(lambda: exists(kube, ServiceAccount, "default", name), f"service account default in {name}")
    yield name
    kube.delete(Namespace, name)
