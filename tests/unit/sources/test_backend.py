"""Back-end ingest API: body parsing, authentication, and the real HTTP server over a memory sink."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from vigil.config import Settings
from vigil.errors import BrokerError, ContractError, SourceError
from vigil.events.codec import decode_event, encode
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter
from vigil.hub.raw import RawRecord
from vigil.sources.backend import (
    Authenticator,
    BackendIngestSource,
    BackendNormalizer,
    BufferFull,
    IngestBuffer,
    create_app,
    hash_key,
    parse_body,
    topic_for,
)
from vigil.sources.sink import MemorySink
from vigil.sources.webhooks import Rejected, read_body

KEY = "test-key-wallet-service-7f3a"  # a test value, not a secret
OTHER_KEY = "test-key-kyc-service-19bc"


def examples(n: int) -> list[bytes]:
    return [encode(e) for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC))[:n]]


def test_ndjson_lines_are_validated_one_by_one_with_line_numbers() -> None:
    good = examples(2)
    body = good[0] + b"\n\n" + b'{"type": "login", "event_id": 5}\n' + good[1] + b"\r\n"
    parsed = parse_body(body, "application/x-ndjson")
    assert [raw for raw, _ in parsed.accepted] == good
    ((label, n, raw, reason),) = parsed.errors
    assert (label, n, raw) == ("line", 3, b'{"type": "login", "event_id": 5}')
    assert "Expected `str`, got `int`" in reason
    assert "$.event_id" in reason


def test_lines_with_values_out_of_bounds_are_refused_by_line_and_field() -> None:
    payment = next(e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC)) if e.type == "payment")
    doc = msgspec.json.decode(encode(payment))
    refund = {**doc, "payload": {**doc["payload"], "amount": -250.0}}
    nobody = {**doc, "entities": {**doc["entities"], "customer": ""}}
    body = b"\n".join(msgspec.json.encode(d) for d in (doc, refund, nobody))
    parsed = parse_body(body, "application/x-ndjson")
    assert [raw for raw, _ in parsed.accepted] == [msgspec.json.encode(doc)]
    assert [(n, reason) for _, n, _, reason in parsed.errors] == [
        (2, "Expected `float` >= 0.0 - at `$.payload.amount`"),
        (3, "Expected `str` of length >= 1 - at `$.entities.customer`"),
    ]


def test_json_array_items_keep_their_exact_bytes() -> None:
    good = examples(3)
    body = b"[ " + b",\n  ".join(good) + b" ]"
    parsed = parse_body(body, "application/json; charset=utf-8")
    assert [raw for raw, _ in parsed.accepted] == good
    assert parsed.errors == []


def test_single_json_object() -> None:
    (good,) = examples(1)
    parsed = parse_body(good, "application/json")
    assert [raw for raw, _ in parsed.accepted] == [good]


@pytest.mark.parametrize(
    ("body", "ctype", "reason"),
    [
        (b"x", "text/csv", "unsupported Content-Type 'text/csv'"),
        (b"[1, ", "application/json", "not a JSON array"),
        (b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", "application/json", "not a JSON array.*recursion"),
    ],
)
def test_unusable_bodies(body: bytes, ctype: str, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        parse_body(body, ctype)


def test_authenticator_maps_keys_to_services_and_counts_failures() -> None:
    auth = Authenticator({"wallet": hash_key(KEY), "kyc": hash_key(OTHER_KEY)})
    assert auth.service(f"Bearer {KEY}") == "wallet"
    assert auth.service(f"Bearer {OTHER_KEY}") == "kyc"
    assert auth.service("Bearer nope") is None
    assert auth.service(KEY) is None
    assert auth.service(None) is None
    assert dict(auth.failures) == {"invalid": 1, "missing": 2}


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_matched_in_any_case(scheme: str) -> None:
    # RFC 9110 makes the scheme case-insensitive: "bearer <key>" was refused as sending no key.
    auth = Authenticator({"wallet": hash_key(KEY)})
    assert auth.service(f"{scheme} {KEY}") == "wallet"
    assert auth.service(f"{scheme} wrong") is None
    assert auth.service(f"Basic {KEY}") is None
    assert dict(auth.failures) == {"invalid": 1, "missing": 1}


def test_keys_must_be_sha256_digests() -> None:
    with pytest.raises(SourceError, match=r"keys of \['wallet'\] are not SHA-256"):
        Authenticator({"wallet": KEY})


def test_topic_for_routes_rejected_lines_to_the_ingest_dlq() -> None:
    now = datetime.now(UTC)
    assert topic_for(RawRecord("backend", "canonical", b"", now)) == "raw.backend"
    assert topic_for(RawRecord("backend", "rejected", b"", now)) == "dlq.ingest"


def test_normalizer_passes_canonical_events_through_and_fills_ingested_at() -> None:
    (good,) = examples(1)
    received = datetime(2026, 11, 29, 8, tzinfo=UTC)
    (event,) = BackendNormalizer().normalize(RawRecord("backend", "canonical", good, received))
    original = decode_event(good)
    assert event.event_id == original.event_id
    assert event.ingested_at == (original.ingested_at or received)


def test_normalizer_gives_times_in_utc() -> None:
    # A service's "+05:00" went on to the canonical topic as it was (every other normaliser
    # converts), and a time before year 1 in UTC went on too.
    (good,) = examples(1)
    sent = decode_event(good)
    local = timezone(timedelta(hours=5))
    shifted = msgspec.structs.replace(
        sent,
        occurred_at=sent.occurred_at.astimezone(local),
        ingested_at=datetime(2026, 11, 29, 13, tzinfo=local),
    )
    received = datetime(2026, 11, 29, 8, 1, tzinfo=UTC)
    (event,) = BackendNormalizer().normalize(RawRecord("backend", "canonical", encode(shifted), received))
    assert (event.occurred_at, event.occurred_at.utcoffset()) == (sent.occurred_at, timedelta(0))
    assert encode(event).count(b"+05:00") == 0
    assert event.ingested_at == datetime(2026, 11, 29, 8, tzinfo=UTC)
    early = encode(shifted).replace(shifted.occurred_at.isoformat().encode(), b"0001-01-01T00:30:00+01:00")
    with pytest.raises(ContractError, match=r"\$\.occurred_at '0001-01-01T00:30:00\+01:00' is outside"):
        BackendNormalizer().normalize(RawRecord("backend", "canonical", early, received))


@pytest.mark.parametrize(
    ("ip", "expected"), [("2001:DB8::1", "2001:db8::1"), ("::ffff:192.0.2.7", "192.0.2.7")]
)
def test_normalizer_spells_a_client_ip_one_way(ip: str, expected: str) -> None:
    # Intel indicators and per-IP history key on the string: one address, one spelling.
    login = next(e for e in example_events(datetime(2026, 11, 29, tzinfo=UTC)) if e.type == "login")
    odd = msgspec.structs.replace(login, entities=msgspec.structs.replace(login.entities, ip=ip))
    (event,) = BackendNormalizer().normalize(
        RawRecord("backend", "canonical", encode(odd), datetime.now(UTC))
    )
    assert event.entities.ip == expected


def test_normalizer_refuses_a_client_ip_that_is_no_address() -> None:
    login = next(e for e in example_events(datetime(2026, 11, 29, tzinfo=UTC)) if e.type == "login")
    odd = msgspec.structs.replace(login, entities=msgspec.structs.replace(login.entities, ip="unknown"))
    with pytest.raises(ContractError, match=r"raw\.backend: entities\.ip 'unknown' is not an IP address"):
        BackendNormalizer().normalize(RawRecord("backend", "canonical", encode(odd), datetime.now(UTC)))


def test_normalizer_rejects_invalid_canonical_record() -> None:
    with pytest.raises(ContractError, match=r"raw\.backend: .*event_id"):
        BackendNormalizer().normalize(
            RawRecord("backend", "canonical", b'{"type":"login","event_id":1}', datetime.now(UTC))
        )


@pytest.fixture
def server() -> Iterator[tuple[BackendIngestSource, MemorySink, str]]:
    sink = MemorySink()
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, ack_timeout=5)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    assert source.ready.wait(15)
    try:
        yield source, sink, f"http://127.0.0.1:{source.port}"
    finally:
        source.stop()
        thread.join(15)
        assert not thread.is_alive()
        assert source.drained is True


def test_server_accepts_valid_lines_and_lists_errors(
    server: tuple[BackendIngestSource, MemorySink, str],
) -> None:
    _, sink, url = server
    good = examples(2)
    body = good[0] + b"\nnot json\n" + good[1] + b"\n"
    resp = httpx.post(
        f"{url}/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"},
    )
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert (doc["accepted"], doc["rejected"], doc["queued"]) == (2, 1, False)
    assert doc["errors"][0]["line"] == 2
    assert "not valid JSON" in doc["errors"][0]["error"]
    canonical = [r for r in sink.records if r.kind == "canonical"]
    assert [r.value for r in canonical] == good
    assert all(r.meta == {"service": "wallet"} for r in canonical)
    (rejected,) = [r for r in sink.records if r.kind == "rejected"]
    letter = msgspec.json.decode(rejected.value, type=DeadLetter)
    assert letter.raw == b"not json"
    assert letter.stage == "ingest"
    assert "line 2" in letter.reason
    assert KEY.encode() not in b"".join(r.value + (r.key or b"") for r in sink.records)


def test_server_rejects_missing_and_wrong_keys(
    server: tuple[BackendIngestSource, MemorySink, str], caplog: pytest.LogCaptureFixture
) -> None:
    source, sink, url = server
    (good,) = examples(1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        resp = httpx.post(
            f"{url}/v1/events", content=good, headers={**headers, "Content-Type": "application/json"}
        )
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert KEY not in resp.text
    assert sink.records == []
    # Counted and logged, never in the unauthenticated health answer.
    assert source.auth.failures == {"missing": 2, "invalid": 1}
    refused = [r.getMessage() for r in caplog.records if "API key" in r.getMessage()]
    assert refused == [
        "backend ingest: request from 127.0.0.1 without an API key",
        "backend ingest: request from 127.0.0.1 with an unknown API key",
        "backend ingest: request from 127.0.0.1 without an API key",
    ]
    assert all(KEY not in line for line in refused)


def test_server_status_codes_for_bad_bodies(server: tuple[BackendIngestSource, MemorySink, str]) -> None:
    _, sink, url = server
    auth = {"Authorization": f"Bearer {KEY}"}
    resp = httpx.post(f"{url}/v1/events", content=b"a,b", headers={**auth, "Content-Type": "text/csv"})
    assert resp.status_code == 415
    resp = httpx.post(
        f"{url}/v1/events", content=b"", headers={**auth, "Content-Type": "application/x-ndjson"}
    )
    assert resp.status_code == 400
    resp = httpx.post(
        f"{url}/v1/events", content=b'{"type": "nope"}', headers={**auth, "Content-Type": "application/json"}
    )
    assert resp.status_code == 422
    assert json.loads(resp.text)["accepted"] == 0
    assert [r.kind for r in sink.records] == ["rejected"]


def test_vigils_own_outputs_and_lists_cannot_be_ingested() -> None:
    # An ingest key could release a held withdrawal with a release, or withdraw an OFAC listing
    # (an indicator under the same compacted key): only business events are taken.
    own = [
        e
        for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC))
        if type(e).domain in ("alerts", "decisions", "releases", "intel")
    ]
    assert {type(e).domain for e in own} == {"alerts", "decisions", "releases", "intel"}
    parsed = parse_body(b"\n".join(encode(e) for e in own), "application/x-ndjson")
    assert parsed.accepted == []
    assert len(parsed.errors) == len(own)
    assert all("Invalid value" in reason for *_, reason in parsed.errors)
    with pytest.raises(ContractError):
        BackendNormalizer().normalize(RawRecord("backend", "canonical", encode(own[0]), datetime.now(UTC)))


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole() -> None:
    # Read whole first, then measured: a key holder could exhaust the server's memory.
    pulled: list[int] = []

    class Streaming:
        headers: dict[str, str] = {}  # no Content-Length: counted while it streams in

        async def stream(self) -> AsyncIterator[bytes]:
            for _ in range(10_000):
                pulled.append(1)
                yield b"x" * 1024

    with pytest.raises(Rejected, match="too_large"):
        asyncio.run(read_body(Streaming(), 4096))  # type: ignore[arg-type]
    assert len(pulled) == 5  # stopped at the first chunk past the limit

    sink = MemorySink()
    source = BackendIngestSource(keys={"wallet": hash_key(KEY)}, port=0, max_body_bytes=1024)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        url = source.listening(15)  # (where the command line says it listens: port 0, any free one)
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/v1/events")
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        assert httpx.post(url, content=b"x" * 2048, headers=auth).status_code == 413
        assert httpx.post(url, content=iter([b"x" * 700, b"x" * 700]), headers=auth).status_code == 413
    finally:
        source.stop()
        thread.join(15)
    assert sink.records == []


def test_from_settings_reads_keys_from_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"wallet": hash_key(KEY)}))
    source = BackendIngestSource.from_settings(Settings(), keys_file=str(keys), port="0", ack_timeout="2")
    assert (source.port, source.ack_timeout) == (0, 2.0)
    assert source.auth.service(f"Bearer {KEY}") == "wallet"
    keys.write_text("[]")
    with pytest.raises(SourceError, match=r"is JSON of the wrong shape \(list"):
        BackendIngestSource.from_settings(Settings(), keys_file=str(keys))


def test_keys_that_are_not_json_are_said_so_without_their_text() -> None:
    # A missing brace was reported as "no API keys configured", sending the operator looking
    # for a setting that was there.
    secret = hash_key(KEY)
    with pytest.raises(SourceError) as raised:
        BackendIngestSource.from_settings(Settings(backend_keys='{"wallet": "' + secret + '"'))
    text = str(raised.value)
    assert "VIGIL_BACKEND_KEYS (or backend_keys in vigil.toml) is not JSON (line 1, column" in text
    assert secret not in text


def test_from_settings_reads_keys_from_the_settings(tmp_path: Path) -> None:
    # Read from os.environ by the connector: a Settings built in code, or backend_keys in
    # vigil.toml, was not looked at.
    configured = Settings(backend_keys=json.dumps({"wallet": hash_key(KEY)}))
    source = BackendIngestSource.from_settings(configured, port="0")
    assert source.auth.service(f"Bearer {KEY}") == "wallet"
    # keys_file, given, goes first.
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"kyc": hash_key(OTHER_KEY)}))
    source = BackendIngestSource.from_settings(configured, keys_file=str(keys), port="0")
    assert (source.auth.service(f"Bearer {OTHER_KEY}"), source.auth.service(f"Bearer {KEY}")) == ("kyc", None)
    with pytest.raises(SourceError, match=r"set VIGIL_BACKEND_KEYS \(or backend_keys in vigil.toml\)"):
        BackendIngestSource.from_settings(Settings(backend_keys=None))
    # A list of keys was "no API keys configured"; its values are not shown.
    secret = hash_key(KEY)
    for wrong, shape in (
        (f'["{secret}"]', "list"),
        (f'{{"wallet": ["{secret}"]}}', "an object with values that are not text"),
    ):
        with pytest.raises(
            SourceError, match=rf"is JSON of the wrong shape \({shape}.*expected an object"
        ) as info:
            BackendIngestSource.from_settings(Settings(backend_keys=wrong))
        assert secret not in str(info.value)


def test_rejected_records_in_raw_backend_are_refused_by_the_normalizer() -> None:
    # If a sink routes everything to raw.backend, dead letters are still dead-lettered downstream.
    assert (
        BackendIngestSource.topic_for(RawRecord("backend", "rejected", b"", datetime.now(UTC)))
        == "dlq.ingest"
    )
    with pytest.raises(ContractError, match="kind 'rejected'"):
        BackendNormalizer().normalize(RawRecord("backend", "rejected", b"{}", datetime.now(UTC)))


def test_an_event_too_large_for_one_record_is_refused_whole(
    server: tuple[BackendIngestSource, MemorySink, str],
) -> None:
    # Buffered, a record Kafka refuses (raw.backend takes about 1 MB) was retried for ever, in
    # order, and every request after it waited behind it.
    _, sink, url = server
    (good,) = examples(1)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
    huge_rejected = b'{"type": "' + b"A" * 950_000 + b'"}'
    resp = httpx.post(f"{url}/v1/events", content=good + b"\n" + huge_rejected + b"\n", headers=auth)
    assert resp.status_code == 413, resp.text
    assert "nothing from this request was accepted" in resp.json()["error"]
    assert sink.records == []
    # What fits goes on as before.
    resp = httpx.post(f"{url}/v1/events", content=good + b"\n", headers=auth)
    assert resp.status_code == 200
    assert [r.kind for r in sink.records] == ["canonical"]


def test_addresses_from_a_service_take_the_spelling_the_chain_sources_use() -> None:
    # A service may send an EVM address in its checksum case: one wallet was then two keys, on
    # two partitions, with two detection states.
    mixed = "0x4B0897B0513FDC7C541B6D9D7E929C4E5364D2DB"
    (transfer,) = [
        e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC)) if e.type == "chain_transfer"
    ]
    sent = msgspec.structs.replace(
        transfer,
        entities=msgspec.structs.replace(transfer.entities, wallet=mixed),
        payload=msgspec.structs.replace(transfer.payload, from_address=mixed),  # type: ignore[attr-defined]
    )
    received = datetime(2026, 11, 29, 9, tzinfo=UTC)
    (event,) = BackendNormalizer().normalize(RawRecord("backend", "canonical", encode(sent), received))
    assert event.entities.wallet == mixed.lower()
    assert event.payload.from_address == mixed.lower()  # type: ignore[attr-defined]
    assert event.key() == mixed.lower()


def test_an_address_of_blanks_the_ingest_took_stays_a_valid_event() -> None:
    # The edge validates the bytes as sent; the normaliser then dropped the blanks around
    # addresses and made an empty wallet, which the contract refuses downstream.
    (transfer,) = [
        e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC)) if e.type == "chain_transfer"
    ]
    sent = encode(
        msgspec.structs.replace(transfer, entities=msgspec.structs.replace(transfer.entities, wallet=" "))
    )
    assert parse_body(sent, "application/json").errors == []
    received = datetime(2026, 11, 29, 9, tzinfo=UTC)
    (event,) = BackendNormalizer().normalize(RawRecord("backend", "canonical", sent, received))
    assert decode_event(encode(event)) == event


def test_the_record_limit_counts_the_key_too(server: tuple[BackendIngestSource, MemorySink, str]) -> None:
    # The key is the event's (a 560,000-character customer id here): measured by its value
    # alone, a record of 1.1 MB passed, and the broker refused it for ever.
    _, sink, url = server
    (login,) = [e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC)) if e.type == "login"]
    big = msgspec.structs.replace(
        login, entities=msgspec.structs.replace(login.entities, customer="c" * 560_000)
    )
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    resp = httpx.post(f"{url}/v1/events", content=encode(big), headers=auth)
    assert resp.status_code == 413, resp.text
    assert sink.records == []


class StuckSink:
    """A sink whose broker never takes anything."""

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        raise BrokerError("Kafka unreachable")

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        return None


class RecordingSink(StuckSink):
    """A sink that takes everything and notes how many records each transaction carried."""

    def __init__(self) -> None:
        self.transactions: list[int] = []

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        self.transactions.append(len(records))


def raw(size: int) -> RawRecord:
    return RawRecord("backend", "canonical", b"x" * size, datetime(2026, 11, 29, 9, tzinfo=UTC), key=b"k")


def test_the_buffer_is_bounded_by_bytes_as_well_as_by_records() -> None:
    # By count only, 10,000 records of up to 900 KB could be held: 8.8 GB.
    one = raw(100_000).size()
    buffer = IngestBuffer(StuckSink(), max_records=10_000, max_bytes=2 * one)  # not started: all stays
    buffer.submit([raw(100_000)])
    buffer.submit([raw(100_000)])
    with pytest.raises(BufferFull, match=rf"{2 * one:,} of {2 * one:,} bytes waiting"):
        buffer.submit([raw(10)])
    assert (buffer.buffered, buffer.buffered_bytes) == (2, 2 * one)


def test_a_request_past_the_buffers_bytes_is_503_and_nothing_of_it_is_taken() -> None:
    buffer = IngestBuffer(StuckSink())
    app = create_app(buffer, Authenticator({"wallet": hash_key(KEY)}), ack_timeout=0.01, retry_after=9)
    (good,) = examples(1)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            return await http.post("/v1/events", content=good, headers=auth)

    assert asyncio.run(post()).status_code == 202  # queued: the broker is down
    buffer.max_bytes = buffer.buffered_bytes  # room for that request's bytes alone
    answer = asyncio.run(post())
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "9"
    assert "bytes waiting for Kafka" in answer.json()["error"]
    assert buffer.buffered == 1


def test_transactions_are_cut_by_bytes_as_well_as_by_records() -> None:
    # 5,000 records of 900 KB went in one transaction: 4.4 GB in the producer at once.
    one = raw(1000).size()
    sink = RecordingSink()
    buffer = IngestBuffer(sink, batch_max_bytes=2 * one)
    done = [buffer.submit([raw(1000)]) for _ in range(5)]
    done.append(buffer.submit([raw(1000)] * 3))  # one request over the limit goes alone, in parts
    buffer.start()
    for future in done:
        future.result(timeout=15)
    assert buffer.close(15)
    assert sink.transactions == [2, 2, 1, 2, 1]
