"""Salesforce outbound messages and Event Monitoring records: verification and normalisation."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from vigil.errors import ContractError, DecodeError
from vigil.events.codec import decode_event, encode
from vigil.events.ids import stable_id
from vigil.events.types import CrmApiTokenUsed, CrmLogin, CrmRecordExport
from vigil.hub.raw import RawRecord
from vigil.sources import salesforce
from vigil.sources.salesforce import ACK, SalesforceNormalizer, SalesforceWebhook
from vigil.sources.sink import MemorySink
from vigil.sources.webhooks import Delivery, Rejected, create_app

TOKEN = "sf-path-token-0123456789abcdef"  # noqa: S105 - a test token
ORG = "00D5e000000AbCdEAK"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def outbound(org: str = ORG, sobjects: str = "") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k5e000000AAAAAA2</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/60.0/00D5e000000AbCd</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/60.0/00D5e000000AbCd</PartnerUrl>
   {sobjects}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


REPORT = """<Notification><Id>04l5e00000AAAAA1</Id>
 <sObject xsi:type="sf:ReportEvent" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
  <sf:Id>0Xx5e000000001</sf:Id>
  <sf:EventIdentifier>8a1c-report-1</sf:EventIdentifier>
  <sf:EventDate>2026-03-01T11:58:00.000+0000</sf:EventDate>
  <sf:Username>mallory@acme.example</sf:Username>
  <sf:SourceIp>198.51.100.23</sf:SourceIp>
  <sf:RowsProcessed>48210</sf:RowsProcessed>
  <sf:QueriedEntities>Contact</sf:QueriedEntities>
  <sf:ReportId>00O5e000000XyZ</sf:ReportId>
  <sf:Operation>ReportExported</sf:Operation>
  <sf:Records>["0035e00000A1","0035e00000A2"]</sf:Records>
 </sObject></Notification>"""
CONTACT = """<Notification><Id>04l5e00000AAAAA2</Id>
 <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
  <sf:Id>0035e00000A1</sf:Id><sf:Email>a@example.com</sf:Email>
 </sObject></Notification>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&xxe;</OrganizationId>
</notifications></soapenv:Body></soapenv:Envelope>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&lol2;</OrganizationId></notifications>"""

LOGIN_EVENTS: dict[str, Any] = {
    "totalSize": 2,
    "done": True,
    "records": [
        {
            "attributes": {"type": "LoginEvent", "url": "/services/data/v60.0/sobjects/LoginEvent/1"},
            "EventIdentifier": "login-1",
            "EventDate": "2026-03-01T11:00:00.000Z",
            "Username": "alice@acme.example",
            "SourceIp": "203.0.113.9",
            "Status": "Success",
            "Browser": "Chrome 121",
            "CountryIso": "RO",
            "City": "Bucharest",
            "Latitude": 44.43,
            "Longitude": 26.1,
        },
        {
            "attributes": {"type": "LoginEvent"},
            "EventIdentifier": "login-2",
            "EventDate": "2026-03-01T11:01:00Z",
            "Username": "alice@acme.example",
            "Status": "Invalid Password",
        },
    ],
}
API_EVENT = {
    "attributes": {"type": "ApiEvent"},
    "EventIdentifier": "api-1",
    "EventDate": "2026-03-01T11:05:00Z",
    "Username": "svc@acme.example",
    "ConnectedAppId": "0H45e000000001",
    "Operation": "Query",
    "QueriedEntities": "Contact",
    "RowsProcessed": 9000,
    "SourceIp": "192.0.2.55",
}
ELF_EXPORT = {
    "EVENT_TYPE": "ReportExport",
    "REQUEST_ID": "4exLFFQZ1234",
    "TIMESTAMP_DERIVED": "2026-03-01T10:00:00.123Z",
    "USER_ID": "0055e000001",
    "REPORT_ID": "00O5e000000AbC",
    "CLIENT_IP": "198.51.100.7",
}


def delivery(body: bytes, token: str | None = TOKEN) -> Delivery:
    return Delivery(
        "salesforce",
        "POST",
        "http://h/webhooks/salesforce/x",
        "/webhooks/salesforce/x",
        "",
        {"content-type": "text/xml"},
        body,
        NOW,
        token=token,
    )


def webhook() -> SalesforceWebhook:
    return SalesforceWebhook(TOKEN, [ORG[:15]])


def record(body: bytes) -> RawRecord:
    return RawRecord("salesforce", "webhook", body, received_at=NOW)


def test_outbound_message_from_an_allowed_org_with_the_token_is_accepted_and_acked() -> None:
    hook = webhook()
    good = delivery(outbound(sobjects=REPORT))
    hook.verify(good)  # the 18-char org id matches the 15-char allowlist entry
    assert hook.key(good) == ORG[:15].encode()
    ack = hook.acknowledge(good)
    assert ack.body == ACK.encode()
    assert b"<Ack>true</Ack>" in ack.body


@pytest.mark.parametrize(
    ("body", "token", "reason", "status"),
    [
        (outbound(), "wrong-token-0123456789", "bad_token", 401),
        (outbound(), None, "missing_token", 401),
        (outbound(org="00D000000000001AAA"), TOKEN, "unknown_org", 401),
        (XXE, TOKEN, "malformed", 400),
        (LAUGHS, TOKEN, "malformed", 400),
        (b"<notifications><unclosed>", TOKEN, "malformed", 400),
        # An encoding Python does not know was a 500.
        (b'<?xml version="1.0" encoding="bogus"?><x/>', TOKEN, "malformed", 400),
        # Behind a byte order mark the XML was taken for JSON: no org check, no Ack.
        (b"\xef\xbb\xbf" + outbound(org="00D000000000001AAA"), TOKEN, "unknown_org", 401),
    ],
)
def test_forged_or_hostile_deliveries_are_rejected(
    body: bytes, token: str | None, reason: str, status: int
) -> None:
    with pytest.raises(Rejected) as caught:
        webhook().verify(delivery(body, token))
    assert (caught.value.reason, caught.value.status) == (reason, status)
    assert "root:" not in caught.value.detail  # nothing of a local file ever surfaces


@pytest.mark.parametrize("encoding", ["shift_jis", "big5", "euc_jp"])
def test_xml_in_a_multi_byte_encoding_the_parser_cannot_read_is_400(encoding: str) -> None:
    # Python knows these encodings but expat reads none of them: an uncaught ValueError, a 500
    # that Salesforce retried for 24 hours.
    body = outbound().replace(b'encoding="UTF-8"', f'encoding="{encoding}"'.encode())
    with pytest.raises(Rejected) as caught:
        webhook().verify(delivery(body))
    assert (caught.value.reason, caught.value.status) == ("malformed", 400)
    assert "expected UTF-8" in caught.value.detail
    with pytest.raises(DecodeError, match="encoding the parser cannot read"):
        SalesforceNormalizer().normalize(record(body))


def test_an_outbound_message_behind_a_byte_order_mark_is_acked() -> None:
    hook = webhook()
    good = delivery(b"\xef\xbb\xbf" + outbound(sobjects=REPORT))
    hook.verify(good)
    assert b"<Ack>true</Ack>" in hook.acknowledge(good).body


def test_xml_entities_are_refused_by_the_normaliser_too() -> None:
    with pytest.raises(DecodeError, match="DTD, entities or external"):
        SalesforceNormalizer().normalize(record(XXE))


def test_report_event_becomes_an_export_with_row_count_and_customer_ids() -> None:
    [event] = SalesforceNormalizer().normalize(record(outbound(sobjects=REPORT + CONTACT)))
    assert isinstance(event, CrmRecordExport)
    p = event.payload
    assert (p.record_count, p.object_type, p.export_id, p.actor) == (
        48210,
        "Contact",
        "00O5e000000XyZ",
        "mallory@acme.example",
    )
    assert p.customer_ids == ["0035e00000A1", "0035e00000A2"]
    assert event.occurred_at == datetime(2026, 3, 1, 11, 58, tzinfo=UTC)
    assert (event.entities.ip, event.entities.vendor) == ("198.51.100.23", "salesforce")


def test_login_events_from_a_query_result_become_logins() -> None:
    ok, failed = SalesforceNormalizer().normalize(record(json.dumps(LOGIN_EVENTS).encode()))
    assert isinstance(ok, CrmLogin)
    assert isinstance(failed, CrmLogin)
    assert (ok.payload.user, ok.payload.success, failed.payload.success) == (
        "alice@acme.example",
        True,
        False,
    )
    assert ok.payload.geo is not None
    assert (ok.payload.geo.country, ok.payload.geo.lat) == ("RO", 44.43)
    assert ok.entities.ip == "203.0.113.9"
    assert ok.event_id != failed.event_id


def test_the_first_client_address_is_taken_past_a_field_that_is_none() -> None:
    login = {**LOGIN_EVENTS["records"][0], "SourceIp": "Salesforce.com IP", "CLIENT_IP": "198.51.100.4"}
    [event] = SalesforceNormalizer().normalize(record(json.dumps(login).encode()))
    assert event.entities.ip == "198.51.100.4"


@pytest.mark.parametrize(
    ("source_ip", "ip"),
    [("Salesforce.com IP", None), ("2001:DB8::9", "2001:db8::9"), ("::ffff:203.0.113.9", "203.0.113.9")],
)
def test_a_source_ip_that_is_no_address_names_no_ip_and_addresses_are_canonical(
    source_ip: str, ip: str | None
) -> None:
    # Salesforce writes "Salesforce.com IP" for its own requests: as an IP, every one shared it.
    login = {**LOGIN_EVENTS["records"][0], "SourceIp": source_ip}
    [event] = SalesforceNormalizer().normalize(record(json.dumps(login).encode()))
    assert event.entities.ip == ip


@pytest.mark.parametrize(("lat", "lon"), [("91", "26.1"), ("44.43", "200"), ("nan", "26.1"), ("44.43", None)])
def test_a_login_placed_off_the_globe_keeps_its_country_without_the_point(lat: str, lon: str | None) -> None:
    # Out-of-range coordinates made a login the contract refuses (impossible travel measures
    # between points), so the login itself was lost downstream.
    login = {**LOGIN_EVENTS["records"][0], "Latitude": lat, "Longitude": lon}
    [event] = SalesforceNormalizer().normalize(record(json.dumps(login).encode()))
    assert isinstance(event, CrmLogin)
    assert event.payload.geo is not None
    assert (event.payload.geo.country, event.payload.geo.lat, event.payload.geo.lon) == ("RO", None, None)
    assert decode_event(encode(event)) == event


def test_api_event_becomes_token_use() -> None:
    [event] = SalesforceNormalizer().normalize(record(json.dumps(API_EVENT).encode()))
    assert isinstance(event, CrmApiTokenUsed)
    assert (event.payload.token_id, event.payload.operation, event.payload.records_accessed) == (
        "0H45e000000001",
        "Query Contact",
        9000,
    )


def test_event_log_file_report_export_without_row_count() -> None:
    [event] = SalesforceNormalizer().normalize(record(json.dumps([ELF_EXPORT]).encode()))
    assert isinstance(event, CrmRecordExport)
    assert (event.payload.record_count, event.payload.export_id, event.payload.actor) == (
        0,
        "00O5e000000AbC",
        "0055e000001",
    )


def test_event_ids_are_stable() -> None:
    body = record(json.dumps(API_EVENT).encode())
    assert (
        SalesforceNormalizer().normalize(body)[0].event_id
        == SalesforceNormalizer().normalize(body)[0].event_id
    )


@pytest.mark.parametrize(
    ("stream", "stored", "fields"),
    [
        ("LoginEventStream", "LoginEvent", LOGIN_EVENTS["records"][0]),
        ("ApiEventStream", "ApiEvent", API_EVENT),
        (
            "ReportEventStream",
            "ReportEvent",
            {**API_EVENT, "ReportId": "00O5e000000AbC", "Operation": "ReportExported"},
        ),
    ],
)
def test_a_streamed_event_and_its_stored_copy_are_one_event(
    stream: str, stored: str, fields: dict[str, object]
) -> None:
    def event_id(type_name: str) -> str:
        body = json.dumps({**fields, "attributes": {"type": type_name}}).encode()
        return SalesforceNormalizer().normalize(record(body))[0].event_id

    assert event_id(stream) == event_id(stored)
    # The stored type's id is what it always was: replays after the upgrade still deduplicate.
    ident = fields["EventIdentifier"]
    assert event_id(stored) == stable_id("salesforce", stored, ident, prefix="salesforce-")


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_event_time_outside_the_utc_range_is_a_decode_error(when: str) -> None:
    body = json.dumps({**API_EVENT, "EventDate": when}).encode()
    with pytest.raises(DecodeError, match="EventDate: expected a time between the years 1 and 9999 in UTC"):
        SalesforceNormalizer().normalize(record(body))
    # The field that held it is named, whichever of the time fields it was.
    login = {**LOGIN_EVENTS["records"][1], "LoginTime": when}
    del login["EventDate"]
    with pytest.raises(DecodeError, match="LoginTime: expected a time") as caught:
        SalesforceNormalizer().normalize(record(json.dumps(login).encode()))
    assert caught.value.path == "LoginTime"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            b'{"attributes":{"type":"LoginEvent"},"EventIdentifier":"x","Username":"\\ud800",'
            b'"EventDate":"2024-01-01T00:00:00Z"}',
            "$.Username",
        ),
        # json.loads decodes bytes with surrogatepass: raw UTF-8 of a surrogate gets through too.
        (
            b'[{"attributes":{"type":"LoginEvent"},"EventIdentifier":"x","Username":"\xed\xa0\x80",'
            b'"EventDate":"2024-01-01T00:00:00Z"}]',
            "$[0].Username",
        ),
        (
            b'{"attributes":{"type":"LoginEvent"},"EventIdentifier":"x","Username":"u","\\udc00":1,'
            b'"EventDate":"2024-01-01T00:00:00Z"}',
            "$",
        ),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(body: bytes, path: str) -> None:
    with pytest.raises(DecodeError, match="lone UTF-16 surrogate") as caught:
        SalesforceNormalizer().normalize(record(body))
    assert caught.value.path == path


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(
            [
                {
                    **API_EVENT,
                    "attributes": {"type": "ReportEvent"},
                    "ReportId": "00O5e000000AbC",
                    "ExportFileFormat": "CSV",
                    "Records": json.dumps(["\ud800"]),
                }
            ]
        ).encode(),
        outbound(sobjects=REPORT.replace('["0035e00000A1","0035e00000A2"]', '["0035e00000A1","\\udc00"]')),
    ],
    ids=["json", "xml"],
)
def test_a_lone_surrogate_in_the_records_json_string_is_refused_naming_records(body: bytes) -> None:
    # Records is JSON inside a string, parsed after the body's check: '\ud800' became a customer
    # id, and the event failed to encode later as an unexpected error.
    with pytest.raises(DecodeError, match="lone UTF-16 surrogate") as caught:
        SalesforceNormalizer().normalize(record(body))
    assert caught.value.path is not None
    assert caught.value.path.startswith("Records")


def test_a_surrogate_pair_is_well_formed_text() -> None:
    body = json.dumps({**LOGIN_EVENTS["records"][1], "Username": "\U0001f600@acme.example"}).encode()
    assert b"\\ud83d\\ude00" in body
    (event,) = SalesforceNormalizer().normalize(record(body))
    assert decode_event(encode(event)) == event


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"neither", "neither XML nor JSON"),
        (b"42", "expected a record"),
        (json.dumps([{"no": "type"}]).encode(), "names no type"),
        (json.dumps({**API_EVENT, "EventDate": "yesterday"}).encode(), "ISO 8601"),
        (json.dumps({**API_EVENT, "EventDate": "2026-03-01T11:05:00"}).encode(), "zone"),
        (
            json.dumps({k: v for k, v in API_EVENT.items() if k != "ConnectedAppId"}).encode(),
            "no connected app",
        ),
        (json.dumps({**API_EVENT, "RowsProcessed": "many"}).encode(), "expected a count"),
        (
            json.dumps({**API_EVENT, "RowsProcessed": "1e400"}).encode(),
            "expected a count",
        ),  # was OverflowError
        (
            outbound().replace(b"<OrganizationId>" + ORG.encode() + b"</OrganizationId>", b""),
            "no OrganizationId",
        ),
    ],
)
def test_malformed_records_are_rejected_with_the_reason(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        SalesforceNormalizer().normalize(record(body))


def test_other_objects_yield_nothing_and_other_kinds_are_refused() -> None:
    assert SalesforceNormalizer().normalize(record(outbound(sobjects=CONTACT))) == []
    with pytest.raises(ContractError, match="expected kind"):
        SalesforceNormalizer().normalize(RawRecord("salesforce", "x", b"{}", received_at=NOW))


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        SalesforceWebhook("short", [ORG])
    with pytest.raises(ValueError, match="organization id"):
        SalesforceWebhook(TOKEN, [" "])


@pytest.mark.parametrize(
    ("extra", "exported"),
    [
        ({"Operation": "ReportExported"}, True),
        ({"Operation": "ReportRunFromLightning", "ExportFileFormat": "XLSX"}, True),
        ({"Operation": "ReportRunFromLightning"}, False),
        ({"Operation": "ReportRunUsingSchedule", "IsScheduled": True}, False),
        ({"Operation": "DashboardComponentUpdated", "DashboardId": "01Z5e000000PmoQ"}, False),
        ({}, False),
    ],
)
def test_a_report_event_is_an_export_only_when_it_exported(extra: dict[str, object], exported: bool) -> None:
    # Salesforce records every run of a report as a ReportEvent: each read as an export, one
    # dashboard of two reports of 150 and 120 rows was a "bulk export", and a report viewed four
    # times in a day 2,000 records "exported".
    body = json.dumps(
        {**API_EVENT, "attributes": {"type": "ReportEventStream"}, "ReportId": "00O5e000000AbC", **extra}
    ).encode()
    events = SalesforceNormalizer().normalize(record(body))
    assert [type(e).__name__ for e in events] == (["CrmRecordExport"] if exported else [])


def test_a_field_holding_an_object_or_a_list_names_nobody() -> None:
    login = {**LOGIN_EVENTS["records"][0], "Username": {"a": 1}, "UserId": "0055e000001AbCd"}
    [event] = SalesforceNormalizer().normalize(record(json.dumps(login).encode()))
    assert event.entities.employee == "0055e000001AbCd"
    listed = {**LOGIN_EVENTS["records"][0], "EventIdentifier": [], "Id": "0Yw5e000001"}
    [event] = SalesforceNormalizer().normalize(record(json.dumps(listed).encode()))
    [again] = SalesforceNormalizer().normalize(record(json.dumps({**listed, "Id": "0Yw5e000002"}).encode()))
    assert event.event_id != again.event_id


def test_a_body_nested_too_deep_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="neither XML nor JSON"):
        SalesforceNormalizer().normalize(record(b"[" * 5000))


SESSION = "00D5e000000AbCd!AQ4AQFakeSessionIdOfTheTests.0123456789abcdefABCDEF"
#: The same message another way: the SOAP envelope prefixed ``soap:`` with a header, the
#: outbound namespace prefixed ``out:``.
PREFIXED = f"""<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header/><soap:Body>
<out:notifications xmlns:out="http://soap.sforce.com/2005/09/outbound">
<out:OrganizationId>{ORG}</out:OrganizationId><out:ActionId>04k5e000000AAAAAA2</out:ActionId>
<out:SessionId>{SESSION}</out:SessionId>
<out:Notification><out:Id>04l5e00000AAAAA1</out:Id>
<out:sObject xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="sf:ReportEvent"
 xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:EventIdentifier>8a1c-report-1</sf:EventIdentifier>
<sf:EventDate>2026-03-01T11:58:00.000+0000</sf:EventDate><sf:Username>mallory@acme.example</sf:Username>
<sf:Operation>ReportExported</sf:Operation></out:sObject></out:Notification>
</out:notifications></soap:Body></soap:Envelope>""".encode()


def posted(bodies: list[bytes]) -> tuple[list[httpx.Response], MemorySink]:
    """Each body posted in turn to a receiver app over a memory sink."""
    sink = MemorySink()
    app = create_app(sink, [webhook()], clock=lambda: NOW)

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [await http.post(f"/webhooks/salesforce/{TOKEN}", content=body) for body in bodies]

    return asyncio.run(send()), sink


WITH_SESSION = outbound(sobjects=REPORT).replace(
    b'<SessionId xsi:nil="true"/>', f"<SessionId>{SESSION}</SessionId>".encode()
)


@pytest.mark.parametrize("body", [WITH_SESSION, PREFIXED], ids=["salesforce-layout", "prefixed"])
def test_a_session_id_is_removed_before_publishing_and_the_admin_told_once(
    body: bytes, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Send Session ID" ticked: a live API session of the org went byte for byte to
    # raw.salesforce (and its dead letters), kept for days, read by nothing.
    monkeypatch.setattr(salesforce, "_session_id_warned", threading.Event(), raising=False)
    answers, sink = posted([body, body])
    assert [a.status_code for a in answers] == [200, 200]
    assert all(a.content == ACK.encode() for a in answers)
    first, second = sink.records
    # Only the element's text is gone: every other byte as received, the XML well-formed.
    assert first.value == second.value == body.replace(SESSION.encode(), b"")
    assert SESSION not in repr(sink.records)
    assert first.meta["redacted"] == "SessionId"
    assert first.key == ORG[:15].encode()
    # The normaliser reads it as it read the message with its session id.
    assert SalesforceNormalizer().normalize(first) == SalesforceNormalizer().normalize(record(body))
    warnings = [r.getMessage() for r in caplog.records if "Send Session ID" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, not per delivery
    assert "Untick" in warnings[0]
    assert SESSION not in caplog.text


def test_a_message_without_a_session_id_and_json_records_are_published_as_received() -> None:
    # (The JSON records' SessionKey names a session, to tie its events together; no credential.)
    relayed = json.dumps({**API_EVENT, "SessionKey": "vMASKIU6AxEr+Op5"}).encode()
    nil = outbound(sobjects=REPORT)
    answers, sink = posted([nil, relayed])
    assert [a.status_code for a in answers] == [200, 204]
    assert [r.value for r in sink.records] == [nil, relayed]
    assert ["redacted" in r.meta for r in sink.records] == [False, False]
