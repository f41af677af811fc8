"""The websocket feed loop against a local server that misbehaves as exchanges can."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from websockets.asyncio.server import ServerConnection, serve

from vigil.sources.binance import BinanceNormalizer, BinanceSource
from vigil.sources.coinbase import CoinbaseSource
from vigil.sources.sink import MemorySink
from vigil.sources.websocket import WebsocketFeed

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextmanager
def server(handler: Handler) -> Iterator[str]:
    """A websocket server on a free loopback port, in its own thread, for the block's duration."""
    ready, stop = threading.Event(), threading.Event()
    url: list[str] = []

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
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


def test_a_resync_held_back_is_not_counted_as_one() -> None:
    def match(trade_id: int) -> str:
        return json.dumps(
            {
                "type": "match", "trade_id": trade_id, "maker_order_id": "m", "taker_order_id": "t",
                "side": "buy", "size": "1", "price": "1", "product_id": "BTC-USD", "sequence": trade_id,
                "time": "2026-01-01T00:00:00Z",
            }
        )  # fmt: skip

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe
        await ws.send(match(100))
        await ws.send(match(102))  # a gap: re-subscribed
        await ws.recv()  # the unsubscribe
        await ws.recv()  # the subscribe again
        await ws.send(match(105))  # another gap within the spacing: noted, not re-subscribed
        await ws.wait_closed()

    with server(handler) as url:
        feed = CoinbaseSource(["BTC-USD"], url=url, channels=["matches"], batch_linger=0.0)
        sink = MemorySink()
        thread, errors = running(feed, sink)
        wait_for(lambda: feed.stats.gaps >= 2 or bool(errors), "the two gaps")
        feed.stop()
        thread.join(10)
    assert errors == []
    assert (feed.stats.gaps, feed.stats.resyncs) == (2, 1)


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
