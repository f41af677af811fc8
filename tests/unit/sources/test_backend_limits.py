"""Back-end ingest API: what one request may cost.  Its items are capped before any is validated,
its errors and dead letters are bounded however many of its items are bad (each still accounted
for), its validation runs off the event loop, and the buffer never takes, nor sends in one
transaction, more than its bounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest

from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter
from vigil.hub.raw import RawRecord
from vigil.sources.backend import (
    ERRORS_ITEMIZED,
    MAX_REQUEST_ITEMS,
    PARSES_AT_ONCE,
    Authenticator,
    BatchTooLarge,
    IngestBuffer,
    Scopes,
    TooManyItems,
    create_app,
    dead_letters,
    hash_key,
    parse_body,
)
from vigil.sources.sink import MemorySink
from vigil.sources.webhooks import RECORD_MAX_BYTES

KEY = "test-key-wallet-service-7f3a"  # a test value, not a secret
NDJSON = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
ARRAY = {**NDJSON, "Content-Type": "application/json"}
NOW = datetime(2026, 11, 29, 9, tzinfo=UTC)


def good() -> bytes:
    (login,) = [e for e in example_events(NOW) if e.type == "login"]
    return encode(login)


def post(app: Any, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            return await http.post("/v1/events", content=body, headers=headers)

    return asyncio.run(send())


def started(sink: Any, **bounds: int) -> IngestBuffer:
    buffer = IngestBuffer(sink, **bounds)
    buffer.start()
    return buffer


def app_over(buffer: IngestBuffer, scopes: Scopes | None = None) -> Any:
    return create_app(buffer, Authenticator({"wallet": hash_key(KEY)}), scopes=scopes, ack_timeout=15)


def letters(sink: MemorySink) -> list[DeadLetter]:
    return [msgspec.json.decode(r.value, type=DeadLetter) for r in sink.records if r.kind == "rejected"]


# --------------------------------------------------------------------------- the item cap


def test_a_body_of_more_lines_than_one_request_may_carry_is_413_and_nothing_is_taken() -> None:
    # 1,000,000 lines of "1" (2 MB) were 1,000,000 errors and dead letters, after 60 s.
    sink = MemorySink()
    buffer = started(sink)
    answer = post(app_over(buffer), b"1\n" * (MAX_REQUEST_ITEMS + 1), NDJSON)
    assert answer.status_code == 413, answer.text
    doc = answer.json()
    assert (doc["items"], doc["max_items"]) == (MAX_REQUEST_ITEMS + 1, MAX_REQUEST_ITEMS)
    assert f"carries {MAX_REQUEST_ITEMS + 1:,} lines" in doc["error"]
    assert f"at most {MAX_REQUEST_ITEMS:,}" in doc["error"]
    assert buffer.close(15)
    assert sink.records == []


def test_a_json_array_of_more_items_than_one_request_may_carry_is_413() -> None:
    sink = MemorySink()
    buffer = started(sink)
    body = b"[" + b",".join([b"1"] * (MAX_REQUEST_ITEMS + 1)) + b"]"
    answer = post(app_over(buffer), body, ARRAY)
    assert answer.status_code == 413, answer.text
    assert answer.json()["items"] == MAX_REQUEST_ITEMS + 1
    assert buffer.close(15)
    assert sink.records == []


def test_the_cap_counts_items_before_any_is_validated_and_not_blank_lines() -> None:
    validated: list[Event] = []

    def refuse(event: Event) -> str | None:
        validated.append(event)
        return None

    body = b"\n".join([good()] * 4)
    with pytest.raises(TooManyItems, match=r"carries 4 lines \(not blank\).*at most 3") as raised:
        parse_body(body, "application/x-ndjson", refuse, max_items=3)
    assert (raised.value.count, raised.value.limit) == (4, 3)
    assert validated == []
    # Blank lines are no items, and still count in the line numbers.
    parsed = parse_body(b"\n \r\n" * 600_000 + body + b"\n\n", "application/x-ndjson", refuse, max_items=4)
    assert (len(parsed.accepted), len(validated)) == (4, 4)
    parsed = parse_body(b"\n \r\n" * 600_000 + b"1\n" * 3, "application/x-ndjson", max_items=3)
    assert [n for _, n, _, _ in parsed.errors] == [1_200_001, 1_200_002, 1_200_003]


# --------------------------------------------------------------------------- bounded errors and letters


def test_errors_past_the_first_hundred_are_counted_and_dead_lettered_together() -> None:
    # Every bad line had an error in the answer and a letter of its own (~290 bytes for the
    # 2 bytes of "1\n"): here the first 100 do, and the rest are in one letter, none lost.
    bad = [f'{{"n": {i}}}'.encode() if i % 3 else b"1" for i in range(400)]
    lines = [good(), *bad[:200], good(), *bad[200:]]  # lines 2-201 and 203-402 are bad
    sink = MemorySink()
    buffer = started(sink)
    answer = post(app_over(buffer), b"\n".join(lines) + b"\n", NDJSON)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert (doc["accepted"], doc["rejected"], doc["errors_not_listed"]) == (2, 400, 300)
    assert [e["line"] for e in doc["errors"]] == list(range(2, 2 + ERRORS_ITEMIZED))
    assert buffer.close(15)
    assert [r.kind for r in sink.records].count("canonical") == 2
    *single, rest = letters(sink)
    assert [letter.raw for letter in single] == bad[:ERRORS_ITEMIZED]
    assert single[0].reason.startswith("line 2: ")
    assert rest.raw == b"\n".join(bad[ERRORS_ITEMIZED:])  # a resendable NDJSON body
    assert rest.reason.startswith("lines 102-201, 203-402: 300 refused lines past the first 100")
    assert rest.reason.endswith(
        "reasons: 200 x Object missing required field `type`; 100 x Expected `object`, got `int`"
    )
    assert len(sink.records) == 2 + ERRORS_ITEMIZED + 1


def test_the_rest_of_an_arrays_bad_items_is_dead_lettered_as_a_json_array() -> None:
    bad = [b'{"n": %d,\n "m": []}' % i for i in range(ERRORS_ITEMIZED + 5)]  # items may hold newlines
    parsed = parse_body(b"[" + b",".join(bad) + b"]", "application/json")
    *single, rest = dead_letters(parsed.errors, "wallet", NOW)
    assert len(single) == ERRORS_ITEMIZED
    assert [bytes(r) for r in msgspec.json.decode(rest.raw, type=list[msgspec.Raw])] == bad[ERRORS_ITEMIZED:]
    assert rest.reason.startswith(f"items {ERRORS_ITEMIZED + 1}-{ERRORS_ITEMIZED + 5}: 5 refused items")


def test_the_rest_goes_in_as_many_letters_as_the_record_limit_needs() -> None:
    # Each letter is one record: a rest of 10 MB in one letter, Kafka would refuse it for ever.
    errors = [("line", n, b"x" * 100_000, "not valid JSON") for n in range(1, 161)]
    found = dead_letters(errors, "wallet", NOW)
    assert len(found) == ERRORS_ITEMIZED + 12  # 60 lines of 100 kB, 5 to a letter
    rest = found[ERRORS_ITEMIZED:]
    assert all(len(encode(letter)) < RECORD_MAX_BYTES for letter in rest)
    assert b"\n".join(letter.raw for letter in rest) == b"\n".join(raw for _, _, raw, _ in errors[100:])
    assert rest[0].reason.startswith("lines 101-105: 5 refused lines")


# --------------------------------------------------------------------------- off the event loop


def test_health_answers_while_a_request_is_being_validated() -> None:
    # Validation ran on the event loop: 1,000,000 lines held /v1/health for 60 s.
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []

    class Slow(Scopes):
        def refusal(self, service: str, event: Event) -> str | None:
            entered.set()
            # Bounded, so that on a blocked event loop the test fails rather than hangs: only
            # the health answer, served meanwhile, lets the test release it.
            released.append(release.wait(10))
            return super().refusal(service, event)

    sink = MemorySink()
    buffer = started(sink)
    app = app_over(buffer, Slow({}, ["wallet"]))

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            ingest = asyncio.create_task(http.post("/v1/events", content=good(), headers=NDJSON))
            assert await asyncio.to_thread(entered.wait, 10)
            health = await http.get("/v1/health")
            release.set()
            return health, await ingest

    health, ingest = asyncio.run(both())
    assert released == [True]
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    assert ingest.status_code == 200, ingest.text
    assert buffer.close(15)


def test_bodies_are_validated_at_most_two_at_a_time() -> None:
    # A JSON array is decoded whole before its items are counted (some 280 MB for a 10 MB body
    # of tiny items): six at once in asyncio's pool took 1.3 GB.
    inside, most, lock = [0], [0], threading.Lock()
    full, over, release = threading.Event(), threading.Event(), threading.Event()
    waits: list[bool] = []

    class Slow(Scopes):
        def refusal(self, service: str, event: Event) -> str | None:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                if inside[0] == PARSES_AT_ONCE:
                    full.set()
                if inside[0] > PARSES_AT_ONCE:
                    over.set()
            waits.append(release.wait(10))  # bounded: a test that fails does not hang
            with lock:
                inside[0] -= 1
            return super().refusal(service, event)

    sink = MemorySink()
    buffer = started(sink)
    app = app_over(buffer, Slow({}, ["wallet"]))

    async def three() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            posts = [
                asyncio.create_task(http.post("/v1/events", content=good(), headers=NDJSON)) for _ in range(3)
            ]
            assert await asyncio.to_thread(full.wait, 10)
            # The third would be in within this second if nothing held it back (an absence
            # checked, not a wait for something to happen).
            third_in = await asyncio.to_thread(over.wait, 1.0)
            release.set()
            answers = await asyncio.gather(*posts)
            assert not third_in
            return answers

    answers = asyncio.run(three())
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert most[0] == PARSES_AT_ONCE
    assert waits
    assert all(waits)
    assert buffer.close(15)


# --------------------------------------------------------------------------- the buffer's bounds


def raw(size: int) -> RawRecord:
    return RawRecord("backend", "canonical", b"x" * size, NOW, key=b"k")


class Gated:
    """A sink that notes each transaction's records and holds the second until let through."""

    def __init__(self) -> None:
        self.transactions: list[list[RawRecord]] = []
        self.second = threading.Event()
        self.go = threading.Event()

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        self.transactions.append(list(records))
        if len(self.transactions) == 2:
            self.second.set()
            assert self.go.wait(15)

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        return None


def test_a_batch_over_the_transaction_bounds_goes_in_parts_within_them() -> None:
    # A batch over them went whole: 1,000,000 letters, 289 MB, in one transaction.
    sink = Gated()
    buffer = IngestBuffer(sink, batch_max_records=3)
    records = [raw(10) for _ in range(7)]
    done = buffer.submit(records)
    after = buffer.submit([raw(10)])
    buffer.start()
    assert sink.second.wait(15)
    assert not done.done()  # durable only once every part is
    assert buffer.buffered == 5
    sink.go.set()
    done.result(timeout=15)
    after.result(timeout=15)
    assert buffer.close(15)
    assert [len(t) for t in sink.transactions] == [3, 3, 1, 1]
    assert [r for t in sink.transactions[:3] for r in t] == records


def test_a_batch_over_the_transaction_bytes_goes_in_parts() -> None:
    one = raw(1000).size()
    sink = Gated()
    sink.go.set()
    buffer = IngestBuffer(sink, batch_max_bytes=2 * one + 1)
    done = buffer.submit([raw(1000) for _ in range(5)])
    buffer.start()
    done.result(timeout=15)
    assert buffer.close(15)
    assert [len(t) for t in sink.transactions] == [2, 2, 1]


@pytest.mark.parametrize(
    ("bounds", "what"), [({"max_records": 3}, "4 records"), ({"max_bytes": 100}, "bytes")]
)
def test_a_batch_larger_than_the_whole_buffer_is_refused_even_when_it_is_empty(
    bounds: dict[str, int], what: str
) -> None:
    buffer = IngestBuffer(MemorySink(), **bounds)
    with pytest.raises(BatchTooLarge, match=f"{what}.* more than the ingest buffer holds"):
        buffer.submit([raw(50) for _ in range(4)])
    assert (buffer.buffered, buffer.buffered_bytes) == (0, 0)


def test_a_request_larger_than_the_whole_buffer_is_413_not_a_503_to_retry() -> None:
    sink = MemorySink()
    buffer = started(sink, max_records=2)
    answer = post(app_over(buffer), b"\n".join([good()] * 3), NDJSON)
    assert answer.status_code == 413, answer.text
    assert "3 records" in answer.json()["error"]
    assert "nothing from this request was accepted" in answer.json()["error"]
    assert buffer.close(15)
    assert sink.records == []
