"""Adaptive batching: concurrent requests merged into one `predict` call.

A request waits for others only while more requests are in flight than are already queued, so a
lone request is predicted at once and batches form only under concurrency. A batch is flushed when
it reaches `max_rows` or when its window has passed.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_serving.errors import InvalidInput

Outputs = dict[str, npt.NDArray[Any]]
PredictFunction = Callable[[npt.NDArray[Any], Sequence[str]], Outputs]
RunInThread = Callable[[Callable[[], Outputs]], Awaitable[Outputs]]


@dataclass
class _Pending:
    rows: npt.NDArray[Any]
    outputs: tuple[str, ...]
    result: "asyncio.Future[Outputs]" = field(repr=False)


class AdaptiveBatcher:
    """Queues requests and predicts them in merged batches on `consumers` concurrent tasks."""

    def __init__(
        self,
        predict: PredictFunction,
        run_in_thread: RunInThread,
        max_rows: int,
        window_seconds: float,
        consumers: int,
        in_flight: Callable[[], int],
    ) -> None:
        self._predict = predict
        self._run_in_thread = run_in_thread
        self._max_rows = max_rows
        self._window_seconds = window_seconds
        self._consumer_count = consumers
        self._in_flight = in_flight
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._consumers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the consumer tasks on the running event loop."""
        self._consumers = [asyncio.create_task(self._consume()) for _ in range(self._consumer_count)]

    async def stop(self) -> None:
        """Cancel the consumers; requests still queued are answered with an error."""
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.result.done():
                pending.result.set_exception(RuntimeError("the server is shutting down"))

    async def predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> Outputs:
        """The outputs for `rows`, predicted together with whatever else is queued."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(rows, tuple(outputs), future))
        return await future

    async def _consume(self) -> None:
        while True:
            batch = [await self._queue.get()]
            rows = len(batch[0].rows)
            deadline = time.monotonic() + self._window_seconds
            while rows < self._max_rows:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    rows += len(batch[-1].rows)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._in_flight() <= len(batch):
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
                rows += len(batch[-1].rows)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        outputs = tuple(dict.fromkeys(name for item in batch for name in item.outputs))
        try:
            merged = np.concatenate([item.rows for item in batch]) if len(batch) > 1 else batch[0].rows
            results = await self._run_in_thread(lambda: self._predict(merged, outputs))
        except Exception as error:
            if len(batch) > 1 and isinstance(error, InvalidInput | ValueError | TypeError):
                # One request's bad rows must not fail its neighbours: predict each on its own.
                for item in batch:
                    await self._run_batch([item])
            else:
                for item in batch:
                    _fail(item, error)
            return
        start = 0
        for item in batch:
            stop = start + len(item.rows)
            if not item.result.done():
                item.result.set_result({name: results[name][start:stop] for name in item.outputs})
            start = stop


def _fail(item: _Pending, error: BaseException) -> None:
    if not item.result.done():
        item.result.set_exception(error)
