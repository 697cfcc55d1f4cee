"""Leader election decisions: who may write the Lease, and when."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from modeldeploy_operator.kube import LeaseRecord
from modeldeploy_operator.leadership import next_lease

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DURATION = timedelta(seconds=15)
HELD_BY_OTHER = LeaseRecord("other", 15, NOW - timedelta(seconds=30), NOW - timedelta(seconds=5), 3, "41")


def test_a_missing_lease_is_created_for_us() -> None:
    created = next_lease(None, "me", NOW, DURATION)
    assert created == LeaseRecord("me", 15, NOW, NOW, 0, resource_version=None)


def test_a_valid_lease_of_another_holder_is_left_alone() -> None:
    assert next_lease(HELD_BY_OTHER, "me", NOW, DURATION) is None
    just_before_expiry = NOW + timedelta(seconds=9, microseconds=999_999)
    assert next_lease(HELD_BY_OTHER, "me", just_before_expiry, DURATION) is None


def test_an_expired_lease_is_taken_over_with_a_transition() -> None:
    at_expiry = NOW + timedelta(seconds=10)
    taken = next_lease(HELD_BY_OTHER, "me", at_expiry, DURATION)
    assert taken == LeaseRecord("me", 15, at_expiry, at_expiry, 4, resource_version="41")


def test_a_released_lease_is_taken_at_once() -> None:
    released = replace(HELD_BY_OTHER, holder="", renew_time=None)
    taken = next_lease(released, "me", NOW, DURATION)
    assert taken is not None and taken.holder == "me" and taken.transitions == 4


def test_our_own_lease_is_renewed_keeping_its_acquire_time() -> None:
    ours = replace(HELD_BY_OTHER, holder="me")
    renewed = next_lease(ours, "me", NOW, timedelta(seconds=20))
    assert renewed == replace(ours, renew_time=NOW, duration_seconds=20)
