"""The testing harness (vigil.testing) treats records, state and failures as the Kafka runtime
does: a rule that passes on it does not stop the stage in production on the same input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import msgspec
import pytest

from vigil.errors import DecodeError, PipelineError
from vigil.events.base import Entities, Event
from vigil.events.codec import EventCodec, encode
from vigil.events.records import DeadLetter
from vigil.events.types import Payment, PaymentPayload
from vigil.stream.app import clipped_reason, undecodable_reason
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.join import IntervalJoin
from vigil.stream.state import RocksState
from vigil.stream.table import LookupTable
from vigil.testing import (
    HarnessResult,
    HarnessWarning,
    MemoryState,
    MemoryTable,
    partition_for,
    run_operators,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COUNTS = StoreSpec("counts", 1)


def payment(i: int, customer: str = "c1", amount: float = 10.0, wallet: str | None = None) -> Payment:
    return Payment(
        event_id=f"p{i}",
        source="t",
        occurred_at=T0 + timedelta(seconds=i),
        entities=Entities(customer=customer, wallet=wallet),
        payload=PaymentPayload(payment_id=f"p{i}", amount=amount, currency="USD"),
    )


class Seen(Operator[Payment]):
    """Keeps the records it is handed."""

    id = "seen"

    def __init__(self) -> None:
        self.records: list[Record[Payment]] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        self.records.extend(batch)


def test_inputs_reach_operators_decoded_as_the_runtime_reads_them() -> None:
    # They were handed over as the test built them: an integer amount stayed an integer (the
    # runtime hands over 5.0), and an event the runtime dead-letters (an empty id) was processed.
    seen = Seen()
    whole = payment(1, amount=5)  # type: ignore[arg-type]  (an int, as a test may write it)
    no_id = msgspec.structs.replace(payment(2), event_id="")
    result = run_operators([seen], [whole, no_id, payment(3)])
    assert [rec.event.event_id for rec in seen.records] == ["p1", "p3"]
    amount = seen.records[0].event.payload.amount
    assert (amount, type(amount)) == (5.0, float)
    assert seen.records[0].value == encode(whole)  # the bytes read, as the runtime keeps them
    ((dead, reason),) = result.dead_letters
    assert (dead.event, dead.offset, dead.value) == (no_id, 1, encode(no_id))
    assert reason == "Expected `str` of length >= 1 - at `$.event_id`"
    # An event no producer could send is the test's mistake, named.
    lone = msgspec.structs.replace(payment(4), source="\ud800")
    with pytest.raises(
        ValueError, match=r"input event 2 \(Payment\) cannot be encoded: .*surrogates not allowed"
    ):
        run_operators([Seen()], [payment(3), lone])


class ByWallet(Operator[Payment]):
    """Counts payments per wallet, keyed by a field some payments do not have."""

    id = "by-wallet"
    stores = (COUNTS,)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(COUNTS)
        for rec in batch:
            wallet = rec.event.entities.wallet
            state.set(wallet, state.get(wallet, 0) + 1)  # type: ignore[arg-type]  (the bug)


def test_state_keys_are_text_as_rocksdb_state_takes_them(tmp_path: Path) -> None:
    # A None key was kept (and through restarts): on Kafka the first payment without a wallet
    # stopped the stage, and every restart after.
    run_operators([ByWallet()], [payment(1, wallet="w1")])
    with pytest.raises(TypeError, match="state keys are text"):
        run_operators([ByWallet()], [payment(1, wallet="w1"), payment(2)])
    rocks = RocksState(tmp_path / "s", COUNTS)
    try:
        with pytest.raises((TypeError, AttributeError)):  # (compiled, or run from source)
            rocks.get(None)  # type: ignore[arg-type]
    finally:
        rocks.close()
    for key in (7, ("w", 1)):
        with pytest.raises(TypeError, match=f"got {type(key).__name__}"):
            MemoryState().get(key)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate at character 1"):  # (json.loads makes one)
        MemoryState().set("w\ud800", 1)


class Hoarder(Operator[Payment]):
    """Keeps 17 MB under one key: more than a changelog record carries."""

    id = "hoarder"
    stores = (COUNTS,)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            ctx.state(COUNTS).set("k", "x" * (17 << 20) if rec.event.event_id == "p2" else "small")


def test_a_keys_state_past_a_changelog_record_fails_the_checkpoint_naming_it() -> None:
    with pytest.raises(PipelineError, match=r"checkpoint: the state of key 'k' is 17,825,79\d bytes encoded"):
        run_operators([Hoarder()], [payment(1), payment(2)], batch_size=1)
    # Not checkpointed as it goes, the run fails where it is saved: at the restart.
    first = run_operators([Hoarder()], [payment(1), payment(2)], checkpoints=False)
    with pytest.raises(PipelineError, match="over the 16,776,192 a changelog record holds"):
        run_operators([Hoarder()], [], result=first)


class Counter(Operator[Payment]):
    """Counts payments per customer and says each count; fails at ``fail_at`` when armed."""

    id = "counter"
    stores = (COUNTS,)

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(COUNTS)
        for rec in batch:
            customer = rec.event.entities.customer or ""
            n = state.get(customer, 0) + 1
            state.set(customer, n)
            ctx.emit("counts", msgspec.structs.replace(rec.event, event_id=f"{rec.event.event_id}-{n}"))
            if rec.event.event_id == self.fail_at:
                raise RuntimeError("boom")


def test_a_failed_run_restarts_from_its_last_checkpoint() -> None:
    # The failed batch's writes, outputs and offsets were kept: the restart counted p5 twice.
    events = [payment(i) for i in range(1, 7)]
    result = HarnessResult()
    with pytest.raises(RuntimeError, match="boom"):
        run_operators([Counter(fail_at="p6")], events, batch_size=2, result=result)
    assert result.offsets == {("in", 0): 4}
    assert result.states[(COUNTS.id, 0)].get("c1") == 4
    assert [e.event_id for e in result.emitted("counts")] == ["p1-1", "p2-2", "p3-3", "p4-4"]
    run_operators([Counter()], events[4:], batch_size=2, result=result)  # read again, as Kafka would
    assert result.offsets == {("in", 0): 6}
    assert result.states[(COUNTS.id, 0)].get("c1") == 6
    assert [e.event_id for e in result.emitted("counts")][4:] == ["p5-5", "p6-6"]


class Assigned(Operator[Payment]):
    def __init__(self, id: str, calls: list[tuple[str, str, int]]) -> None:
        self.id = id
        self.calls = calls

    def on_assign(self, ctx: Context) -> None:
        self.calls.append(("assign", self.id, ctx.partition))

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        self.calls.append(("process", self.id, ctx.partition))


def test_every_operator_is_told_of_every_partition_before_the_first_batch() -> None:
    # Only partitions that got records were assigned, each when its first batch came, one
    # operator at a time: the runtime tells every operator of every partition it is given first.
    calls: list[tuple[str, str, int]] = []
    run_operators([Assigned("a", calls), Assigned("b", calls)], [payment(1)], partitions=3)
    assigned = [("assign", op, part) for part in range(3) for op in ("a", "b")]
    assert calls[:6] == assigned
    assert sorted(calls[6:]) == [("process", "a", calls[6][2]), ("process", "b", calls[6][2])]


class Failing(Operator[Payment]):
    id = "failing"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        raise ValueError("bad " + "x" * 10_000)


class Forwarder(Operator[Payment]):
    id = "forwarder"

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            ctx.forward("out", rec, rec.event.key() or "")


def test_dead_letter_reasons_are_cut_and_forwards_send_the_bytes_read() -> None:
    result = run_operators([Failing()], [payment(1)])
    ((_, reason),) = result.dead_letters
    assert reason.startswith("operator 'failing': ValueError: bad xxx")
    assert reason.endswith("... (10,036 characters in all)")
    assert len(reason) == 4_000 + len("... (10,036 characters in all)")
    # The runtime forwards a record's bytes as read; the harness encoded the decoded event again
    # (an amount sent as 5 went on as 5.0).
    whole = payment(1, amount=5)  # type: ignore[arg-type]
    (sent,) = run_operators([Forwarder()], [whole]).emits
    assert b'"amount":5,' in sent.value
    assert sent.value == encode(whole)


class Router(Operator[Payment]):
    """Re-keys each input to a read-back topic."""

    id = "router"

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            if rec.topic == "in":
                ctx.emit("rep", rec.event, rec.event.event_id)


class Sink(Operator[Payment]):
    """Keeps what it reads back; fails at ``fail_at`` while armed."""

    id = "sink"
    stores = (COUNTS,)

    def __init__(self, fail_at: str | None) -> None:
        self.fail_at = fail_at

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(COUNTS)
        for rec in batch:
            if rec.topic == "rep":
                if rec.event.event_id == self.fail_at:
                    raise RuntimeError("transient")
                state.set(rec.event.event_id, rec.offset)


def test_a_failed_read_back_is_read_again_at_the_restart() -> None:
    # The outputs to the read-back topic were kept (committed with their batch) but counted as
    # read: the restart never read them, and the sink never saw p1 or p2.
    result = HarnessResult()
    with pytest.raises(RuntimeError, match="transient"):
        run_operators(
            [Router(), Sink(fail_at="p2")], [payment(1), payment(2)], result=result, read_back=["rep"]
        )
    assert [(e.topic, e.event.event_id) for e in result.emits] == [("rep", "p1"), ("rep", "p2")]
    assert result.offsets == {("in", 0): 2}
    run_operators([Router(), Sink(fail_at=None)], [], result=result, read_back=["rep"])
    assert result.states[(COUNTS.id, 0)].data == {"p1": 0, "p2": 1}
    assert result.offsets == {("in", 0): 2, ("rep", 0): 2}


class TwoStores(Operator[Payment]):
    """Counts each payment in two stores; the second value of p3 is too large to save."""

    id = "two-stores"
    stores = (COUNTS, StoreSpec("other", 1))

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            for spec in self.stores:
                state = ctx.state(spec)
                state.set("n", state.get("n", 0) + 1)
            if rec.event.event_id == "p3":
                ctx.state(self.stores[1]).set("big", "x" * (17 << 20))


def test_a_checkpoint_that_fails_saves_nothing() -> None:
    # It saved store by store and key by key up to the value it refused: the restart read the
    # first store's count of the failed batch, and counted the batch again.
    result = HarnessResult()
    with pytest.raises(PipelineError, match="the state of key 'big'"):
        run_operators([TwoStores()], [payment(i) for i in range(1, 4)], batch_size=2, result=result)
    assert [result.states[(spec.id, 0)].get("n") for spec in TwoStores.stores] == [2, 2]
    assert result.offsets == {("in", 0): 2}


def test_keys_are_checked_as_rocksdb_state_checks_them_however_they_come() -> None:
    class Kind(StrEnum):
        IP = "ip"

    state = MemoryState()
    state.set(Kind.IP, 1)  # text, as RocksState takes it
    assert state.get("ip") == 1
    with pytest.raises(TypeError, match="got NoneType"):
        state.data = {None: 1}  # type: ignore[dict-item]


class Hostile(Operator[Payment]):
    """Fails with an error quoting what a record might hold: a lone surrogate, terminal escapes,
    a forged log line."""

    id = "hostile"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        raise ValueError("unknown currency \ud800\x1b[2J\x1b]0;pwned\x07\nINFO forged line")


def test_dead_letter_reasons_are_inert_and_always_encodable() -> None:
    # A lone surrogate in a reason made the letter impossible to encode (UnicodeEncodeError):
    # the stage stopped at that record, and at every restart.
    ((_, reason),) = run_operators([Hostile()], [payment(1)]).dead_letters
    assert reason.isprintable()
    assert "\\ud800\\x1b[2J\\x1b]0;pwned\\x07\\nINFO forged line" in reason
    letter = DeadLetter(
        stage="s", reason=reason, topic="t", partition=0, offset=0, key=None, raw=b"", failed_at=T0
    )
    assert msgspec.json.decode(encode(letter), type=DeadLetter).reason == reason
    # Escaping lengthens a reason; it is still cut at the limit, its length said.
    long = clipped_reason("\x1b" * 5_000)
    assert long == "\\x1b" * 1_000 + "... (5,000 characters in all)"
    assert clipped_reason("fine") == "fine"
    # Cut between escapes: one cut in half ("\\x1") would read as another character.
    shifted = clipped_reason("a" + "\x1b" * 1_500)
    assert shifted == "a" + "\\x1b" * 999 + "... (1,501 characters in all)"


class Unspeakable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class Mute(Operator[Payment]):
    """Fails on p2 with an exception whose message cannot be made."""

    id = "mute"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            if rec.event.event_id == "p2":
                raise Unspeakable


def test_an_exception_whose_message_cannot_be_made_is_still_dead_lettered() -> None:
    # Its __str__ raised inside the code naming it: the policy's dead letter was never written and
    # the application stopped with an unrelated RuntimeError (found in review, 2026-12-04).
    result = run_operators([Mute()], [payment(1), payment(2), payment(3)])
    ((rec, reason),) = result.dead_letters
    assert rec.event.event_id == "p2"
    assert reason == "operator 'mute': Unspeakable: (its message could not be made: RuntimeError)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # msgspec quotes a type tag or a field name as given: escaped, as EventCodec.decode does.
        (b'{"type":"\\u001b[2J\\nFAKE LOG LINE"}', "Invalid value '\\x1b[2J\\nFAKE LOG LINE' - at `$.type`"),
        (b'{"type":"payment"', "not valid JSON: Input data was truncated"),
        (b"\xff", "not valid JSON: "),
    ],
)
def test_undecodable_records_are_given_the_reasons_the_codec_gives(raw: bytes, expected: str) -> None:
    codec = EventCodec()
    with pytest.raises(msgspec.DecodeError) as fast:
        codec._decoder.decode(raw)  # (as the runtime decodes: msgspec's decoder itself)
    with pytest.raises(DecodeError) as slow:
        codec.decode(raw)
    reason = undecodable_reason(fast.value)
    assert reason.startswith(expected)
    assert reason == str(slow.value)
    assert reason.isprintable()


class Outputs(Operator[Payment]):
    """Sends every payment on in one way (``how``), to topic ``out``."""

    id = "outputs"

    def __init__(self, how: str) -> None:
        self.how = how

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            if self.how == "forward-bytes":
                ctx.forward("out", rec, rec.key)  # type: ignore[arg-type]  (as read: bytes)
            elif self.how == "emit-bytes":
                ctx.emit("out", rec.event, key=b"c1")  # type: ignore[arg-type]
            elif self.how == "letter-tuple":
                ctx.dead_letter(rec, "refused", (("h", b"v"),))  # type: ignore[arg-type]
            elif self.how == "letter-of-event":
                ctx.dead_letter(rec.event, "refused")  # type: ignore[arg-type]
            elif self.how == "forward-event":
                ctx.forward("out", rec.event, "c1")  # type: ignore[arg-type]
            elif self.how == "late-event":
                ctx.late(rec.event)  # type: ignore[arg-type]
            elif self.how == "naive-time":
                naive = rec.event.occurred_at.replace(tzinfo=None)
                ctx.emit("out", msgspec.structs.replace(rec.event, occurred_at=naive))
            else:
                whole = PaymentPayload(payment_id="x", amount=5, currency="USD")  # type: ignore[arg-type]
                ctx.emit("out", msgspec.structs.replace(rec.event, payload=whole))


@pytest.mark.parametrize(
    ("how", "refusal"),
    [
        ("forward-bytes", r"operator 'outputs': ctx\.forward's key must be text \(str\); got bytes b'c1'"),
        ("emit-bytes", r"operator 'outputs': ctx\.emit's key must be text \(str\) or None; got bytes b'c1'"),
        ("letter-tuple", r"operator 'outputs': ctx\.dead_letter's headers must be a list .* got tuple"),
        # The event for its Record: on Kafka, AttributeError: 'Payment' object has no attribute
        # 'topic' (or 'value', 'event'); a dead letter of one passed here, collected.
        (
            "letter-of-event",
            r"operator 'outputs': ctx\.dead_letter's record must be the Record it was given \(rec\), "
            r"got Payment",
        ),
        ("forward-event", r"operator 'outputs': ctx\.forward's record must be the Record .* got Payment"),
        ("late-event", r"operator 'outputs': ctx\.late's record must be the Record .* got Payment"),
    ],
)
def test_outputs_of_types_the_runtimes_context_refuses_are_refused(how: str, refusal: str) -> None:
    # Passed here, collected with a bytes key; on Kafka the compiled context raised TypeError
    # ("str object expected; got bytes"): the stage stopped, or dead-lettered every record.
    with pytest.raises(TypeError, match=refusal):
        run_operators([Outputs(how)], [payment(1)])
    # Under the dead-letter policy, as the runtime does: every record a letter naming why.
    lenient = Outputs(how)
    lenient.dead_letter_errors = True
    result = run_operators([lenient], [payment(1), payment(2)])
    assert result.emitted() == []
    assert [(rec.event.event_id, reason.split(":")[0]) for rec, reason in result.dead_letters] == [
        ("p1", "operator 'outputs'"),
        ("p2", "operator 'outputs'"),
    ]
    assert all(re.search(refusal.split(": ", 1)[1], reason) for _, reason in result.dead_letters)


def test_outputs_are_collected_as_their_readers_decode_them() -> None:
    # An output no reader can decode (a naive time: a Struct checks nothing when made) passed
    # here; on Kafka it was sent, and every stage reading it dead-lettered it.
    with pytest.raises(
        ValueError,
        match=r"operator 'outputs' emitted to 'out' a Payment its readers cannot decode: "
        r"Expected `datetime` with a timezone component - at `\$\.occurred_at`",
    ):
        run_operators([Outputs("naive-time")], [payment(1)])
    # What a test reads back is what a reader gets: the integer amount as 5.0.
    (out,) = run_operators([Outputs("int-amount")], [payment(1)]).emitted("out")
    assert (out.payload.amount, type(out.payload.amount)) == (5.0, float)


def pays_logins(left: str = "logins", right: str = "payments") -> IntervalJoin:
    """A join (of nothing it matches) reading ``left`` and ``right``."""
    return IntervalJoin(
        "pays-logins", StoreSpec("pays-logins"), left=left, right=right, within="1m", on_match=lambda *a: None
    )


def test_an_operator_reading_a_topic_no_event_is_given_on_is_refused() -> None:
    # With no topic_of every event is read from "in": a join of two named topics paired nothing,
    # with no word, where the runtime refuses to make the application (a side not among its inputs).
    with pytest.raises(
        ValueError,
        match=r"operator 'pays-logins' reads 'logins', 'payments', which is not among its inputs "
        r"\['in'\]; pass topic_of",
    ):
        run_operators([pays_logins()], [payment(1)])
    # A side read from ``topic`` and one read back are inputs (warned of: see below).
    with pytest.warns(HarnessWarning):
        run_operators([Router(), pays_logins(left="in", right="rep")], [payment(1)], read_back=["rep"])
    # With topic_of, one side alone may be given.
    result = run_operators([pays_logins()], [payment(1)], topic_of=lambda event: "payments")
    assert result.late == result.dead_letters == []


def test_an_operators_input_warnings_are_warned_of_as_the_runtime_logs_them() -> None:
    # A join of a side the application re-keys itself with one read directly: the runtime logs a
    # warning at its start (most pairs are lost on a catch-up); the harness said nothing.
    join = pays_logins(left="in", right="rep")
    with pytest.warns(HarnessWarning, match="join 'pays-logins': rep re-keyed by this application") as caught:
        run_operators([Router(), join], [payment(1)], read_back=["rep"])
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]  # (the caller's line)
    # Both sides read directly: nothing to warn of (warnings are errors in these tests).
    run_operators([pays_logins(left="in", right="more")], [payment(1)], topic_of=lambda event: "in")


class Watch(Operator[Payment]):
    """Keeps the partition and event ids of every call; asks for alignment, as a join does."""

    event_time_skew_s = 60.0

    def __init__(self, op_id: str, *, stateful: bool) -> None:
        self.id = op_id
        self.stores = (StoreSpec(op_id),) if stateful else ()
        self.calls: list[tuple[int, list[str]]] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        self.calls.append((ctx.partition, [rec.event.event_id for rec in batch]))


def at(i: int, second: int, customer: str = "c1") -> Payment:
    return msgspec.structs.replace(payment(i, customer), occurred_at=T0 + timedelta(seconds=second))


def test_aligned_a_partitions_topics_are_merged_by_event_time_as_the_runtime_merges_them() -> None:
    # The runtime's release (Application._release) merges each partition's records of every
    # topic by event time (each topic's in offset order: a merge, not a sort; ties to the topic
    # first); operators with state got them here in the order given, and with one partition every
    # operator did: a test of one topic given after the other saw no interleaving.
    topics = {"p1": "x", "p2": "y", "p3": "x", "p4": "y"}
    events = [at(1, 5), at(2, 1), at(3, 3), at(4, 5)]  # x: 5 s, 3 s; y: 1 s, 5 s
    stateful, stateless = Watch("stateful", stateful=True), Watch("stateless", stateful=False)
    run_operators([stateful, stateless], events, topic_of=lambda event: topics[event.event_id])
    assert stateful.calls == stateless.calls == [(0, ["p2", "p1", "p3", "p4"])]
    # Several partitions: a call per partition, merged, for those with state; one call for the
    # others, the partitions' merged again, at the lowest partition.
    a = "c0"
    b = next(c for c in (f"c{i}" for i in range(1, 50)) if partition_for(c, 3) != partition_for(a, 3))
    topics = {"p1": "x", "p2": "x", "p3": "y"}
    events = [at(1, 5, a), at(2, 0, b), at(3, 1, a)]
    stateful, stateless = Watch("stateful", stateful=True), Watch("stateless", stateful=False)
    run_operators([stateful, stateless], events, partitions=3, topic_of=lambda event: topics[event.event_id])
    pa, pb = partition_for(a, 3), partition_for(b, 3)
    assert stateful.calls == sorted([(pa, ["p3", "p1"]), (pb, ["p2"])])
    assert stateless.calls == [(min(pa, pb), ["p2", "p3", "p1"])]


def test_an_input_keyed_otherwise_is_partitioned_and_keyed_by_key_of() -> None:
    # A topic of payments keyed by wallet, as a producer other than Vigil's may key it: without
    # key_of the harness could only key them by customer, and put them where the broker doesn't.
    seen = Seen()
    events = [payment(i, customer="c1", wallet=f"0xw{i % 7}") for i in range(40)]
    run_operators([seen], events, partitions=4, key_of=lambda e: e.entities.wallet)
    assert len(seen.records) == 40
    for rec in seen.records:
        wallet = rec.event.entities.wallet
        assert wallet is not None
        assert rec.key == wallet.encode()
        assert rec.partition == partition_for(wallet, 4)
    assert len({rec.partition for rec in seen.records}) > 1  # one customer, spread by wallet


def test_key_of_may_give_bytes_as_a_producer_writes_them() -> None:
    seen = Seen()
    raw = b"\xffwallet"  # not UTF-8: a producer's key may be any bytes
    run_operators([seen], [payment(1)], partitions=4, key_of=lambda e: raw)
    ((rec,),) = [seen.records]
    assert (rec.key, rec.partition) == (raw, partition_for(raw, 4))


def _wallet_or_fail(event: Event) -> str:
    if event.entities.wallet is None:
        raise KeyError("no wallet")
    return event.entities.wallet


def test_a_key_of_that_fails_or_gives_neither_text_nor_bytes_is_refused_naming_the_event() -> None:
    events = [payment(1, wallet="0xw1"), payment(2)]
    with pytest.raises(ValueError, match=r"input event 2 \(Payment\): key_of raised KeyError: 'no wallet'"):
        run_operators([Seen()], events, key_of=_wallet_or_fail)
    refused = r"input event 1 \(Payment\): key_of must give text, bytes or None; got int 7"
    with pytest.raises(TypeError, match=refused):
        run_operators([Seen()], events, key_of=lambda e: 7)  # type: ignore[arg-type,return-value]


class OverLimit(Operator[Payment]):
    """Keeps the payments over their customer's limit, read from a lookup table."""

    id = "over-limit"

    def __init__(self, limits: LookupTable[float]) -> None:
        self.limits = limits
        self.over: list[str] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            limit = self.limits.get(rec.event.entities.customer or "")
            if limit is not None and rec.event.payload.amount > limit:
                self.over.append(rec.event.event_id)


def limit(value: bytes) -> float:
    return msgspec.json.decode(value, type=float)


def test_an_operator_reads_a_memory_table_applied_as_a_global_table_applies_its_topic() -> None:
    table: MemoryTable[float] = MemoryTable(
        [("c1", b"100"), ("c2", b"5"), ("c3", b"oops"), ("c2", None)], limit, name="limits"
    )
    # c2's limit deleted by its tombstone, c3's unreadable and skipped: an error, three
    # updates (c1, c2, c2's deletion).
    assert dict(table.items()) == {"c1": 100.0}
    assert (table.errors, table.version, table.ready) == (1, 3, True)
    table.check()
    rule = OverLimit(table)
    pays = [payment(1, "c1", 150.0), payment(2, "c1", 50.0), payment(3, "c2", 50.0), payment(4, "c3", 9.0)]
    result = run_operators([rule], pays)
    assert rule.over == ["p1"]
    # A record written between runs is seen by the next, as the table follows its topic; an
    # unreadable value for a key that had one leaves it none, as on Kafka.
    table.put("c2", b"10")
    table.put("c1", b"{")
    run_operators([rule], [payment(5, "c2", 50.0), payment(6, "c1", 500.0)], result=result)
    assert rule.over == ["p1", "p5"]
    assert "c1" not in table
    assert table.errors == 2
    table.delete("c2")
    assert len(table) == 0
    assert table.version == 6


def test_a_memory_tables_events_are_encoded_and_decoded_as_on_kafka() -> None:
    table: MemoryTable[Event] = MemoryTable([("p1", payment(1, amount=5))])
    got = table.get("p1")
    assert isinstance(got, Payment)
    assert (got.payload.amount, type(got.payload.amount)) == (5.0, float)  # as decoded from bytes
    assert table.get("p2", "none") == "none"


def test_a_memory_tables_keys_are_read_as_a_global_table_reads_them() -> None:
    # Bytes that are not UTF-8 stay apart (surrogateescape), as TopicFollower keeps them.
    table: MemoryTable[float] = MemoryTable([(b"c\xff", b"1"), (b"c\xfe", b"2"), (b"c1", b"3")], limit)

    def as_written() -> dict[bytes, float]:
        return {key.encode("utf-8", "surrogateescape"): value for key, value in table.items()}

    assert as_written() == {b"c\xff": 1.0, b"c\xfe": 2.0, b"c1": 3.0}
    table.delete(b"c\xff")
    assert as_written() == {b"c\xfe": 2.0, b"c1": 3.0}


def test_a_memory_table_refuses_what_no_topic_holds() -> None:
    table: MemoryTable[float] = MemoryTable((), limit)
    with pytest.raises(TypeError, match=r"table 'memory': a record's value must be an event, bytes or None"):
        table.put("p2", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a record's key must be text or bytes \(a compacted topic refuses"):
        table.put(None, b"1")  # type: ignore[arg-type]
    assert (len(table), table.version, table.errors) == (0, 0, 0)
