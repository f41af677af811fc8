"""A local websocket server that replays a recorded exchange session (``/work/shared/data/feeds``).

Recording format (cryptofeed's ``sample_data``): the first line is ``URL <-> ts``;
``URL <- ts: {json}`` lines are what the client sent (its subscriptions); ``ts: {json}``
lines are what the exchange sent.  The server waits for the client's first message when
the recording has client messages (as the exchange waits for a subscription), then sends
the exchange's messages as text frames, byte for byte, either at the recorded pace
divided by ``speed`` or, with ``speed=None``, as fast as the client reads.

Faults for tests: ``drop_after`` closes the TCP connection abruptly after sending the
message at those indexes (the next connection resumes with the next message, as a
live exchange stream goes on); ``skip`` never sends the messages at those indexes (a
sequence gap); ``stall_after`` stops sending after those indexes but keeps the
connection open (a silent feed); ``ping_every`` sends a websocket ping after every N messages and waits
for the client's pong (Binance drops clients that do not answer).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from vigil.config import shared_data_dir

FEEDS = shared_data_dir() / "feeds"


@dataclass(frozen=True)
class Recording:
    url: str
    #: Texts the recorded client sent.
    sent: list[str]
    #: (receive time, frame bytes) of every message the exchange sent, in order.
    messages: list[tuple[float, bytes]]


def load_recording(path: Path) -> Recording:
    lines = path.read_bytes().split(b"\n")
    url = lines[0].split(b" <-> ")[0].decode()
    sent: list[str] = []
    messages: list[tuple[float, bytes]] = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        if b" <- " in line:
            sent.append(line.split(b": ", 1)[1].decode())
            continue
        stamp, sep, frame = line.partition(b": ")
        if not sep:
            raise ValueError(f"{path}:{number}: expected 'ts: {{json}}', got {line[:60]!r}")
        messages.append((float(stamp), frame))
    return Recording(url=url, sent=sent, messages=messages)


@dataclass
class ServerStats:
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    client_messages: list[str] = field(default_factory=list)
    sent: int = 0
    pongs: int = 0
    dropped: list[int] = field(default_factory=list)
    stalled: list[int] = field(default_factory=list)


class ReplayServer:
    """Runs in its own thread and event loop on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(
        self,
        recording: Recording,
        *,
        speed: float | None = None,
        drop_after: Collection[int] = (),
        skip: Collection[int] = (),
        ping_every: int | None = None,
        stall_after: Collection[int] = (),
    ) -> None:
        self.recording = recording
        self.speed = speed
        self.drop_after = set(drop_after)
        self.skip = set(skip)
        self.ping_every = ping_every
        self.stall_after = set(stall_after)
        self.stats = ServerStats()
        self.position = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="replay-ws", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"replay server did not start within 10s: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by __enter__ when start-up failed
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stopping.wait()

    async def _read_client(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                self.stats.client_messages.append(message if isinstance(message, str) else message.decode())
        except ConnectionClosed:
            return

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self.stats.paths.append(ws.request.path if ws.request else "")
        if self.recording.sent:
            first = await ws.recv()
            self.stats.client_messages.append(first if isinstance(first, str) else first.decode())
        reader = asyncio.create_task(self._read_client(ws))
        try:
            await self._replay(ws)
        finally:
            reader.cancel()

    async def _replay(self, ws: ServerConnection) -> None:
        messages = self.recording.messages
        loop = asyncio.get_running_loop()
        origin: tuple[float, float] | None = None  # (recorded time, loop time) this connection started at
        while self.position < len(messages):
            index = self.position
            stamp, frame = messages[index]
            if self.speed is not None:
                # Keep to an absolute schedule: sleeping per gap would add the loop's overhead to
                # every one of thousands of sub-millisecond gaps and drift far behind the recording.
                origin = origin or (stamp, loop.time())
                delay = origin[1] + (stamp - origin[0]) / self.speed - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
            self.position += 1
            if index in self.skip:
                continue
            await ws.send(frame.decode())
            self.stats.sent += 1
            if self.ping_every and self.stats.sent % self.ping_every == 0:
                pong = await ws.ping()
                # Generous: the client reads pings between its publishes, which a starved
                # machine can make slow; answered is what the tests check, not how fast.
                await asyncio.wait_for(pong, 30)
                self.stats.pongs += 1
            if index in self.stall_after:
                self.stall_after.discard(index)
                self.stats.stalled.append(index)
                await ws.wait_closed()  # silent but open: only a heartbeat timeout notices
                return
            if index in self.drop_after:
                self.drop_after.discard(index)
                self.stats.dropped.append(index)
                transport: Any = ws.transport
                # Let what was sent reach the socket first (abort discards asyncio's buffer), then
                # close without a close frame: the client sees the connection die mid-stream.
                while transport.get_write_buffer_size():
                    await asyncio.sleep(0.005)
                transport.abort()
                return
        await ws.wait_closed()
