"""The normalise stage without a broker: raw-record decoding, routing, dead-lettering, wiring."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vigil.config import load_settings, shared_data_dir
from vigil.errors import ConfigError, DecodeError
from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.events.types import EVENT_CLASSES, Alert, Decision, IntelIndicator, Release
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TOPICS
from vigil.sources.base import Normalizer
from vigil.sources.bitcoin_normalize import BitcoinNormalizer
from vigil.sources.coinbase import CoinbaseNormalizer
from vigil.sources.normalize import (
    DLQ,
    OUTPUTS,
    NormalizeOperator,
    build,
    decode_raw,
    output_specs,
    source_of,
)
from vigil.sources.salesforce import SalesforceNormalizer
from vigil.stream.base import Record, State, StoreSpec

DATA = shared_data_dir()
RECEIVED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
MATCH = (
    b'{"type":"match","trade_id":1,"maker_order_id":"m","taker_order_id":"t","side":"sell",'
    b'"size":"2.5","price":"10.0","product_id":"SKL-USD","sequence":5,"time":"2021-04-17T16:43:37.1Z"}'
)


class ListContext:
    """An in-memory Context: what the operator emitted and dead-lettered, in order."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, Event]] = []
        self.dead: list[tuple[Record[Any], str]] = []
        #: The headers each dead letter was given, in the same order.
        self.dead_headers: list[list[tuple[str, bytes | None]] | None] = []

    @property
    def partition(self) -> int:
        return 0

    def state(self, store: StoreSpec) -> State:
        raise KeyError(store.id)

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self.emitted.append((topic, event))

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self.emitted.append((topic, record.event))

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        self.dead.append((record, reason))
        self.dead_headers.append(headers)

    def late(self, record: Record[Any]) -> None:
        raise AssertionError("normalise has no windows")


def _genesis() -> bytes:
    doc = json.loads(next((DATA / "chain" / "bitcoin").glob(f"block_0_*_{GENESIS}_2.json")).read_bytes())
    return json.dumps(doc.get("result", doc)).encode()


def _record(source: str, kind: str, value: bytes, offset: int, received: datetime = RECEIVED) -> Record[Any]:
    raw = RawRecord(source, kind, value, received, b"k")
    return Record(raw, f"raw.{source}", 0, offset, b"k", 0)


def _operator(prefix: str = "") -> NormalizeOperator:
    normalizers: dict[str, Normalizer] = {"bitcoin": BitcoinNormalizer(), "coinbase": CoinbaseNormalizer()}
    return NormalizeOperator(normalizers, prefix)


# ---------------------------------------------------------------------------- decode_raw


def test_source_is_the_part_after_raw_with_or_without_a_prefix() -> None:
    assert source_of("raw.coinbase") == "coinbase"
    assert source_of("test.normalize.ab12.raw.coinbase") == "coinbase"


@pytest.mark.parametrize("topic", ["events.market", "raw.", "xraw.coinbase"])
def test_a_topic_that_is_not_raw_is_refused_by_name(topic: str) -> None:
    with pytest.raises(ConfigError, match=f"topic {topic!r} is not a raw topic"):
        source_of(topic)


def test_decode_raw_reads_kind_time_and_meta_from_the_headers() -> None:
    sent = RawRecord("ethereum", "eth_logs", b"[]", RECEIVED, b"17", {"block_timestamp": 5})
    got = decode_raw("raw.ethereum", b"[]", b"17", sent.headers())
    assert got == sent


def test_decode_raw_without_a_receipt_time_names_the_header() -> None:
    # Taken as 1970, every event of the record was dead-lettered as a "forged time".
    with pytest.raises(DecodeError, match=r"header `vigil\.received_at` is missing"):
        decode_raw("raw.bitcoin", b"{}", None, None)
    stamped = [("vigil.received_at", RECEIVED.isoformat().encode())]
    assert decode_raw("raw.bitcoin", b"{}", None, stamped).kind == "unknown"
    # Twice, the last copy empty: it was read as 1970, past the check for a missing one.
    with pytest.raises(DecodeError, match=r"`vigil\.received_at` given more than once"):
        decode_raw("raw.bitcoin", b"{}", None, [*stamped, ("vigil.received_at", b"")])
    with pytest.raises(DecodeError, match=r"`vigil\.kind` given more than once"):
        decode_raw("raw.bitcoin", b"{}", None, [*stamped, ("vigil.kind", b"a"), ("vigil.kind", b"b")])


def test_a_receipt_time_with_an_offset_is_taken_in_utc() -> None:
    # The offset went on into every event's ingested_at; one of seconds was written "+05:00",
    # 30 s off.  Before year 1 in UTC, it is refused by name.
    got = decode_raw("raw.bitcoin", b"{}", None, [("vigil.received_at", b"2026-11-29T17:00:00+05:00:30")])
    assert got.received_at == datetime(2026, 11, 29, 11, 59, 30, tzinfo=UTC)
    assert got.received_at.tzinfo is UTC
    with pytest.raises(DecodeError, match=r"`vigil\.received_at` is outside the years 1-9999 in UTC"):
        decode_raw("raw.bitcoin", b"{}", None, [("vigil.received_at", b"0001-01-01T00:30:00+01:00")])


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        (
            [("vigil.kind", b"x"), ("vigil.received_at", b"yesterday")],
            "Invalid isoformat string: 'yesterday'",
        ),
        ([("vigil.kind", b"x"), ("vigil.received_at", b"2026-01-01T00:00:00")], "with a zone"),
        ([("vigil.kind", b"x"), ("vigil.meta", b"{not json")], "JSONDecodeError"),
        ([("vigil.kind", b"x"), ("vigil.meta", b"[1]")], "`vigil.meta` must be a JSON object"),
        ([("vigil.kind", b"\xff")], "UnicodeDecodeError"),
        # Nested past the fast path, 100,000 deep: a RecursionError stopped the stage.
        ([("vigil.kind", b"x"), ("vigil.meta", b"[" * 100_000)], "RecursionError"),
    ],
)
def test_unreadable_headers_are_a_decode_error_naming_them(
    headers: list[tuple[str, bytes]], match: str
) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode_raw("raw.bitcoin", b"{}", None, headers)
    assert info.value.where == "raw.bitcoin"


# ---------------------------------------------------------------------------- the operator


def test_events_go_to_the_topic_declaring_their_type() -> None:
    ctx = ListContext()
    _operator().process(
        [_record("bitcoin", "btc_block", _genesis(), 0), _record("coinbase", "ws_message", MATCH, 0)], ctx
    )
    topics = [topic for topic, _ in ctx.emitted]
    assert topics == ["events.chain", "events.market"]
    assert ctx.emitted[1][1].type == "trade"
    assert not ctx.dead


def test_a_prefix_renames_the_output_topics() -> None:
    ctx = ListContext()
    _operator("t.1.").process([_record("coinbase", "ws_message", MATCH, 0)], ctx)
    assert [topic for topic, _ in ctx.emitted] == ["t.1.events.market"]


def test_rejected_records_are_dead_lettered_with_source_kind_reason_and_exact_bytes() -> None:
    ctx = ListContext()
    garbage = b'{"hash": "00'
    batch: Sequence[Record[Any]] = [
        _record("bitcoin", "btc_block", garbage, 0),
        _record("bitcoin", "eth_block", _genesis(), 1),
        _record("coinbase", "ws_message", MATCH, 2),
    ]
    _operator().process(batch, ctx)
    assert [(r.offset, reason.split(":", 1)[0]) for r, reason in ctx.dead] == [
        (0, "bitcoin/btc_block"),
        (1, "bitcoin/eth_block"),
    ]
    assert "not valid JSON" in ctx.dead[0][1]
    assert "unknown record kind 'eth_block'" in ctx.dead[1][1]
    assert encode(ctx.dead[0][0].event) == garbage, (
        "the runtime encodes the dead record's event as its raw bytes"
    )
    assert len(ctx.emitted) == 1, "the good record after the bad ones is still normalised"


def test_a_dead_letter_keeps_the_headers_the_record_had_exactly() -> None:
    # Rebuilt from the parsed record, a letter lost trace headers and vigil.redriven_from (so a
    # redrive rebuilt from it no longer knew the record had failed again, and sent it again at
    # every run), and rewrote the time and the meta.
    given: list[tuple[str, bytes]] = [
        ("vigil.kind", b"btc_block"),
        ("vigil.received_at", b"2024-05-01T10:00:00Z"),
        ("vigil.meta", b'{"feed": "caf\xc3\xa9",  "n": 1.0}'),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("vigil.redriven_from", b"dlq.normalize[0]@17"),
    ]
    garbage = b'{"hash": "00'
    raw = decode_raw("raw.bitcoin", garbage, b"k", given)
    ctx = ListContext()
    _operator().process([Record(raw, "raw.bitcoin", 0, 7, b"k", 0)], ctx)
    assert [r.offset for r, _ in ctx.dead] == [7]
    assert ctx.dead_headers == [given]
    # A record made in memory (no headers read) is lettered with the headers it would be sent with.
    ctx = ListContext()
    made = _record("bitcoin", "btc_block", garbage, 8)
    _operator().process([made], ctx)
    assert ctx.dead_headers == [made.event.headers()]


def test_a_record_with_an_event_dated_far_after_its_receipt_is_dead_lettered() -> None:
    # A wrong clock or a forged time: the event would move its partition's watermark ahead, and
    # every later event of the partition would be late.  Coinbase: 5 minutes allowed; Bitcoin:
    # consensus accepts blocks dated up to two hours ahead.
    traded = datetime(2021, 4, 17, 16, 43, 37, 100_000, tzinfo=UTC)
    genesis_time = datetime(2009, 1, 3, 18, 15, 5, tzinfo=UTC)
    batch: Sequence[Record[Any]] = [
        _record("coinbase", "ws_message", MATCH, 0, traded - timedelta(minutes=4)),
        _record("coinbase", "ws_message", MATCH, 1, traded - timedelta(minutes=6)),
        _record("bitcoin", "btc_block", _genesis(), 2, genesis_time - timedelta(hours=2)),
        _record("bitcoin", "btc_block", _genesis(), 3, genesis_time - timedelta(hours=3)),
    ]
    ctx = ListContext()
    _operator().process(batch, ctx)
    assert [r.offset for r, _ in ctx.dead] == [1, 3]
    assert {type(e).__name__ for _, e in ctx.emitted} == {"Trade", "ChainTransfer"}
    reason = ctx.dead[0][1]
    assert reason.startswith("coinbase/ws_message: event ")
    assert "occurred_at 2021-04-17T16:43:37.100000+00:00 is 360s after the record was received" in reason
    assert "(2021-04-17T16:37:37.100000+00:00); at most 300s ahead is accepted from 'coinbase'" in reason
    assert "at most 7,500s ahead is accepted from 'bitcoin'" in ctx.dead[1][1]
    assert encode(ctx.dead[1][0].event) == _genesis()


def test_a_source_without_normaliser_is_dead_lettered() -> None:
    ctx = ListContext()
    _operator().process([_record("kraken", "ws_message", b"{}", 7)], ctx)
    ((record, reason),) = ctx.dead
    assert record.offset == 7
    assert "no normaliser for source 'kraken'" in reason


def test_input_a_normaliser_did_not_foresee_is_dead_lettered_loudly_and_the_stage_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Raised, an unforeseen error (a year 0001 timestamp overflowing astimezone, JSON nested
    # 100,000 deep) stopped the stage for every source, and again after every restart (the
    # offset is not committed): one syslog datagram was enough.
    class Fragile(Normalizer):
        source = "fragile"

        def normalize(self, record: RawRecord) -> list[Event]:
            if record.value == b"boom":
                raise OverflowError("date value out of range")
            return CoinbaseNormalizer().normalize(RawRecord("coinbase", "ws_message", MATCH, RECEIVED, b"k"))

    ctx = ListContext()
    records = [_record("fragile", "x", b"boom", 0), _record("fragile", "x", b"fine", 1)]
    NormalizeOperator({"fragile": Fragile()}).process(records, ctx)
    ((record, reason),) = ctx.dead
    assert record.offset == 0
    assert reason == "fragile/x: unexpected OverflowError: date value out of range"
    assert len(ctx.emitted) == 1
    assert "raw.fragile[0]@0 (fragile/x) dead-lettered: unexpected OverflowError" in caplog.text


class SizeCheckingContext(ListContext):
    """A context that prepares outputs as the Kafka runtime's does (encoded, size-checked)."""

    def prepare_emit(
        self, topic: str, event: Event, key: str | None = None, value: bytes | None = None
    ) -> Any:
        assert value is None or value == encode(event)
        if len(encode(event)) > 2_000:
            raise ValueError(f"a record of {len(encode(event)):,} bytes for {topic!r}; at most 2,000")
        return lambda: self.emit(topic, event, key)


def test_a_record_with_an_event_too_large_to_send_is_dead_lettered_whole() -> None:
    class Two(Normalizer):
        source = "two"

        def normalize(self, record: RawRecord) -> list[Event]:
            (small,) = CoinbaseNormalizer().normalize(
                RawRecord("coinbase", "ws_message", MATCH, RECEIVED, b"k")
            )
            big = msgspec.structs.replace(small, event_id="e" * int(record.value))
            return [small, big]

    ctx = SizeCheckingContext()
    NormalizeOperator({"two": Two()}).process(
        [_record("two", "x", b"5000", 0), _record("two", "x", b"10", 1)], ctx
    )
    ((record, reason),) = ctx.dead
    assert record.offset == 0
    assert "bytes for 'events.market'; at most 2,000" in reason
    assert len(ctx.emitted) == 2  # the second record's two events; none of the first's


@pytest.mark.parametrize("context", [ListContext, SizeCheckingContext])
def test_an_event_the_contract_refuses_is_dead_lettered_here_not_by_every_reader(
    context: type[ListContext],
) -> None:
    # A Salesforce count of 1e300 became an int of 997 bits: it encoded, and every reader of
    # events.saas refused it (counts are 64-bit), each dead-lettering it in its own stage, where
    # the raw record it came from is not at hand to redrive once the normaliser is fixed.
    def api_event(rows: str) -> bytes:
        doc = {
            "attributes": {"type": "ApiEvent"},
            "EventIdentifier": f"api-{rows}",
            "EventDate": "2026-03-01T11:05:00Z",
            "Username": "svc@acme.example",
            "ConnectedAppId": "0H45e000000001",
            "Operation": "Query",
            "RowsProcessed": rows,
        }
        return json.dumps({"records": [doc]}).encode()

    ctx = context()
    records = [
        _record("salesforce", "webhook", api_event(rows), n) for n, rows in enumerate(["1e300", "9000"])
    ]
    NormalizeOperator({"salesforce": SalesforceNormalizer()}).process(records, ctx)
    ((record, reason),) = ctx.dead
    assert record.offset == 0
    assert encode(record.event) == api_event("1e300")
    assert reason.startswith("salesforce/webhook: built CrmApiTokenUsed 'salesforce-")
    assert "which the canonical contract refuses" in reason
    assert "<= 9223372036854775807 - at `$.payload.records_accessed`" in reason
    ((topic, event),) = ctx.emitted
    assert topic == "events.saas"
    assert event.payload.records_accessed == 9000  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- build


def test_build_wires_inputs_dead_letters_and_outputs(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    app = build(
        settings, ["bitcoin", "coinbase"], name="n-unit", normalizers={"coinbase": CoinbaseNormalizer()}
    )
    assert app.inputs == ["raw.bitcoin", "raw.coinbase"]
    assert app.dlq_topic == DLQ
    # Created when missing, but not its own: the canonical topics' live settings are the
    # operator's (an owned topic's were set back to the declaration at every start).
    assert {s.name for s in app.output_topics} == {s.name for s in output_specs()}
    assert "events.market" in {s.name for s in app.output_topics}
    assert app.internal_topics == []
    prefixed = build(settings, ["bitcoin"], name="n-unit-2", topic_prefix="t.9.", batch_size=7)
    assert prefixed.inputs == ["t.9.raw.bitcoin"]
    assert prefixed.dlq_topic == "t.9.dlq.normalize"
    assert prefixed.batch_size == 7
    assert [s.name for s in prefixed.output_topics] == [f"t.9.{name}" for name in OUTPUTS]


def test_build_refuses_a_source_without_normaliser(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match=r"no normaliser for source\(s\) \['nope'\]; known: .*bitcoin"):
        build(settings, ["bitcoin", "nope"])


def test_outputs_cover_every_canonical_topic_and_the_indicator_topic() -> None:
    canonical = {cls for cls in EVENT_CLASSES if cls not in (Alert, Decision, Release)}
    assert {TOPICS.for_event(cls).name for cls in canonical} == set(OUTPUTS)
    assert [s.name for s in output_specs("p.")] == [f"p.{name}" for name in OUTPUTS]
    assert TOPICS.for_event(IntelIndicator).name == "intel.indicators"
