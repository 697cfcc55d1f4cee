"""The queue of reconciles: every trigger names a key; a bounded pool runs one reconcile per key at a time.

An earlier request replaces a later one still waiting, so a burst of triggers costs one
reconcile. A rollout's steps and analysis windows end on the clock rather than on an event; a
delayed requeue replaces kopf timers, which would put a finalizer on every ModelDeployment.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Key = tuple[str, str]
"""(namespace, name)"""


class WorkQueue:
    """Runs `work(name, namespace)` when asked, at most `workers` at once, one at a time per key."""

    def __init__(self, work: Callable[[str, str], Awaitable[object]], workers: int) -> None:
        self._work = work
        self._workers = workers
        # Per key: the requeue still waiting, and when (monotonic clock) it is due.
        self._requeued: dict[Key, tuple[asyncio.Task[None], float]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._slots: asyncio.Semaphore | None = None
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)

    @asynccontextmanager
    async def turn(self, key: Key) -> AsyncIterator[None]:
        """Waits for a free worker and for the key's previous reconcile to end."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._workers)
        async with self._slots, self._locks[key]:
            yield

    def forget(self, key: Key) -> None:
        """Drops the key's lock once its object is gone, so the queue does not grow with churn."""
        self._locks.pop(key, None)

    def requeue(self, name: str, namespace: str, delay: float = 0.0) -> None:
        """Runs the work for the object after `delay` seconds (once, however often it is asked
        meanwhile; an earlier request replaces a later one that is still waiting)."""
        key = (namespace, name)
        if self._closed:
            return
        due = time.monotonic() + delay
        waiting = self._requeued.get(key)
        if waiting is not None:
            if waiting[1] <= due:
                return
            # Still asleep (it leaves the table before it reconciles): safe to cancel.
            waiting[0].cancel()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._requeued.pop(key, None)
            await self._work(name, namespace)

        task = asyncio.create_task(later())
        self._requeued[key] = (task, due)
        # Kept until done (not only while waiting), so closing cancels a reconcile under way too.
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def close(self) -> None:
        """Cancels pending requeues and refuses new ones: the clients are about to close."""
        self._closed = True
        for task in self._running:
            task.cancel()
        self._requeued.clear()
