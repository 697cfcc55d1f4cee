"""Leader election decisions: who may write the Lease, and when."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modeldeploy_operator.cli import acquire_unless_stopped
from modeldeploy_operator.kube import KubernetesError, LeaseRecord, LeaseStore, WriteFence
from modeldeploy_operator.leadership import LeaderElector, next_lease, renew_deadline, retry_interval

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


class HeldByOther:
    """A Lease store whose Lease another replica renews for ever."""

    def __init__(self) -> None:
        self.reads = 0

    async def read_lease(self) -> LeaseRecord:
        self.reads += 1
        return replace(HELD_BY_OTHER, renew_time=datetime.now(UTC))

    async def write_lease(self, record: LeaseRecord) -> None:
        raise AssertionError("a standby must not write a Lease another replica holds")


class Renewable:
    """A Lease store that is ours to renew, until `failing`."""

    failing = False

    async def read_lease(self) -> LeaseRecord | None:
        if self.failing:
            raise KubernetesError("get Lease: Kubernetes API unreachable")
        return None

    async def write_lease(self, record: LeaseRecord) -> None:
        pass


def test_the_renew_deadline_ends_before_the_lease_so_a_standby_never_overlaps_a_leader() -> None:
    for seconds in (3, 15, 60):
        duration = timedelta(seconds=seconds)
        assert renew_deadline(duration) < duration
        # Renewals are tried at least three times before the deadline passes.
        assert retry_interval(duration) * 3 < renew_deadline(duration).total_seconds()


def test_a_leader_that_cannot_renew_stops_writing_before_its_lease_expires() -> None:
    clock = {"now": 100.0}
    fence = WriteFence(clock=lambda: clock["now"])
    store = Renewable()
    typed: LeaseStore = store  # type: ignore[assignment]
    elector = LeaderElector(typed, "me", timedelta(seconds=15), fence=fence, monotonic=lambda: clock["now"])

    assert asyncio.run(elector.try_acquire())
    fence.check("apply Deployment iris-stable")  # held: writes go through
    store.failing = True
    clock["now"] = 109.9
    fence.check("apply Deployment iris-stable")
    clock["now"] = 110.0  # the renew deadline, 5 s before any standby may take the Lease
    with pytest.raises(KubernetesError, match="no longer holds the leader Lease"):
        fence.check("apply Deployment iris-stable")


def test_a_standby_waiting_for_the_lease_stops_on_sigterm() -> None:
    # As PID 1 of a container it would otherwise ignore SIGTERM and hold up an upgrade for 30 s.
    store = HeldByOther()
    typed: LeaseStore = store  # type: ignore[assignment]
    elector = LeaderElector(typed, "me", timedelta(seconds=3), fence=WriteFence())

    async def scenario() -> bool:
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(acquire_unless_stopped(elector), timeout=10)

    assert asyncio.run(scenario()) is False
    assert store.reads >= 1
