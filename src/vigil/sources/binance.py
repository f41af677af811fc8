"""Binance websocket market streams: connector and normaliser.

Protocol (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):
combined streams are named in the URL, ``/stream?streams=btcusdt@trade/ethusdt@aggTrade``,
and every message arrives wrapped as ``{"stream": name, "data": payload}``.  Nothing
needs to be sent after connecting.  The server sends a websocket ping every 20 s and
drops clients that do not answer with a pong (the websockets library answers them);
it also closes every connection after 24 h, which the reconnect loop absorbs.  Before it shuts a
server down it sends ``serverShutdown`` (``{"e": "serverShutdown", "E": <ms>}``) and asks clients
to connect again at once: the feed does, rather than waiting for the drop (see
:class:`~vigil.sources.websocket.WebsocketFeed`).

Liveness is websocket ping/pong only: Binance sends no heartbeat message, and a stream of an
illiquid symbol can carry no trade for minutes (the recorded spot session has streams with
none in 30 s), so there is no silence timeout unless ``heartbeat_timeout`` is set (for streams
known to be busy, to notice one that stalled while its connection still answers pings).

Gap detection per symbol:

- ``trade``: the trade id ``t`` is contiguous;
- ``aggTrade``: the aggregate id ``a`` is contiguous;
- ``depthUpdate`` (spot): ``U`` is the previous update's ``u + 1``; on futures the
  update names its predecessor in ``pu``, which must equal the previous ``u``.

Binance offers no way to replay a stream, so resync only re-baselines the counter
(and the ``ws_gap`` note records exactly which ids are missing; they can be fetched
from the REST ``historicalTrades`` endpoint, which Vigil does not do).

Normaliser: ``trade`` and ``aggTrade`` become canonical ``trade`` events (``m`` true
means the buyer was the maker, so the taker sold).  Aggregate trades get trade ids
``agg-<a>`` so they can never collide with individual trade ids; subscribe to one of
the two per symbol, not both, or volumes count twice.  Book, ticker and kline updates
yield nothing, array streams of them (``!ticker@arr``) too; a subscription reply and a
``serverShutdown`` yield nothing; an error (``{"code", "msg"}``, or nested,
``{"error": {"code", "msg"}, "id"}``) or an unknown event is rejected.
The market comes from the connection's URL (:func:`market_of`): each market numbers its trades
itself, so a futures or Binance.US trade's id and venue name its market; spot keeps ``binance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from vigil.config import Settings
from vigil.errors import ContractError, DecodeError
from vigil.events.base import Event, Id
from vigil.events.ids import stable_id
from vigil.events.types import Side, Trade, TradePayload
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer, check_options
from vigil.sources.trade_normalize import message_where, positive_decimal
from vigil.sources.websocket import Gap, Inspected, WebsocketFeed, heartbeat_option, str_list

DEFAULT_BASE_URL = "wss://stream.binance.com:9443"


def combined_url(base_url: str, streams: Sequence[str]) -> str:
    return f"{base_url.rstrip('/')}/stream?streams={'/'.join(streams)}"


class BinanceSource(WebsocketFeed):
    """Options (``vigil source binance``): ``streams`` (comma-separated, e.g.
    ``btcusdt@trade,ethusdt@trade``; required), ``url`` (base, default the spot endpoint),
    ``heartbeat_timeout`` (s: reconnect after that long without a message; default off, the
    websocket pings tell a dead connection)."""

    name = "binance"

    def __init__(self, streams: Sequence[str], *, base_url: str = DEFAULT_BASE_URL, **kwargs: Any) -> None:
        if not streams:
            msg = "binance: at least one stream is needed (e.g. streams=btcusdt@trade)"
            raise ValueError(msg)
        self.streams = list(streams)
        super().__init__(combined_url(base_url, self.streams), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> BinanceSource:
        check_options("binance", options, {"url", "streams", "heartbeat_timeout", "source_id"})
        return cls(
            str_list(options.get("streams", "")),
            base_url=options.get("url", DEFAULT_BASE_URL),
            source_id=options.get("source_id"),
            **heartbeat_option(options),
        )

    def subscribe_messages(self) -> list[str]:
        # Nothing to send: the URL names the streams.  Counters survive a reconnect, so trades
        # missed while away show up as a gap on the first one after it.
        return []

    def inspect(self, message: Any) -> Inspected:
        if not isinstance(message, dict):
            return Inspected()
        if _is_shutdown(message):
            return Inspected(channel=SERVER_SHUTDOWN, data=False, shutdown=True)
        stream = message.get("stream")
        data = message.get("data", message)
        if not isinstance(data, dict):
            # An array stream (``!ticker@arr``: every symbol's ticker in one message) is market
            # data without one key; anything else here (a reply's null result) is not.
            return Inspected(
                channel=stream if isinstance(stream, str) else None,
                data=isinstance(stream, str) and isinstance(data, list) and bool(data),
            )
        symbol = data.get("s")
        channel = stream if isinstance(stream, str) else data.get("e")
        if not isinstance(symbol, str):
            # Market data without a symbol of its own (spot partial depth, ``btcusdt@depth5``;
            # futures liquidations, symbol nested): data all the same, for the backoff.  A reply or
            # an error comes on no stream.
            market = isinstance(stream, str) and ("lastUpdateId" in data or isinstance(data.get("e"), str))
            return Inspected(channel=channel, data=market)
        event = data.get("e")
        gap: Gap | None = None
        if event == "trade" and isinstance(data.get("t"), int):
            gap = self.tracker.check(f"{symbol}:trade", data["t"])
        elif event == "aggTrade" and isinstance(data.get("a"), int):
            gap = self.tracker.check(f"{symbol}:aggTrade", data["a"])
        elif event == "depthUpdate" and isinstance(data.get("U"), int) and isinstance(data.get("u"), int):
            previous = data.get("pu")
            gap = self.tracker.check(
                f"{symbol}:depth",
                data["U"],
                data["u"],
                previous=previous if isinstance(previous, int) else None,
            )
        return Inspected(key=symbol.encode(), channel=channel, gaps=(gap,) if gap else ())


#: The event Binance sends before shutting a server down; a new connection is wanted at once.
SERVER_SHUTDOWN = "serverShutdown"


def _is_shutdown(message: dict[str, Any]) -> bool:
    """Whether ``message`` is a ``serverShutdown``: bare, as a combined stream's ``data``, or as
    the WebSocket API's ``event`` (the one shape Binance documents it in)."""
    for where in (message, message.get("data"), message.get("event")):
        if isinstance(where, dict) and where.get("e") == SERVER_SHUTDOWN:
            return True
    return False


# ---------------------------------------------------------------------------- normaliser


class _Error(msgspec.Struct):
    code: int | None = None
    msg: str | None = None


class _Event(msgspec.Struct):
    e: str | None = None


class _Envelope(msgspec.Struct):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")  # empty when absent (msgspec cannot make Raw optional)
    # A subscription reply ({"result": null, "id": 1}) or an error: {"code": ..., "msg": ...}, or
    # nested, {"error": {"code": ..., "msg": ...}, "id": 1}.
    id: int | str | None = None
    code: int | None = None
    msg: str | None = None
    error: _Error | None = None
    e: str | None = None
    event: _Event | None = None  # (the WebSocket API's wrapping of serverShutdown)


class _Trade(msgspec.Struct):
    e: str
    s: Id  # the trade's symbol: a trade of "" the contract refuses
    t: int
    p: str
    q: str
    T: int
    m: bool
    b: int | None = None
    a: int | None = None


class _AggTrade(msgspec.Struct):
    e: str
    s: Id  # the trade's symbol: a trade of "" the contract refuses
    a: int
    p: str
    q: str
    T: int
    m: bool


_NO_EVENT = frozenset(
    {"depthUpdate", "bookTicker", "kline", "24hrTicker", "24hrMiniTicker", "markPriceUpdate"}
)


def _time(ms: int, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        msg = f"expected a trade time in epoch milliseconds, got {ms}"
        raise DecodeError(msg, where=where, path="$.data.T") from None


def market_of(url: object) -> str:
    """The Binance market a connection's URL is on: ``usdm`` (fstream*.binance.com), ``coinm``
    (dstream*.binance.com), ``us`` (binance.us), ``testnet-spot`` (testnet.binance.vision),
    ``testnet-usdm``/``testnet-coinm`` (f/dstream.binancefuture.com) or ``spot``
    (stream.binance.com, data-stream.binance.vision, and any other host, such as a local replay
    of a spot recording)."""
    try:
        host = (urlsplit(url).hostname or "") if isinstance(url, str) else ""
    except ValueError:  # (an unclosed IPv6 bracket): none of the hosts below, so spot
        host = ""
    # Testnets number their trades apart from the real markets and from each other.
    # (data-stream.binance.vision is production spot data, not a testnet.)
    if host == "testnet.binance.vision" or host.endswith(".testnet.binance.vision"):
        return "testnet-spot"
    if host.endswith("binancefuture.com"):
        return "testnet-coinm" if host.startswith("dstream") else "testnet-usdm"
    if host.startswith("fstream"):
        return "usdm"
    if host.startswith("dstream"):
        return "coinm"
    if host == "binance.us" or host.endswith(".binance.us"):
        return "us"
    return "spot"


class BinanceNormalizer(Normalizer):
    """Binance ``ws_message`` records -> canonical ``trade`` events (see the module docstring)."""

    source = "binance"

    def normalize(self, record: RawRecord) -> list[Event]:
        where = message_where("binance", record)
        if where is None:
            return []
        try:
            envelope = msgspec.json.decode(record.value, type=_Envelope)
        except msgspec.DecodeError as exc:
            msg_0 = f"not a Binance stream message: {exc}"
            raise DecodeError(msg_0, where=where) from None
        # (A nested error carries the request's id and no top-level code: it read as the reply to
        # a SUBSCRIBE that succeeded, and a refused stream went unsaid.)
        error = envelope.error
        code, said = (error.code, error.msg) if error is not None else (envelope.code, envelope.msg)
        if error is not None or code is not None:
            msg = f"{where}: Binance sent an error: code {code}: {(said or '')[:200]!r}"
            raise ContractError(msg)
        market = market_of(record.meta.get("url"))
        if not envelope.data:
            if envelope.e is not None:  # a raw (not combined) stream: the payload is the message
                return self._payload(record.value, where, record.received_at, None, market)
            if envelope.event is not None and envelope.event.e == SERVER_SHUTDOWN:
                return []  # control: the connector reconnects
            if envelope.id is not None:
                return []  # reply to a SUBSCRIBE/UNSUBSCRIBE request
            msg = f"{where}: expected a combined-stream message with 'data', got neither 'data' nor 'e'"
            raise ContractError(msg)
        # The stream name as data (quoted, bounded): it is the exchange's text, reaching logs.
        where = f"{where} stream {envelope.stream[:80]!r}" if envelope.stream else where
        return self._payload(bytes(envelope.data), where, record.received_at, envelope.stream, market)

    def _payload(
        self, data: bytes, where: str, received_at: datetime, stream: str | None, market: str
    ) -> list[Event]:
        if data[:1] == b"[":
            # An array stream (``!ticker@arr``, ``!markPrice@arr``): every symbol's update in one
            # message, none of them a trade.
            try:
                kinds = {item.e for item in msgspec.json.decode(data, type=list[_Event])}
            except msgspec.DecodeError as exc:
                msg = f"expected an array of objects with a string 'e': {exc}"
                raise DecodeError(msg, where=where, path="$.data") from None
            unknown = sorted(str(k)[:40] for k in kinds - _NO_EVENT)
            if unknown:
                msg = (
                    f"{where}: unexpected event types in an array stream: {', '.join(map(repr, unknown[:5]))}"
                )
                raise ContractError(msg)
            return []
        try:
            event = msgspec.json.decode(data, type=_Event).e
        except msgspec.DecodeError as exc:
            msg = f"expected an object with a string 'e': {exc}"
            raise DecodeError(msg, where=where, path="$.data") from None
        if event is None:
            # Spot bookTicker and partial-depth payloads carry no "e"; the stream name says what they are.
            kind = (stream or "").partition("@")[2]
            if kind.startswith(("bookTicker", "depth")):
                return []
            msg = f"{where}: expected an event type 'e' (or a bookTicker/depth stream), got neither"
            raise ContractError(msg)
        if event in _NO_EVENT or event == SERVER_SHUTDOWN:  # (a shutdown: control, not data)
            return []
        try:
            if event == "trade":
                trade = msgspec.json.decode(data, type=_Trade)
                trade_id, id_parts = str(trade.t), ("trade", trade.t)
                symbol, price, qty, at, maker = trade.s, trade.p, trade.q, trade.T, trade.m
                orders = (trade.b, trade.a)
            elif event == "aggTrade":
                agg = msgspec.json.decode(data, type=_AggTrade)
                trade_id, id_parts = f"agg-{agg.a}", ("aggTrade", agg.a)
                symbol, price, qty, at, maker = agg.s, agg.p, agg.q, agg.T, agg.m
                orders = (None, None)
            else:
                msg = f"{where}: unknown Binance event type {event[:40]!r}"
                raise ContractError(msg)
        # (DecodeError too: "e" was read skipping the rest, bad UTF-8 in a string included.)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecodeError(str(exc), where=f"{where} {event}") from None
        buyer_order, seller_order = orders
        taker_side: Side = "sell" if maker else "buy"
        # Each market numbers its trades itself: BTCUSDT trade 5000 on spot and on futures are
        # two trades (spot ids as they always were).
        scope = ("binance",) if market == "spot" else ("binance", market)
        return [
            Trade(
                event_id=stable_id(*scope, symbol, *id_parts, prefix="trade-"),
                source="binance",
                occurred_at=_time(at, where),
                ingested_at=received_at,
                payload=TradePayload(
                    trade_id=trade_id,
                    symbol=symbol,
                    price=positive_decimal(price, "$.data.p", where),
                    quantity=positive_decimal(qty, "$.data.q", where),
                    taker_side=taker_side,
                    # The maker is the buyer when m is true; the order ids follow that role.
                    maker_order_id=_order(buyer_order if maker else seller_order),
                    taker_order_id=_order(seller_order if maker else buyer_order),
                    venue="binance" if market == "spot" else f"binance-{market}",
                ),
            )
        ]


def _order(order_id: int | None) -> str | None:
    return None if order_id is None else str(order_id)
