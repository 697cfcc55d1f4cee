"""Small helpers for tests that talk to the real control plane."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from lightkube import ApiError, Client


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls until the condition holds; fails the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def exists(kube: Client, kind: Any, name: str, namespace: str | None = None) -> bool:
    try:
        kube.get(kind, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return False
        raise
    return True
