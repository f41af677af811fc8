"""The normalise application end to end on a real broker, with real recorded source data.

Raw records as the connectors publish them (real Ethereum and Bitcoin JSON-RPC responses,
the Coinbase websocket recording) are interleaved with malformed records of every kind
on isolated ``<prefix>raw.<source>`` topics.  The application runs in a thread on the
real runtime; the test reads its outputs ``read_committed`` and checks them against
what each normaliser yields in memory for the same bytes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from vigil.config import Settings, shared_data_dir
from vigil.errors import ContractError
from vigil.events.base import Event
from vigil.events.codec import decode_event
from vigil.events.records import DeadLetter
from vigil.hub.admin import ensure_topics
from vigil.hub.client import consumer_config, make_admin, producer_config, read_committed
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TOPICS, TopicSpec
from vigil.sources.base import Normalizer
from vigil.sources.bitcoin_normalize import BitcoinNormalizer
from vigil.sources.coinbase import CoinbaseNormalizer
from vigil.sources.ethereum_normalize import EthereumNormalizer
from vigil.sources.normalize import build
from vigil.stream.app import Application

DATA = shared_data_dir()
RECEIVED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SOURCES = ("bitcoin", "coinbase", "ethereum")
TIMEOUT = 45.0


def _normalizers() -> dict[str, Normalizer]:
    return {
        "bitcoin": BitcoinNormalizer(),
        "coinbase": CoinbaseNormalizer(),
        "ethereum": EthereumNormalizer(),
    }


# ---------------------------------------------------------------------------- real data


def _bitcoin_blocks() -> list[bytes]:
    blocks = []
    for path in sorted((DATA / "chain" / "bitcoin").glob("block_*_2.json")):
        doc = json.loads(path.read_bytes())
        blocks.append(json.dumps(doc.get("result", doc)).encode())
    return blocks


def _ethereum_block() -> bytes:
    doc = json.loads((DATA / "chain" / "ethereum" / "block_0x1ac9f3.json").read_bytes())
    return json.dumps(doc["result"]).encode()


def _ethereum_logs() -> list[tuple[bytes, int]]:
    """ethereum-etl's logs of blocks 17173049-50 back in eth_getLogs shape, one response per
    block, with the block's timestamp (the connector puts it in the record's meta)."""
    folder = DATA / "chain" / "ethereum"
    times = {
        b["number"]: b["timestamp"]
        for b in map(json.loads, (folder / "17173049_expected_blocks.json").read_text().splitlines())
    }
    by_block: dict[int, list[dict[str, Any]]] = {}
    for line in (DATA / "chain" / "ethereum" / "17173049_expected_logs.json").read_text().splitlines():
        if not line.strip():
            continue
        etl = json.loads(line)
        by_block.setdefault(etl["block_number"], []).append(
            {
                "address": etl["address"],
                "topics": etl["topics"],
                "data": etl["data"],
                "blockNumber": hex(etl["block_number"]),
                "blockHash": etl["block_hash"],
                "transactionHash": etl["transaction_hash"],
                "transactionIndex": hex(etl["transaction_index"]),
                "logIndex": hex(etl["log_index"]),
                "removed": False,
            }
        )
    return [(json.dumps(logs).encode(), times[n]) for n, logs in sorted(by_block.items())]


def _coinbase_messages() -> list[bytes]:
    lines = (DATA / "feeds" / "COINBASE.ws.28.0").read_bytes().split(b"\n")[1:]
    return [line.partition(b": ")[2] for line in lines if line.strip() and b" <- " not in line]


# ---------------------------------------------------------------------------- records


@dataclass
class Sent:
    """What the test wrote to a raw topic, and what should come of it."""

    source: str
    value: bytes | None
    headers: list[tuple[str, bytes]]
    key: bytes | None = None
    #: For malformed records: a fragment the dead letter's reason must contain.
    reason: str | None = None
    offset: int = -1


def good(source: str, kind: str, value: bytes, key: bytes | None = None, **meta: Any) -> Sent:
    return Sent(source, value, RawRecord(source, kind, value, RECEIVED, key, meta).headers(), key)


def bad(source: str, reason: str, value: bytes | None, headers: list[tuple[str, bytes]]) -> Sent:
    return Sent(source, value, headers, b"bad", reason)


def _headers(kind: str) -> list[tuple[str, bytes]]:
    return RawRecord("x", kind, b"", RECEIVED).headers()


def phase_one() -> list[Sent]:
    """Good records, then malformed ones of every kind, then good ones again, per source."""
    btc = _bitcoin_blocks()
    eth_logs = _ethereum_logs()
    coinbase = _coinbase_messages()
    half = len(coinbase) // 2
    missing_price = json.loads(next(m for m in coinbase if b'"type":"match"' in m))
    del missing_price["price"]
    return [
        *[good("bitcoin", "btc_block", b, key=str(i).encode()) for i, b in enumerate(btc[:2])],
        bad("bitcoin", "not valid JSON", b'{"hash": "00000000', _headers("btc_block")),
        bad(
            "bitcoin",
            "missing required field `hash`",
            json.dumps({"height": 1, "time": 1, "tx": []}).encode(),
            _headers("btc_block"),
        ),
        bad("bitcoin", "expected 'btc_block'", btc[0], _headers("eth_block")),
        bad("bitcoin", "header `vigil.received_at` is missing", btc[0], []),
        bad(
            "bitcoin",
            "unknown record kind 'unknown'",
            btc[0],
            [h for h in _headers("btc_block") if h[0] != "vigil.kind"],
        ),
        bad(
            "bitcoin",
            "vigil.received_at",
            btc[0],
            [("vigil.kind", b"btc_block"), ("vigil.received_at", b"yesterday")],
        ),
        bad("bitcoin", "vigil.meta", btc[0], [*_headers("btc_block"), ("vigil.meta", b"[1, 2]")]),
        bad("bitcoin", "tombstone", None, _headers("btc_block")),
        *[good("bitcoin", "btc_block", b, key=str(i).encode()) for i, b in enumerate(btc[2:], 2)],
        good("ethereum", "eth_block", _ethereum_block(), key=b"1755635"),
        bad("ethereum", "unknown record kind 'eth_receipt'", _ethereum_block(), _headers("eth_receipt")),
        bad(
            "ethereum",
            "missing required field `timestamp`",
            json.dumps({"number": "0x1", "hash": "0x00"}).encode(),
            _headers("eth_block"),
        ),
        *[
            good("ethereum", "eth_logs", logs, key=str(ts).encode(), block_timestamp=ts)
            for logs, ts in eth_logs
        ],
        *[good("coinbase", "ws_message", m) for m in coinbase[:half]],
        bad(
            "coinbase",
            "missing required field `price`",
            json.dumps(missing_price).encode(),
            _headers("ws_message"),
        ),
        bad(
            "coinbase",
            "Coinbase sent an error",
            b'{"type":"error","message":"Failed to subscribe"}',
            _headers("ws_message"),
        ),
        bad("coinbase", "not a Coinbase message", b"\xff\xfe not json", _headers("ws_message")),
        *[good("coinbase", "ws_message", m) for m in coinbase[half:]],
    ]


def phase_two() -> list[Sent]:
    """Records written while the application is down; the restarted one picks them up."""
    btc = _bitcoin_blocks()
    return [
        good("bitcoin", "btc_block", btc[0], key=b"again"),  # same block again: same event ids
        bad("ethereum", "expected 'eth_block' or 'eth_logs'", b"[]", _headers("eth_tx")),
        good("ethereum", "eth_block", _ethereum_block(), key=b"again"),
    ]


def expected_events(sent: list[Sent]) -> list[Event]:
    normalizers = _normalizers()
    out: list[Event] = []
    for s in sent:
        if s.reason is None:
            assert s.value is not None
            out += normalizers[s.source].normalize(
                RawRecord.from_headers(s.source, s.value, s.key, s.headers)
            )
    return out


# ---------------------------------------------------------------------------- broker helpers


@dataclass
class Topics:
    prefix: str

    def raw(self, source: str) -> str:
        return f"{self.prefix}raw.{source}"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq.normalize"

    def events(self, domain: str) -> str:
        return f"{self.prefix}events.{domain}"


def produce(settings: Settings, topics: Topics, sent: list[Sent]) -> None:
    """Write the records in order (one partition per raw topic) and note their offsets."""
    # (Records as large as the raw topics take, as the connectors' own sink allows.)
    producer = Producer(producer_config(settings, **{"message.max.bytes": 8 << 20}))
    pending: dict[int, Sent] = {}

    def delivered(index: int) -> Callable[[Any, Any], None]:
        def callback(err: Any, msg: Any) -> None:
            assert err is None, f"delivery to {msg.topic()} failed: {err}"
            pending.pop(index).offset = msg.offset()

        return callback

    for i, s in enumerate(sent):
        pending[i] = s
        producer.produce(
            topics.raw(s.source),
            value=s.value,
            key=s.key,
            headers=s.headers,
            partition=0,
            on_delivery=delivered(i),
        )
    assert producer.flush(30) == 0
    assert not pending, f"{len(pending)} raw records not acknowledged"


def read_all(
    settings: Settings, topic: str, isolation: str = "read_committed"
) -> list[tuple[bytes | None, bytes]]:
    """Every committed (or, with ``read_uncommitted``, every) record of ``topic`` up to its end."""
    if isolation == "read_committed":  # (up to the high watermark: see read_committed)
        return [(m.key(), m.value() or b"") for m in read_committed(settings, topic, TIMEOUT)]
    overrides = {"enable.partition.eof": True, "isolation.level": isolation}
    consumer = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex}", **overrides))
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(meta.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[tuple[bytes | None, bytes]] = []
    done: set[int] = set()
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(done) < len(parts):
            assert time.monotonic() < deadline, f"reading {topic} to its end timed out"
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    done.add(msg.partition())
                    continue
                done.discard(msg.partition())
                out.append((msg.key(), msg.value() or b""))
    finally:
        consumer.close()
    return out


def event_ids(settings: Settings, topic: str) -> list[str]:
    return [decode_event(value).event_id for _, value in read_all(settings, topic)]


def dead_letters(settings: Settings, topic: str) -> list[DeadLetter]:
    return [msgspec.json.decode(value, type=DeadLetter) for _, value in read_all(settings, topic)]


@dataclass
class Running:
    app: Application
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def stop(self) -> None:
        self.app.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "normalise application did not stop"
        assert not self.errors, f"normalise application failed: {self.errors[0]!r}"


def start(app: Application) -> Running:
    running = Running(app, threading.Thread(target=lambda: None))

    def target() -> None:
        try:
            app.run()
        except BaseException as exc:
            running.errors.append(exc)

    running.thread = threading.Thread(target=target, name=app.name, daemon=True)
    running.thread.start()
    return running


def wait_until(condition: Callable[[], bool], what: str, running: Running) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert not running.errors, f"normalise application failed: {running.errors[0]!r}"
        assert time.monotonic() < deadline, f"timed out after {TIMEOUT:g}s waiting for {what}"
        time.sleep(0.1)  # poll interval; the condition is what synchronises


# ---------------------------------------------------------------------------- the test


@pytest.fixture
def topics(settings: Settings) -> Iterator[Topics]:
    """Raw topics of one partition under a fresh prefix; everything under it is deleted afterwards."""
    t = Topics(f"test.normalize.{uuid.uuid4().hex[:8]}.")
    ensure_topics(
        settings,
        [
            TopicSpec(name=t.raw(s), key="source-specific", value="raw", description="test", partitions=1)
            for s in SOURCES
        ],
    )
    yield t
    admin = make_admin(settings)
    mine = [name for name in admin.list_topics(timeout=10).topics if name.startswith(t.prefix)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result()


def test_raw_records_become_canonical_events_bad_ones_dead_letters_and_restart_adds_nothing(
    settings: Settings, topics: Topics
) -> None:
    name = f"{topics.prefix}normalize"

    def app() -> Application:
        return build(settings, SOURCES, name=name, topic_prefix=topics.prefix, normalizers=_normalizers())

    first = phase_one()
    produce(settings, topics, first)
    want = expected_events(first)
    want_chain = {e.event_id for e in want if e.type in ("chain_transfer", "token_approval")}
    want_market = {e.event_id for e in want if e.type == "trade"}
    assert len(want_chain) > 100  # real data, enough of it
    assert len(want_market) == 107
    bad_first = [s for s in first if s.reason is not None]

    running = start(app())
    wait_until(
        lambda: (
            len(read_all(settings, topics.dlq)) >= len(bad_first)
            and len(read_all(settings, topics.events("market"))) >= len(want_market)
            and len(read_all(settings, topics.events("chain"))) >= len(want_chain)
        ),
        "phase one's outputs",
        running,
    )
    running.stop()

    chain = event_ids(settings, topics.events("chain"))
    market = event_ids(settings, topics.events("market"))
    assert set(chain) == want_chain
    assert len(chain) == len(want_chain)
    assert set(market) == want_market
    assert len(market) == len(want_market)
    letters = dead_letters(settings, topics.dlq)
    assert len(letters) == len(bad_first)
    by_place = {(d.topic, d.offset): d for d in letters}
    for s in bad_first:
        letter = by_place[(topics.raw(s.source), s.offset)]
        assert s.reason is not None
        assert s.reason in letter.reason, (s.reason, letter.reason)
        assert letter.raw == (s.value or b""), "the dead letter keeps the raw bytes as received"
        # ...and what the record's kind, time and meta were read from, so the letter is the record
        # whole once the raw topic has dropped it (those the stage rebuilt keep the same values).
        assert letter.headers is not None
        assert {k: v for k, v in letter.headers if k in dict(s.headers)} == dict(s.headers)
        assert (letter.key, letter.stage, letter.partition) == (s.key, name, 0)
    # The flow went on: records after the bad ones were normalised.
    after_bad = [s for s in first if s.source == "coinbase"][-1]
    assert after_bad.reason is None
    assert after_bad.offset > max(s.offset for s in bad_first if s.source == "coinbase")
    last_trades = expected_events([s for s in first if s.source == "coinbase"][-2000:])
    assert last_trades
    assert {e.event_id for e in last_trades} <= set(market)

    # Restart: the same group resumes after its committed offsets, so nothing is emitted twice;
    # records written while it was down are processed once.
    second = phase_two()
    produce(settings, topics, second)
    bad_second = [s for s in second if s.reason is not None]
    running = start(app())
    wait_until(
        lambda: len(read_all(settings, topics.dlq)) >= len(bad_first) + len(bad_second),
        "phase two's dead letter",
        running,
    )
    # The dead letter comes before the phase-two blocks' events; wait for those too.
    extra = Counter(e.event_id for e in expected_events(second))
    wait_until(
        lambda: len(event_ids(settings, topics.events("chain"))) >= len(chain) + sum(extra.values()),
        "phase two's events",
        running,
    )
    running.stop()

    chain_after = Counter(event_ids(settings, topics.events("chain")))
    assert chain_after == Counter(chain) + extra, (
        "each record's events exactly once, repeats only where re-sent"
    )
    assert Counter(event_ids(settings, topics.events("market"))) == Counter(market)
    assert len(dead_letters(settings, topics.dlq)) == len(bad_first) + len(bad_second)


class Crash(BaseException):
    """The process going down mid-transaction (not an error of a record: those are dead-lettered)."""


class CrashOnce(Normalizer):
    """The Coinbase normaliser that brings the process down on one record, the first time only:
    a crash mid-transaction."""

    source = "coinbase"

    def __init__(self, poison: bytes) -> None:
        self._inner = CoinbaseNormalizer()
        self._poison: bytes | None = poison

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.value == self._poison:
            self._poison = None
            msg = "the process goes down"
            raise Crash(msg)
        return self._inner.normalize(record)


def test_a_crash_mid_transaction_leaves_nothing_visible_and_the_restart_emits_each_event_once(
    settings: Settings, topics: Topics
) -> None:
    messages = _coinbase_messages()
    sent = [good("coinbase", "ws_message", m) for m in messages]
    poison = sent[-1]
    want = Counter(e.event_id for e in expected_events(sent))
    assert poison.value is not None
    name = f"{topics.prefix}normalize"
    market = topics.events("market")

    # No checkpoint before the crash: everything the first run emitted is in the open transaction.
    # The poison goes in once the first run's events have reached the broker (sent in the same
    # batch, they were still in the client's queue when the crash's abort purged them: nothing
    # of the aborted transaction reached the topic, and the test's premise failed at random).
    produce(settings, topics, sent[:-1])
    crashing = build(
        settings,
        ["coinbase"],
        name=name,
        topic_prefix=topics.prefix,
        normalizers={"coinbase": CrashOnce(poison.value)},
        checkpoint_interval_s=600,
    )
    running = start(crashing)
    wait_until(
        lambda: len(read_all(settings, market, isolation="read_uncommitted")) > 0,
        "the first run's events, uncommitted",
        running,
    )
    produce(settings, topics, [poison])
    running.thread.join(TIMEOUT)
    assert not running.thread.is_alive(), "the application did not stop on the crash"
    (error,) = running.errors
    assert isinstance(error, Crash)
    assert event_ids(settings, market) == [], "read_committed sees nothing of the aborted transaction"
    uncommitted = read_all(settings, market, isolation="read_uncommitted")
    assert len(uncommitted) > 0, "the first run did emit, inside the transaction it aborted"

    restarted = start(
        build(settings, ["coinbase"], name=name, topic_prefix=topics.prefix, normalizers=_normalizers())
    )
    wait_until(
        lambda: len(event_ids(settings, market)) >= sum(want.values()), "the restart's trades", restarted
    )
    restarted.stop()
    assert Counter(event_ids(settings, market)) == want
    assert dead_letters(settings, topics.dlq) == []


def test_a_long_reason_is_cut_and_does_not_push_the_records_bytes_out_of_its_letter(
    settings: Settings,
) -> None:
    # Reasons quote the bad value (msgspec quotes it whole): a 450 KB record rejected with its
    # value quoted made a letter over 1 MB, and its bytes were left out, so it could no longer
    # be redriven once raw retention had passed its offset.
    class Quoting(Normalizer):
        source = "bitcoin"

        def normalize(self, record: RawRecord) -> list[Event]:
            msg = f"expected a block, got {record.value.decode()!r}"
            raise ContractError(msg)

    t = Topics(f"test.normalize.{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings, [replace(TOPICS.get("raw.bitcoin"), name=t.raw("bitcoin"), partitions=1)])
    try:
        value = b"x" * 450_000
        sent = [good("bitcoin", "btc_block", value, b"1")]
        produce(settings, t, sent)
        name = f"{t.prefix}normalize"
        running = start(
            build(
                settings, ("bitcoin",), name=name, topic_prefix=t.prefix, normalizers={"bitcoin": Quoting()}
            )
        )
        wait_until(lambda: bool(read_all(settings, t.dlq)), "the dead letter", running)
        running.stop()
        (letter,) = dead_letters(settings, t.dlq)
        assert letter.raw == value
        assert letter.reason.startswith("bitcoin/btc_block: expected a block, got 'xxx")
        whole = len("bitcoin/btc_block: expected a block, got ''") + len(value)
        assert letter.reason.endswith(f"... ({whole:,} characters in all)")
        assert len(letter.reason) < 4_100
    finally:
        admin = make_admin(settings)
        mine = [n for n in admin.list_topics(timeout=10).topics if n.startswith(t.prefix)]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                future.result()


def test_a_bad_record_too_large_for_a_dead_letter_is_dead_lettered_without_its_bytes(
    settings: Settings,
) -> None:
    # raw.bitcoin takes records up to 64 MB (a block is one record); a dead letter may be 1 MB.
    # A bad block's letter, refused, stopped the stage for every source, again after restarts.
    t = Topics(f"test.normalize.{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings, [replace(TOPICS.get("raw.bitcoin"), name=t.raw("bitcoin"), partitions=1)])
    try:
        noise = bytes(range(256)) * 8_000  # 2 MB, and not JSON
        blocks = _bitcoin_blocks()
        sent = [good("bitcoin", "btc_block", noise, b"1"), good("bitcoin", "btc_block", blocks[0], b"2")]
        produce(settings, t, sent)
        want = {e.event_id for e in expected_events(sent[1:])}
        assert want
        name = f"{t.prefix}normalize"
        running = start(
            build(settings, ("bitcoin",), name=name, topic_prefix=t.prefix, normalizers=_normalizers())
        )
        wait_until(
            lambda: (
                bool(read_all(settings, t.dlq)) and len(read_all(settings, t.events("chain"))) >= len(want)
            ),
            "the dead letter and the next block's events",
            running,
        )
        running.stop()
        (letter,) = dead_letters(settings, t.dlq)
        assert letter.raw == b""
        assert (letter.topic, letter.offset) == (t.raw("bitcoin"), sent[0].offset)
        assert f"its {len(noise):,} bytes are left out" in letter.reason
        assert set(event_ids(settings, t.events("chain"))) == want
    finally:
        admin = make_admin(settings)
        mine = [n for n in admin.list_topics(timeout=10).topics if n.startswith(t.prefix)]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                future.result()
