"""Binance: gap detection on the recorded sessions and the trade normaliser."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError, DecodeError
from vigil.events.types import Trade
from vigil.hub.raw import RawRecord
from vigil.sources.binance import BinanceNormalizer, BinanceSource
from vigil.sources.websocket import SequenceTracker

FEEDS = shared_data_dir() / "feeds"


def exchange_messages(name: str) -> list[bytes]:
    lines = (FEEDS / name).read_bytes().split(b"\n")[1:]
    return [line.partition(b": ")[2] for line in lines if line.strip() and b" <- " not in line]


def record(value: bytes | dict[str, object]) -> RawRecord:
    data = json.dumps(value).encode() if isinstance(value, dict) else value
    return RawRecord("binance", "ws_message", data, received_at=datetime(2026, 1, 1, tzinfo=UTC))


TRADE = {"e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100",
         "b": 88, "a": 50, "T": 1672515782136, "m": True, "M": True}  # fmt: skip


def feed() -> BinanceSource:
    return BinanceSource(["bnbbtc@trade"], base_url="ws://127.0.0.1:1")


@pytest.mark.parametrize("name", ["BINANCE.ws.1.0", "BINANCE_US.ws.1.0", "BINANCE_FUTURES.ws.1.0"])
def test_recorded_sessions_have_no_gap_and_aggregate_trades_normalise(name: str) -> None:
    source = feed()
    messages = exchange_messages(name)
    assert [g for m in messages for g in source.inspect(json.loads(m)).gaps] == []
    trades = [e for m in messages for e in BinanceNormalizer().normalize(record(m))]
    aggs = [json.loads(m)["data"] for m in messages if b'"aggTrade"' in m]
    assert len(aggs) > 0
    assert [t.payload.trade_id for t in trades] == [f"agg-{a['a']}" for a in aggs]  # type: ignore[attr-defined]
    assert len({t.event_id for t in trades}) == len(trades)


def test_trade_becomes_a_canonical_trade() -> None:
    [trade] = BinanceNormalizer().normalize(record({"stream": "bnbbtc@trade", "data": TRADE}))
    p = trade.payload  # type: ignore[attr-defined]
    assert (p.trade_id, p.symbol, p.price, p.quantity, p.venue) == (
        "12345",
        "BNBBTC",
        0.001,
        100.0,
        "binance",
    )
    # m: the buyer is the maker, so the taker sold; order ids follow the roles.
    assert (p.taker_side, p.maker_order_id, p.taker_order_id) == ("sell", "88", "50")
    assert trade.occurred_at == datetime.fromtimestamp(1672515782.136, UTC)
    [buy] = BinanceNormalizer().normalize(record(TRADE | {"m": False}))  # a raw (uncombined) stream
    assert buy.payload.taker_side == "buy"  # type: ignore[attr-defined]


def test_event_ids_are_stable_and_distinct_per_trade() -> None:
    n = BinanceNormalizer()
    first = n.normalize(record(TRADE))[0].event_id
    assert n.normalize(record(TRADE))[0].event_id == first
    assert n.normalize(record(TRADE | {"t": 12346}))[0].event_id != first


@pytest.mark.parametrize(
    "value",
    [
        {"result": None, "id": 1},
        {"stream": "x@bookTicker", "data": {"u": 1, "s": "X", "b": "1", "B": "1", "a": "1", "A": "1"}},
        {"stream": "x@depth@100ms", "data": {"e": "depthUpdate", "s": "X", "U": 1, "u": 2, "b": [], "a": []}},
        # Array streams: every symbol's ticker in one message (each was a dead letter).
        {"stream": "!ticker@arr", "data": [{"e": "24hrTicker", "s": "X"}, {"e": "24hrTicker", "s": "Y"}]},
        {"stream": "!miniTicker@arr", "data": [{"e": "24hrMiniTicker", "s": "X"}]},
        {"stream": "!markPrice@arr", "data": []},
    ],
)
def test_replies_and_book_updates_yield_nothing(value: dict[str, object]) -> None:
    assert BinanceNormalizer().normalize(record(value)) == []


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (b"[1, 2", DecodeError, "not a Binance stream message"),
        ({"code": 2, "msg": "Invalid request"}, ContractError, "code 2"),
        ({"stream": "x@weird", "data": {"e": "weird"}}, ContractError, "unknown Binance event type 'weird'"),
        ({"stream": "x@weird", "data": {"s": "X"}}, ContractError, "expected an event type"),
        ({"foo": 1}, ContractError, "combined-stream"),
        ({"stream": "!x@arr", "data": [{"e": "trade"}]}, ContractError, "unexpected event types.*'trade'"),
        ({"stream": "!x@arr", "data": [1, 2]}, DecodeError, "an array of objects"),
        (TRADE | {"p": "NaN"}, DecodeError, r"\$\.data\.p"),
        (TRADE | {"t": "12345"}, DecodeError, r"\$\.t"),
        (TRADE | {"s": ""}, DecodeError, r"length >= 1 - at `\$\.s`"),
        (json.dumps(TRADE).encode().replace(b"BNBBTC", b"BNB\xffBTC"), DecodeError, "UTF-8"),
        ({k: v for k, v in TRADE.items() if k != "q"}, DecodeError, "q"),
    ],
)
def test_bad_messages_are_rejected_with_the_reason(
    value: bytes | dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        BinanceNormalizer().normalize(record(value))


@pytest.mark.parametrize(
    "value",
    [
        {"e": "serverShutdown", "E": 1770123456789},
        {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1770123456789}},
        {"event": {"e": "serverShutdown", "E": 1770123456789}},
    ],
)
def test_a_server_shutdown_is_control_not_a_dead_letter(value: dict[str, object]) -> None:
    # Binance says it before it drops the connection: it was dead-lettered as an unknown event.
    assert BinanceNormalizer().normalize(record(value)) == []
    found = feed().inspect(value)
    assert (found.shutdown, found.data, found.key) == (True, False, None)


@pytest.mark.parametrize(
    "value",
    [
        b'{"code": 2, "msg": "Invalid request: invalid stream\\nCRITICAL forged", "id": 2}',
        b'{"error": {"code": 2, "msg": "Invalid request: invalid stream\\nCRITICAL forged"}, "id": 2}',
    ],
)
def test_an_error_flat_or_nested_is_rejected_with_its_code_and_message_as_data(value: bytes) -> None:
    # The nested one has an id and no top-level code: it read as a successful SUBSCRIBE's reply.
    with pytest.raises(ContractError) as err:
        BinanceNormalizer().normalize(record(value))
    said = str(err.value)
    assert said.endswith("Binance sent an error: code 2: 'Invalid request: invalid stream\\nCRITICAL forged'")
    assert "\n" not in said


def test_trade_and_aggregate_id_gaps_per_symbol() -> None:
    source = feed()
    assert source.inspect({"stream": "s", "data": TRADE}).gaps == ()
    [gap] = source.inspect({"stream": "s", "data": TRADE | {"t": 12348}}).gaps
    assert (gap.key, gap.expected, gap.received) == ("BNBBTC:trade", 12346, 12348)
    agg = {"e": "aggTrade", "s": "BNBBTC", "a": 7, "p": "1", "q": "1", "T": 1, "m": False}
    assert source.inspect(agg).gaps == ()
    assert source.inspect(agg | {"a": 8}).gaps == ()
    assert source.inspect(agg | {"a": 10}).gaps[0].missing == 1  # id 9


def test_depth_update_chains_are_checked_spot_and_futures() -> None:
    source = feed()
    depth = {"e": "depthUpdate", "s": "X", "U": 10, "u": 12}
    assert source.inspect(depth).gaps == ()
    assert source.inspect(depth | {"U": 13, "u": 15}).gaps == ()
    [gap] = source.inspect(depth | {"U": 18, "u": 20}).gaps
    assert (gap.expected, gap.received) == (16, 18)
    futures = {"e": "depthUpdate", "s": "F", "U": 100, "u": 110, "pu": 90}
    assert source.inspect(futures).gaps == ()
    assert source.inspect(futures | {"U": 105, "u": 120, "pu": 110}).gaps == ()  # overlaps, linked by pu
    [gap] = source.inspect(futures | {"U": 125, "u": 130, "pu": 122}).gaps
    assert gap.key == "F:depth"


def test_url_names_the_combined_streams() -> None:
    source = BinanceSource(["btcusdt@trade", "ethusdt@trade"], base_url="wss://stream.binance.com:9443/")
    assert source.url == "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade"
    assert source.subscribe_messages() == []


def test_from_settings_requires_streams() -> None:
    from vigil.config import Settings

    assert BinanceSource.from_settings(Settings(), streams="a@trade,b@trade").streams == [
        "a@trade",
        "b@trade",
    ]
    with pytest.raises(ValueError, match="at least one stream"):
        BinanceSource.from_settings(Settings())


def test_tracker_reset_starts_a_new_baseline() -> None:
    tracker = SequenceTracker()
    tracker.check("a:x", 1)
    tracker.check("b:x", 1)
    tracker.reset("a:")
    assert tracker.check("a:x", 50) is None
    assert tracker.check("b:x", 50) is not None


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    source = BinanceSource(
        ["x@trade"], base_url="ws://h", backoff_initial=0.5, backoff_max=8, rng=random.Random(7)
    )
    for attempt, ceiling in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        delays = [source.backoff_delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so clients do not reconnect in lock-step
    with pytest.raises(ValueError, match="backoff"):
        BinanceSource(["x@trade"], backoff_initial=0)


def test_the_stream_name_in_an_error_is_quoted_data() -> None:
    forged = {"stream": "x@weird\n2026-05-09 CRITICAL vigil: forged line", "data": {"e": "weird"}}
    with pytest.raises(ContractError) as err:
        BinanceNormalizer().normalize(record(forged))
    assert "\n" not in str(err.value)
    assert "stream 'x@weird\\n2026-05-09" in str(err.value)


def test_spot_and_futures_trades_with_one_number_are_two_trades() -> None:
    # Each market numbers its trades itself; every endpoint published as "binance", so a spot
    # and a futures trade with the same id were one "unique" event, both labelled spot.
    def on(url: str) -> Trade:
        raw = record({"stream": "btcusdt@trade", "data": TRADE})
        (trade,) = BinanceNormalizer().normalize(replace(raw, meta={"url": url}))
        assert isinstance(trade, Trade)
        return trade

    spot = on("wss://stream.binance.com:9443/stream?streams=btcusdt@trade")
    futures = on("wss://fstream.binance.com/stream?streams=btcusdt@trade")
    us = on("wss://stream.binance.us:9443/stream?streams=btcusdt@trade")
    assert len({spot.event_id, futures.event_id, us.event_id}) == 3
    venues = (spot.payload.venue, futures.payload.venue, us.payload.venue)
    assert venues == ("binance", "binance-usdm", "binance-us")
    # Spot ids are as they were (a replay of older data keeps its ids).
    (plain,) = BinanceNormalizer().normalize(record({"stream": "btcusdt@trade", "data": TRADE}))
    assert plain.event_id == spot.event_id


def test_testnet_trades_are_not_taken_for_the_real_markets() -> None:
    from vigil.sources.binance import market_of

    assert market_of("wss://stream.testnet.binance.vision/ws") == "testnet-spot"
    assert market_of("wss://fstream.binancefuture.com/ws") == "testnet-usdm"
    assert market_of("wss://dstream.binancefuture.com/ws") == "testnet-coinm"
    assert market_of("wss://data-stream.binance.vision/ws") == "spot"  # production data
    assert market_of("wss://fstream-mm.binance.com/ws") == "usdm"
    assert market_of("ws://127.0.0.1:9000/stream") == "spot"
    # An unclosed IPv6 bracket: urlsplit's ValueError dead-lettered every record of the
    # connection as the normaliser's own bug ("unexpected ValueError"), subscribe replies too.
    assert market_of("wss://[stream.binance.com:9443") == "spot"
