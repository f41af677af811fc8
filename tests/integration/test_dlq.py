"""Dead letters on the real broker: grouped by reason, and redriven to where they came from."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Message, Producer, TopicPartition
from tests.integration.raw_headers import produce_with_raw_headers
from typer.testing import CliRunner

from vigil.cli import app
from vigil.config import Settings
from vigil.errors import BrokerError, ConfigError, TopicError
from vigil.events.codec import encode
from vigil.events.records import DeadLetter
from vigil.events.types import Payment
from vigil.hub import dlq, redrive
from vigil.hub.admin import ensure_topics
from vigil.hub.client import make_admin, make_producer, read_committed
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec

NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)


def letter(
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    stage: str = "normalize",
    *,
    key: bytes | None = None,
    raw: bytes = b"",
) -> DeadLetter:
    # (No key and no bytes, as a letter of a record too large to carry has none: the record at
    # the offset is taken as the one dead-lettered.)
    return DeadLetter(
        stage=stage,
        reason=reason,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        raw=raw,
        failed_at=NOW,
    )


def post(settings: Settings, topic: str, letters: list[DeadLetter]) -> None:
    producer = make_producer(settings)
    for one in letters:
        producer.produce(topic, value=encode(one), key=one.topic.encode())
    assert producer.flush(30) == 0


def copies(settings: Settings, topic: str) -> list[Message]:
    return [m for m in read_committed(settings, topic) if redrive.REDRIVEN_FROM in dict(m.headers() or [])]


#: The partition each fixture record was put in (by its producer, not by its key's hash).
PARTITION_OF = {b"k0": 0, b"k1": 1, b"k2": 0}


@contextlib.contextmanager
def made(settings: Settings, specs: list[TopicSpec]) -> Iterator[None]:
    """The topics, deleted after (best effort: a failed test leaves them to its broker)."""
    ensure_topics(settings, specs)
    yield
    admin = make_admin(settings)  # (kept while its futures run)
    live = admin.list_topics(timeout=10).topics
    # (With the topic naming the letters a redrive sent, if one was made.)
    ledgers = [redrive.ledger_topic(s.name) for s in specs if redrive.ledger_topic(s.name) in live]
    for future in admin.delete_topics([s.name for s in specs] + ledgers, operation_timeout=30).values():
        future.result(60)


@pytest.fixture
def topics(settings: Settings, unique_topic: str) -> Iterator[tuple[str, str, list[RawRecord]]]:
    """A raw topic of two partitions holding three records (offsets p0: 0, 1; p1: 0) and an
    empty dead-letter topic; both deleted after the test."""
    src, dead = f"{unique_topic}.raw", f"{unique_topic}.dlq"
    specs = [
        TopicSpec(src, "source", "raw", "redrive test input", partitions=2),
        TopicSpec(dead, "source", "dead_letter", "redrive test letters", partitions=1),
    ]
    with made(settings, specs):
        records = [
            RawRecord(
                "coinbase", "ws_message", f'{{"n": {i}}}'.encode(), NOW, key=f"k{i}".encode(), meta={"i": i}
            )
            for i in range(3)
        ]
        producer = make_producer(settings)
        for record in records:
            producer.produce(
                src,
                value=record.value,
                key=record.key,
                headers=record.headers(),
                partition=PARTITION_OF[record.key],
            )
        assert producer.flush(30) == 0
        yield src, dead, records


def test_redrive_appends_each_original_once_and_says_what_it_cannot(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    src, dead, records = topics
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "coinbase/ws_message: Expected `str` of length >= 1 - at `$.product_id`"),
            letter(src, 1, 0, "coinbase/ws_message: Expected `str` of length >= 1 - at `$.product_id`"),
            letter(src, 0, 7, "coinbase/ws_message: past the end"),
            letter("http:/v1/events", -1, -1, "line 3: Expected `float` >= 0.0", stage="ingest"),
        ],
    )

    dry = redrive.redrive(settings, dead, allow_topics=[src], dry_run=True)
    assert (dry.redriven, len(dry.unavailable), dry.appended) == (2, 2, [])
    assert copies(settings, src) == []

    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert done.redriven == 2
    got = copies(settings, src)
    # The originals again, key, value and headers exactly (their kind, time and meta), each
    # naming its letter; a raw record read from a copy is the original's.
    assert sorted((m.key(), m.value(), dict(m.headers() or [])[redrive.REDRIVEN_FROM]) for m in got) == [
        (b"k0", records[0].value, f"{dead}[0]@0".encode()),
        (b"k1", records[1].value, f"{dead}[0]@1".encode()),
    ]
    for m in got:
        again = RawRecord.from_headers("coinbase", m.value() or b"", m.key(), m.headers())
        assert again == next(r for r in records if r.key == m.key())
    assert sorted(done.appended) == sorted(f"{m.topic()}[{m.partition()}]@{m.offset()}" for m in got)
    (gone, not_kafka) = done.unavailable
    assert f"{dead}[0]@2: {src}[0]@7 is past the end (2)" in gone
    assert "not from Kafka" in not_kafka

    # Run again: the position was kept with the records, nothing is sent twice.
    assert redrive.redrive(settings, dead, allow_topics=[src]).redriven == 0
    # A letter written since is the only one the next redrive sends.
    post(settings, dead, [letter(src, 0, 1, "binance/ws_message: Invalid UTF-8")])
    later = redrive.redrive(settings, dead, allow_topics=[src])
    assert later.redriven == 1
    assert len(copies(settings, src)) == 3

    # Every run of the dead-letter topic shares what was sent, whatever its filter: nothing new
    # for "BINANCE" (its case ignored), the letter it matches was sent by the run without one.
    binance = redrive.redrive(settings, dead, allow_topics=[src], reason_contains="BINANCE")
    assert (binance.redriven, binance.group) == (0, done.group)
    # From the beginning: every letter read again, those that cannot be sent listed again, and
    # none sent again.
    reread = redrive.redrive(settings, dead, allow_topics=[src], from_beginning=True)
    assert (reread.redriven, reread.sent_before, len(reread.unavailable)) == (0, 3, 2)
    everything = copies(settings, src)
    assert len(everything) == 3
    # Each copy went to the partition its original was in (their producer chose it, not the key).
    assert all(m.partition() == PARTITION_OF[m.key()] for m in everything)  # type: ignore[index]


@pytest.mark.parametrize(
    ("read_on", "readers"),
    [(redrive.READ_ON, redrive.READERS), (0, 1)],
    ids=["reading-on", "a-seek-a-letter"],
)
def test_originals_are_read_back_whatever_the_order_of_their_letters(
    settings: Settings, unique_topic: str, monkeypatch: pytest.MonkeyPatch, read_on: int, readers: int
) -> None:
    # Letters mostly follow their records (read on), but go back, jump ahead and switch
    # partitions too; an aborted record sits among them.  (0, 1): every letter sends the one
    # consumer to its record.
    monkeypatch.setattr(redrive, "READ_ON", read_on)
    monkeypatch.setattr(redrive, "READERS", readers)
    src, dead = f"{unique_topic}.raw", f"{unique_topic}.dlq"
    specs = [
        TopicSpec(src, "source", "raw", "redrive test input", partitions=2),
        TopicSpec(dead, "source", "dead_letter", "redrive test letters", partitions=1),
    ]
    with made(settings, specs):
        producer = make_producer(settings, **{"transactional.id": f"{dead}.writer"})
        producer.init_transactions(30)
        for commit in (True, False, True):  # p0: 0-4, aborted 5 (marker 6), 7-11; p1: 0-4, 6-10
            producer.begin_transaction()
            for partition in (0, 1):
                for i in range(1 if not commit else 5):
                    value = f"p{partition}-{'aborted' if not commit else 'kept'}-{i}".encode()
                    producer.produce(src, value=value, key=value, partition=partition)
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        wanted = [(0, 1), (0, 2), (1, 0), (0, 3), (0, 10), (1, 9), (0, 0), (1, 1), (0, 5), (0, 8)]
        records = {
            (m.partition(), m.offset()): m.value()
            for m in read_committed(settings, src)
            if m.offset() is not None
        }
        post(
            settings,
            dead,
            [
                letter(src, p, o, "r", key=records.get((p, o)), raw=records.get((p, o), b""))
                for p, o in wanted
            ],
        )
        done = redrive.redrive(settings, dead, allow_topics=[src])
        assert done.unavailable == [f"{dead}[0]@8: {src}[0]@5 is no committed record"]
        sent = {dict(m.headers() or [])[redrive.REDRIVEN_FROM]: m.value() for m in copies(settings, src)}
        assert sent == {
            f"{dead}[0]@{n}".encode(): records[where] for n, where in enumerate(wanted) if where != (0, 5)
        }


def test_redrive_sends_only_to_stages_inputs(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # A letter's topic is data: whoever may write the dead-letter topic names it.  An old record
    # appended again to a compacted topic or an output does harm (a connector's cursor rewound).
    src, dead, _ = topics
    post(
        settings,
        dead,
        [letter(src, 0, 0, "x"), letter("vigil.cursors", 0, 0, "x"), letter("decisions", 0, 0, "x")],
    )
    refused = redrive.redrive(settings, dead)
    assert refused.redriven == 0
    assert [u.split(": ", 1)[1].split(" is ")[0] for u in refused.refused] == [
        repr(src),
        "'vigil.cursors'",
        "'decisions'",
    ]
    assert all("is no stage's input" in u for u in refused.refused)
    assert copies(settings, src) == []


def test_the_record_at_the_offset_must_be_the_one_dead_lettered(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # A source topic deleted and made again holds another record at the letter's offset.
    src, dead, records = topics
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "same", key=records[0].key, raw=records[0].value),
            letter(src, 1, 0, "other bytes", key=records[1].key, raw=b'{"n": 99}'),
            letter(src, 0, 1, "other key", key=b"k9", raw=records[2].value),
        ],
    )
    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert done.redriven == 1
    assert [u.split(": ", 1)[0] for u in done.unavailable] == [f"{dead}[0]@1", f"{dead}[0]@2"]
    assert all("is another record than the one dead-lettered" in u for u in done.unavailable)


def test_an_event_whose_header_names_cannot_be_read_is_sent_without_them_a_raw_record_is_not(
    settings: Settings, unique_topic: str
) -> None:
    # Header names in bytes that are not UTF-8 (any producer but the Python client may write
    # them) cannot be read here.  A raw record's headers are its kind and time: without them it
    # is not the record.  A canonical event is read by its bytes alone: it was called unsendable
    # all the same (found in review, 2026-12-04); now it is sent without them, and said so.
    events, raw, dead = (
        f"{unique_topic}.events.payments",
        f"{unique_topic}.raw.coinbase",
        f"{unique_topic}.dlq",
    )
    specs = [
        TopicSpec(events, "customer", (Payment,), "redrive test events", partitions=1),
        TopicSpec(raw, "source", "raw", "redrive test raw records", partitions=1),
        TopicSpec(dead, "source", "dead_letter", "redrive test letters", partitions=1),
    ]
    unreadable = [(b"\xff\xfe-trace", b"t1"), (b"kind", b"x")]
    with made(settings, specs):
        for topic in (events, raw):
            produce_with_raw_headers(settings, topic, [(b"c1", b'{"not": "an event"}', unreadable)])
        post(settings, dead, [letter(events, 0, 0, "bad event", stage="detect"), letter(raw, 0, 0, "bad")])

        done = redrive.redrive(settings, dead)

        assert done.redriven == 1
        (without,) = done.without_headers
        assert without.startswith(f"{dead}[0]@0: ")
        assert "not UTF-8" in without
        (unsent,) = done.unavailable
        assert unsent.startswith(f"{dead}[0]@1: {raw}[0]@0: ")
        assert "cannot be sent again as it was" in unsent
        # (The originals' headers are never asked for: the client would crash the process.)
        (copy,) = [m for m in read_committed(settings, events) if m.offset() > 0]
        assert (copy.key(), copy.value()) == (b"c1", b'{"not": "an event"}')
        assert copy.headers() == [(redrive.REDRIVEN_FROM, f"{dead}[0]@0".encode())]
        assert [m.offset() for m in read_committed(settings, raw)] == [0]


def test_a_record_gone_with_retention_is_reported_and_passed(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    src, dead, _ = topics
    # Retention, as Kafka applies it: the partition's start moves past the record.
    admin = make_admin(settings)  # (kept while its future runs)
    (future,) = admin.delete_records([TopicPartition(src, 0, 1)]).values()
    assert future.result(30).low_watermark == 1
    post(settings, dead, [letter(src, 0, 0, "old"), letter(src, 0, 1, "kept")])
    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert done.redriven == 1
    assert [u.split(": ", 1)[1] for u in done.unavailable] == [
        f"{src}[0]@0 is gone (the partition starts at 1: retention)"
    ]


def test_a_record_gone_with_retention_is_sent_from_a_letter_that_holds_it_whole(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # Raw topics keep 3 days, dead-letter topics 30: a letter read after a long weekend could not
    # be redriven, its record gone.  A letter with the record's headers is the record whole.
    src, dead, records = topics
    admin = make_admin(settings)  # (kept while its future runs)
    (future,) = admin.delete_records([TopicPartition(src, 0, 2)]).values()
    assert future.result(30).low_watermark == 2
    first, second = records[0], records[2]  # partition 0, offsets 0 and 1
    whole = msgspec.structs.replace(
        letter(src, 0, 0, "normalise failed", key=first.key, raw=first.value), headers=list(first.headers())
    )
    forged = msgspec.structs.replace(whole, offset=1, stage="ingest")  # (its lines are not from Kafka)
    post(settings, dead, [whole, letter(src, 0, 1, "no headers kept", key=second.key, raw=second.value)])
    post(settings, dead, [forged])
    # Only when asked: nothing checks a letter's bytes against a record any more.
    held = redrive.redrive(settings, dead, allow_topics=[src])
    assert (held.redriven, len(held.rebuildable)) == (0, 1)
    assert held.rebuildable[0].endswith("kept for a run with --rebuild")
    done = redrive.redrive(settings, dead, allow_topics=[src], rebuild=True)
    assert done.redriven == 1
    assert [u.split(": ", 1)[1] for u in done.unavailable] == [
        f"{src}[0]@1 is gone (the partition starts at 2: retention)"
    ] * 2  # (the letter without headers and the forged one, read again after the one kept)
    (copy,) = copies(settings, src)
    assert (copy.partition(), copy.key(), copy.value()) == (0, first.key, first.value)
    headers = dict(copy.headers() or [])
    assert {k: headers[k] for k, _ in first.headers()} == dict(first.headers())
    assert RawRecord.from_headers("coinbase", copy.value() or b"", copy.key(), copy.headers()) == first


def test_an_aborted_record_is_no_record_to_send(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    src, dead, _ = topics
    producer = make_producer(settings, **{"transactional.id": f"{dead}.aborter"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(src, value=b"never committed", key=b"k0", partition=0)
    producer.flush(30)
    producer.abort_transaction(30)
    post(settings, dead, [letter(src, 0, 2, "from an aborted transaction")])
    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert (done.redriven, [u.split(": ", 1)[1] for u in done.unavailable]) == (
        0,
        [f"{src}[0]@2 is no committed record"],
    )


def test_a_record_that_failed_again_after_a_redrive_is_not_sent_round_again(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # The cause was not fixed: the stage dead-lettered the copy too.  A redrive on a schedule
    # would send it round for ever.
    src, dead, _ = topics
    post(settings, dead, [letter(src, 0, 0, "not fixed")])
    (copy,) = redrive.redrive(settings, dead, allow_topics=[src]).appended
    where, _, offset = copy.rpartition("@")
    copy_partition = int(where.rpartition("[")[2].rstrip("]"))
    post(settings, dead, [letter(src, copy_partition, int(offset), "not fixed, again")])
    held = redrive.redrive(settings, dead, allow_topics=[src])
    assert (held.redriven, held.failed_again) == (
        0,
        [f"{dead}[0]@1: sent again from {dead}[0]@0 before, failed again: kept for a run with --again"],
    )
    assert len(copies(settings, src)) == 1
    # Asked to, it sends it again, naming the new letter only (the first was sent already).
    sent = redrive.redrive(settings, dead, allow_topics=[src], again=True)
    assert (sent.redriven, sent.failed_again) == (1, [])
    got = copies(settings, src)
    assert len(got) == 2
    # A copy of a copy names its own letter, once: the headers do not pile up.
    named = [[v for k, v in m.headers() or [] if k == redrive.REDRIVEN_FROM] for m in got]
    assert sorted(named) == [[f"{dead}[0]@0".encode()], [f"{dead}[0]@1".encode()]]


def test_a_redrive_stopped_half_way_resumes_after_what_it_committed(
    settings: Settings, topics: tuple[str, str, list[RawRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dead, _ = topics
    post(
        settings, dead, [letter(src, p, o, f"cause {i}") for i, (p, o) in enumerate([(0, 0), (1, 0), (0, 1)])]
    )
    monkeypatch.setattr(redrive, "BATCH", 1)

    def stop(read: int) -> None:
        if read == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        redrive.redrive(settings, dead, allow_topics=[src], progress=stop)
    assert len(copies(settings, src)) == 2  # each batch committed before progress is told
    rest = redrive.redrive(settings, dead, allow_topics=[src])
    assert rest.redriven == 1
    assert sorted(dict(m.headers() or [])[redrive.REDRIVEN_FROM] for m in copies(settings, src)) == [
        f"{dead}[0]@{i}".encode() for i in range(3)
    ]


def test_a_letter_written_during_a_run_is_left_to_the_next_run(
    settings: Settings, topics: tuple[str, str, list[RawRecord]], unique_topic: str
) -> None:
    # A run read on past the ends it began with while a partition of the dead-letter topic was
    # still being read: a letter written meanwhile (the stage failing the redriven copies again)
    # named a record newer than the end the run had asked of its topic, and was settled for good
    # as "past the end: the topic was made again since?", the position moved past it.
    src, _, records = topics
    dead = f"{unique_topic}.dlq2"
    with made(settings, [TopicSpec(dead, "source", "dead_letter", "letters, two partitions", partitions=2)]):
        producer = make_producer(settings)
        for i, (p, o) in enumerate([(0, 0), (1, 0)]):
            producer.produce(dead, value=encode(letter(src, p, o, f"cause {i}")), partition=0)
        # Many more letters in the other partition, so the run reads on after the first's end.
        for i in range(1500):
            producer.produce(dead, value=encode(letter(f"raw.{unique_topic}-gone", 0, i, "x")), partition=1)
        assert producer.flush(30) == 0
        newer = RawRecord("coinbase", "ws_message", b'{"n": 3}', NOW, key=b"k3")

        def meanwhile(read: int) -> None:
            if read == redrive.BATCH:  # the first batch committed: src's end has been asked
                at: list[int] = []
                producer.produce(
                    src,
                    value=newer.value,
                    key=newer.key,
                    headers=newer.headers(),
                    partition=0,
                    on_delivery=lambda err, msg: at.append(msg.offset()),
                )
                assert producer.flush(30) == 0
                producer.produce(dead, value=encode(letter(src, 0, at[0], "failed", key=b"k3")), partition=0)
                assert producer.flush(30) == 0

        first = redrive.redrive(settings, dead, allow_topics=[src], progress=meanwhile)
        assert first.redriven == 2
        assert not [u for u in first.unavailable if src in u], first.unavailable[:3]
        second = redrive.redrive(settings, dead, allow_topics=[src])
        assert (second.redriven, second.unavailable) == (1, [])
        assert sorted(m.value() for m in copies(settings, src)) == sorted(
            [records[0].value, records[1].value, newer.value]
        )


def sent_from(settings: Settings, topic: str) -> list[bytes]:
    """The letters the copies in ``topic`` name, in order: one each, if none was sent twice."""
    return sorted(dict(m.headers() or [])[redrive.REDRIVEN_FROM] for m in copies(settings, topic))


def test_a_letter_sent_under_one_filter_is_not_sent_again_without_it(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # The usual sequence: one source's normaliser fixed, its letters redriven; later, everything.
    # The run without a filter sent the first source's letters again (the position was the
    # filter's, and only a copy's letter was known to be a copy).
    src, dead, _ = topics
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "coinbase/ws_message: fixed first"),
            letter(src, 1, 0, "binance/ws_message: fixed later"),
            letter(src, 0, 1, "coinbase/ws_message: fixed first"),
        ],
    )
    first = redrive.redrive(settings, dead, allow_topics=[src], reason_contains="coinbase")
    assert (first.redriven, first.passed) == (2, 1)
    rest = redrive.redrive(settings, dead, allow_topics=[src])
    assert rest.redriven == 1
    assert sent_from(settings, src) == [f"{dead}[0]@{i}".encode() for i in range(3)]
    # (The position moved past the first letter sent, and stopped at the one passed over.)
    assert (rest.sent_before, rest.passed) == (1, 0)
    # Nor under a third filter, nor the first again, even reading every letter again.
    for needle in ("ws_message", "coinbase", None):
        again = redrive.redrive(
            settings, dead, allow_topics=[src], reason_contains=needle, from_beginning=True
        )
        assert (again.redriven, again.sent_before) == (0, 3)
    assert len(copies(settings, src)) == 3


def test_a_record_two_letters_name_is_sent_once_in_a_run_or_across_runs(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # Two operators with the dead-letter policy failing on one record write a letter each (and
    # an at-least-once stage processing it again, another): each letter's record was sent, so
    # every stage reading the topic processed it twice (found in review).
    src, dead, records = topics
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "operator 'a' failed: boom", key=b"k0", raw=records[0].value),
            letter(src, 0, 0, "operator 'b' failed: boom", key=b"k0", raw=records[0].value),
            letter(src, 1, 0, "operator 'a' failed: boom"),
        ],
    )
    dry = redrive.redrive(settings, dead, allow_topics=[src], dry_run=True)
    assert (dry.redriven, dry.sent_before) == (2, 1)
    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert (done.redriven, done.sent_before) == (2, 1)
    assert sent_from(settings, src) == [f"{dead}[0]@0".encode(), f"{dead}[0]@2".encode()]
    # A later letter of the same record written before it was sent (a stage that processed it
    # again, its letter late): settled by that send too, whatever the run's filter.
    late = letter(src, 0, 0, "operator 'a' failed: boom", key=b"k0", raw=records[0].value)
    post(settings, dead, [late])
    later = redrive.redrive(settings, dead, allow_topics=[src], reason_contains="operator 'b'")
    assert (later.redriven, later.sent_before, later.passed) == (0, 1, 0)
    # One written after it was sent is a failure of its own (the record replayed and failing
    # again once the cause was back): sent.
    post(settings, dead, [msgspec.structs.replace(late, failed_at=datetime.now(UTC))])
    anew = redrive.redrive(settings, dead, allow_topics=[src])
    assert (anew.redriven, anew.sent_before) == (1, 0)
    # Every letter is settled, named in the ledger: nothing is sent reading them all again.
    again = redrive.redrive(settings, dead, allow_topics=[src], from_beginning=True)
    assert (again.redriven, again.sent_before) == (0, 5)
    assert sent_from(settings, src) == [f"{dead}[0]@{i}".encode() for i in (0, 2, 4)]


def test_a_ledger_entry_naming_its_record_but_not_when_settles_every_letter_of_that_record(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # Entries of the version between named a record without a time: read as sent at an unknown
    # time, their records' other letters were sent again (found in review).
    src, dead, records = topics
    first = letter(src, 0, 0, "operator 'a' failed: boom", key=b"k0", raw=records[0].value)
    post(settings, dead, [first])
    ensure_topics(settings, [redrive.ledger_spec(dead)], owned=True)
    producer = make_producer(settings)
    digest = hashlib.blake2b(encode(first), digest_size=12).hexdigest()
    producer.produce(redrive.ledger_topic(dead), key=b"0@0", value=f"{digest} {src}[0]@0".encode())
    assert producer.flush(30) == 0
    post(
        settings,
        dead,
        [msgspec.structs.replace(first, reason="operator 'b' failed", failed_at=datetime.now(UTC))],
    )
    done = redrive.redrive(settings, dead, allow_topics=[src])
    assert (done.redriven, done.sent_before) == (0, 2)
    assert copies(settings, src) == []


def test_a_letter_that_failed_again_is_sent_by_a_run_with_again_and_nothing_else_is(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # The hint said "(--again)", but the position had moved past the letter: a run with --again
    # found nothing, and only --from-beginning reached it, sending every other letter again.
    src, dead, _ = topics
    post(settings, dead, [letter(src, 0, 0, "not fixed")])
    (copy,) = redrive.redrive(settings, dead, allow_topics=[src]).appended
    where, _, offset = copy.rpartition("@")
    copy_partition = int(where.rpartition("[")[2].rstrip("]"))
    # The copy failed again; a letter of another record comes after it.
    post(
        settings,
        dead,
        [letter(src, copy_partition, int(offset), "not fixed, again"), letter(src, 1, 0, "new")],
    )
    held = redrive.redrive(settings, dead, allow_topics=[src])
    assert (held.redriven, len(held.failed_again)) == (1, 1)
    sent = redrive.redrive(settings, dead, allow_topics=[src], again=True)
    assert (sent.redriven, sent.failed_again) == (1, [])
    assert sent_from(settings, src) == [f"{dead}[0]@{i}".encode() for i in range(3)]
    assert held.failed_again[0].endswith("failed again: kept for a run with --again")
    assert redrive.redrive(settings, dead, allow_topics=[src], again=True, from_beginning=True).redriven == 0
    assert len(copies(settings, src)) == 3


def test_a_letter_to_a_topic_not_allowed_is_sent_by_a_run_allowing_it_and_nothing_else_is(
    settings: Settings, topics: tuple[str, str, list[RawRecord]], unique_topic: str
) -> None:
    # "--allow-topic to send there", but the position had moved past the letter refused.
    src, dead, _ = topics
    other = f"{unique_topic}.other"
    with made(settings, [TopicSpec(other, "source", "raw", "another topic", partitions=1)]):
        producer = make_producer(settings)
        producer.produce(other, value=b"elsewhere", key=b"o0")
        assert producer.flush(30) == 0
        post(settings, dead, [letter(src, 0, 0, "a"), letter(other, 0, 0, "b"), letter(src, 1, 0, "c")])
        first = redrive.redrive(settings, dead, allow_topics=[src])
        assert first.redriven == 2
        allowed = redrive.redrive(settings, dead, allow_topics=[src, other])
        assert allowed.redriven == 1
        assert sent_from(settings, other) == [f"{dead}[0]@1".encode()]
        assert sent_from(settings, src) == [f"{dead}[0]@0".encode(), f"{dead}[0]@2".encode()]
        assert (first.unavailable, len(first.refused), allowed.sent_before, allowed.refused) == ([], 1, 1, [])
        assert first.refused[0].startswith(f"{dead}[0]@1: {other!r} is no stage's input")
        assert first.refused[0].endswith(f"kept for a run with --allow-topic {other}")
        assert redrive.redrive(settings, dead, allow_topics=[src, other], from_beginning=True).redriven == 0
        assert (len(copies(settings, src)), len(copies(settings, other))) == (2, 1)


def test_a_dead_letter_topic_made_again_has_its_new_letters_sent_once_each(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    # The topic naming the letters sent names some at offsets of letters that are no more: the
    # new letter there is another (its digest), sent once, and not again by a run of another
    # filter; the entries past the new end are deleted.
    src, dead, _ = topics
    post(settings, dead, [letter(src, p, o, "before") for p, o in [(0, 0), (1, 0), (0, 1)]])
    assert redrive.redrive(settings, dead, allow_topics=[src]).redriven == 3
    admin = make_admin(settings)  # (kept while its future runs)
    for future in admin.delete_topics([dead], operation_timeout=30).values():
        future.result(60)
    while True:  # (deletion is asynchronous: the name is free once Kafka is done with it)
        try:
            ensure_topics(settings, [TopicSpec(dead, "source", "dead_letter", "made again", partitions=1)])
            break
        except TopicError:
            time.sleep(0.2)
    # (Failures since: their records were sent before, for the letters before.)
    since = datetime.now(UTC)
    post(
        settings,
        dead,
        [
            msgspec.structs.replace(letter(src, 1, 0, "binance: after"), failed_at=since),
            msgspec.structs.replace(letter(src, 0, 1, "coinbase: after"), failed_at=since),
        ],
    )
    assert redrive.redrive(settings, dead, allow_topics=[src], reason_contains="coinbase").redriven == 1
    assert redrive.redrive(settings, dead, allow_topics=[src]).redriven == 1
    # Two copies name each of dead[0]@0 and @1: the letter before, and the other one there since.
    assert sent_from(settings, src) == [f"{dead}[0]@{i}".encode() for i in (0, 0, 1, 1, 2)]
    assert sorted(m.key() for m in copies(settings, src)) == [b"k0", b"k1", b"k1", b"k2", b"k2"]
    named = {m.key(): m.value() for m in read_committed(settings, redrive.ledger_topic(dead))}
    assert (sorted(named), named[b"0@2"]) == ([b"0@0", b"0@1", b"0@2"], None)


class Crash(BaseException):
    """The process dying: nothing after it runs, and nothing is aborted."""


def test_a_redrive_killed_between_sending_and_committing_is_fenced_and_each_letter_sent_once(
    settings: Settings, topics: tuple[str, str, list[RawRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filtered run passes a letter over, commits one batch, then dies with the next one's
    # records and ledger entries sent but not committed, its producer still alive (a hung
    # process).  A run of another filter fences it and sends each letter not committed, once.
    src, dead, _ = topics
    post(
        settings,
        dead,
        [letter(src, 0, 0, "binance: a"), letter(src, 1, 0, "coinbase: b"), letter(src, 0, 1, "coinbase: c")],
    )
    monkeypatch.setattr(redrive, "BATCH", 1)
    zombies: list[Producer] = []
    real_make_producer, real_commit = redrive.make_producer, redrive._commit_transaction
    commits: list[int] = []

    def kept(*args: object, **kwargs: object) -> Producer:
        zombies.append(real_make_producer(*args, **kwargs))
        return zombies[-1]

    def commit_once(producer: Producer) -> None:
        commits.append(1)
        if len(commits) > 1:
            assert producer.flush(30) == 0  # the records are in the log, uncommitted
            raise Crash
        real_commit(producer)

    monkeypatch.setattr(redrive, "make_producer", kept)
    monkeypatch.setattr(redrive, "_commit_transaction", commit_once)
    monkeypatch.setattr(redrive, "_abort", lambda producer: False)
    with pytest.raises(Crash):
        redrive.redrive(settings, dead, allow_topics=[src], reason_contains="coinbase")
    monkeypatch.undo()

    rest = redrive.redrive(settings, dead, allow_topics=[src])
    assert rest.redriven == 2
    assert sent_from(settings, src) == [f"{dead}[0]@{i}".encode() for i in range(3)]
    assert (rest.sent_before, len(zombies)) == (1, 1)
    zombies.clear()


class _TakenOverAt:
    """A redrive's producer whose offsets' send waits for another redrive to run whole first:
    that one fences it (the same transactional id), as a second `vigil dlq redrive` would."""

    def __init__(self, producer: Producer, other: object) -> None:
        self._producer = producer
        self._other = other

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)

    def send_offsets_to_transaction(self, *args: object) -> None:
        self._other()  # type: ignore[operator]
        self._producer.send_offsets_to_transaction(*args)


def test_a_redrive_another_took_over_from_says_so_and_each_letter_is_sent_once(
    settings: Settings, topics: tuple[str, str, list[RawRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its fenced producer's flush, on the way out, raised again: a traceback took the place of
    # the error that says what happened (2 of 7 pairs of runs at once, found in review).
    src, dead, _ = topics
    post(settings, dead, [letter(src, 0, 0, "coinbase: a")])
    real_make_producer = redrive.make_producer
    others: list[redrive.Redriven] = []

    def other() -> None:
        monkeypatch.setattr(redrive, "make_producer", real_make_producer)
        others.append(redrive.redrive(settings, dead, allow_topics=[src]))

    monkeypatch.setattr(
        redrive, "make_producer", lambda *a, **k: _TakenOverAt(real_make_producer(*a, **k), other)
    )
    with pytest.raises(BrokerError, match="another redrive of this topic took over"):
        redrive.redrive(settings, dead, allow_topics=[src])
    assert [r.redriven for r in others] == [1]
    assert sent_from(settings, src) == [f"{dead}[0]@0".encode()]


def test_summary_groups_letters_by_the_shape_of_their_reason(
    settings: Settings, topics: tuple[str, str, list[RawRecord]]
) -> None:
    src, dead, _ = topics
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "coinbase/ws_message: line 3: got 'abc' - at `$.product_id`"),
            letter(src, 0, 1, "coinbase/ws_message: line 9: got 'xyz' - at `$.product_id`"),
            letter(src, 1, 0, "binance/ws_message: Invalid UTF-8"),
        ],
    )
    producer = make_producer(settings)
    producer.produce(dead, value=b"not a letter")
    assert producer.flush(30) == 0
    found = dlq.summarize(settings, dead)
    assert found.letters == 3
    assert [(g.count, g.reason, g.example) for g in found.groups] == [
        (2, "coinbase/ws_message: line #: got … - at `$.product_id`", f"{dead}[0]@0"),
        (1, "binance/ws_message: Invalid UTF-8", f"{dead}[0]@2"),
    ]
    assert [u.split(":")[0] for u in found.undecodable] == [f"{dead}[0]@3"]


def test_a_summary_keeps_a_bounded_number_of_groups_and_the_command_prints_fewer(
    settings: Settings,
    kafka_bootstrap: str,
    topics: tuple[str, str, list[RawRecord]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reason quotes what a sender chose (an unknown field's name): a group a letter, unbounded,
    # made 20,000 letters 19,345 groups, two lines each.  Here with the bounds made small.  And a
    # cause that comes after such a flood is still named: the flood's groups make room for it
    # (once the first groups were kept for good, its letters were all counted as "other").
    from vigil.cli import dlq as dlq_cli

    src, dead, _ = topics
    monkeypatch.setattr(dlq, "MAX_GROUPS", 3)
    monkeypatch.setattr(dlq, "MAX_UNDECODABLE", 1)
    monkeypatch.setattr(dlq_cli, "SHOWN_GROUPS", 2)
    post(
        settings,
        dead,
        [letter(src, 0, i, f"coinbase/ws_message: unknown field `zz_{chr(97 + i)}`") for i in range(6)]
        + [letter(src, 1, 0, "binance/ws_message: Invalid UTF-8")] * 4,
    )
    producer = make_producer(settings)
    for _ in range(2):
        producer.produce(dead, value=b"not a letter")
    assert producer.flush(30) == 0
    found = dlq.summarize(settings, dead)
    assert found.letters == 10
    assert [(g.count, g.reason) for g in found.groups][:2] == [
        (4, dlq.OTHER),
        (4, "binance/ws_message: Invalid UTF-8"),
    ]
    assert len(found.groups) == 4  # three groups kept, the other letters in one
    assert (len(found.undecodable), found.undecodable_count) == (1, 2)
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    summary = CliRunner().invoke(app, ["dlq", "summary", dead], terminal_width=240)
    assert summary.exit_code == 0, summary.output
    assert "... and 2 more groups (2 letters)" in summary.output
    assert "10 letters in 4 groups (past 3 groups, the smaller ones' letters in one)" in summary.output
    assert "not a dead letter: ... and 1 more" in summary.output


def test_the_command_line_summarises_and_redrives(
    settings: Settings,
    kafka_bootstrap: str,
    topics: tuple[str, str, list[RawRecord]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dead, _ = topics
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    # A reason naming what a source sent is shown as text: "[bold]" is no markup to the console.
    # And no terminal control: a newline in a reason forged a line of the summary.
    post(
        settings,
        dead,
        [
            letter(src, 0, 0, "coinbase/ws_message: got '7' for [bold]x[/bold] - at `$.type`"),
            letter("http:/v1/events", -1, -1, "line 1: x\n  9,999  ingest  all clear\x1b[2J", stage="ingest"),
        ],
    )
    summary = CliRunner().invoke(app, ["dlq", "summary", dead], terminal_width=240)
    assert summary.exit_code == 0, summary.output
    assert "2 letters in 2 groups" in summary.output
    assert "\n  9,999" not in summary.output
    assert "\x1b" not in summary.output
    assert "coinbase/ws_message: got … for [bold]x[/bold] - at `$.type`" in summary.output
    assert f"e.g. {dead}[0]@0" in summary.output
    dry = CliRunner().invoke(
        app, ["dlq", "redrive", dead, "--dry-run", "--allow-topic", src], terminal_width=240
    )
    assert dry.exit_code == 0, dry.output
    assert "would redrive 1 records; 1 could not be sent" in dry.output
    assert copies(settings, src) == []
    sent = CliRunner().invoke(app, ["dlq", "redrive", dead, "--allow-topic", src], terminal_width=240)
    assert sent.exit_code == 0, sent.output
    assert "redrove 1 records; 1 could not be sent" in sent.output
    assert "not from Kafka" in sent.output
    assert len(copies(settings, src)) == 1
    missing = CliRunner().invoke(app, ["dlq", "summary", f"{dead}.nope"])
    assert isinstance(missing.exception, ConfigError)
    assert f"no topic '{dead}.nope'" in str(missing.exception)


def test_the_command_line_says_what_a_rerun_sends_and_the_rerun_sends_it(
    settings: Settings,
    kafka_bootstrap: str,
    topics: tuple[str, str, list[RawRecord]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dead, _ = topics
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    post(settings, dead, [letter(src, 0, 0, "a"), letter(src, 1, 0, "b")])

    def run(*args: str) -> str:
        done = CliRunner().invoke(app, ["dlq", "redrive", dead, *args], terminal_width=400)
        assert done.exit_code == 0, done.output
        return " ".join(done.output.split())

    refused = run()
    assert (
        "redrove 0 records; 2 to topics not allowed, kept: the same run with --allow-topic TOPIC" in refused
    )
    assert f"kept: {dead}[0]@0: {src!r} is no stage's input" in refused
    assert "redrove 2 records" in run("--allow-topic", src)
    assert "redrove 0 records; 2 sent before, not again" in run("--allow-topic", src, "--from-beginning")
    assert len(copies(settings, src)) == 2


def test_a_record_its_topic_refuses_fails_the_redrive_by_name_and_commits_nothing(
    settings: Settings, unique_topic: str
) -> None:
    src, dead = f"{unique_topic}.raw", f"{unique_topic}.dlq"
    specs = [
        TopicSpec(src, "source", "raw", "a small limit", partitions=1, max_message_bytes=2048),
        TopicSpec(dead, "source", "dead_letter", "letters", partitions=1),
    ]
    with made(settings, specs):
        refused_whole(settings, src, dead)


def refused_whole(settings: Settings, src: str, dead: str) -> None:
    producer = make_producer(settings, **{"compression.type": "none"})
    # Just under the limit: the copy's vigil.redriven_from header takes it over.
    producer.produce(src, value=os.urandom(1930), key=b"k")
    producer.produce(src, value=b"small", key=b"k")
    assert producer.flush(30) == 0
    post(settings, dead, [letter(src, 0, 1, "fits"), letter(src, 0, 0, "too large once named")])
    with pytest.raises(BrokerError, match=rf"{re.escape(dead)}\[0\]@1: .*(too large|MSG_SIZE)"):
        redrive.redrive(settings, dead, allow_topics=[src])
    assert copies(settings, src) == []  # the batch's other record was aborted with it
    # The position did not move past either letter (a dry run reads the same position).
    assert redrive.redrive(settings, dead, allow_topics=[src], dry_run=True).redriven == 2
