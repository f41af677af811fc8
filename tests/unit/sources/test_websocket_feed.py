"""The websocket feed loop against a local server that misbehaves as exchanges can."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from vigil.cli._common import serve_metrics_of
from vigil.config import Settings, load_settings
from vigil.sources.binance import BinanceNormalizer, BinanceSource
from vigil.sources.coinbase import CoinbaseSource
from vigil.sources.sink import MemorySink
from vigil.sources.websocket import CONTROL_KEY, WS_MESSAGE, WebsocketFeed, shown_url

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextmanager
def server(handler: Handler, **options: Any) -> Iterator[str]:
    """A websocket server on a free loopback port, in its own thread, for the block's duration
    (``options``: more arguments to ``serve``)."""
    ready, stop = threading.Event(), threading.Event()
    url: list[str] = []

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, **options) as srv:
            url.append(f"ws://127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield url[0]
    finally:
        stop.set()
        thread.join(10)


def running(feed: WebsocketFeed, sink: MemorySink) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            feed.run(sink)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # poll interval; the condition is what synchronises


def backoff_attempts(feed: WebsocketFeed, reconnects: int) -> tuple[list[int], MemorySink]:
    """Run ``feed`` until it has reconnected ``reconnects`` times; the backoff attempt numbers it
    asked delays for (the delays themselves short, so the test is quick) and what it published."""
    attempts: list[int] = []

    def spy(attempt: int) -> float:
        attempts.append(attempt)
        return 0.01

    feed.backoff_delay = spy  # type: ignore[method-assign]
    sink = MemorySink()
    thread, errors = running(feed, sink)
    wait_for(lambda: len(attempts) >= reconnects, f"{reconnects} reconnects")
    feed.stop()
    thread.join(10)
    assert errors == []
    return attempts, sink


def test_a_frame_nested_thousands_deep_is_published_not_fatal() -> None:
    # msgspec raises RecursionError on it: uncaught, it stopped the connector and lost the
    # trades already in the same batch.
    def trade(i: int) -> str:
        data = {"e": "trade", "s": "BTCUSDT", "t": i, "p": "1", "q": "1", "T": 1, "m": True}
        return json.dumps({"stream": "btcusdt@trade", "data": data})

    async def handler(ws: ServerConnection) -> None:
        for i in range(3):
            await ws.send(trade(i))
        await ws.send('{"stream":"btcusdt@trade","data":' + "[" * 5000 + "]" * 5000 + "}")
        await ws.send(trade(3))
        await ws.wait_closed()

    with server(handler) as url:
        feed = BinanceSource(["btcusdt@trade"], base_url=url, batch_linger=0.2)
        sink = MemorySink()
        thread, errors = running(feed, sink)
        wait_for(lambda: len(sink.records) >= 5 or bool(errors), "the five frames")
        feed.stop()
        thread.join(10)
    assert errors == []
    assert len(sink.records) == 5
    assert sink.records[3].value.startswith(b'{"stream":"btcusdt@trade","data":[[[')


def test_a_refused_subscription_backs_off_instead_of_reconnecting_at_once() -> None:
    # Coinbase answers a mistyped product with an error and closes.  That error counted as a
    # working connection, so the backoff started from the bottom each time: every 0.3 s, for ever.
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe
        await ws.send(
            json.dumps(
                {
                    "type": "error",
                    "message": "Failed to subscribe",
                    "reason": "BTC-USDX is not a valid product",
                }
            )
        )
        await ws.close()

    with server(handler) as url:
        feed = CoinbaseSource(["BTC-USDX"], url=url, channels=["matches"])
        attempts, _sink = backoff_attempts(feed, 4)
    assert attempts[:4] == [0, 1, 2, 3]
    assert feed.stats.data_messages == 0


def match(trade_id: int, kind: str = "match") -> str:
    """A Coinbase BTC-USD trade."""
    return json.dumps(
        {
            "type": kind, "trade_id": trade_id, "maker_order_id": "m", "taker_order_id": "t",
            "side": "buy", "size": "1", "price": "1", "product_id": "BTC-USD", "sequence": trade_id,
            "time": "2026-01-01T00:00:00Z",
        }
    )  # fmt: skip


def test_a_resync_held_back_is_not_counted_as_one() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe
        await ws.send(match(100))
        await ws.send(match(102))  # a gap: re-subscribed
        await ws.recv()  # the unsubscribe
        await ws.recv()  # the subscribe again
        await ws.send(match(105))  # another gap within the spacing: noted, not re-subscribed
        await ws.wait_closed()

    def served() -> tuple[float, float]:
        """The feed's gaps and resyncs as `vigil source --metrics-port` serves them."""
        metrics = serve_metrics_of(load_settings(), 0, lambda: (), connectors=True)
        assert metrics is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as response:
                lines = response.read().decode().splitlines()
        finally:
            metrics.stop()

        def value(family: str) -> float:
            found = [line.split()[-1] for line in lines if line.startswith(f'{family}{{source="coinbase"}} ')]
            return float(found[0]) if found else 0.0

        return value("vigil_ws_sequence_gaps_total"), value("vigil_ws_resyncs_total")

    before = served()  # (the counters are the process's: other tests' feeds count too)
    with server(handler) as url:
        feed = CoinbaseSource(["BTC-USD"], url=url, channels=["matches", "level2"], batch_linger=0.0)
        sink = MemorySink()
        thread, errors = running(feed, sink)
        wait_for(lambda: feed.stats.gaps >= 2 or bool(errors), "the two gaps")
        feed.stop()
        thread.join(10)
    assert errors == []
    assert (feed.stats.gaps, feed.stats.resyncs) == (2, 1)
    # Served: on prometheus-client's global registry, which no command serves, they were not.
    after = served()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


def test_trades_missed_while_away_are_a_gap_but_no_resubscribe_of_the_new_connection() -> None:
    # Counters survive a reconnect, so the new connection's last_match shows the trades missed
    # while away.  That gap unsubscribed and subscribed again at once: nothing recovered (the
    # connection had just subscribed, its book snapshot on its way), and trades lost between the two.
    sent: list[list[str]] = []

    async def handler(ws: ServerConnection) -> None:
        texts: list[str] = []
        sent.append(texts)
        texts.append(json.loads(await ws.recv())["type"])  # the subscribe
        if len(sent) == 1:
            await ws.send(match(100, "last_match"))
            await ws.send(match(101))
            await ws.close()  # dropped; trades 102-109 go by meanwhile
            return
        await ws.send(match(110, "last_match"))
        await ws.send(match(111))
        async for text in ws:
            texts.append(json.loads(text)["type"])

    with server(handler) as url:
        feed = CoinbaseSource(["BTC-USD"], url=url, channels=["matches", "level2"], batch_linger=0.0)
        feed.backoff_delay = lambda attempt: 0.01  # type: ignore[method-assign]
        sink = MemorySink()
        thread, errors = running(feed, sink)
        wait_for(lambda: b'"trade_id": 111' in sink.records[-1].value if sink.records else False, "trade 111")
        feed.stop()
        thread.join(10)
    # (The server read everything the feed sent before its close, the server stopped since.)
    assert errors == []
    assert sent == [["subscribe"], ["subscribe"]]
    assert (feed.stats.connections, feed.stats.gaps, feed.stats.resyncs) == (2, 1, 0)
    [note] = [r for r in sink.records if r.kind == "ws_gap"]
    assert (json.loads(note.value), note.meta["conn"]) == (
        {"key": "BTC-USD:trade_id", "expected": 102, "received": 110, "missing": 8},
        2,
    )


def test_a_keyless_array_stream_is_data_and_restarts_the_backoff() -> None:
    # Binance's !ticker@arr carries every symbol's ticker in one message, so no key: it never
    # counted as market data, and a feed of it backed off ever longer after each reconnect
    # (30 s after a handful of routine disconnects) however well each connection had worked.
    ticker = {"e": "24hrTicker", "s": "BTCUSDT", "c": "1", "E": 1}

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"stream": "!ticker@arr", "data": [ticker, ticker | {"s": "ETHUSDT"}]}))
        await ws.close()

    with server(handler) as url:
        feed = BinanceSource(["!ticker@arr"], base_url=url, batch_linger=0.01)
        attempts, sink = backoff_attempts(feed, 4)
    assert attempts[:4] == [0, 0, 0, 0]  # each connection delivered data: from the bottom again
    assert feed.stats.data_messages >= 4
    # The normaliser reads such a message as market data that is no trade, not as a bad one.
    assert BinanceNormalizer().normalize(sink.records[0]) == []


def test_market_data_without_a_symbol_counts_and_replies_do_not() -> None:
    # Spot partial depth names no symbol (the stream does); a reply or an error has no stream.
    feed = BinanceSource(["btcusdt@depth5"], base_url="ws://h")
    depth = {"lastUpdateId": 1, "bids": [], "asks": []}
    assert feed.inspect({"stream": "btcusdt@depth5", "data": depth}).data
    assert feed.inspect({"stream": "!forceOrder@arr", "data": {"e": "forceOrder", "o": {"s": "X"}}}).data
    assert not feed.inspect({"result": None, "id": 1}).data
    assert not feed.inspect({"code": 2, "msg": "Invalid request"}).data


# ---------------------------------------------------------------------------- liveness


class Pongs:
    """The pongs a server connection sends, that is the client's pings it answered: counted, or
    (``answer=False``) withheld, as a dead peer behind a live TCP connection would."""

    def __init__(self, ws: ServerConnection, *, answer: bool = True) -> None:
        self.count = 0
        self.answer = answer
        self._changed = asyncio.Event()
        self._send = ws.protocol.send_frame
        ws.protocol.send_frame = self._frame  # type: ignore[method-assign]

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG:
            if not self.answer:
                return
            self.count += 1
            self._changed.set()
        self._send(frame)

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


def agg_trade(agg: int) -> str:
    data = {"e": "aggTrade", "E": 1, "s": "BLZETH", "a": agg, "p": "0.0001", "q": "10", "T": 1, "m": False}
    return json.dumps({"stream": "blzeth@aggTrade", "data": data})


def until_the_trade_after_the_quiet_spell(feed: WebsocketFeed) -> MemorySink:
    """Run ``feed`` until it has published something, then stop it; what it published (a
    failure of the feed fails the test)."""
    sink = MemorySink()
    thread, errors = running(feed, sink)
    wait_for(lambda: bool(sink.records) or bool(errors), "the trade after the quiet spell")
    feed.stop()
    thread.join(10)
    assert errors == []
    return sink


def test_a_quiet_binance_stream_is_kept_while_it_answers_pings(caplog: pytest.LogCaptureFixture) -> None:
    # An illiquid symbol's stream carries no trade for minutes (the recorded spot session has
    # streams with none in 30 s).  Binance sends no heartbeat, so the 30 s silence timeout
    # closed such a healthy stream every 30 s, and the trades made while it reconnected were lost.
    async def handler(ws: ServerConnection) -> None:
        await Pongs(ws).wait(25)  # quiet while 25 of the client's pings are answered
        await ws.send(agg_trade(1000))
        await ws.wait_closed()

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler) as url:
        feed = BinanceSource(["blzeth@aggTrade"], base_url=url, ping_interval=0.02)
        assert feed.heartbeat_timeout is None  # no silence timeout: the pings tell a dead connection
        sink = until_the_trade_after_the_quiet_spell(feed)
    assert [json.loads(r.value)["data"]["a"] for r in sink.records if r.kind == WS_MESSAGE] == [1000]
    assert (feed.stats.connections, feed.stats.reconnects, feed.stats.heartbeat_timeouts) == (1, 0, 0)
    assert caplog.records == []


def test_a_stream_quiet_past_the_warning_is_logged_once_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    # With no silence timeout, a mistyped or delisted stream (accepted, it sends nothing while its
    # pings are answered) sat silent for ever, where the old 30 s timeout at least logged each
    # reconnect: now said once a spell, and the connection kept.
    async def handler(ws: ServerConnection) -> None:
        await Pongs(ws).wait(40)  # quiet past the warning while 40 of the client's pings are answered
        await ws.send(agg_trade(1000))
        await ws.wait_closed()

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler) as url:
        feed = BinanceSource(["blzethx@aggTrade"], base_url=url, ping_interval=0.02, quiet_warning_s=0.3)
        until_the_trade_after_the_quiet_spell(feed)
    assert (feed.stats.connections, feed.stats.reconnects, feed.stats.quiet_warnings) == (1, 0, 1)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("binance: no message for ")
    assert "check the streams asked for" in said[0]
    assert said[1] == f"binance: messages again from {url}"


def test_a_binance_connection_whose_pings_go_unanswered_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a silence timeout the websocket pings are what notices a dead connection.
    async def handler(ws: ServerConnection) -> None:
        Pongs(ws, answer=False)
        await ws.wait_closed()

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler) as url:
        feed = BinanceSource(["blzeth@aggTrade"], base_url=url, ping_interval=0.05, ping_timeout=0.2)
        attempts, _sink = backoff_attempts(feed, 2)
    assert attempts[:2] == [0, 1]  # nothing showed it worked: backing off
    assert feed.stats.heartbeat_timeouts == 0
    assert "keepalive ping timeout" in caplog.records[0].getMessage()


def test_a_feed_closed_for_silence_backs_off_only_if_its_pings_went_unanswered() -> None:
    # Coinbase's heartbeat channel sends every second, so silence there is a dead feed.  But a
    # connection whose pings were answered was no failure to back off from: such reconnects grew
    # to the 30 s cap, and trades during the wait were lost.
    def silent(answer: bool) -> Handler:
        async def handler(ws: ServerConnection) -> None:
            await ws.recv()  # the subscribe
            Pongs(ws, answer=answer)
            await ws.wait_closed()

        return handler

    # (Unanswered: a ping sent at 0.3 s gets no pong before the silence timeout at 0.5 s.)
    for answer, ping_interval, expected in ((True, 0.02, [0, 0, 0]), (False, 0.3, [0, 1, 2])):
        with server(silent(answer)) as url:
            feed = CoinbaseSource(["BTC-USD"], url=url, heartbeat_timeout=0.5, ping_interval=ping_interval)
            attempts, _sink = backoff_attempts(feed, 3)
        assert attempts[:3] == expected, f"pings answered: {answer}"
        assert feed.stats.heartbeat_timeouts >= 3


def test_a_connection_that_answered_pings_restarts_the_backoff_when_dropped() -> None:
    # No trade on it (a quiet stream), then the exchange closed it (Binance does every 24 h):
    # it was healthy, so the reconnect is not delayed as after a failure.
    async def handler(ws: ServerConnection) -> None:
        await Pongs(ws).wait(3)
        await ws.close()

    with server(handler) as url:
        feed = BinanceSource(["blzeth@aggTrade"], base_url=url, ping_interval=0.02)
        attempts, _sink = backoff_attempts(feed, 3)
    assert attempts[:3] == [0, 0, 0]
    assert feed.stats.data_messages == 0


def test_the_silence_timeout_is_for_feeds_that_send_heartbeats() -> None:
    settings = Settings()
    assert BinanceSource.from_settings(settings, streams="a@trade").heartbeat_timeout is None
    busy = BinanceSource.from_settings(settings, streams="a@trade", heartbeat_timeout="5")
    assert busy.heartbeat_timeout == 5.0
    assert CoinbaseSource.from_settings(settings, products="BTC-USD").heartbeat_timeout == 30.0
    assert (
        CoinbaseSource.from_settings(settings, products="BTC-USD", channels="matches").heartbeat_timeout
        is None
    )
    off = CoinbaseSource.from_settings(settings, products="BTC-USD", heartbeat_timeout="off")
    assert off.heartbeat_timeout is None
    # Neither a silence timeout nor pings: a dead connection would go unnoticed for ever.
    with pytest.raises(ValueError, match="dead connection"):
        BinanceSource(["a@trade"], base_url="ws://h", ping_interval=None)
    with pytest.raises(ValueError, match="heartbeat_timeout must be > 0"):
        BinanceSource(["a@trade"], base_url="ws://h", heartbeat_timeout=-1.0)


# ---------------------------------------------------------------------------- what is logged


def test_feed_url_credentials_reach_the_server_but_no_log_or_record(caplog: pytest.LogCaptureFixture) -> None:
    # websockets sends a URL's user-info as HTTP basic auth: a working setup, whose password
    # (and a ?token= query) was in every warning and in every record's meta (a Kafka header).
    seen: list[tuple[str | None, str]] = []

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append((request.headers.get("Authorization"), request.path))

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe
        await ws.send(json.dumps({"type": "heartbeat", "product_id": "BTC-USD", "sequence": 1}))
        await ws.close()  # a drop: warned about, naming the URL

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler, process_request=record) as url:
        port = url.rsplit(":", 1)[1]
        secret_url = f"ws://feeduser:S3cretPassw0rd@127.0.0.1:{port}/?token=T0kenValue"
        feed = CoinbaseSource(["BTC-USD"], url=secret_url, channels=["heartbeat"])
        attempts, sink = backoff_attempts(feed, 1)
    assert attempts
    basic = base64.b64encode(b"feeduser:S3cretPassw0rd").decode()
    assert seen[0] == (f"Basic {basic}", "/?token=T0kenValue")  # the credentials still work
    assert sink.records
    assert {r.meta["url"] for r in sink.records} == {f"ws://127.0.0.1:{port}"}
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"ws://127.0.0.1:{port}" in line for line in logged), logged
    for text in [*logged, *(json.dumps(r.meta) for r in sink.records)]:
        assert "S3cretPassw0rd" not in text
        assert "T0kenValue" not in text
        assert "feeduser" not in text


def test_an_unparsable_feed_url_is_shown_as_such_not_quoted() -> None:
    # The part httpx cannot parse may be the secret (a control character in a password), so
    # nothing of such a URL is shown; a parsable one keeps scheme, host and port only.
    assert shown_url("wss://feeduser:S3cret\x01@stream.example/ws/listenKey1") == "(an unparsable URL)"
    assert shown_url("wss://feeduser:S3cret@stream.example:94a3/ws") == "(an unparsable URL)"
    assert shown_url("wss://u:S3cret@stream.example:9443/ws/listenKey1?x=1") == "wss://stream.example:9443"


def test_a_feed_url_websockets_cannot_read_is_refused_at_build_without_quoting_it() -> None:
    # A "/" in a password: websockets' ValueError at the first connect ("Port could not be cast
    # to integer value as '<the password's start>'") stopped the connector, the key in its text.
    with pytest.raises(ValueError, match="binance: the feed URL is not a valid ws:// or wss:// URL") as bad:
        BinanceSource(["btcusdt@trade"], base_url="wss://user:Zm9vYmFy/c2VjcmV0@stream.example.com:9443")
    assert "Zm9vYmFy" not in str(bad.value)
    assert "%2F for /" in str(bad.value)
    with pytest.raises(ValueError, match="coinbase: the feed URL is not a valid") as scheme:
        CoinbaseSource(["BTC-USD"], url="https://user:S3cret@ws-feed.example.com")
    assert "S3cret" not in str(scheme.value)


def test_a_refused_handshake_is_logged_with_its_status_and_body(caplog: pytest.LogCaptureFixture) -> None:
    # Binance answers 451 from a restricted location; a proxy or a wrong key 401/403.  Logged as
    # "InvalidStatus" alone, the connector retried for ever with nothing saying why.  The body is
    # the server's text: quoted, its control characters escaped (no forged lines, no ESC).
    def refuse(connection: ServerConnection, request: Request) -> Response:
        body = "Service unavailable from a restricted location\nLOG forged line\x1b[2J"
        return connection.respond(HTTPStatus.UNAVAILABLE_FOR_LEGAL_REASONS, body)

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler, process_request=refuse) as url:
        feed = BinanceSource(["btcusdt@trade"], base_url=url)
        attempts, _sink = backoff_attempts(feed, 2)
    assert attempts[:2] == [0, 1]
    line = caplog.records[0].getMessage()
    assert "HTTP 451" in line
    assert "restricted location\\nLOG forged line\\x1b[2J" in line
    assert "\n" not in line
    assert "\x1b" not in line


# ---------------------------------------------------------------------------- announced shutdowns

SERVER_SHUTDOWN = json.dumps({"e": "serverShutdown", "E": 1770123456789})


def test_a_binance_server_shutdown_is_answered_with_a_new_connection_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Binance announces a server's shutdown before it drops the connection, and asks for a new one
    # at once.  The announcement was dead-lettered and the connection kept until the drop: the
    # trades made while it then reconnected (after a backoff) were lost.
    served: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        served.append(ws)
        if len(served) == 1:
            await ws.send(agg_trade(1000))
            await ws.send(SERVER_SHUTDOWN)  # and the server keeps it open, for minutes
        else:
            await ws.send(agg_trade(1001))
        await ws.wait_closed()

    delays: list[int] = []

    def spy(attempt: int) -> float:
        delays.append(attempt)
        return 0.01

    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    with server(handler) as url:
        feed = BinanceSource(["blzeth@aggTrade"], base_url=url, batch_linger=0.0)
        feed.backoff_delay = spy  # type: ignore[method-assign]
        sink = MemorySink()
        thread, errors = running(feed, sink)
        wait_for(lambda: len(sink.records) >= 3 or bool(errors), "the trade on the new connection")
        feed.stop()
        thread.join(10)
    assert errors == []
    assert [(r.meta["conn"], r.value) for r in sink.records] == [
        (1, agg_trade(1000).encode()),
        (1, SERVER_SHUTDOWN.encode()),  # kept on the raw topic, as control
        (2, agg_trade(1001).encode()),
    ]
    assert sink.records[1].key == CONTROL_KEY
    assert (feed.stats.connections, feed.stats.reconnects, feed.stats.shutdowns_announced) == (2, 1, 1)
    assert delays == []  # no backoff: at once
    assert served[0].close_code == 1000  # the feed closed the old connection itself
    assert [r.getMessage() for r in caplog.records] == [
        f"binance: {url} announced it is closing the connection; reconnecting at once"
    ]


def test_a_shutdown_announced_by_connections_that_never_worked_backs_off() -> None:
    # Reconnecting at once is for a connection that worked: announced at every connect, before any
    # data, it would otherwise reconnect in a tight loop.
    async def handler(ws: ServerConnection) -> None:
        await ws.send(SERVER_SHUTDOWN)
        await ws.wait_closed()

    with server(handler) as url:
        feed = BinanceSource(["blzeth@aggTrade"], base_url=url)
        attempts, _sink = backoff_attempts(feed, 3)
    assert attempts[:3] == [0, 1, 2]
    assert feed.stats.shutdowns_announced >= 3


def test_a_server_that_is_not_the_feed_is_logged_with_why(caplog: pytest.LogCaptureFixture) -> None:
    # Logged as "InvalidMessage" alone, nothing said the server answered something else than
    # HTTP (found in review).  Its words are the server's: quoted inert.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):  # (closed: the test is over)
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x1b[2J\r\n\r\n")

    taking = threading.Thread(target=answer, daemon=True)
    taking.start()
    caplog.set_level(logging.WARNING, logger="vigil.sources.websocket")
    try:
        feed = BinanceSource(["btcusdt@trade"], base_url=f"ws://127.0.0.1:{port}")
        backoff_attempts(feed, 2)
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        taking.join(10)
    line = caplog.records[0].getMessage()
    assert "failed or dropped: InvalidMessage (did not receive a valid HTTP response" in line
    assert "\x1b" not in line
