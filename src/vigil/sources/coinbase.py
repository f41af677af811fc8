"""Coinbase Exchange websocket feed: connector and normaliser.

Protocol (https://docs.cdp.coinbase.com/exchange/docs/websocket-overview): after
connecting, the client sends ``{"type": "subscribe", "product_ids": [...], "channels":
[...]}``; the server answers ``subscriptions`` and then streams per product.  Messages
of one product carry a ``sequence`` that is contiguous only across the ``full``
channel; on ``matches`` the ``trade_id`` is contiguous per product, and ``heartbeat``
messages carry ``last_trade_id``.  Gaps are detected on those counters:

- ``match`` / ``last_match``: ``trade_id`` per product (``last_match`` is the baseline a
  subscription starts from);
- ``heartbeat``: its ``last_trade_id`` beyond the last trade seen means trades were missed;
- with the ``full`` channel subscribed, ``sequence`` per product.

Liveness: the ``heartbeat`` channel sends a message per product every second, so with it
subscribed a connection silent for ``heartbeat_timeout`` (30 s) is dead and is replaced.
Without it a quiet product's ``matches`` can be silent for long, so then (as on Binance) only
websocket ping/pong tells a dead connection, unless ``heartbeat_timeout`` is set.

Resync: only a channel that sends a snapshot when subscribed (``level2``, ``level2_batch``:
the whole book) has state a resubscribe recovers.  After a gap on a product, those channels
(and only those) are unsubscribed and subscribed again for it, so its book starts again from a
snapshot; ``matches`` stays subscribed (its ``last_match`` on subscribing is one trade, not the
ones missed, and trades made between the two messages would be lost too), as do ``full`` and
``heartbeat``, which have no snapshot.  Without a snapshot channel a gap is noted, not resynced.
Nor is a gap revealed by a product's first counter on a new connection (the trades missed while
away): that connection has only just subscribed, its snapshots are on their way.

Normaliser: ``match`` and ``last_match`` become canonical ``trade`` events.  Coinbase's
``side`` is the *maker* order's side, so the taker side is its opposite.  The event id
is derived from (product, trade id), so a trade re-sent after a resubscribe has the
same id and is deduplicated downstream.  The sandbox (``*.sandbox.exchange.coinbase.com``,
told by the connection's URL in the record's meta) numbers its trades apart from production:
its trades' ids also name the sandbox and their venue is ``coinbase-sandbox``, so a sandbox
trade never takes the place of a real one (production ids and venue are unchanged).
Subscriptions, heartbeats, tickers and book updates carry no canonical event and yield
nothing; an ``error`` message or an unknown type is rejected (dead-lettered with the reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection

from vigil.config import Settings
from vigil.errors import ContractError, DecodeError
from vigil.events.base import Event, Id
from vigil.events.ids import stable_id
from vigil.events.types import Trade, TradePayload
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer, check_options
from vigil.sources.trade_normalize import message_where, positive_decimal
from vigil.sources.websocket import Gap, Inspected, WebsocketFeed, heartbeat_option, str_list

DEFAULT_URL = "wss://ws-feed.exchange.coinbase.com"
DEFAULT_CHANNELS = ("matches", "ticker", "heartbeat")

# Which channel a message type arrives on (for the record's meta; ``None``: control messages).
_CHANNEL_OF = {
    "match": "matches",
    "last_match": "matches",
    "ticker": "ticker",
    "heartbeat": "heartbeat",
    "snapshot": "level2",
    "l2update": "level2",
    "received": "full",
    "open": "full",
    "done": "full",
    "change": "full",
    "activate": "full",
    "subscriptions": "control",
    "error": "control",
}


#: A product is re-subscribed after a gap at most this often (see CoinbaseSource.resync).
RESYNC_EVERY_S = 30.0

#: The channels that send a snapshot of the product's state when subscribed (the order book):
#: the ones a resubscribe recovers.  (``full`` has none: its book comes from the REST API.)
SNAPSHOT_CHANNELS = ("level2", "level2_batch")

#: The default silence timeout with the ``heartbeat`` channel subscribed (it sends every second).
HEARTBEAT_TIMEOUT_S = 30.0


class CoinbaseSource(WebsocketFeed):
    """Options (``vigil source coinbase``): ``url``, ``products`` (comma-separated, required),
    ``channels`` (comma-separated; default matches,ticker,heartbeat), ``heartbeat_timeout`` (s,
    or ``off``; default 30 with the heartbeat channel, off without it)."""

    name = "coinbase"

    def __init__(
        self,
        product_ids: Sequence[str],
        *,
        url: str = DEFAULT_URL,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        **kwargs: Any,
    ) -> None:
        # Silence is death only on a feed that sends heartbeats (see the module docstring).
        kwargs.setdefault("heartbeat_timeout", HEARTBEAT_TIMEOUT_S if "heartbeat" in channels else None)
        super().__init__(url, **kwargs)
        if not product_ids:
            msg = "coinbase: at least one product id is needed (e.g. products=BTC-USD,ETH-USD)"
            raise ValueError(msg)
        if not channels:
            msg = "coinbase: at least one channel is needed (e.g. channels=matches,heartbeat)"
            raise ValueError(msg)
        self.product_ids = list(product_ids)
        self.channels = list(channels)
        #: When (monotonic) each product was last re-subscribed (see resync).
        self._resynced: dict[str, float] = {}
        #: The tracker keys checked on connection ``_connection`` (see _first_here): a key's first check
        #: on a connection measures the time away.
        self._connection = 0
        self._checked: set[str] = set()
        #: Gaps of the batch being inspected that a resubscribe cannot recover (see resync).
        self._while_away: set[Gap] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> CoinbaseSource:
        check_options("coinbase", options, {"url", "products", "channels", "heartbeat_timeout", "source_id"})
        return cls(
            str_list(options.get("products", "")),
            url=options.get("url", DEFAULT_URL),
            channels=str_list(options.get("channels", ",".join(DEFAULT_CHANNELS))),
            source_id=options.get("source_id"),
            **heartbeat_option(options),
        )

    def _subscription(
        self,
        kind: Literal["subscribe", "unsubscribe"],
        products: Sequence[str],
        channels: Sequence[str] | None = None,
    ) -> str:
        return json.dumps(
            {"type": kind, "product_ids": list(products), "channels": list(channels or self.channels)}
        )

    def _first_here(self, key: str) -> bool:
        """Whether this is ``key``'s first check on the current connection (a gap it reveals is
        the time away, see resync); from now on it is not."""
        if self._connection != self.stats.connections:
            self._connection = self.stats.connections
            self._checked.clear()
        first = key not in self._checked
        self._checked.add(key)
        return first

    def _found(self, gap: Gap | None, first_here: bool, gaps: list[Gap]) -> None:
        if gap is not None:
            gaps.append(gap)
            if first_here:
                self._while_away.add(gap)

    def subscribe_messages(self) -> list[str]:
        # Counters survive a reconnect on purpose: the first trade after it (Coinbase re-sends the
        # last one as last_match) reveals how many were missed while away, and that is a gap.
        return [self._subscription("subscribe", self.product_ids)]

    def inspect(self, message: Any) -> Inspected:
        if not isinstance(message, dict):
            return Inspected()
        kind = message.get("type")
        product = message.get("product_id")
        channel = _CHANNEL_OF.get(kind) if isinstance(kind, str) else None
        if not isinstance(product, str):
            return Inspected(channel=channel)
        gaps: list[Gap] = []
        trade_id = message.get("trade_id")
        key = f"{product}:trade_id"
        if kind in ("match", "last_match") and isinstance(trade_id, int):
            self._found(self.tracker.check(key, trade_id), self._first_here(key), gaps)
        last_trade = message.get("last_trade_id")
        seen = self.tracker.last(key)
        if kind == "heartbeat" and isinstance(last_trade, int) and seen is not None:
            first_here = self._first_here(key)
            if last_trade > seen:
                # The heartbeat names the last trade, which was not received: the missing ones are
                # seen+1 ..= last_trade (one alone too: taken as a received trade, it was no gap).
                self._found(Gap(key, seen + 1, last_trade + 1), first_here, gaps)
                self.tracker.check(key, last_trade)
        sequence = message.get("sequence")
        # Sequences are contiguous per product only across the full channel (matches are part
        # of it); a last_match repeats an old trade and would read as going backwards.
        full = "full" in self.channels and channel in ("full", "matches") and kind != "last_match"
        if full and isinstance(sequence, int):
            key = f"{product}:sequence"
            self._found(self.tracker.check(key, sequence), self._first_here(key), gaps)
        return Inspected(key=product.encode(), channel=channel, gaps=tuple(gaps))

    async def resync(self, ws: ClientConnection, gaps: Sequence[Gap]) -> bool:
        """Re-subscribe the snapshot channels (:data:`SNAPSHOT_CHANNELS`) of the products with
        gaps, once per ``RESYNC_EVERY_S`` each; whether it did.

        Nothing is sent for a gap of the time away (a product's first counter on a connection,
        which has only just subscribed: before, that reconnect's gap unsubscribed and subscribed
        again at once, and trades made between the two were lost for nothing), nor when no
        snapshot channel is subscribed (nothing a resubscribe would recover: ``matches`` sends
        one trade, not the ones missed).  Other channels stay subscribed, and the counters are
        kept: the spacing keeps a product whose gaps go on from being re-subscribed at each."""
        away, self._while_away = self._while_away, set()
        channels = [c for c in self.channels if c in SNAPSHOT_CHANNELS]
        if not channels:
            return False
        now = time.monotonic()
        products = sorted(
            p
            for p in {gap.key.partition(":")[0] for gap in gaps if gap not in away}
            if now - self._resynced.get(p, -RESYNC_EVERY_S) >= RESYNC_EVERY_S
        )
        if not products:
            return False
        for product in products:
            self._resynced[product] = now
        await ws.send(self._subscription("unsubscribe", products, channels))
        await ws.send(self._subscription("subscribe", products, channels))
        return True


# ---------------------------------------------------------------------------- normaliser


class _Typed(msgspec.Struct):
    type: str


class _Match(msgspec.Struct):
    type: str
    trade_id: int
    product_id: Id  # the trade's symbol: a trade of "" the contract refuses
    side: Literal["buy", "sell"]
    size: str
    price: str
    time: datetime
    maker_order_id: str | None = None
    taker_order_id: str | None = None
    sequence: int | None = None


# Message types that carry no canonical event (market data Vigil does not model, control).
_NO_EVENT = frozenset(
    {
        "subscriptions",
        "heartbeat",
        "ticker",
        "snapshot",
        "l2update",
        "received",
        "open",
        "done",
        "change",
        "activate",
    }
)


def environment_of(url: object) -> Literal["production", "sandbox"]:
    """The Coinbase Exchange environment a connection's URL is on: ``sandbox``
    (ws-feed-public.sandbox.exchange.coinbase.com, ws-direct.sandbox.exchange.coinbase.com) or
    ``production`` (ws-feed.exchange.coinbase.com, and any other host, such as a local replay of
    a production recording, or a record without a URL)."""
    try:
        host = (urlsplit(url).hostname or "") if isinstance(url, str) else ""
    except ValueError:  # (an unclosed IPv6 bracket): not a sandbox host either
        host = ""
    return "sandbox" if "sandbox" in host.split(".") else "production"


class CoinbaseNormalizer(Normalizer):
    """Coinbase ``ws_message`` records -> canonical ``trade`` events (see the module docstring)."""

    source = "coinbase"

    def normalize(self, record: RawRecord) -> list[Event]:
        where = message_where("coinbase", record)
        if where is None:
            return []
        try:
            kind = msgspec.json.decode(record.value, type=_Typed).type
        except msgspec.DecodeError as exc:
            msg = f"not a Coinbase message (a JSON object with a string 'type'): {exc}"
            raise DecodeError(msg, where=where) from None
        if kind in _NO_EVENT:
            return []
        if kind == "error":
            # Coinbase's own words, as data (quoted, bounded): why it refused is what the
            # operator needs, a mistyped product or a channel that needs authentication.
            try:
                said = msgspec.json.decode(record.value)
            # (The type was read skipping the rest: bad UTF-8 further on is only found here.)
            except msgspec.DecodeError as exc:
                msg = f"Coinbase sent an error message whose reason cannot be read: {exc}"
                raise DecodeError(msg, where=where) from None
            why = " / ".join(str(said.get(k))[:200] for k in ("message", "reason") if said.get(k))
            msg = f"{where}: Coinbase sent an error message (a subscription was refused or dropped): {why!r}"
            raise ContractError(msg)
        if kind not in ("match", "last_match"):
            msg = f"{where}: unknown Coinbase message type {kind[:40]!r}"
            raise ContractError(msg)
        try:
            match = msgspec.json.decode(record.value, type=_Match)
        # (DecodeError too: the type was read skipping the rest, bad UTF-8 in a string included.)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecodeError(str(exc), where=f"{where} {kind}") from None
        if match.time.tzinfo is None:
            msg = f"expected an RFC 3339 time with a zone, got {match.time.isoformat()!r}"
            raise DecodeError(msg, where=where, path="$.time")
        try:
            occurred_at = match.time.astimezone(UTC)  # (UTC only, whatever zone it named)
        except OverflowError:  # "0001-01-01T00:00:00+01:00" decodes, but is before year 1 in UTC
            msg = (
                f"$.time: expected a time between the years 1 and 9999 in UTC, got {match.time.isoformat()!r}"
            )
            raise DecodeError(msg, where=where, path="$.time") from None
        price = positive_decimal(match.price, "$.price", where)
        quantity = positive_decimal(match.size, "$.size", where)
        # The sandbox numbers its trades itself: BTC-USD trade 5000 there is not production's 5000.
        # Production keeps the id it always had, so a replay after an upgrade still deduplicates.
        sandbox = environment_of(record.meta.get("url")) == "sandbox"
        scope = ("coinbase", "sandbox") if sandbox else ("coinbase",)
        return [
            Trade(
                event_id=stable_id(*scope, match.product_id, match.trade_id, prefix="trade-"),
                source="coinbase",
                occurred_at=occurred_at,
                ingested_at=record.received_at,
                payload=TradePayload(
                    trade_id=str(match.trade_id),
                    symbol=match.product_id,
                    price=price,
                    quantity=quantity,
                    taker_side="buy" if match.side == "sell" else "sell",
                    maker_order_id=match.maker_order_id,
                    taker_order_id=match.taker_order_id,
                    venue="coinbase-sandbox" if sandbox else "coinbase",
                ),
            )
        ]
