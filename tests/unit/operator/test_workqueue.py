"""The work queue: a key waits in it at most once, runs on one worker at a time, and a request
made while it runs is served by one more run afterwards."""

from __future__ import annotations

import asyncio

from modeldeploy_operator.workqueue import WorkQueue


class Work:
    """Records every run; runs of the keys in `held` wait until released."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.running: set[str] = set()
        self.most_at_once = 0
        self.overlapped = False
        self.release = asyncio.Event()
        self.held: set[str] = set()

    async def __call__(self, name: str, namespace: str) -> None:
        self.overlapped |= name in self.running
        self.running.add(name)
        self.most_at_once = max(self.most_at_once, len(self.running))
        self.runs.append(name)
        if name in self.held:
            await self.release.wait()
        await asyncio.sleep(0)
        self.running.discard(name)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_key_waiting_for_a_worker_runs_once_however_often_it_is_asked() -> None:
    # Before: a request left the queue's table when its delay ended and waited for a worker
    # elsewhere, so every further trigger (each child event of a burst) queued one more reconcile.
    async def scenario() -> None:
        work = Work()
        work.held = {"busy"}
        queue = WorkQueue(work, workers=1)
        queue.requeue("busy", "ml")
        await settle()
        for _ in range(5):
            queue.requeue("iris", "ml")
            await settle()
        queue.requeue("iris", "ml", 0.01)  # due while it still waits: covered by the run to come
        await asyncio.sleep(0.05)
        assert work.runs == ["busy"]
        work.release.set()
        await settle()
        queue.close()
        assert work.runs == ["busy", "iris"]

    asyncio.run(scenario())


def test_a_request_during_a_run_is_served_by_one_more_run_after_it() -> None:
    async def scenario() -> None:
        work = Work()
        work.held = {"iris"}
        queue = WorkQueue(work, workers=4)
        queue.requeue("iris", "ml")
        await settle()
        for _ in range(3):
            queue.requeue("iris", "ml")  # the run under way may have read too early for these
        await settle()
        assert work.runs == ["iris"]
        work.held.clear()
        work.release.set()
        await settle()
        queue.close()
        assert work.runs == ["iris", "iris"]
        assert not work.overlapped

    asyncio.run(scenario())


def test_at_most_the_workers_run_at_once_and_every_key_gets_its_turn() -> None:
    async def scenario() -> None:
        work = Work()
        queue = WorkQueue(work, workers=3)
        names = [f"md-{index}" for index in range(50)]
        for name in names:
            queue.requeue(name, "ml")
        for _ in range(10):
            await settle()
        queue.close()
        assert sorted(work.runs) == sorted(names)
        assert work.runs[:3] == names[:3]  # first come, first served
        assert work.most_at_once == 3

    asyncio.run(scenario())


def test_an_earlier_request_replaces_a_later_one_and_a_closed_queue_runs_nothing() -> None:
    async def scenario() -> None:
        work = Work()
        queue = WorkQueue(work, workers=1)
        queue.requeue("iris", "ml", 30)
        queue.requeue("iris", "ml", 0.02)
        queue.requeue("iris", "ml", 10)  # later than the one waiting: ignored
        await asyncio.sleep(0.1)
        assert work.runs == ["iris"]
        queue.requeue("wine", "ml", 0.02)
        queue.close()
        queue.requeue("wine", "ml")
        await asyncio.sleep(0.1)
        assert work.runs == ["iris"]

    asyncio.run(scenario())


def test_work_that_raises_costs_the_pool_no_worker() -> None:
    async def scenario() -> None:
        runs: list[str] = []

        async def work(name: str, namespace: str) -> None:
            runs.append(name)
            raise RuntimeError("a bug")

        queue = WorkQueue(work, workers=1)
        queue.requeue("iris", "ml")
        await settle()
        queue.requeue("wine", "ml")
        await settle()
        queue.close()
        assert runs == ["iris", "wine"]

    asyncio.run(scenario())
