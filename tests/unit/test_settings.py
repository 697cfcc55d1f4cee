"""Operator settings from MODELDEPLOY_OPERATOR_* environment variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modeldeploy_operator.settings import OperatorSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NAMESPACES",
        "SERVER_IMAGE",
        "PROMETHEUS_ADDRESS",
        "LOG_FORMAT",
        "FIELD_MANAGER",
        "ALLOW_PICKLE",
    ):
        monkeypatch.delenv(f"MODELDEPLOY_OPERATOR_{name}", raising=False)


def test_defaults_watch_everything_safely() -> None:
    settings = OperatorSettings()
    assert settings.namespaces == []
    assert settings.field_manager == "modeldeploy"
    assert settings.log_format == "text"
    assert settings.allow_pickle is False


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_NAMESPACES", "ml, search,")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_SERVER_IMAGE", "registry.example.com/server:2")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_PROMETHEUS_ADDRESS", "http://prometheus:9090")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_ALLOW_PICKLE", "true")
    settings = OperatorSettings()
    assert settings.namespaces == ["ml", "search"]
    assert settings.server_image == "registry.example.com/server:2"
    assert settings.prometheus_address == "http://prometheus:9090"
    assert settings.log_format == "json"
    assert settings.allow_pickle is True


def test_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        OperatorSettings()
