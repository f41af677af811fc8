"""The reconnecting websocket client shared by the exchange market-feed connectors.

A :class:`WebsocketFeed` connects, sends the exchange's subscribe messages, and
publishes every message exactly as received (the frame's bytes) to ``raw.<name>`` as a
``ws_message`` record.  Around that loop it keeps the connection honest:

- **reconnect** on any disconnect, handshake failure or silence, with exponential
  backoff and jitter (``initial * 2**attempt``, capped, then randomised between half and
  all of it, so a fleet of connectors does not reconnect in lock-step); the backoff
  resets once a connection proved healthy: it delivered market data, or it answered a
  websocket ping (a refused subscription's error, closed at once, does neither);
- **liveness**: websocket pings every ``ping_interval`` seconds, and a connection whose pong
  does not come within ``ping_timeout`` is closed as dead (the library also answers the
  server's pings with pongs, which Binance requires).  An application-level silence timeout
  (no message for ``heartbeat_timeout`` seconds: the feed is dead even if TCP is not) is only
  for feeds whose exchange sends heartbeat messages (Coinbase's ``heartbeat`` channel, every
  second per product).  Binance sends none: an illiquid symbol's stream can be quiet for
  minutes, and closing it for silence lost the trades made while it reconnected, so there
  it is off unless configured;
- **sequence gaps**: each exchange subclass reports the counters its messages carry
  (Coinbase trade ids and sequences per product, Binance trade/aggregate/depth ids per
  symbol) to a :class:`SequenceTracker`.  A gap is counted, published as a ``ws_gap``
  note right after the message that revealed it (so the raw topic says where data is
  missing), and handed to the subclass's :meth:`WebsocketFeed.resync` hook;
- **announced shutdowns**: a message the subclass reads as the exchange saying it will close
  the connection soon (Binance's ``serverShutdown``) closes it once the batch is published, and
  a new one is opened at once (no backoff when the connection had worked), rather than losing
  the trades made between the server's drop and the reconnect.

A live feed has no cursor to resume from: what the exchange sent while the connector
was away is gone, and the gap notes say so.  Publishing is synchronous
(:meth:`RawSink.publish` returns once Kafka has the batch); if the broker fails the
connector stops and ``run`` raises the :class:`~vigil.errors.BrokerError`, rather than
silently dropping market data.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from prometheus_client import Counter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.uri import parse_uri

from vigil.events.codec import inert
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source, connector_metrics
from vigil.sources.jsonrpc import UNPARSABLE_URL_HINT, redact_url

log = logging.getLogger(__name__)


def _failure(exc: BaseException) -> str:
    """What a failed connection says: its type, and for a socket's error or an answer that is no
    HTTP response (a server that is not the feed's) why, in their own words (the type alone,
    "InvalidMessage", said neither; found in review).  Not other exceptions' text: an invalid
    URI's names the URL, user-info and all."""
    said = ""
    if isinstance(exc, OSError) and exc.strerror:
        said = exc.strerror
    elif isinstance(exc, InvalidMessage):
        said = str(exc) + (f": {exc.__cause__}" if exc.__cause__ is not None else "")
    return f"{type(exc).__name__} ({inert(said)[:200]})" if said else type(exc).__name__


WS_MESSAGE = "ws_message"
WS_GAP = "ws_gap"
#: Key of messages about no product (subscription replies, errors): one key keeps them in order.
CONTROL_KEY = b"_control"


@functools.cache
def _counters() -> dict[str, Counter]:
    """Prometheus counters, created on first use (importing this module registers nothing), on
    the registry the commands that run connectors serve."""
    registry = connector_metrics()
    return {
        "messages": Counter(
            "vigil_ws_messages", "Websocket messages published", ["source"], registry=registry
        ),
        "reconnects": Counter(
            "vigil_ws_reconnects", "Websocket reconnect attempts", ["source"], registry=registry
        ),
        "gaps": Counter(
            "vigil_ws_sequence_gaps", "Sequence gaps detected in a feed", ["source"], registry=registry
        ),
        "resyncs": Counter(
            "vigil_ws_resyncs", "Resyncs requested after a gap", ["source"], registry=registry
        ),
    }


@dataclass(frozen=True)
class Gap:
    """Messages between ``expected`` and ``received`` (exclusive) never arrived for ``key``."""

    key: str
    expected: int
    received: int

    @property
    def missing(self) -> int:
        return self.received - self.expected

    def as_json(self) -> bytes:
        return json.dumps(
            {"key": self.key, "expected": self.expected, "received": self.received, "missing": self.missing},
            separators=(",", ":"),
        ).encode()


class SequenceTracker:
    """The last counter seen per key; reports gaps, ignores replays.

    ``check(key, first, last)`` records a message covering counters ``first..last``
    (equal for a single trade).  It is a gap when ``first`` is beyond ``last seen + 1``;
    a message at or below what was already seen (a re-sent ``last_match`` after a
    resubscribe, an overlapping depth update) is a replay, not a gap, and does not move
    the counter back.  ``previous`` is for feeds that name the counter they follow
    (Binance futures depth ``pu``): then it must equal the last one seen.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(
        self, key: str, first: int, last: int | None = None, *, previous: int | None = None
    ) -> Gap | None:
        end = first if last is None else last
        seen = self._last.get(key)
        if seen is None:
            self._last[key] = end
            return None
        if end <= seen:
            return None
        self._last[key] = end
        if previous is not None:
            return None if previous == seen else Gap(key, seen + 1, first)
        return Gap(key, seen + 1, first) if first > seen + 1 else None

    def last(self, key: str) -> int | None:
        return self._last.get(key)

    def reset(self, prefix: str = "") -> None:
        """Forget counters whose key starts with ``prefix`` (the next message is a new baseline)."""
        for key in [k for k in self._last if k.startswith(prefix)]:
            del self._last[key]


#: With no silence timeout (Binance's default), how long a connection may send nothing before
#: that is logged, once a spell: a mistyped or delisted stream is accepted and sends nothing while
#: its pings are answered, so nothing else would ever say so.
QUIET_WARNING_S = 300.0


@dataclass
class FeedStats:
    """What the feed did so far (plain numbers, read by tests and the CLI)."""

    connections: int = 0
    reconnects: int = 0
    messages: int = 0
    #: Market data messages (see ``Inspected.data``), not replies, errors or other control.
    data_messages: int = 0
    gaps: int = 0
    resyncs: int = 0
    heartbeat_timeouts: int = 0
    #: Connections replaced because the exchange announced it would close them.
    shutdowns_announced: int = 0
    #: Connections found quiet for ``quiet_warning_s`` with no silence timeout (see the feed).
    quiet_warnings: int = 0


class HeartbeatTimeout(Exception):
    """No message within the heartbeat timeout: treat the connection as dead."""


class ShutdownAnnounced(Exception):
    """The exchange said it is about to close the connection: replace it now."""


def shown_url(url: str) -> str:
    """``url`` as logs and records show it: ``scheme://host:port`` (see
    :func:`~vigil.sources.jsonrpc.redact_url`).  websockets sends a URL's user-info as HTTP
    basic auth, so ``wss://user:password@host`` is a working setup; a query (``?token=``) or a
    path (Binance user-data streams, ``/ws/<listenKey>``) can hold a secret too."""
    try:
        return redact_url(url)
    except httpx.InvalidURL:  # nothing of it is shown: the bad part may be the secret
        return "(an unparsable URL)"


def heartbeat_option(options: dict[str, str]) -> dict[str, float | None]:
    """The ``heartbeat_timeout`` connector option as keyword arguments: seconds, ``off`` (or
    ``0``, ``none``) for no silence timeout, or nothing when not given (the feed's default)."""
    value = options.get("heartbeat_timeout")
    if value is None:
        return {}
    if value.strip().lower() in ("off", "none", "0"):
        return {"heartbeat_timeout": None}
    return {"heartbeat_timeout": float(value)}


def _refusal(exc: InvalidStatus) -> str:
    """The HTTP status a handshake was refused with and the start of the body (Binance says
    451 "restricted location"; a proxy or a wrong key 401/403), quoted: the server's text."""
    response = exc.response
    body = bytes(response.body or b"")
    said = body[:200].decode("utf-8", "replace")
    more = f" ({len(body):,} bytes)" if len(body) > 200 else ""
    return f"HTTP {response.status_code} {response.reason_phrase[:60]!r}: {said!r}{more}"


@dataclass(frozen=True)
class Inspected:
    """What a subclass read from one message: its Kafka key, channel and any gaps it revealed."""

    key: bytes | None = None
    channel: str | None = None
    gaps: tuple[Gap, ...] = ()
    #: Market data (the connection works: the backoff starts again from the bottom).  None: a
    #: message with a key is data, one without is not (replies, errors).  A feed whose data
    #: carries no key (Binance's ``!ticker@arr``, every symbol in one message) says True.
    data: bool | None = None
    #: The exchange announced it will close this connection (Binance's ``serverShutdown``): a new
    #: one is opened at once.
    shutdown: bool = False


class _Receiver:
    """``recv`` with a timeout that never loses a message.

    ``asyncio.wait_for`` on Python 3.11 can drop a result that arrives as the timeout
    fires (the receive completed, then the task was cancelled).  Instead one receive is
    kept pending across calls and only waited on, never cancelled, until the session ends.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._pending: asyncio.Future[Any] | None = None

    async def __call__(self, timeout: float) -> bytes | None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._ws.recv(decode=False))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        task, self._pending = self._pending, None
        frame = task.result()  # raises ConnectionClosed when the connection died
        return frame if isinstance(frame, bytes) else bytes(frame)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


class WebsocketFeed(Source):
    """Base of the exchange feed connectors; subclasses speak the exchange's protocol.

    Subclasses implement :meth:`subscribe_messages` (texts sent after each connect) and
    :meth:`inspect` (key, channel and sequence gaps of one decoded message), and may
    override :meth:`resync`.

    ``heartbeat_timeout`` (seconds, or ``None``: none) closes a connection that sent no
    message for that long; leave it ``None`` for an exchange without heartbeat messages, whose
    quiet streams are healthy.  ``ping_interval``/``ping_timeout``: the websocket keepalive
    (``None``: none).  At least one of the two must be on, or a dead connection goes unnoticed.
    """

    def __init__(
        self,
        url: str,
        *,
        source_id: str | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        heartbeat_timeout: float | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        batch_max: int = 500,
        batch_linger: float = 0.02,
        max_message_bytes: int = 8 * 1024 * 1024,
        quiet_warning_s: float = QUIET_WARNING_S,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(source_id)
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            got = f"initial={backoff_initial}, max={backoff_max}"
            msg = f"{self.name}: backoff needs 0 < initial <= max; got {got}"
            raise ValueError(msg)
        if heartbeat_timeout is not None and not heartbeat_timeout > 0:
            msg = f"{self.name}: heartbeat_timeout must be > 0 seconds, or off; got {heartbeat_timeout}"
            raise ValueError(msg)
        if heartbeat_timeout is None and (ping_interval is None or ping_timeout is None):
            msg = (
                f"{self.name}: with no heartbeat_timeout, websocket pings (ping_interval and "
                "ping_timeout) are the only way to notice a dead connection; set one or the other"
            )
            raise ValueError(msg)
        try:
            parse_uri(url)
        except (InvalidURI, ValueError):
            # Checked here: raised at the first connect, websockets' ValueError (which quotes
            # the part it could not read, a password's start) stopped the connector.
            msg = f"{self.name}: the feed URL is not a valid ws:// or wss:// URL; {UNPARSABLE_URL_HINT}"
            raise ValueError(msg) from None
        self.url = url
        #: The URL as logs and records' meta show it: no credentials (see :func:`shown_url`).
        self.shown_url = shown_url(url)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.heartbeat_timeout = heartbeat_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.batch_max = batch_max
        self.batch_linger = batch_linger
        self.max_message_bytes = max_message_bytes
        self.quiet_warning_s = quiet_warning_s
        self.tracker = SequenceTracker()
        self.stats = FeedStats()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        #: Whether the last connection answered a websocket ping (see :meth:`_session`).
        self._pong_seen = False

    # ------------------------------------------------------------------ protocol hooks

    @abstractmethod
    def subscribe_messages(self) -> list[str]:
        """JSON texts to send after every (re)connect, in order."""

    @abstractmethod
    def inspect(self, message: Any) -> Inspected:
        """Key, channel and sequence gaps of one decoded message (``message`` is any JSON value)."""

    async def resync(self, ws: ClientConnection, gaps: Sequence[Gap]) -> bool:
        """Called after a batch revealed ``gaps``; whether it resynchronised (counted as a
        resync).  The default only re-baselines (the tracker already accepted the new counter).
        Coinbase re-subscribes the affected products' book channels (which send a snapshot), at
        most so often."""
        return True

    # ------------------------------------------------------------------ loop

    def run(self, sink: RawSink) -> None:
        asyncio.run(self._run(sink))

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (0-based): capped exponential with jitter in [d/2, d]."""
        delay: float = min(self.backoff_max, self.backoff_initial * float(2 ** min(attempt, 30)))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _run(self, sink: RawSink) -> None:
        attempt = 0
        while self.running:
            delivered_before = self.stats.data_messages
            self._pong_seen = False
            announced = False
            try:
                await self._session(sink)
            except ShutdownAnnounced:
                announced = True
                self.stats.shutdowns_announced += 1
                log.warning(
                    "%s: %s announced it is closing the connection; reconnecting at once",
                    self.name,
                    self.shown_url,
                )
            except HeartbeatTimeout:
                self.stats.heartbeat_timeouts += 1
                log.warning(
                    "%s: no message for %.1fs from %s (websocket pings %s); reconnecting",
                    self.name,
                    self.heartbeat_timeout,
                    self.shown_url,
                    "answered" if self._pong_seen else "unanswered or none sent yet",
                )
            except InvalidStatus as exc:
                log.warning("%s: %s refused the connection: %s", self.name, self.shown_url, _refusal(exc))
            except ConnectionClosed as exc:
                # The close code and reason ("keepalive ping timeout": no pong came), quoted: the
                # reason can be the server's text.
                said = str(exc)[:200]
                log.warning(
                    "%s: connection to %s dropped: %s: %r",
                    self.name,
                    self.shown_url,
                    type(exc).__name__,
                    said,
                )
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
                log.warning(
                    "%s: connection to %s failed or dropped: %s",
                    self.name,
                    self.shown_url,
                    _failure(exc),
                )
            if not self.running:
                break
            worked = self.stats.data_messages > delivered_before or self._pong_seen
            if worked:
                # The last connection worked: it delivered market data, or it answered a
                # websocket ping (a quiet stream, even one closed for silence, is no reason to wait
                # longer and longer: trades made during the wait are lost).  The backoff starts
                # again from the bottom.  (Any message reset it, an exchange's "subscription
                # refused" error too: a mistyped product reconnected every 0.3 s for ever.)
                attempt = 0
            self.stats.reconnects += 1
            _counters()["reconnects"].labels(self.name).inc()
            if announced and worked:
                # Asked to move by a connection that worked: no wait, every second of it is trades
                # lost.  (One that never worked backs off as after any failure: an exchange that
                # announced a shutdown at every connect would be reconnected to in a tight loop.)
                continue
            delay = self.backoff_delay(attempt)
            attempt += 1
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.running and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    async def _session(self, sink: RawSink) -> None:
        async with connect(
            self.url,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_size=self.max_message_bytes,
            # A feed that is going away need not wait long for a polite close handshake.
            close_timeout=2.0,
            proxy=None,
        ) as ws:
            self.stats.connections += 1
            for text in self.subscribe_messages():
                await ws.send(text)
            recv = _Receiver(ws)
            try:
                await self._receive(ws, recv, sink)
            except ShutdownAnnounced:
                # Leaving as asked is a normal closure (1000), not the internal error (1011) the
                # library closes with when an exception leaves the block.
                await ws.close()
                raise
            finally:
                recv.close()
                # The library measures latency on each pong that answers a ping: 0.0 until one
                # came on this connection.
                self._pong_seen = ws.latency > 0

    async def _receive(self, ws: ClientConnection, recv: _Receiver, sink: RawSink) -> None:
        last_message = time.monotonic()
        #: Whether this quiet spell was logged (see QUIET_WARNING_S).
        warned = False
        while self.running:
            first = await recv(0.1)
            if first is None:
                quiet = time.monotonic() - last_message
                silence = self.heartbeat_timeout
                if silence is not None and quiet > silence:
                    raise HeartbeatTimeout
                if silence is None and not warned and quiet > self.quiet_warning_s:
                    warned = True
                    self.stats.quiet_warnings += 1
                    log.warning(
                        "%s: no message for %.0fs from %s, the connection up (no silence timeout "
                        "is set, so it is kept): a mistyped or delisted stream sends nothing; "
                        "check the streams asked for",
                        self.name,
                        quiet,
                        self.shown_url,
                    )
                continue
            if warned:
                warned = False
                log.warning("%s: messages again from %s", self.name, self.shown_url)
            frames = [first]
            linger_until = time.monotonic() + self.batch_linger
            try:
                while len(frames) < self.batch_max and (left := linger_until - time.monotonic()) > 0:
                    more = await recv(left)
                    if more is None:
                        break
                    frames.append(more)
            except WebSocketException:
                # The connection died mid-batch: what did arrive is still published.
                await self._publish(ws, sink, frames, resync=False)
                raise
            last_message = time.monotonic()
            if await self._publish(ws, sink, frames):
                raise ShutdownAnnounced

    async def _publish(
        self, ws: ClientConnection, sink: RawSink, frames: list[bytes], *, resync: bool = True
    ) -> bool:
        """Publishes ``frames`` (and a note per gap), then resyncs if asked; whether one of them
        announced that the exchange is closing the connection."""
        now = datetime.now(UTC)
        records: list[RawRecord] = []
        gaps: list[Gap] = []
        data_messages = 0
        shutdown = False
        for frame in frames:
            try:
                found = self.inspect(msgspec.json.decode(frame))
            except (msgspec.DecodeError, TypeError, ValueError, KeyError, RecursionError):
                # Published anyway, unchanged: the normaliser dead-letters it with the reason.
                # (A frame nested a few thousand deep raises RecursionError: uncaught, it stopped
                # the connector and lost the frames before it in the batch.)
                found = Inspected()
            data_messages += found.data if found.data is not None else bool(found.key)
            shutdown = shutdown or found.shutdown
            meta: dict[str, Any] = {"url": self.shown_url, "conn": self.stats.connections}
            if found.channel:
                meta["channel"] = found.channel
            records.append(
                RawRecord(
                    self.name, WS_MESSAGE, frame, received_at=now, key=found.key or CONTROL_KEY, meta=meta
                )
            )
            for gap in found.gaps:
                gaps.append(gap)
                log.warning(
                    "%s: sequence gap on %r: expected %d, received %d",
                    self.name,
                    gap.key,
                    gap.expected,
                    gap.received,
                )
                records.append(
                    RawRecord(
                        self.name,
                        WS_GAP,
                        gap.as_json(),
                        received_at=now,
                        key=found.key or CONTROL_KEY,
                        meta={"url": self.shown_url, "conn": self.stats.connections},
                    )
                )
        await asyncio.to_thread(sink.publish, records)
        counters = _counters()
        self.stats.messages += len(frames)
        self.stats.data_messages += data_messages
        counters["messages"].labels(self.name).inc(len(frames))
        if gaps:
            self.stats.gaps += len(gaps)
            counters["gaps"].labels(self.name).inc(len(gaps))
            # A dead connection cannot resync; the next one starts from new baselines.
            if resync and await self.resync(ws, gaps):
                self.stats.resyncs += 1
                counters["resyncs"].labels(self.name).inc()
        return shutdown


def str_list(value: str | Sequence[str]) -> list[str]:
    """A comma-separated option (``"BTC-USD,ETH-USD"``) or a list, as a list of non-empty items."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]
