"""HubSpot v3 signatures and the webhook normaliser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vigil.errors import ContractError, DecodeError
from vigil.events.codec import decode_event, encode
from vigil.events.types import CrmApiTokenUsed, CrmLogin, CrmRecordExport
from vigil.hub.raw import RawRecord
from vigil.sources.hubspot import HubSpotNormalizer, HubSpotWebhook, sign_v3, signed_uri
from vigil.sources.webhooks import Delivery, Rejected

SECRET = "hubspot-client-secret-for-tests"  # noqa: S105 - a test secret
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENTS = [
    {
        "eventId": 1001,
        "subscriptionId": 7,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1772366400000,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": 123,
        "propertyName": "email",
        "propertyValue": "x@example.com",
        "changeSource": "INTEGRATION",
        "sourceId": "app:54321",
    },
    {
        "eventId": 1002,
        "subscriptionId": 8,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1772366401000,
        "subscriptionType": "contact.creation",
        "attemptNumber": 0,
        "objectId": 124,
        "changeSource": "CRM_UI",
        "sourceId": "userId:99",
    },
    {
        "eventId": 1003,
        "subscriptionId": 9,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1772366402000,
        "subscriptionType": "contact.deletion",
        "attemptNumber": 0,
        "objectId": 125,
        "changeSource": "API",
    },
]
BODY = json.dumps(EVENTS).encode()


def delivery(
    body: bytes = BODY, *, stamp: datetime = NOW, signature: str | None = None, **headers: str
) -> Delivery:
    ts = str(int(stamp.timestamp() * 1000))
    url = "https://hooks.example.com/webhooks/hubspot?tenant=a%3Ab"
    sig = signature if signature is not None else sign_v3(SECRET, "POST", url, body, ts)
    hdrs = {"x-hubspot-signature-v3": sig, "x-hubspot-request-timestamp": ts} | headers
    return Delivery("hubspot", "POST", url, "/webhooks/hubspot", "tenant=a%3Ab", hdrs, body, NOW)


def test_signature_is_base64_hmac_sha256_of_method_uri_body_timestamp() -> None:
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), b"POSThttps://h/p?a=b:c" + b"{}" + b"1700", hashlib.sha256).digest()
    ).decode()
    assert sign_v3(SECRET, "POST", "https://h/p?a=b%3Ac", b"{}", "1700") == expected


def test_signed_uri_decodes_the_characters_hubspot_decodes() -> None:
    assert (
        signed_uri("https://h/p%3Fq%3Dx%2Fy%40z%21%24%27%28%29%2A%2C%3B%20")
        == "https://h/p?q%3Dx/y@z!$'()*,;%20"
    )


def test_valid_signature_is_accepted() -> None:
    HubSpotWebhook(SECRET).verify(delivery())


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"signature": "AAAA"}, "bad_signature"),
        ({"signature": sign_v3("other-secret", "POST", "https://x", BODY, "1")}, "bad_signature"),
        ({"stamp": NOW - timedelta(minutes=5, seconds=1)}, "stale"),
        ({"stamp": NOW + timedelta(minutes=6)}, "stale"),
        ({"signature": ""}, "missing_signature"),
        ({"x-hubspot-request-timestamp": "yesterday"}, "bad_timestamp"),
        # A year past 9999: from anyone, it was a 500 with a traceback.
        ({"x-hubspot-request-timestamp": "9999999999999999"}, "bad_timestamp"),
        # Digits str.isdigit() takes and int() refuses: a 500 with a traceback, from anyone.
        ({"x-hubspot-request-timestamp": "\xb2"}, "bad_timestamp"),
        ({"x-hubspot-request-timestamp": "\u0661\u0662"}, "bad_timestamp"),
    ],
)
def test_forged_stale_or_incomplete_requests_are_rejected(changed: dict[str, object], reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        HubSpotWebhook(SECRET).verify(delivery(**changed))  # type: ignore[arg-type]
    assert caught.value.reason == reason
    assert caught.value.status == 401
    assert SECRET not in caught.value.detail


def test_the_same_signed_request_twice_is_a_replay() -> None:
    hook = HubSpotWebhook(SECRET)
    hook.verify(delivery())
    with pytest.raises(Rejected, match="replayed"):
        hook.verify(delivery())
    # A retry is signed anew (new timestamp) and passes.
    hook.verify(delivery(stamp=NOW - timedelta(seconds=1)))


def test_a_replay_is_refused_for_as_long_as_its_timestamp_would_pass() -> None:
    # Our clock 90 s behind HubSpot's: remembered for 5 minutes from its arrival, the signature
    # was forgotten at NOW + 3.5 min, and a replay then still passed the freshness check.
    hook = HubSpotWebhook(SECRET)
    original = delivery()

    def arriving(at: datetime) -> Delivery:
        return Delivery(**{**original.__dict__, "received_at": at})

    hook.verify(arriving(NOW - timedelta(seconds=90)))
    for at in (NOW + timedelta(minutes=1), NOW + timedelta(minutes=4), NOW + timedelta(minutes=5)):
        with pytest.raises(Rejected) as caught:
            hook.verify(arriving(at))
        assert caught.value.reason == "replayed"
    with pytest.raises(Rejected) as caught:  # past that, it is stale
        hook.verify(arriving(NOW + timedelta(minutes=5, seconds=1)))
    assert caught.value.reason == "stale"


def test_a_tampered_body_fails_the_signature() -> None:
    good = delivery()
    tampered = Delivery(**{**good.__dict__, "body": BODY.replace(b"1001", b"1009")})
    with pytest.raises(Rejected, match="bad_signature"):
        HubSpotWebhook(SECRET).verify(tampered)


def test_public_url_rebuilds_the_uri_hubspot_signed() -> None:
    ts = str(int(NOW.timestamp() * 1000))
    sig = sign_v3(SECRET, "POST", "https://public.example.com/webhooks/hubspot", BODY, ts)
    seen = Delivery(
        "hubspot",
        "POST",
        "http://127.0.0.1:8089/webhooks/hubspot",
        "/webhooks/hubspot",
        "",
        {"x-hubspot-signature-v3": sig, "x-hubspot-request-timestamp": ts},
        BODY,
        NOW,
    )
    with pytest.raises(Rejected):
        HubSpotWebhook(SECRET).verify(seen)
    HubSpotWebhook(SECRET, public_url="https://public.example.com/").verify(seen)


def record(body: bytes = BODY, kind: str = "webhook") -> RawRecord:
    return RawRecord("hubspot", kind, body, received_at=NOW)


def test_api_changes_become_token_use_and_ui_changes_yield_nothing() -> None:
    events = HubSpotNormalizer().normalize(record())
    assert all(isinstance(e, CrmApiTokenUsed) for e in events)
    got = [(e.payload.token_id, e.payload.operation, e.entities.api_key) for e in events]  # type: ignore[attr-defined]
    assert got == [
        ("app:54321", "contact.propertyChange", "app:54321"),
        ("app:54321", "contact.deletion", "app:54321"),  # no sourceId: the app id names the token
    ]
    assert events[0].occurred_at == datetime.fromtimestamp(1772366400, UTC)
    assert events[0].entities.vendor == "hubspot"
    assert len({e.event_id for e in events}) == 2
    assert [e.event_id for e in HubSpotNormalizer().normalize(record())] == [e.event_id for e in events]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[not json", "JSON array"),
        (b'{"eventId": 1}', "Expected `array`"),
        (json.dumps([{**EVENTS[0], "eventId": "x"}]).encode(), r"\$\[0\]\.eventId"),
        (json.dumps([{k: v for k, v in EVENTS[0].items() if k != "portalId"}]).encode(), "portalId"),
        (
            json.dumps([{k: v for k, v in EVENTS[2].items() if k != "appId"}]).encode(),
            "neither sourceId nor appId",
        ),
    ],
)
def test_malformed_deliveries_are_rejected_with_the_reason(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        HubSpotNormalizer().normalize(record(body))


def test_unexpected_record_kind_is_rejected() -> None:
    with pytest.raises(ContractError, match="expected kind 'webhook'"):
        HubSpotNormalizer().normalize(record(kind="ws_message"))


# The account activity API's audit-log page, as documented (one record per category the
# normaliser knows, and one it ignores).
AUDIT_PAGE: dict[str, Any] = {
    "results": [
        {
            "id": "jAzNiQgaEZUTlJISRtESldLGFNM",
            "category": "PIPELINE",
            "subCategory": "DEAL",
            "action": "UPDATE",
            "targetObjectId": "Sales Pipeline",
            "occurredAt": "2026-03-01T12:00:00.529Z",
            "actingUser": {"userId": 89274502, "userEmail": "mark.scout@example.com"},
        },
        {
            "id": "a1",
            "category": "LOGIN",
            "subCategory": "LOGIN_FAILED",
            "action": "PERFORM",
            "occurredAt": "2026-03-01T12:01:00Z",
            "actingUser": {"userId": 89274502, "userEmail": "mark.scout@example.com"},
            "ipAddress": "198.51.100.7",
            "countryCode": "ie",
        },
        {
            "id": "a2",
            "category": "EXPORT",
            "subCategory": "CRM_OBJECT_EXPORT",
            "action": "CREATE",
            "targetObjectId": "export-9",
            "occurredAt": "2026-03-01T12:02:00Z",
            "actingUser": {"userId": 89274502},
        },
    ],
    "paging": {"next": {"after": "NTI1Cg%3D%3D"}},
}


def test_audit_log_logins_and_exports_become_canonical() -> None:
    events = HubSpotNormalizer().normalize(record(json.dumps(AUDIT_PAGE).encode(), kind="audit_log"))
    assert [e.type for e in events] == ["crm_login", "crm_record_export"]
    login, export = events
    assert isinstance(login, CrmLogin)
    assert isinstance(export, CrmRecordExport)
    assert login.payload.success is False
    assert (login.entities.employee, login.entities.ip) == ("mark.scout@example.com", "198.51.100.7")
    assert login.payload.geo is not None
    assert login.payload.geo.country == "IE"
    assert login.occurred_at == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    # No e-mail: the user id names the employee; no count or ids listed: zero records known.
    assert export.entities.employee == "hubspot-user:89274502"
    assert (export.payload.export_id, export.payload.record_count) == ("export-9", 0)
    assert export.payload.object_type == "crm_object_export"
    one = HubSpotNormalizer().normalize(
        record(json.dumps(AUDIT_PAGE["results"][1]).encode(), kind="audit_log")
    )
    assert [e.event_id for e in one] == [login.event_id]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"actingUser": None}, "names no acting user"),
        ({"occurredAt": "yesterday"}, r"RFC 3339 .*'yesterday'"),
        ({"occurredAt": "2026-03-01T12:01:00"}, "UTC offset"),
        # Valid RFC 3339, but before year 1 / after 9999 once in UTC: was an uncaught OverflowError.
        (
            {"occurredAt": "0001-01-01T00:00:00+01:00"},
            r"occurredAt: expected a time between the years 1 and 9999 in UTC, got '0001",
        ),
        (
            {"occurredAt": "9999-12-31T23:59:59-01:00"},
            r"occurredAt: expected a time between the years 1 and 9999 in UTC, got '9999",
        ),
        ({"category": 7}, r"Expected `str`, got `int` - at `\$\.results\[0\]\.category`"),
        ({"id": ""}, r"length >= 1 - at `\$\.results\[0\]\.id`"),
        ({"details": {"recordCount": -1}}, r">= 0 - at `\$\.results\[0\]\.details\.recordCount`"),
    ],
)
def test_malformed_audit_records_are_rejected_with_the_reason(change: dict[str, object], match: str) -> None:
    page = {"results": [{**AUDIT_PAGE["results"][1], **change}]}
    with pytest.raises(DecodeError, match=match) as caught:
        HubSpotNormalizer().normalize(record(json.dumps(page).encode(), kind="audit_log"))
    if change.keys() & {"actingUser", "occurredAt"}:  # msgspec names the path in its message instead
        assert caught.value.path == f"$.results[0].{next(iter(change))}"


@pytest.mark.parametrize(("address", "ip"), [("2001:DB8::7", "2001:db8::7"), ("unknown", None)])
def test_an_audit_ip_is_canonical_and_no_address_is_no_ip(address: str, ip: str | None) -> None:
    export = {**AUDIT_PAGE["results"][2], "ipAddress": address}
    (event,) = HubSpotNormalizer().normalize(record(json.dumps(export).encode(), kind="audit_log"))
    assert event.entities.ip == ip


def test_an_audit_record_without_an_ip_names_none_and_blank_object_ids_are_left_out() -> None:
    # HubSpot leaves ipAddress "" when it has none: every such login shared the IP "", which the
    # contract refuses (an entity key is never empty).
    export = {
        **AUDIT_PAGE["results"][2],
        "ipAddress": "",
        "details": {"objectType": "CONTACT", "objectIds": ["", 901, "902"]},
    }
    (event,) = HubSpotNormalizer().normalize(record(json.dumps(export).encode(), kind="audit_log"))
    assert isinstance(event, CrmRecordExport)
    assert event.entities.ip is None
    assert (event.payload.customer_ids, event.payload.record_count) == (["901", "902"], 2)
    assert decode_event(encode(event)) == event


def test_the_replay_memory_takes_verifications_from_many_threads_at_once() -> None:
    # The receiver verifies on worker threads, several at once: unlocked, the trimming raised
    # "mutated during iteration" (a 400 for a genuine delivery) and a replay sent at the same
    # moment passed (found in review).
    now = datetime.now(UTC)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads switched as often as can be: the race shows at once)
    try:
        _race_the_replay_memory(now)
    finally:
        sys.setswitchinterval(switch)


def _race_the_replay_memory(now: datetime) -> None:
    def race(hook: HubSpotWebhook, signatures: Callable[[int], list[str]]) -> list[str]:
        """Each of 8 threads verifies its ``signatures(i)`` at once; the ones taken as new."""
        firsts: list[str] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def verify_all(i: int) -> None:
            start.wait()
            try:
                firsts.extend(s for s in signatures(i) if not hook._replayed(s, now, now))
            except BaseException as exc:  # (the test's to see)
                errors.append(exc)

        threads = [threading.Thread(target=verify_all, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        return firsts

    # The same 2,000 signatures from every thread: each taken as new once, the rest replays.
    same = race(HubSpotWebhook(SECRET), lambda _: [f"sig-{n}" for n in range(2000)])
    assert sorted(same) == sorted(f"sig-{n}" for n in range(2000))
    # Trimmed all along (a bound of 500): no error, every signature new.
    trimmed = HubSpotWebhook(SECRET)
    trimmed.max_remembered = 500
    own = race(trimmed, lambda i: [f"sig-{i}-{n}" for n in range(5000)])
    assert len(own) == 40_000
