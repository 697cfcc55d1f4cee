"""The queue of reconciles: every trigger names a key; a fixed pool of workers takes keys in order.

A key is in the queue at most once, however many triggers name it before its turn (a burst of
child events, the status write's own echo, a resync): one reconcile, reading everything as it
is then, covers them all. A key named while its reconcile runs is queued again once that
reconcile ends, so a change it may have missed is seen, and never by two workers at once. This
is the discipline of client-go's work queue: the work grows with the number of objects that
changed, not with the number of events.

A rollout's steps and analysis windows end on the clock rather than on an event: a delayed
request is a timer that queues the key when due (kopf timers would put a finalizer on every
ModelDeployment). An earlier request replaces a later one still waiting, and a key already
queued needs no timer: each reconcile asks again for the wake-ups it still needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Key = tuple[str, str]
"""(namespace, name)"""
_logger = logging.getLogger("modeldeploy.workqueue")


class WorkQueue:
    """Runs `work(name, namespace)` when asked, on at most `workers` keys at once, one at a time per key."""

    def __init__(self, work: Callable[[str, str], Awaitable[object]], workers: int) -> None:
        self._work = work
        self._workers = workers
        self._order: deque[Key] = deque()
        # Keys waiting for a worker, or asked for again while their reconcile runs.
        self._wanted: set[Key] = set()
        self._running: set[Key] = set()
        self._has_work: asyncio.Event | None = None
        self._pool: list[asyncio.Task[None]] = []
        # Per key: the timer of the delayed request still waiting, and when (loop clock) it is due.
        self._timers: dict[Key, tuple[asyncio.TimerHandle, float]] = {}
        self._closed = False
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)

    @asynccontextmanager
    async def turn(self, key: Key) -> AsyncIterator[None]:
        """Waits for the key's previous reconcile to end (a direct call may overlap the pool's)."""
        async with self._locks[key]:
            yield

    def forget(self, key: Key) -> None:
        """Drops the key's lock once its object is gone, so the queue does not grow with churn."""
        self._locks.pop(key, None)

    @property
    def waiting(self) -> int:
        """Keys waiting for a worker (a key asked for again while it runs counts once it is queued)."""
        return len(self._order)

    def requeue(self, name: str, namespace: str, delay: float = 0.0) -> None:
        """Runs the work for the object after `delay` seconds (once, however often it is asked
        meanwhile; an earlier request replaces a later one that is still waiting)."""
        key = (namespace, name)
        if self._closed:
            return
        if key in self._wanted:
            return  # a reconcile starts after this request anyway, and asks for its own wake-ups
        loop = asyncio.get_running_loop()
        waiting = self._timers.get(key)
        if delay <= 0:
            if waiting is not None:
                waiting[0].cancel()
                del self._timers[key]
            self._add(key)
            return
        due = loop.time() + delay
        if waiting is not None:
            if waiting[1] <= due:
                return
            waiting[0].cancel()
        self._timers[key] = (loop.call_at(due, self._due, key), due)

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._add(key)

    def _add(self, key: Key) -> None:
        if self._closed or key in self._wanted:
            return
        self._wanted.add(key)
        if key in self._running:
            return  # queued again when its reconcile ends
        self._order.append(key)
        if self._has_work is None:
            self._start()
        assert self._has_work is not None
        self._has_work.set()

    def _start(self) -> None:
        self._has_work = asyncio.Event()
        self._pool = [asyncio.create_task(self._worker()) for _ in range(self._workers)]

    async def _worker(self) -> None:
        assert self._has_work is not None
        while True:
            while not self._order:
                self._has_work.clear()
                await self._has_work.wait()
            key = self._order.popleft()
            self._wanted.discard(key)
            self._running.add(key)
            try:
                await self._work(key[1], key[0])
            except Exception:
                # The work reports its own failures; one that escapes must not cost the pool a worker.
                _logger.exception("Reconcile of %s/%s ended with an unexpected error", *key)
            finally:
                self._running.discard(key)
                if key in self._wanted and not self._closed:
                    self._order.append(key)
                    self._has_work.set()

    def close(self) -> None:
        """Cancels waiting requests and reconciles under way, and refuses new ones: the clients are
        about to close."""
        self._closed = True
        for timer, _ in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._pool:
            task.cancel()
        self._order.clear()
        self._wanted.clear()
