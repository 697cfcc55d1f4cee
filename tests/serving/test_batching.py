"""Adaptive batching: concurrent requests share predict calls; a lone request does not wait."""

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_serving.batching import AdaptiveBatcher, Outputs
from modeldeploy_serving.errors import InvalidInput


class RecordingModel:
    """Predicts the first feature times ten; refuses rows holding a negative value."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> Outputs:
        self.calls.append(len(rows))
        time.sleep(0.01)
        if (rows < 0).any():
            raise InvalidInput("negative feature")
        return {name: rows[:, 0] * 10 for name in outputs}


async def run_in_thread(function: Callable[[], Outputs]) -> Outputs:
    return await asyncio.to_thread(function)


def make_batcher(
    model: RecordingModel, in_flight: Callable[[], int], window: float, max_rows: int = 64
) -> Any:
    return AdaptiveBatcher(model.predict, run_in_thread, max_rows, window, consumers=1, in_flight=in_flight)


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows() -> None:
    model = RecordingModel()

    async def scenario() -> list[Outputs]:
        batcher = make_batcher(model, in_flight=lambda: 10, window=0.05)
        batcher.start()
        try:
            return await asyncio.gather(
                *(
                    batcher.predict(np.array([[float(index)], [float(index) + 0.5]]), ["predict"])
                    for index in range(10)
                )
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    for index, result in enumerate(results):
        assert result["predict"].tolist() == [index * 10, index * 10 + 5]
    assert sum(model.calls) == 20
    assert len(model.calls) < 10


def test_batches_stay_within_the_row_limit() -> None:
    model = RecordingModel()

    async def scenario() -> None:
        batcher = make_batcher(model, in_flight=lambda: 8, window=0.05, max_rows=4)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.predict(np.ones((2, 1)), ["predict"]) for _ in range(8)))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert max(model.calls) <= 4
    assert sum(model.calls) == 16


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    model = RecordingModel()

    async def scenario() -> float:
        batcher = make_batcher(model, in_flight=lambda: 1, window=5.0)
        batcher.start()
        try:
            started = time.perf_counter()
            await batcher.predict(np.ones((1, 1)), ["predict"])
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) < 1.0


def test_a_bad_request_fails_alone_and_its_neighbours_are_answered() -> None:
    model = RecordingModel()

    async def scenario() -> list[Any]:
        batcher = make_batcher(model, in_flight=lambda: 3, window=0.05)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.predict(np.array([[1.0]]), ["predict"]),
                batcher.predict(np.array([[-1.0]]), ["predict"]),
                batcher.predict(np.array([[2.0]]), ["predict"]),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    good, bad, other = asyncio.run(scenario())
    assert good["predict"].tolist() == [10.0]
    assert other["predict"].tolist() == [20.0]
    assert isinstance(bad, InvalidInput)


def test_requests_asking_for_different_outputs_share_a_batch() -> None:
    model = RecordingModel()

    async def scenario() -> list[Outputs]:
        batcher = make_batcher(model, in_flight=lambda: 2, window=0.05)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.predict(np.array([[1.0]]), ["predict"]),
                batcher.predict(np.array([[2.0]]), ["predict_proba"]),
            )
        finally:
            await batcher.stop()

    first, second = asyncio.run(scenario())
    assert list(first) == ["predict"]
    assert list(second) == ["predict_proba"]
    assert model.calls == [2]
