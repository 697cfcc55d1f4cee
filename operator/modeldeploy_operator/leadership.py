"""Leader election with a coordination.k8s.io Lease, so several operator replicas are safe.

Only the holder of the Lease runs the kopf operator; the others wait, answer their liveness
probe, and take over when the holder stops renewing. The decision is a pure function of the
Lease as read, the candidate and the time; `LeaderElector` does the I/O through the storage
layer, with the Lease's resourceVersion guarding against two candidates winning at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from modeldeploy_operator.kube import WRITE_FENCE, KubernetesError, LeaseRecord, LeaseStore, WriteFence

_logger = logging.getLogger("modeldeploy.leadership")


def next_lease(
    current: LeaseRecord | None, identity: str, now: datetime, duration: timedelta
) -> LeaseRecord | None:
    """The Lease to write to become or stay leader, or None while another holder's Lease is valid."""
    seconds = int(duration.total_seconds())
    if current is None:
        return LeaseRecord(identity, seconds, now, now, 0, resource_version=None)
    if current.holder == identity:
        return replace(current, duration_seconds=seconds, renew_time=now)
    expired = (
        current.renew_time is None or current.renew_time + timedelta(seconds=current.duration_seconds) <= now
    )
    if current.holder and not expired:
        return None
    return replace(
        current,
        holder=identity,
        duration_seconds=seconds,
        acquire_time=now,
        renew_time=now,
        transitions=current.transitions + 1,
    )


def renew_deadline(duration: timedelta) -> timedelta:
    """How long the leader keeps acting after its last renewal began: two thirds of the Lease (10 s of
    15 s, as client-go), so it has stopped for a third of the Lease before a standby may take over."""
    return duration * 2 / 3


def retry_interval(duration: timedelta) -> float:
    """Seconds between renewals (and attempts to take the Lease): several fit in the renew deadline."""
    return max(duration.total_seconds() / 6, 0.25)


@dataclass
class LeaderElector:
    """Acquires and renews one Lease; calls `on_lost` when it could not renew within the renew deadline.

    Each successful renewal opens the process' write fence until the renewal's start plus the renew
    deadline, so a leader that stops renewing stops writing too, before its Lease expires.
    """

    store: LeaseStore
    identity: str
    duration: timedelta
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    fence: WriteFence = field(default_factory=lambda: WRITE_FENCE)
    monotonic: Callable[[], float] = time.monotonic

    @property
    def retry_seconds(self) -> float:
        return retry_interval(self.duration)

    async def try_acquire(self) -> bool:
        """One attempt to become (or stay) leader."""
        started = self.monotonic()
        now = self.clock()
        try:
            current = await self.store.read_lease()
            wanted = next_lease(current, self.identity, now, self.duration)
            if wanted is None:
                return False
            await self.store.write_lease(wanted)
        except KubernetesError as error:
            if error.is_conflict:  # another candidate wrote first
                return False
            raise
        self.fence.open_until(started + renew_deadline(self.duration).total_seconds())
        return True

    async def acquire(self) -> None:
        waiting_logged = False
        while True:
            try:
                if await self.try_acquire():
                    _logger.info("Became the leader as %s", self.identity)
                    return
            except KubernetesError as error:
                _logger.warning("Leader election failed, retrying: %s", error)
            if not waiting_logged:
                _logger.info("Waiting to become the leader (another replica holds the Lease)")
                waiting_logged = True
            await asyncio.sleep(self.retry_seconds)

    async def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        deadline = renew_deadline(self.duration)
        last_renewed = self.clock()
        while not stop.is_set():
            await asyncio.sleep(self.retry_seconds)
            try:
                if await self.try_acquire():
                    last_renewed = self.clock()
                    continue
                _logger.error("Another replica took the Lease: stopping")
            except KubernetesError as error:
                if self.clock() - last_renewed < deadline:
                    _logger.warning("Could not renew the Lease, retrying: %s", error)
                    continue
                _logger.error("Could not renew the Lease within %s: stopping (%s)", deadline, error)
            self.fence.close()
            on_lost()
            return

    async def release(self) -> None:
        """Gives the Lease up on a clean shutdown, so a standby takes over at once."""
        self.fence.close()
        try:
            current = await self.store.read_lease()
            if current is not None and current.holder == self.identity:
                await self.store.write_lease(replace(current, holder="", renew_time=None))
        except KubernetesError as error:
            _logger.warning("Could not release the Lease: %s", error)
