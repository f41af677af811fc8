"""The HubSpot audit-log source against a local HTTP server that keeps the account activity
API's contract (bearer token, ``occurredAfter``/``occurredBefore``, ``limit``, ``after`` paging),
answering in an order of its choosing, and failing when told to."""

from __future__ import annotations

import http.server
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from tests.unit.sources.local_http import serving

from vigil.config import Settings
from vigil.errors import BrokerError, Retry, SourceError
from vigil.events.ids import stable_id
from vigil.events.types import CrmLogin, CrmRecordExport
from vigil.hub.raw import RawRecord
from vigil.sources import hubspot_audit
from vigil.sources.hubspot import AUDIT_LOG, HubSpotNormalizer
from vigil.sources.hubspot_audit import PATH, HubSpotAuditSource
from vigil.sources.registry import source_class
from vigil.sources.sink import MemorySink

TOKEN = "pat-na1-0b3c9e1f-5d7a-4c2e-9f11-7a6b5c4d3e2f"  # noqa: S105 - a test token
SOURCE_ID = "hubspot.audit"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def audit(n: int, when: datetime, category: str = "LOGIN", **extra: Any) -> dict[str, Any]:
    """An audit result in the shapes the simulator writes (vigil.sim.native, ``audit_log``),
    dated as the API dates them (RFC 3339)."""
    user = {"userId": 51_000_000 + n % 5, "userEmail": f"user{n % 5}@example.com"}
    body: dict[str, Any]
    if category == "LOGIN":
        body = {
            "id": f"{n:08x}",
            "category": "LOGIN",
            "subCategory": "LOGIN_FAILED" if n % 4 == 3 else "LOGIN_SUCCEEDED",
            "action": "PERFORM",
            "targetObjectId": str(user["userId"]),
            "occurredAt": iso(when),
            "actingUser": user,
            "ipAddress": f"203.0.113.{n % 250}",
            "countryCode": "PT",
            "userAgent": "Mozilla/5.0",
        }
    elif category == "EXPORT":
        body = {
            "id": f"{n:08x}",
            "category": "EXPORT",
            "subCategory": "CRM_OBJECT_EXPORT",
            "action": "CREATE",
            "targetObjectId": f"export-{n}",
            "occurredAt": iso(when),
            "actingUser": user,
            "ipAddress": "198.51.100.9",
            "countryCode": "US",
            "details": {"objectType": "contacts", "recordCount": 1200 + n, "objectIds": ["c-1", "c-2"]},
        }
    else:
        body = {
            "id": f"{n:08x}",
            "category": category,
            "subCategory": "PROPERTY_UPDATE",
            "action": "UPDATE",
            "targetObjectId": f"contact-{n}",
            "occurredAt": iso(when),
            "actingUser": user,
        }
    return body | extra


class FakeHubSpot:
    """``GET /account-info/v3/activity/audit-logs`` as HubSpot documents it.

    Results newer than ``occurredAfter`` (strictly: the documentation does not say, and strict
    is the case that loses results at the cursor's time) and up to ``occurredBefore``, in
    ``order`` ("newest" first, "oldest" first or "shuffled"), ``limit`` at a time, the next
    page's ``after`` an offset.  ``fail`` queues answers for the next requests: ``(429, s)``
    with ``Retry-After: s``, ``(500,)``, ``(401,)``, ``("bad json",)``."""

    def __init__(self, results: Sequence[dict[str, Any]] = (), order: str = "newest") -> None:
        self.results = list(results)
        self.order = order
        self.fail: list[tuple[Any, ...]] = []
        self.asked: list[dict[str, str]] = []
        self.asked_at: list[float] = []
        self.auth: list[str | None] = []
        #: Every 200 body sent, in order.
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.asked_twice = threading.Event()

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.asked.append(query)
            self.asked_at.append(time.monotonic())
            self.auth.append(handler.headers.get("Authorization"))
            if len(self.asked) >= 2:
                self.asked_twice.set()
            failure = self.fail.pop(0) if self.fail else None
            results = list(self.results)
        if url.path != PATH:
            return self.send(handler, 404, b'{"status":"error","message":"not found"}')
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.send(
                handler, 401, b'{"status":"error","message":"Authentication credentials not found"}'
            )
        if failure is not None:
            if failure[0] == 429:
                return self.send(handler, 429, b'{"status":"error"}', {"Retry-After": str(failure[1])})
            if failure[0] == 500:
                return self.send(handler, 500, b"", reason="Internal Error")
            if failure[0] == 401:
                return self.send(handler, 401, b'{"status":"error","message":"expired"}')
            return self.send(handler, 200, b'{"results": [{"id": "x", "occurredAt": ')  # cut short
        after = parse_time(query["occurredAfter"])
        before = parse_time(query["occurredBefore"]) if "occurredBefore" in query else None
        limit = int(query.get("limit", "100"))
        if not 1 <= limit <= 200:
            return self.send(handler, 400, b'{"status":"error","message":"limit"}')
        chosen = [
            r
            for r in results
            if parse_time(r["occurredAt"]) > after
            and (before is None or parse_time(r["occurredAt"]) <= before)
        ]
        if self.order == "shuffled":
            # An order of no use to a client (not by time), the same for the same results: paging
            # over an order that changed from one request to the next could not work at all.
            chosen.sort(key=lambda r: r["id"])
            random.Random(7).shuffle(chosen)
        else:
            chosen.sort(key=lambda r: (r["occurredAt"], r["id"]), reverse=self.order == "newest")
        offset = int(query.get("after", "0"))
        body: dict[str, Any] = {"results": chosen[offset : offset + limit]}
        if offset + limit < len(chosen):
            body["paging"] = {"next": {"after": str(offset + limit), "link": "?after=" + str(offset + limit)}}
        content = json.dumps(body, indent=1).encode()  # not msgspec's spacing: bytes kept as sent
        with self.lock:
            self.bodies.append(content)
        return self.send(handler, 200, content)

    @staticmethod
    def send(
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        handler.send_response(status, reason)
        handler.send_header("Content-Type", "application/json;charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)


def settings() -> Settings:
    return Settings(hubspot_access_token=TOKEN)


def source(base: str, **options: str) -> HubSpotAuditSource:
    return HubSpotAuditSource.from_settings(settings(), base_url=base, **options)


def memory_sink() -> MemorySink:
    sink = MemorySink()
    sink.source_id = SOURCE_ID  # (MemorySink keys a cursor by the records' source otherwise)
    return sink


def ids_in(records: Sequence[RawRecord]) -> list[str]:
    return [r["id"] for rec in records for r in json.loads(rec.value)["results"]]


def no_token_in(sink: MemorySink, *texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
    for rec in sink.records:
        assert TOKEN.encode() not in rec.value
        assert TOKEN not in json.dumps(rec.meta)
    assert TOKEN not in json.dumps(sink.cursors)


NOW = datetime.now(UTC).replace(microsecond=0)


def results(
    count: int, start: datetime | None = None, step: timedelta = timedelta(seconds=7)
) -> list[dict[str, Any]]:
    first = start or NOW - timedelta(hours=2)
    categories = ["LOGIN", "EXPORT", "CRM_OBJECT"]
    return [audit(n, first + n * step, categories[n % 3]) for n in range(count)]


# ---------------------------------------------------------------------------- the protocol


def test_pages_are_followed_and_each_published_as_received() -> None:
    api = FakeHubSpot(results(5))
    with serving(api.answer) as base:
        hub = source(base, page_size="2")
        sink = memory_sink()
        before = datetime.now(UTC)
        assert hub.poll_once(sink) == 5
        after = datetime.now(UTC)
    assert [rec.value for rec in sink.records] == api.bodies  # byte for byte, one record a page
    assert len(sink.records) == 3
    assert {(rec.source, rec.kind, rec.key) for rec in sink.records} == {
        ("hubspot", AUDIT_LOG, SOURCE_ID.encode())
    }
    assert [q.get("after") for q in api.asked] == [None, "2", "4"]
    assert {q["limit"] for q in api.asked} == {"2"}
    assert set(api.auth) == {f"Bearer {TOKEN}"}
    # A first start asks from a day ago (less a millisecond), up to the poll's start.
    first = api.asked[0]
    # (Timed from the poll, not from NOW: the module is imported minutes before the test runs.)
    asked_from = parse_time(first["occurredAfter"]) + timedelta(days=1)
    assert before - timedelta(milliseconds=2) <= asked_from <= after
    assert {q["occurredAfter"] for q in api.asked} == {first["occurredAfter"]}
    assert [rec.meta["page"] for rec in sink.records] == [1, 2, 3]
    assert sink.records[1].meta["after"] == "2"
    assert sink.records[0].meta["endpoint"] == base
    newest = max(results(5), key=lambda r: r["occurredAt"])
    written = sorted(results(5), key=lambda r: r["occurredAt"])  # (28 s apart: all within settle)
    assert sink.cursors[SOURCE_ID] == {
        "v": 2,
        "at": newest["occurredAt"].replace("Z", "000Z"),
        "seen": [newest["id"]],
        "recent": [[r["id"], r["occurredAt"].replace("Z", "000Z")] for r in written],
        # (What recent holds every result of: settle before at; a first start asked from a day ago.)
        "since": iso(parse_time(newest["occurredAt"]) - timedelta(minutes=10)).replace("Z", "000Z"),
    }
    assert (hub.pages, hub.objects, hub.last_error) == (3, 5, None)
    no_token_in(sink)


def test_published_pages_normalise_into_logins_and_exports() -> None:
    api = FakeHubSpot(results(6))
    with serving(api.answer) as base:
        sink = memory_sink()
        source(base, page_size="4").poll_once(sink)
    events = [e for rec in sink.records for e in HubSpotNormalizer().normalize(rec)]
    logins = sorted((e for e in events if isinstance(e, CrmLogin)), key=lambda e: e.occurred_at)
    exports = sorted((e for e in events if isinstance(e, CrmRecordExport)), key=lambda e: e.occurred_at)
    assert len(events) == 4  # the CRM_OBJECT updates yield nothing
    assert [(e.payload.user, e.payload.success) for e in logins] == [
        ("user0@example.com", True),
        ("user3@example.com", False),
    ]
    assert logins[1].entities.ip == "203.0.113.3"
    assert logins[0].event_id == stable_id("hubspot", AUDIT_LOG, "00000000", prefix="hubspot-")
    assert [(e.payload.record_count, e.payload.actor, e.payload.export_id) for e in exports] == [
        (1201, "user1@example.com", "export-1"),
        (1204, "user4@example.com", "export-4"),
    ]
    assert exports[0].occurred_at == NOW - timedelta(hours=2) + timedelta(seconds=7)


# ---------------------------------------------------------------------------- the cursor


@pytest.mark.parametrize("order", ["newest", "oldest", "shuffled"])
def test_a_restart_publishes_nothing_twice_and_misses_nothing_added_meanwhile(order: str) -> None:
    old = results(5)
    api = FakeHubSpot(old, order=order)
    with serving(api.answer) as base:
        sink = memory_sink()
        source(base, page_size="2").poll_once(sink)
        assert sorted(ids_in(sink.records)) == sorted(r["id"] for r in old)
        # Meanwhile: one more at the very time of the newest published (the cursor's), one in
        # between the published ones (HubSpot writing late, within settle: asked for again, see
        # the module), newer ones, and one written later than settle allows (never asked for).
        last = parse_time(old[-1]["occurredAt"])
        added = [
            audit(100, last),
            audit(101, last + timedelta(seconds=1), "EXPORT"),
            audit(102, last + timedelta(minutes=1)),
            audit(103, last - timedelta(seconds=3)),
        ]
        api.results += [*added, audit(104, last - timedelta(minutes=11))]
        before = len(sink.records)
        restarted = source(base, page_size="2")  # a new process: the cursor comes from the sink
        assert restarted.poll_once(sink) == 4
        assert sorted(ids_in(sink.records[before:])) == sorted(r["id"] for r in added)
        # Nothing new: a poll whose pages are all published already publishes nothing.
        publishes = len(sink.records), dict(sink.cursors)
        assert source(base, page_size="2").poll_once(sink) == 0
        assert (len(sink.records), sink.cursors) == publishes
    assert Counter(ids_in(sink.records)).most_common(1)[0][1] == 1


def test_a_result_written_late_is_published_within_settle_and_not_past_it() -> None:
    # HubSpot may write a result after newer ones (how late is not documented): asked only from
    # the cursor's time, it was never asked for again.  Each poll asks settle before it.
    old = results(3)
    api = FakeHubSpot(old)
    with serving(api.answer) as base:
        sink = memory_sink()
        source(base, settle="120").poll_once(sink)
        last = parse_time(old[-1]["occurredAt"])
        late = [audit(200, last - timedelta(seconds=100)), audit(201, last - timedelta(seconds=130))]
        api.results += late
        assert source(base, settle="120").poll_once(sink) == 1
        assert ids_in(sink.records[-1:]) == [late[0]["id"]]  # (130 s late: past the 120 of settle)
        # With settle 0, as before: a result dated before the cursor is not asked for again (nor
        # after it: the cursor then holds nothing before its time).
        api.results.append(audit(202, last - timedelta(seconds=5)))
        assert source(base, settle="0").poll_once(sink) == 0
    assert Counter(ids_in(sink.records)).most_common(1)[0][1] == 1


def test_past_the_ids_the_cursor_keeps_the_window_shrinks_rather_than_publish_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Past RECENT_AT_MOST results within settle (a burst of failed logins), the ids forgotten
    # were asked for and published again at every poll while ``at`` did not move (found in
    # review): the next window begins at the oldest id kept instead, and that is said.
    monkeypatch.setattr(hubspot_audit, "RECENT_AT_MOST", 20)
    burst = results(50, step=timedelta(seconds=2))
    api = FakeHubSpot(burst)
    with serving(api.answer) as base:
        sink = memory_sink()
        assert source(base).poll_once(sink) == 50
        with caplog.at_level("WARNING", logger="vigil.sources.hubspot_audit"):
            for _ in range(3):
                assert source(base).poll_once(sink) == 0
    assert sorted(ids_in(sink.records)) == sorted(r["id"] for r in burst)  # each once
    cursor = sink.cursors[SOURCE_ID]
    assert len(cursor["recent"]) == 20
    assert cursor["since"] == cursor["recent"][0][1]  # (from the oldest kept)
    assert any("over the 20 the cursor keeps" in r.getMessage() for r in caplog.records)


def test_an_id_of_other_characters_than_printable_ascii_is_kept_as_a_hash() -> None:
    # 64 characters of another kind took up to 12 bytes each in the cursor's JSON (found in review).
    assert hubspot_audit._id_key(123456789) == "123456789"
    assert hubspot_audit._id_key("a" * 64) == "a" * 64
    for odd in ("\U0001f600" * 64, "\x01" * 10, "a" * 65):
        key = hubspot_audit._id_key(odd)
        assert key.startswith("sha256:")
        assert key == hubspot_audit._id_key(odd)  # (the same id, the same key)


def test_a_cursor_written_before_settle_resumes_without_publishing_again() -> None:
    # Version 1 of the cursor has no ``recent``: what it published before ``at`` is not asked
    # again (it would all come twice), and the cursor written after is version 2.
    old = results(3)
    api = FakeHubSpot(old)
    with serving(api.answer) as base:
        sink = memory_sink()
        newest = old[-1]
        sink.cursors[SOURCE_ID] = {"v": 1, "at": newest["occurredAt"], "seen": [newest["id"]]}
        assert source(base).poll_once(sink) == 0
        assert api.asked[-1]["occurredAfter"] == iso(
            parse_time(newest["occurredAt"]) - timedelta(milliseconds=1)
        )
        api.results.append(audit(300, parse_time(newest["occurredAt"]) + timedelta(seconds=1)))
        assert source(base).poll_once(sink) == 1
    cursor = sink.cursors[SOURCE_ID]
    assert cursor["v"] == 2
    assert cursor["since"] == newest["occurredAt"].replace("Z", "000Z")  # (what it holds from)


class CrashingSink(MemorySink):
    """A sink whose ``crash_at``-th publish fails (nothing of it kept), as Kafka would."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.source_id = SOURCE_ID
        self.crash_at = crash_at
        self.calls = 0

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            msg = "publishing to Kafka failed, nothing was committed (the test's crash)"
            raise BrokerError(msg)
        super().publish(records, cursor)


@pytest.mark.parametrize("order", ["newest", "oldest", "shuffled"])
def test_a_crash_mid_poll_then_a_restart_gives_every_result_once(order: str) -> None:
    every = results(9)
    api = FakeHubSpot(every, order=order)
    with serving(api.answer) as base:
        sink = CrashingSink(crash_at=2)
        with pytest.raises(BrokerError):
            source(base, page_size="3").poll_once(sink)
        assert len(sink.records) == 1
        assert sink.cursors[SOURCE_ID]["pending"] == ids_in(sink.records)  # the poll's published ids
        late = audit(50, parse_time(every[-1]["occurredAt"]))  # arrives while down, at the newest time
        api.results.append(late)
        restarted = source(base, page_size="3")
        restarted.poll_once(sink)
    published = ids_in(sink.records)
    assert sorted(published) == sorted([r["id"] for r in every] + [late["id"]])  # each once
    cursor = sink.cursors[SOURCE_ID]
    assert "pending" not in cursor  # the poll is over
    assert cursor["at"] == every[-1]["occurredAt"].replace("Z", "000Z")
    assert sorted(cursor["seen"]) == sorted([every[-1]["id"], late["id"]])


def test_past_the_pending_bound_a_crash_repeats_results_under_the_same_event_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One poll's published ids are kept up to a bound; past it a crash re-publishes the
    # forgotten ones, which the normaliser gives the same event ids (deduplicated downstream).
    monkeypatch.setattr(hubspot_audit, "PENDING_AT_MOST", 2)
    every = results(8)
    api = FakeHubSpot(every, order="oldest")
    with serving(api.answer) as base:
        sink = CrashingSink(crash_at=3)
        with pytest.raises(BrokerError):
            source(base, page_size="2").poll_once(sink)
        source(base, page_size="2").poll_once(sink)
    published = ids_in(sink.records)
    assert set(published) == {r["id"] for r in every}  # every result at least once
    assert Counter(published) == Counter({r["id"]: 1 for r in every}) + Counter(published[:2])
    events = [e.event_id for rec in sink.records for e in HubSpotNormalizer().normalize(rec)]
    assert len(set(events)) == len([r for r in every if r["category"] != "CRM_OBJECT"])


def test_a_page_with_some_results_published_already_carries_the_others_as_received() -> None:
    every = results(4)
    api = FakeHubSpot(every, order="oldest")
    with serving(api.answer) as base:
        sink = memory_sink()
        source(base).poll_once(sink)
        newest = parse_time(every[-1]["occurredAt"])
        api.results.append(audit(60, newest))  # the same time as the cursor's: asked again with it
        source(base).poll_once(sink)
    again = sink.records[-1]
    assert json.loads(again.value) == {"results": [audit(60, newest)]}
    assert again.meta["left_out"] == 4  # (the settle window's, published by the first poll)
    sent = json.dumps(audit(60, newest), indent=1).replace("\n", "\n  ")  # as json.dumps nested it
    assert sent.encode() in again.value  # the result's own bytes, unchanged


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("failure", "raised", "said"),
    [
        ((429, 7), Retry, "HTTP 429"),
        ((500,), Retry, "HTTP 500 Internal Error"),
        ((401,), SourceError, "HTTP 401 Unauthorized: HubSpot refused the access token"),
        (("bad json",), SourceError, "page 1 (occurredAfter "),
    ],
)
def test_a_failure_is_a_failed_poll_retried_then_succeeding_and_the_token_is_never_shown(
    failure: tuple[Any, ...], raised: type[Exception], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx's and httpcore's own request lines too
    api = FakeHubSpot(results(3))
    api.fail = [failure]
    with serving(api.answer) as base:
        hub = source(base)
        sink = memory_sink()
        with pytest.raises(raised) as info:
            hub.poll_once(sink)
        assert (sink.records, sink.cursors) == ([], {})  # nothing published, the cursor unmoved
        assert said in str(info.value)
        assert (hub.failed_polls, hub.last_error) == (1, str(info.value))
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1  # logged once
        assert hub.poll_once(sink) == 3
        assert hub.last_error is None
        assert hub.errors == {}
    if isinstance(info.value, Retry):
        assert info.value.after == timedelta(seconds=failure[1] if failure[0] == 429 else 0)
    if failure[0] == 401:
        assert "account-info.security.read" in str(info.value)
    if failure[0] == "bad json":
        assert "not JSON" in str(info.value)
    assert "HTTP Request: GET" in caplog.text  # httpx's lines were there to look at
    no_token_in(sink, caplog.text, str(info.value), repr(hub))
    assert not any(TOKEN in str(r.args) for r in caplog.records)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"[]", r"expected a page of audit results .* Expected `object`, got `array`"),
        (b'{"results": [{"id": "a1"}]}', r"missing required field `occurredAt` - at `\$.results\[0\]`"),
        (
            b'{"results": [{"id": "a1", "occurredAt": "2026-12-01T10:00:00"}]}',
            r"with its offset .* - at `\$.results\[0\].occurredAt`",
        ),
        (b'{"results": [], "paging": {"next": {"after": ""}}}', "paging.next.after is empty"),
        (b'{"results": [{"id": "a", "occurredAt": null}]}', r"got `null` - at `\$.results\[0\].occurredAt`"),
        (b'{"results": [{"id": "a", "occurredAt": "\\u001b[2J\\n"}]}', r"got '\\x1b\[2J\\n' - at"),
    ],
)
def test_an_answer_of_another_shape_fails_the_poll_naming_what_and_where(body: bytes, said: str) -> None:
    class Odd(FakeHubSpot):
        def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
            self.send(handler, 200, body)

    with serving(Odd().answer) as base:
        sink = memory_sink()
        with pytest.raises(SourceError, match=said) as info:
            source(base).poll_once(sink)
    assert "\x1b" not in str(info.value)
    assert (sink.records, sink.cursors) == ([], {})


def test_text_from_the_server_is_made_inert_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    # A paging token with a terminal escape and a newline, then an answer that is not JSON:
    # the error names the page by that token, escaped, so it forges no log line.
    class Forging(FakeHubSpot):
        def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
            self.asked.append({})
            if len(self.asked) == 1:
                page = {"results": [audit(1, NOW)], "paging": {"next": {"after": "2\x1b[2J\nFORGED"}}}
                return self.send(handler, 200, json.dumps(page).encode())
            return self.send(handler, 200, b"<html>\x1b[31m</html>")

    with serving(Forging().answer) as base, caplog.at_level(logging.WARNING):
        sink = memory_sink()
        with pytest.raises(SourceError, match="page 2") as info:
            source(base).poll_once(sink)
    for text in (str(info.value), caplog.text):
        assert "\x1b" not in text
        assert "\nFORGED" not in text
    assert r"after '2\x1b[2J\nFORGED'" in str(info.value)
    assert len(sink.records) == 1  # the first page went out, with the cursor to resume it


def test_an_answer_larger_than_a_record_may_be_fails_the_poll() -> None:
    api = FakeHubSpot(results(3))
    with serving(api.answer) as base:
        hub = HubSpotAuditSource(TOKEN, base_url=base, max_response_bytes=200)
        with pytest.raises(SourceError, match=r"larger than 200 bytes.*lower the option page_size"):
            hub.poll_once(memory_sink())


def test_run_waits_what_retry_after_asks_before_the_next_poll() -> None:
    api = FakeHubSpot(results(2))
    api.fail = [(429, 1)]
    with serving(api.answer) as base:
        hub = source(base, poll_interval="0.01")
        sink = memory_sink()
        thread = threading.Thread(target=hub.run, args=(sink,), daemon=True)
        thread.start()
        try:
            assert api.asked_twice.wait(5)
        finally:
            hub.stop()
            thread.join(5)
    assert not thread.is_alive()
    assert api.asked_at[1] - api.asked_at[0] >= 0.95  # not the 0.01 s poll interval
    assert len(ids_in(sink.records)) == 2


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"base_url": "ftp://api.example.com"}, "option base_url must be an http:// or https:// URL"),
        ({"base_url": "https://api.example.com/?hapikey=SECRETKEY"}, "no user-info, query or fragment"),
        ({"base_url": "https://me:SECRETKEY@api.example.com"}, "no user-info, query or fragment"),
        ({"page_size": "0"}, "option page_size must be from 1 to 200; got 0"),
        ({"page_size": "201"}, "option page_size must be from 1 to 200"),
        ({"page_size": "many"}, "option page_size must be a whole number"),
        ({"lookback": "0"}, "option lookback must be a number of seconds above 0"),
        ({"lookback": str(91 * 86_400)}, "option lookback must be above 0 and at most 90 days"),
        ({"lookback": "1e14"}, r"option lookback must be above 0 and at most 90 days .*got 1e\+14 s"),
        ({"poll_interval": "-1"}, "option poll_interval must be a number of seconds above 0"),
        ({"settle": "-1"}, "option settle must be a number of seconds from 0 to 86400; got '-1'"),
        ({"settle": "86401"}, "option settle must be a number of seconds from 0 to 86400"),
        ({"settle": "soon"}, "option settle must be a number of seconds from 0 to 86400"),
        ({"timeout": "nan"}, "option timeout must be a number of seconds above 0"),
        ({"pol_interval": "5"}, r"unknown option\(s\) \['pol_interval'\]"),
        ({"access_token": "SECRETKEY"}, "option access_token is not taken .* setting hubspot_access_token"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, str], said: str) -> None:
    with pytest.raises(SourceError, match=said) as info:
        HubSpotAuditSource.from_settings(settings(), **options)
    assert "SECRETKEY" not in str(info.value)


def test_the_token_setting_missing_or_malformed_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_HUBSPOT_ACCESS_TOKEN", raising=False)
    with pytest.raises(
        SourceError, match=r"the setting hubspot_access_token is not set.*VIGIL_HUBSPOT_ACCESS_TOKEN"
    ):
        HubSpotAuditSource.from_settings(Settings())
    # An empty one is unset, in vigil.toml as in the variable (vigil.config).
    with pytest.raises(SourceError, match="the setting hubspot_access_token is not set"):
        HubSpotAuditSource.from_settings(Settings(hubspot_access_token=""))
    with pytest.raises(SourceError, match="hubspot_access_token is empty"):
        HubSpotAuditSource("")
    with pytest.raises(SourceError, match="hubspot_access_token holds a character") as info:
        HubSpotAuditSource.from_settings(Settings(hubspot_access_token="pat-na1\nSECRETKEY"))  # noqa: S106 - a test value
    assert "SECRETKEY" not in str(info.value)
    # The variable is the place, and the value is hidden in every dump.
    monkeypatch.setenv("VIGIL_HUBSPOT_ACCESS_TOKEN", TOKEN)
    from_env = Settings()
    assert from_env.hubspot_access_token is not None
    assert from_env.hubspot_access_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(from_env)
    assert TOKEN not in from_env.model_dump_json()


def test_it_is_registered_and_publishes_to_raw_hubspot() -> None:
    cls = source_class("hubspot_audit")
    assert cls is HubSpotAuditSource
    hub = cls.from_settings(settings())
    assert (hub.default_topic, hub.source_id, hub.endpoint) == (
        "raw.hubspot",
        "hubspot.audit",
        "https://api.hubapi.com",
    )
    assert (
        HubSpotAuditSource.from_settings(settings(), source_id="hubspot.audit.eu").source_id
        == "hubspot.audit.eu"
    )
