"""The back-end ingest API against real Kafka: acknowledged means in Kafka; a broker outage
is absorbed by the bounded buffer (202, then 503 + Retry-After) and nothing accepted is lost."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from tests.integration.kafka_read import read_raw, wait_for

from vigil.config import Settings, load_settings
from vigil.events.base import Event
from vigil.events.codec import decode_event, encode
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter
from vigil.hub.admin import ensure_topics
from vigil.hub.broker import LocalBroker, free_port_block
from vigil.hub.topics import TopicSpec
from vigil.sources.backend import BackendIngestSource, BackendNormalizer, hash_key
from vigil.sources.sink import KafkaRawSink

REPO = Path(__file__).resolve().parents[3]
KEY = "integration-test-key-3c1d"  # a test value, not a secret
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}


def events(n: int, tag: str) -> list[bytes]:
    """``n`` distinct valid canonical events (examples re-timed so their ids differ)."""
    base = datetime(2026, 11, 29, 9, tzinfo=UTC)
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        for e in example_events(base + timedelta(minutes=i)):
            out.append(encode(msgspec.structs.replace(e, event_id=f"{tag}-{len(out)}")))
            if len(out) == n:
                break
        i += 1
    return out


def make_topics(settings: Settings) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    raw, dlq = f"test.backend.raw.{suffix}", f"test.backend.dlq.{suffix}"
    ensure_topics(
        settings,
        [TopicSpec(name=t, key="k", value="raw", description="test", partitions=1) for t in (raw, dlq)],
    )
    return raw, dlq


class Running:
    def __init__(self, source: BackendIngestSource, sink: KafkaRawSink) -> None:
        self.source, self.sink = source, sink
        self.thread = threading.Thread(target=source.run, args=(sink,))
        self.thread.start()
        assert source.ready.wait(30)
        self.url = f"http://127.0.0.1:{source.port}/v1"

    def close(self) -> None:
        self.source.stop()
        self.thread.join(60)
        self.sink.close()


@pytest.fixture
def ingest(settings: Settings) -> Iterator[tuple[Running, str, str]]:
    raw, dlq = make_topics(settings)
    sink = KafkaRawSink(
        settings,
        source_id=f"backend-test-{uuid.uuid4().hex[:8]}",
        topic_for=lambda r: dlq if r.kind == "rejected" else raw,
    )
    # A generous ack timeout: the first publish of the session may also create the transaction
    # log and initialise transactions, which on a loaded machine outlasts the default 5 s (202).
    running = Running(BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, ack_timeout=60), sink)
    try:
        yield running, raw, dlq
    finally:
        running.close()


def test_acknowledged_events_are_in_kafka_and_bad_lines_dead_lettered(
    ingest: tuple[Running, str, str], settings: Settings
) -> None:
    running, raw, dlq = ingest
    good = events(5, "ok")
    body = b"\n".join([*good[:3], b'{"type": "withdrawal_request"}', *good[3:]]) + b"\n"
    resp = httpx.post(f"{running.url}/events", content=body, headers=AUTH, timeout=90)
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 5
    assert resp.json()["errors"][0]["line"] == 4
    # 200 means committed: read right away, no waiting.
    records = read_raw(settings, raw, "backend")
    assert [r.value for r in records] == good
    assert {r.kind for r in records} == {"canonical"}
    normalised = [BackendNormalizer().normalize(r)[0].event_id for r in records]
    assert normalised == [decode_event(g).event_id for g in good]
    (letter,) = read_raw(settings, dlq, "backend")
    dead = msgspec.json.decode(letter.value, type=DeadLetter)
    assert dead.raw == b'{"type": "withdrawal_request"}'
    assert "line 4" in dead.reason


def test_unauthenticated_requests_write_nothing(ingest: tuple[Running, str, str], settings: Settings) -> None:
    running, raw, _ = ingest
    resp = httpx.post(
        f"{running.url}/events",
        content=events(1, "x")[0],
        headers={**AUTH, "Authorization": "Bearer stolen?"},
    )
    assert resp.status_code == 401
    assert read_raw(settings, raw, "backend") == []


def test_broker_outage_buffers_then_503_and_loses_nothing(tmp_path: Path) -> None:
    """A broker of our own, stopped and restarted under the running API."""
    broker = LocalBroker(
        home=tmp_path, port=free_port_block(2), dist_root=REPO / ".vigil" / "kafka-dist", heap_mb=384
    )
    info = broker.start(nodes=1)
    own = load_settings(kafka_bootstrap=info.bootstrap, home=tmp_path / "state")
    try:
        raw, dlq = make_topics(own)
        sink = KafkaRawSink(
            own,
            source_id="backend-outage",
            topic_for=lambda r: dlq if r.kind == "rejected" else raw,
            timeout_s=10,
        )
        source = BackendIngestSource(
            keys={"wallet": hash_key(KEY)}, port=0, max_buffered_records=20, ack_timeout=1.0, retry_after=7
        )
        running = Running(source, sink)
        try:
            accepted: list[bytes] = []
            first = events(3, "before")
            # The first publish also initialises the producer's transactions on a fresh broker,
            # which can outlast the 1 s ack timeout: accepted either way, then durable.
            resp = httpx.post(f"{running.url}/events", content=b"\n".join(first), headers=AUTH, timeout=30)
            assert resp.status_code in (200, 202), resp.text
            wait_for(lambda: source.buffer is not None and source.buffer.buffered == 0, 60, "first batch")
            accepted += first

            broker.kill_node(1)
            statuses: list[int] = []
            batch_no = 0
            while 503 not in statuses:
                batch = events(4, f"outage{batch_no}")
                batch_no += 1
                resp = httpx.post(
                    f"{running.url}/events", content=b"\n".join(batch), headers=AUTH, timeout=30
                )
                statuses.append(resp.status_code)
                if resp.status_code == 202:
                    assert resp.json()["queued"] is True
                    accepted += batch
                else:
                    assert resp.status_code == 503, resp.text
                    assert resp.headers["Retry-After"] == "7"
                assert batch_no < 20, f"buffer never filled: {statuses}"
            assert statuses.count(202) == 5  # 20 records of capacity / 4 per request
            assert source.buffer is not None
            assert source.buffer.buffered == 20

            broker.start_node(1)
            broker.wait_ready()
            wait_for(lambda: source.buffer is not None and source.buffer.buffered == 0, 90, "buffer to drain")
            after = events(2, "after")
            # Durable within the 1 s ack timeout (200) or just after it (202) on a cold broker.
            resp = httpx.post(f"{running.url}/events", content=b"\n".join(after), headers=AUTH, timeout=30)
            assert resp.status_code in (200, 202), resp.text
            wait_for(lambda: source.buffer is not None and source.buffer.buffered == 0, 60, "the last batch")
            accepted += after
        finally:
            running.close()
        got = [r.value for r in read_raw(own, raw, "backend")]
        assert sorted(got) == sorted(accepted)  # everything accepted, nothing twice
        assert got[:3] == first  # and in order
        assert len(set(got)) == len(got)
    finally:
        broker.stop()


def test_events_a_service_may_not_send_are_dead_lettered_and_the_rest_committed(
    ingest: tuple[Running, str, str], settings: Settings
) -> None:
    # "wallet" has no entry in backend_scopes: identity, payments and market events only, and
    # never under a connector's name.
    running, raw, dlq = ingest
    examples = {e.type: e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC))}

    def sent(type_name: str, source: str) -> Event:
        return msgspec.structs.replace(examples[type_name], event_id=f"scoped-{type_name}", source=source)

    login, transfer = sent("login", "wallet"), sent("chain_transfer", "wallet")
    forged, deposit = sent("logout", "cloudtrail"), sent("deposit", "wallet")
    body = b"\n".join(encode(e) for e in (login, transfer, forged, deposit))
    resp = httpx.post(f"{running.url}/events", content=body, headers=AUTH, timeout=90)
    assert resp.status_code == 200, resp.text
    assert [e["line"] for e in resp.json()["errors"]] == [2, 3]
    assert [r.value for r in read_raw(settings, raw, "backend")] == [encode(login), encode(deposit)]
    letters = [msgspec.json.decode(r.value, type=DeadLetter) for r in read_raw(settings, dlq, "backend")]
    assert [letter.raw for letter in letters] == [encode(transfer), encode(forged)]
    assert letters[0].reason.startswith("line 2: type 'chain_transfer' (chain) is outside the scope of")
    assert letters[1].reason == (
        "line 3: source 'cloudtrail' is a connector's: its events come from that connector, "
        "not the ingest API"
    )
