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
        "PROMETHEUS_ALLOWED_ADDRESSES",
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


@pytest.mark.parametrize(
    "address",
    [
        "http://prometheus:9O90",
        "http://prometheus:0",
        "http://prometheus:99999",
        "ftp://prometheus:9090",
        "http://user:secret@prometheus:9090",
        "http://prometheus:9090/?x=1",
        "http://:9090",
    ],
)
def test_a_malformed_prometheus_address_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_PROMETHEUS_ADDRESS", address)
    with pytest.raises(ValidationError, match="prometheus_address"):
        OperatorSettings()


def test_only_the_operators_own_and_the_allowed_prometheus_addresses_are_queried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_PROMETHEUS_ADDRESS", "http://prometheus:9090")
    assert OperatorSettings().allows_prometheus("http://prometheus:9090/")
    assert not OperatorSettings().allows_prometheus("http://metadata.internal/latest")
    monkeypatch.setenv(
        "MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES",
        "https://thanos.example:10902, http://127.0.0.1:*",
    )
    settings = OperatorSettings()
    assert settings.allows_prometheus("https://thanos.example:10902")
    assert settings.allows_prometheus("http://127.0.0.1:41234")
    assert not settings.allows_prometheus("http://127.0.0.1:41234/admin")
    assert not settings.allows_prometheus("http://127.0.0.2:41234")
    assert not settings.allows_prometheus("http://thanos.example:10902")


def test_an_allowed_address_entry_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_PROMETHEUS_ALLOWED_ADDRESSES", "http://127.0.0.1:9090:*")
    with pytest.raises(ValidationError, match="prometheus_allowed_addresses"):
        OperatorSettings()
