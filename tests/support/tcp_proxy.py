"""A TCP proxy on 127.0.0.1 that a test can freeze: a network partition it controls.

Frozen, the proxy stops forwarding in both directions but closes nothing, as a link that drops
every packet while both ends keep their connections: requests wait, watches go silent, and no
end learns anything until its own timeouts fire. Unfrozen, it forwards what waited, as TCP would
once the link is back. It runs its own event loop in a thread, so a synchronous test drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CHUNK_BYTES = 65536
# A request whose first bytes the proxy read this recently may still be arriving.
SETTLE_SECONDS = 0.05


_CHUNKS = itertools.count(1)


@dataclass(eq=False)  # one per connection, kept in a set by identity
class _Connection:
    """Which chunk (numbered in the order the proxy read them) was each direction's last."""

    last_request: int = 0
    last_answer: int = 0
    last_request_at: float = 0.0

    def quiet(self, now: float) -> bool:
        """No request in flight: every byte the client sent was answered, and none arrived just now."""
        return self.last_request <= self.last_answer and now - self.last_request_at > SETTLE_SECONDS


class FreezableProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until `close`; `freeze` and `thaw`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    # -- the test's side (any thread) ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def freeze(self, quiet_within: float = 10.0) -> None:
        """Stops forwarding at a moment when no request is waiting for its answer.

        A request already sent when a link fails may reach the server at any later time, and no
        lease can stop that (only the server can, with a precondition); freezing between requests
        tests what the client controls: that it sends nothing once it can no longer know it leads.
        """
        self._call(self._freeze_when_quiet(quiet_within))

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @contextmanager
    def running(self) -> Iterator[FreezableProxy]:
        self.start()
        try:
            yield self
        finally:
            self.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result(timeout=60)

    # -- the proxy's event loop ------------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _freeze_when_quiet(self, within: float) -> None:
        deadline = time.monotonic() + within
        while not all(connection.quiet(time.monotonic()) for connection in self._connections):
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests were in flight through the proxy for {within:.0f}s")
            await asyncio.sleep(0.005)
        # Checked and frozen in one step of the loop that does all the forwarding.
        self._flowing.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        self._tasks.add(this)  # so `close` ends it before the loop closes
        try:
            await self._forward(client_reader, client_writer)
        finally:
            self._tasks.discard(this)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        # A frozen link carries no connection attempt either.
        await self._flowing.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        connection = _Connection()
        self._connections.add(connection)
        pumps = [
            asyncio.create_task(self._pump(client_reader, server_writer, connection, request=True)),
            asyncio.create_task(self._pump(server_reader, client_writer, connection, request=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            self._connections.discard(connection)
            self._tasks.difference_update(pumps)
            for writer in (client_writer, server_writer):
                writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        *,
        request: bool,
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    return
                if request:
                    connection.last_request = next(_CHUNKS)
                    connection.last_request_at = time.monotonic()
                # Read before the freeze, forwarded only after it: nothing crosses a frozen proxy.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if not request:
                    connection.last_answer = next(_CHUNKS)
                await writer.drain()

    async def _shutdown(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
