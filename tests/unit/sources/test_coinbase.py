"""Coinbase Exchange: gap detection on the recorded session and the trade normaliser."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError, DecodeError, SourceError
from vigil.events.ids import stable_id
from vigil.events.types import Trade
from vigil.hub.raw import RawRecord
from vigil.sources.coinbase import CoinbaseNormalizer, CoinbaseSource
from vigil.sources.websocket import WS_GAP

RECORDING = shared_data_dir() / "feeds" / "COINBASE.ws.28.0"


def exchange_messages() -> list[bytes]:
    """What the exchange sent in the recorded session (lines ``ts: {json}``)."""
    lines = RECORDING.read_bytes().split(b"\n")[1:]
    return [line.partition(b": ")[2] for line in lines if line.strip() and b" <- " not in line]


def record(value: bytes, kind: str = "ws_message", url: str | None = None) -> RawRecord:
    meta = {"url": url} if url is not None else {}
    return RawRecord("coinbase", kind, value, received_at=datetime(2026, 1, 1, tzinfo=UTC), meta=meta)


MATCH = {
    "type": "match",
    "trade_id": 1568268,
    "maker_order_id": "cac01d6d-8009-4c33-8e0d-f7f853d7c1bc",
    "taker_order_id": "3dec64e4-f6ad-4ca8-ad3f-e5b1a0eb0d06",
    "side": "sell",
    "size": "450",
    "price": "0.791",
    "product_id": "SKL-USD",
    "sequence": 201390075,
    "time": "2021-04-17T16:43:37.121358Z",
}


def source(channels: tuple[str, ...] = ("matches", "ticker")) -> CoinbaseSource:
    return CoinbaseSource(["SKL-USD", "BAND-GBP"], url="ws://127.0.0.1:1", channels=channels)


def test_recorded_session_has_no_gap_and_every_trade_normalises() -> None:
    feed = source(("level2", "ticker", "matches"))
    feed.subscribe_messages()
    messages = exchange_messages()
    gaps = [gap for m in messages for gap in feed.inspect(json.loads(m)).gaps]
    assert gaps == []
    normalizer = CoinbaseNormalizer()
    trades = [e for m in messages for e in normalizer.normalize(record(m)) if isinstance(e, Trade)]
    expected = [json.loads(m) for m in messages if json.loads(m)["type"] in ("match", "last_match")]
    assert [t.payload.trade_id for t in trades] == [str(m["trade_id"]) for m in expected]
    assert all(t.payload.venue == "coinbase" and t.occurred_at.tzinfo is not None for t in trades)


def test_match_becomes_a_trade_with_the_taker_side_inverted_from_the_maker_side() -> None:
    [trade] = CoinbaseNormalizer().normalize(record(json.dumps(MATCH).encode()))
    assert isinstance(trade, Trade)
    assert trade.payload.taker_side == "buy"  # the maker sold
    assert (trade.payload.symbol, trade.payload.price, trade.payload.quantity) == ("SKL-USD", 0.791, 450.0)
    assert trade.payload.maker_order_id == MATCH["maker_order_id"]
    assert trade.occurred_at == datetime(2021, 4, 17, 16, 43, 37, 121358, tzinfo=UTC)
    buy = CoinbaseNormalizer().normalize(record(json.dumps(MATCH | {"side": "buy"}).encode()))
    assert buy[0].payload.taker_side == "sell"  # type: ignore[attr-defined]


def test_the_same_trade_resent_as_last_match_keeps_its_event_id() -> None:
    normalizer = CoinbaseNormalizer()
    [first] = normalizer.normalize(record(json.dumps(MATCH).encode()))
    [again] = normalizer.normalize(record(json.dumps(MATCH | {"type": "last_match"}).encode()))
    [other] = normalizer.normalize(record(json.dumps(MATCH | {"trade_id": 1568269}).encode()))
    assert first.event_id == again.event_id != other.event_id


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscriptions", "channels": []},
        {"type": "heartbeat", "sequence": 1, "last_trade_id": 2, "product_id": "SKL-USD", "time": "x"},
        {"type": "l2update", "product_id": "SKL-USD", "changes": [], "time": "2021-04-17T16:43:37Z"},
    ],
)
def test_control_and_book_messages_yield_nothing(message: dict[str, object]) -> None:
    assert CoinbaseNormalizer().normalize(record(json.dumps(message).encode())) == []


def test_gap_notes_yield_nothing() -> None:
    assert CoinbaseNormalizer().normalize(record(b'{"key":"SKL-USD:trade_id"}', kind=WS_GAP)) == []


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (b"not json", DecodeError, "not a Coinbase message"),
        (b'{"type": "error", "message": "Failed to subscribe"}', ContractError, "error message"),
        (b'{"type": "mystery"}', ContractError, "unknown Coinbase message type 'mystery'"),
        (json.dumps(MATCH | {"price": "abc"}).encode(), DecodeError, r"\$\.price"),
        (json.dumps(MATCH | {"size": "-1"}).encode(), DecodeError, "positive"),
        (json.dumps(MATCH | {"side": "up"}).encode(), DecodeError, r"\$\.side"),
        (json.dumps(MATCH | {"product_id": ""}).encode(), DecodeError, r"length >= 1 - at `\$\.product_id`"),
        # (The type was read skipping the rest: bad UTF-8 further on raised msgspec's own error.)
        (json.dumps(MATCH).encode().replace(b"SKL-USD", b"SKL-\xffUSD"), DecodeError, "UTF-8"),
        (json.dumps({k: v for k, v in MATCH.items() if k != "trade_id"}).encode(), DecodeError, "trade_id"),
        (json.dumps(MATCH | {"time": "2021-04-17T16:43:37"}).encode(), DecodeError, "zone"),
        # Valid RFC 3339 but outside years 1-9999 once in UTC: was an uncaught OverflowError.
        (
            json.dumps(MATCH | {"time": "0001-01-01T00:00:00+01:00"}).encode(),
            DecodeError,
            r"\$\.time: .*years 1 and 9999",
        ),
        (
            json.dumps(MATCH | {"time": "9999-12-31T23:59:59-01:00"}).encode(),
            DecodeError,
            r"\$\.time: .*years 1 and 9999",
        ),
        # The type was read skipping the rest: the error's bad UTF-8 raised msgspec's own error.
        (b'{"type":"error","message":"x","reason":"\xff"}', DecodeError, "error message whose reason.*UTF-8"),
    ],
)
def test_bad_messages_are_rejected_with_the_reason(value: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CoinbaseNormalizer().normalize(record(value))


def test_skipped_trade_id_is_a_gap_and_a_resent_one_is_not() -> None:
    feed = source()
    assert feed.inspect(MATCH | {"type": "last_match"}).gaps == ()
    assert feed.inspect(MATCH | {"trade_id": 1568269}).gaps == ()
    [gap] = feed.inspect(MATCH | {"trade_id": 1568272}).gaps
    assert (gap.key, gap.expected, gap.received, gap.missing) == ("SKL-USD:trade_id", 1568270, 1568272, 2)
    assert feed.inspect(MATCH | {"trade_id": 1568272}).gaps == ()  # a replay, not a gap
    # Another product's counter is its own.
    assert feed.inspect(MATCH | {"product_id": "BAND-GBP", "trade_id": 5}).gaps == ()


def test_heartbeat_naming_a_trade_never_seen_is_a_gap() -> None:
    feed = source(("matches", "heartbeat"))
    feed.inspect(MATCH)
    heartbeat = {"type": "heartbeat", "product_id": "SKL-USD", "sequence": 9, "last_trade_id": 1568270}
    [gap] = feed.inspect(heartbeat).gaps
    assert (gap.expected, gap.received) == (1568269, 1568271)


def test_full_channel_sequence_gap_is_detected() -> None:
    feed = source(("full",))
    opened = {"type": "open", "product_id": "SKL-USD", "sequence": 10, "order_id": "o", "side": "buy"}
    assert feed.inspect(opened).gaps == ()
    assert feed.inspect(opened | {"type": "done", "sequence": 11}).gaps == ()
    [gap] = feed.inspect(opened | {"type": "received", "sequence": 14}).gaps
    assert (gap.key, gap.expected, gap.received) == ("SKL-USD:sequence", 12, 14)


def test_inspect_keys_by_product_and_names_the_channel() -> None:
    found = source().inspect(MATCH)
    assert (found.key, found.channel) == (b"SKL-USD", "matches")
    assert source().inspect({"type": "subscriptions", "channels": []}).key is None


def test_subscribe_message_names_products_and_channels() -> None:
    assert json.loads(source().subscribe_messages()[0]) == {
        "type": "subscribe",
        "product_ids": ["SKL-USD", "BAND-GBP"],
        "channels": ["matches", "ticker"],
    }


def test_from_settings_reads_options_and_rejects_unknown_ones() -> None:
    from vigil.config import Settings

    feed = CoinbaseSource.from_settings(Settings(), products="BTC-USD, ETH-USD", channels="matches")
    assert (feed.product_ids, feed.channels) == (["BTC-USD", "ETH-USD"], ["matches"])
    with pytest.raises(SourceError, match="unknown option"):
        CoinbaseSource.from_settings(Settings(), products="BTC-USD", colour="x")
    with pytest.raises(ValueError, match="at least one product"):
        CoinbaseSource.from_settings(Settings())


def test_trades_missed_while_disconnected_are_a_gap_after_the_reconnect() -> None:
    feed = source()
    feed.subscribe_messages()
    feed.inspect(MATCH)
    feed.subscribe_messages()  # a new connection
    assert feed.inspect(MATCH | {"type": "last_match"}).gaps == ()  # the re-sent last trade
    [gap] = feed.inspect(MATCH | {"trade_id": 1568275}).gaps
    assert (gap.expected, gap.received) == (1568269, 1568275)


def test_an_error_message_gives_coinbases_reason_as_data() -> None:
    refused = (
        b'{"type": "error", "message": "Failed to subscribe", "reason": "BTC-USDX is not a valid\\nproduct"}'
    )
    with pytest.raises(ContractError) as err:
        CoinbaseNormalizer().normalize(record(refused))
    assert "'Failed to subscribe / BTC-USDX is not a valid\\nproduct'" in str(err.value)
    assert "\n" not in str(err.value)


def test_heartbeat_naming_the_one_next_trade_unseen_is_a_gap() -> None:
    # Taken as if that trade had been received, the tracker moved past it unnoted.
    feed = source(("matches", "heartbeat"))
    feed.inspect(MATCH)
    heartbeat = {"type": "heartbeat", "product_id": "SKL-USD", "sequence": 9, "last_trade_id": 1568269}
    [gap] = feed.inspect(heartbeat).gaps
    assert (gap.expected, gap.received, gap.missing) == (1568269, 1568270, 1)
    assert feed.inspect(MATCH | {"trade_id": 1568270}).gaps == ()


class _Sent:
    """The connection's side the feed writes to (what it sent, in order)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send(self, text: str) -> None:
        self.texts.append(text)


def test_a_gap_resubscribes_the_snapshot_channels_alone_and_resubscribing_is_spaced() -> None:
    # level2 sends the whole book when subscribed: that is what a resubscribe recovers.  matches
    # stays subscribed: resubscribed, it sent one trade back, and lost those between the messages.
    feed = source(("matches", "level2", "heartbeat"))
    ws = _Sent()
    feed.inspect(MATCH)
    gaps = feed.inspect(MATCH | {"trade_id": 1568270}).gaps
    assert asyncio.run(feed.resync(ws, gaps))  # type: ignore[arg-type]
    assert [json.loads(t) for t in ws.texts] == [
        {"type": "unsubscribe", "product_ids": ["SKL-USD"], "channels": ["level2"]},
        {"type": "subscribe", "product_ids": ["SKL-USD"], "channels": ["level2"]},
    ]
    # The product's gaps go on: noted, not re-subscribed at each (on a busy product, for ever).
    [again] = feed.inspect(MATCH | {"trade_id": 1568273}).gaps
    assert (again.expected, again.received) == (1568271, 1568273)
    assert not asyncio.run(feed.resync(ws, [again]))  # type: ignore[arg-type]
    assert len(ws.texts) == 2


def test_a_gap_with_no_snapshot_channel_is_noted_not_resynced() -> None:
    # Nothing on matches, ticker or heartbeat is recovered by subscribing again.
    feed = source(("matches", "ticker", "heartbeat"))
    ws = _Sent()
    feed.inspect(MATCH)
    [gap] = feed.inspect(MATCH | {"trade_id": 1568275}).gaps
    assert not asyncio.run(feed.resync(ws, [gap]))  # type: ignore[arg-type]
    assert ws.texts == []


@pytest.mark.parametrize(
    "first",
    [
        MATCH | {"type": "last_match", "trade_id": 1568275},
        {"type": "heartbeat", "product_id": "SKL-USD", "sequence": 9, "last_trade_id": 1568274},
    ],
)
def test_the_gap_of_the_time_away_does_not_resubscribe_the_connection_that_just_subscribed(
    first: dict[str, object],
) -> None:
    # Counters survive a reconnect, so the first counter after it shows the trades missed while
    # away: noted, but resubscribing a connection that has just subscribed recovers nothing.
    feed = source(("matches", "level2"))
    ws = _Sent()
    feed.stats.connections = 1
    feed.inspect(MATCH)
    feed.stats.connections = 2  # reconnected: subscribed, the level2 snapshot on its way
    [away] = feed.inspect(first).gaps
    assert (away.expected, away.received) == (1568269, 1568275)
    assert not asyncio.run(feed.resync(ws, [away]))  # type: ignore[arg-type]
    assert ws.texts == []
    # A gap later on the same connection is data lost under a live subscription: resynced.
    [later] = feed.inspect(MATCH | {"trade_id": 1568280}).gaps
    assert asyncio.run(feed.resync(ws, [later]))  # type: ignore[arg-type]
    assert [json.loads(t)["type"] for t in ws.texts] == ["unsubscribe", "subscribe"]


@pytest.mark.parametrize("size", ["1_000", " 5", "5 ", "infinity", "0x10"])
def test_sizes_must_be_plain_decimals(size: str) -> None:
    # float() alone read "1_000" as 1000.0 and took blanks and words for numbers.
    with pytest.raises(DecodeError, match="expected a decimal string at"):
        CoinbaseNormalizer().normalize(record(json.dumps(MATCH | {"size": size}).encode()))


def test_a_trade_time_with_another_zone_is_kept_in_utc() -> None:
    (trade,) = CoinbaseNormalizer().normalize(
        record(json.dumps(MATCH | {"time": "2026-01-01T20:43:37.5+02:00"}).encode())
    )
    assert trade.occurred_at.utcoffset() == timedelta(0)
    assert trade.occurred_at.isoformat() == "2026-01-01T18:43:37.500000+00:00"


PRODUCTION = "wss://ws-feed.exchange.coinbase.com"
SANDBOX = "wss://ws-feed-public.sandbox.exchange.coinbase.com"


def test_a_sandbox_trade_is_not_the_production_trade_of_the_same_number() -> None:
    # The sandbox numbers its trades itself: with one id, a sandbox trade replaced a real one.
    [real] = CoinbaseNormalizer().normalize(record(json.dumps(MATCH).encode(), url=PRODUCTION))
    [test] = CoinbaseNormalizer().normalize(record(json.dumps(MATCH).encode(), url=SANDBOX))
    assert real.event_id != test.event_id
    assert (real.payload.venue, test.payload.venue) == ("coinbase", "coinbase-sandbox")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url", [PRODUCTION, "wss://ws-direct.exchange.coinbase.com", "ws://127.0.0.1:9", None]
)
def test_production_trade_ids_are_unchanged(url: str | None) -> None:
    # Pinned: replays of records published before the sandbox was told apart must deduplicate.
    [trade] = CoinbaseNormalizer().normalize(record(json.dumps(MATCH).encode(), url=url))
    assert trade.event_id == stable_id("coinbase", "SKL-USD", 1568268, prefix="trade-")
    assert trade.payload.venue == "coinbase"  # type: ignore[attr-defined]
