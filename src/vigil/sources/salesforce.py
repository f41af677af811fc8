"""Salesforce: outbound messages and Event Monitoring records, verified and normalised.

Two kinds of delivery reach ``/webhooks/salesforce/<token>``:

- **Outbound messages** (SOAP 1.1 XML, ``text/xml``): a ``notifications`` element with
  ``OrganizationId`` and one ``Notification`` per record, each with an ``sObject`` whose
  ``xsi:type`` names the object.  Salesforce expects the SOAP ``notificationsResponse``
  with ``<Ack>true</Ack>`` and retries until it gets it.
- **Event Monitoring records** (JSON), relayed from the REST API or an event-log file:
  one record, a list, or a query result ``{"records": [...]}``; the object type is in
  ``attributes.type`` (``LoginEvent``, ``ReportEvent``, ``ApiEvent`` ...) or, for
  event-log-file rows, in ``EVENT_TYPE`` (``Login``, ``ReportExport``, ``API`` ...).

Session ids: an outbound message whose "Send Session ID" box is ticked carries ``SessionId``, a
live API session of the org (the user the message is sent as) for a listener that calls back.
Vigil never calls back, and a raw record is kept for days (its dead letter too): the element's
text is removed before publishing (the rest of the body byte for byte as received), the record's
meta says so (``"redacted": "SessionId"``), and a warning, once per process, says to untick the
box.  The JSON records carry no session credential: their ``SessionKey``/``SESSION_KEY`` and
``LoginKey`` only name a session, to tie its events together, and are kept.

Verification, and why: outbound messages cannot carry custom headers or an HMAC, so
Vigil checks (1) a **secret token in the endpoint path**, compared in constant time,
which the admin puts in the outbound message's endpoint URL, and (2) for XML, that
``OrganizationId`` is in the **allowlist** of the org ids Vigil monitors (the 15-char
form is compared, so 15- and 18-char ids both match).  Salesforce's client certificate
(mutual TLS) is the stronger option where a TLS terminator can check it; that is the
proxy's job, not this app's.  XML is parsed with ``defusedxml``: a DTD, entity
declaration or external reference is refused (400), so XXE and entity expansion are
inert.

Normaliser, by object type (other objects yield nothing):

- ``LoginEvent``, ``LoginEventStream``, ``LoginHistory``, ELF ``Login`` -> ``crm_login``;
- ``ReportEvent``, ``ReportEventStream`` of an export (an ``ExportFileFormat``, or an
  ``Operation`` naming one: ``ReportExported``), ELF ``ReportExport`` -> ``crm_record_export``
  (``record_count`` from ``RowsProcessed``/``ROWS_PROCESSED``, 0 when not reported;
  ``customer_ids`` from ``Records`` when it is a JSON list of ids or of ``{"Id": ...}``).  A
  report run, viewed, scheduled or refreshed on a dashboard, yields nothing: Salesforce records
  every run, and each read as an export made a dashboard of two reports a "bulk export";
- ``ApiEvent``, ``ApiEventStream``, ELF ``API``/``RestApi`` -> ``crm_api_token_used``
  (token = connected app id, else the session key; operation = ``Operation`` / method).

The event id is the record's ``EventIdentifier`` (else ``Id``/``REQUEST_ID``) and its object
type without the ``Stream`` suffix: a login relayed live as ``LoginEventStream`` and later
from storage as ``LoginEvent`` carries the same ``EventIdentifier`` and is one event, counted
once.
"""

from __future__ import annotations

import json
import logging
import threading
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
from fastapi import Response

from vigil.config import Settings
from vigil.errors import DecodeError, SourceError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.types import (
    CrmApiTokenUsed,
    CrmApiTokenUsedPayload,
    CrmLogin,
    CrmLoginPayload,
    CrmRecordExport,
    CrmRecordExportPayload,
    Geo,
)
from vigil.hub.raw import RawRecord
from vigil.sources.addresses import client_ip
from vigil.sources.base import Normalizer, check_options
from vigil.sources.webhooks import (
    LISTEN_OPTIONS,
    Delivery,
    Rejected,
    WebhookPlatform,
    WebhookSource,
    listen_options,
    path_token_option,
    path_token_problem,
    verify_path_token,
    webhook_where,
)
from vigil.sources.wellformed import may_hold_surrogates, refuse_lone_surrogates

log = logging.getLogger(__name__)

NAME = "salesforce"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
#: The element of an outbound message holding the session id, as the outbound WSDL names it.
SESSION_ID = "SessionId"

ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


class OutboundMessage:
    """A parsed outbound message: the org id and (object type, fields) per notification."""

    def __init__(self, organization_id: str, notifications: list[tuple[str, str, dict[str, str]]]) -> None:
        self.organization_id = organization_id
        #: (notification id, sObject type, field name -> text)
        self.notifications = notifications


def is_xml(body: bytes) -> bool:
    # (A UTF-8 byte order mark may come first: the message was taken for JSON, and never acked.)
    return body.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<"


def parse_outbound(body: bytes, where: str) -> OutboundMessage:
    """Parse safely; raises :class:`DecodeError` on malformed XML, a DTD or entities."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        msg = f"XML with a DTD, entities or external references is refused ({type(exc).__name__})"
        raise DecodeError(msg, where=where) from None
    except ET.ParseError as exc:
        msg = f"not well-formed XML: {exc}"
        raise DecodeError(msg, where=where) from None
    except LookupError as exc:  # an encoding declared that Python does not know
        msg = f"XML in an unknown encoding: {exc}"
        raise DecodeError(msg, where=where) from None
    except ValueError as exc:
        # expat reads no multi-byte encoding but UTF-8/16: shift_jis, big5, euc_jp declared were
        # an uncaught error, a 500 that Salesforce retried for 24 hours.
        msg = f"XML in an encoding the parser cannot read ({exc}); expected UTF-8"
        raise DecodeError(msg, where=where) from None
    notifications = root.find(f".//{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        msg = "expected a SOAP outbound message with a 'notifications' element"
        raise DecodeError(msg, where=where, path="Envelope/Body/notifications")
    org = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    if not org:
        msg = "the outbound message has no OrganizationId"
        raise DecodeError(msg, where=where, path="notifications/OrganizationId")
    parsed: list[tuple[str, str, dict[str, str]]] = []
    for i, note in enumerate(notifications.findall(f"{{{OUTBOUND_NS}}}Notification")):
        sobject = note.find(f"{{{OUTBOUND_NS}}}sObject")
        if sobject is None:
            msg = "a Notification without an sObject"
            raise DecodeError(msg, where=where, path=f"notifications/Notification[{i}]")
        kind = sobject.get(f"{{{XSI_NS}}}type", "").rpartition(":")[2]
        fields = {child.tag.rpartition("}")[2]: (child.text or "").strip() for child in sobject}
        parsed.append(((note.findtext(f"{{{OUTBOUND_NS}}}Id") or "").strip(), kind, fields))
    return OutboundMessage(org, parsed)


def _session_id_spans(body: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the content of each non-empty ``SessionId`` of the outbound namespace, at
    any depth and under any prefix (a bare ``notifications`` as inside a SOAP envelope); none
    when ``body`` is not XML.  A verified body parses; a DTD is refused here too (this reads it
    with expat alone, which would expand entities)."""
    if not is_xml(body) or SESSION_ID.encode() not in body:  # (most bodies: no parse)
        return []
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
    target = f"{OUTBOUND_NS}}}{SESSION_ID}"
    spans: list[tuple[int, int]] = []
    opened: list[int | None] = []  # per SessionId open: where its content starts, once known

    def content_starts(*_: object) -> None:
        # Expat has no "end of start tag" event: the next event of any kind starts there.
        if opened and opened[-1] is None:
            opened[-1] = parser.CurrentByteIndex

    def start(name: str, _attrs: object) -> None:
        content_starts()
        if name == target:
            opened.append(None)

    def end(name: str) -> None:
        content_starts()
        if name == target:
            begin, closing_tag = opened.pop(), parser.CurrentByteIndex
            if begin is not None and body[begin:closing_tag].strip():
                spans.append((begin, closing_tag))

    def refuse_dtd(*_: object) -> None:
        msg = "a DTD in an outbound message"
        raise ValueError(msg)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = content_starts
    parser.CommentHandler = content_starts
    parser.ProcessingInstructionHandler = content_starts
    parser.StartCdataSectionHandler = content_starts
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.Parse(body, True)
    return sorted(spans)


def redact_session_id(body: bytes) -> bytes:
    """``body`` with the content of its ``SessionId`` elements removed (``<SessionId></SessionId>``,
    well-formed), every other byte as it was; ``body`` itself when there is none to remove (or it
    is not XML).  Checked: what comes out parses, and holds no session id."""
    spans = _session_id_spans(body)
    if not spans:
        return body
    out = bytearray()
    at = 0
    for begin, end in spans:
        if begin < at:
            continue  # within one removed already (a SessionId inside a SessionId)
        out += body[at:begin]
        at = end
    out += body[at:]
    redacted = bytes(out)
    if _session_id_spans(redacted):  # (cannot happen: a parse that disagreed with the first)
        msg = "the session id is still there after removing it"
        raise ValueError(msg)
    return redacted


def holds_session_id(body: bytes) -> bool:
    """Whether the outbound message carries a session id with content (see the module)."""
    return bool(_session_id_spans(body))


#: Set once a session id was warned about: once per process, as every message of such an
#: outbound message carries one.
_session_id_warned = threading.Event()


def _warn_session_id() -> None:
    if _session_id_warned.is_set():
        return
    _session_id_warned.set()
    log.warning(
        'salesforce: an outbound message carried a session id (its "Send Session ID" box is '
        'ticked); it was removed before publishing. Untick "Send Session ID" on the outbound '
        "message in Salesforce: Vigil never calls back, and the id is a live API session of the org"
    )


def _org15(org_id: str) -> str:
    return org_id.strip()[:15]


class SalesforceWebhook(WebhookPlatform):
    name = NAME
    path_token = True

    def __init__(self, token: str, organization_ids: Iterable[str]) -> None:
        problem = path_token_problem(token)
        if problem is not None:
            msg = f"salesforce: the endpoint path token {problem}"
            raise ValueError(msg)
        self._token = token
        self.organization_ids = frozenset(_org15(o) for o in organization_ids if o.strip())
        if not self.organization_ids:
            msg = "salesforce: at least one allowed organization id is needed"
            raise ValueError(msg)

    def precheck(self, head: Delivery) -> None:
        """The path token, before the body is read."""
        verify_path_token(head, self._token, "endpoint")

    def verify(self, delivery: Delivery) -> None:
        verify_path_token(delivery, self._token, "endpoint")
        if is_xml(delivery.body):
            try:
                message = parse_outbound(delivery.body, "salesforce")
            except DecodeError as exc:
                raise Rejected(reason="malformed", detail=exc.reason, status=400) from None
            if _org15(message.organization_id) not in self.organization_ids:
                raise Rejected(reason="unknown_org", detail="organization is not allowed")

    def key(self, delivery: Delivery) -> bytes | None:
        if is_xml(delivery.body):
            return _org15(parse_outbound(delivery.body, "salesforce").organization_id).encode()
        return None

    def meta(self, delivery: Delivery) -> dict[str, Any]:
        if not is_xml(delivery.body):
            return {"format": "json"}
        if holds_session_id(delivery.body):
            return {"format": "soap", "redacted": SESSION_ID}
        return {"format": "soap"}

    def published_body(self, delivery: Delivery) -> bytes:
        """The body without the session id an outbound message may carry (see the module)."""
        published = redact_session_id(delivery.body)
        if published is not delivery.body:
            _warn_session_id()
        return published

    def acknowledge(self, delivery: Delivery) -> Response:
        if is_xml(delivery.body):
            return Response(ACK, media_type="text/xml")
        return Response(status_code=204)


class SalesforceSource(WebhookSource):
    """``vigil source salesforce``: options ``host``, ``port``, ``org_ids`` (comma-separated
    allowlist); the path token comes from the setting ``salesforce_webhook_token``
    (``VIGIL_SALESFORCE_WEBHOOK_TOKEN``, or the option ``token``)."""

    name = NAME

    def __init__(self, webhook: SalesforceWebhook, **kwargs: Any) -> None:
        super().__init__(webhook, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> SalesforceSource:
        check_options(NAME, options, {*LISTEN_OPTIONS, "org_ids", "token"})
        token = path_token_option(options, "token", settings, "salesforce_webhook_token", NAME)
        orgs = [o for o in options.get("org_ids", "").split(",") if o.strip()]
        if not orgs:
            msg = "salesforce: org_ids (the allowed Salesforce organization ids, comma-separated) is required"
            raise SourceError(msg)
        return cls(
            SalesforceWebhook(token, orgs),
            **listen_options(options, 8090),
        )


# ---------------------------------------------------------------------------- normaliser

LOGIN_TYPES = frozenset({"LoginEvent", "LoginEventStream", "LoginHistory", "Login"})
EXPORT_TYPES = frozenset({"ReportEvent", "ReportEventStream", "ReportExport"})
API_TYPES = frozenset({"ApiEvent", "ApiEventStream", "API", "RestApi"})


def _first(fields: Mapping[str, Any], *names: str) -> str | None:
    """The first of the fields that holds text (a number as its digits).  An object or a list
    is none: its repr made an employee of {'a': 1}, and every record whose EventIdentifier was
    [] one event."""
    for name in names:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


_TIME_FIELDS = ("EventDate", "LoginTime", "TIMESTAMP_DERIVED", "CreatedDate")


def _time(fields: Mapping[str, Any], where: str) -> datetime:
    text = _first(fields, *_TIME_FIELDS)
    if text is None:
        msg = "no event time (EventDate, LoginTime or TIMESTAMP_DERIVED)"
        raise DecodeError(msg, where=where, path="EventDate")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"expected an ISO 8601 time, got {text[:40]!r}"
        raise DecodeError(msg, where=where, path="EventDate") from None
    if when.tzinfo is None:
        msg = f"expected a time with a zone, got {text[:40]!r}"
        raise DecodeError(msg, where=where, path="EventDate")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" parses, but is before year 1 in UTC
        name = next(n for n in _TIME_FIELDS if _first(fields, n) is not None)
        msg = f"{name}: expected a time between the years 1 and 9999 in UTC, got {text[:40]!r}"
        raise DecodeError(msg, where=where, path=name) from None


def _int(fields: Mapping[str, Any], where: str, *names: str) -> int:
    text = _first(fields, *names)
    if text is None:
        return 0
    try:
        number = int(float(text))
    except (ValueError, OverflowError):  # not a number; "1e400" (inf) stopped the stage
        msg = f"expected a count, got {text[:40]!r}"
        raise DecodeError(msg, where=where, path=names[0]) from None
    if number < 0:
        msg = f"expected a count >= 0, got {number}"
        raise DecodeError(msg, where=where, path=names[0])
    return number


def _geo(fields: Mapping[str, Any]) -> Geo | None:
    country = _first(fields, "CountryIso", "COUNTRY_CODE")
    city = _first(fields, "City", "CITY")
    lat, lon = _first(fields, "Latitude"), _first(fields, "Longitude")
    try:
        lat_f = float(lat) if lat else None
        lon_f = float(lon) if lon else None
    except ValueError:
        lat_f = lon_f = None
    # A point needs both, in degrees' range ("nan" and out of range included): else the place is
    # left to country and city, and the login still counts.
    if lat_f is None or lon_f is None or not (-90 <= lat_f <= 90 and -180 <= lon_f <= 180):
        lat_f = lon_f = None
    if not (country or city or lat_f is not None):
        return None
    return Geo(country=country, city=city, lat=lat_f, lon=lon_f)


def _is_export(fields: Mapping[str, Any]) -> bool:
    """Whether a ``ReportEvent`` record is an export rather than a run of the report."""
    operation = _first(fields, "Operation") or ""
    return _first(fields, "ExportFileFormat") is not None or "export" in operation.lower()


def _customer_ids(fields: Mapping[str, Any], where: str) -> list[str]:
    raw = fields.get("Records")
    if raw is None:
        return []
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        return []
    if isinstance(raw, str):
        # JSON inside a string (a JSON body's or an XML field's): the body's own check saw only
        # the escape's text, and "\\ud800" came out a lone surrogate that failed the event's
        # encoding later, as an unexpected error rather than this record's.
        refuse_lone_surrogates(value, where, "Records")
    if not isinstance(value, list):
        return []
    ids = [item.get("Id") if isinstance(item, dict) else item for item in value]
    return [i for i in ids if isinstance(i, str) and i]


def record_to_event(
    kind: str, fields: Mapping[str, Any], fallback_id: str, where: str, received_at: datetime | None = None
) -> Event | None:
    """One Salesforce record (XML sObject fields or JSON) as a canonical event, or None."""
    if kind not in LOGIN_TYPES | EXPORT_TYPES | API_TYPES:
        return None
    ident = _first(fields, "EventIdentifier", "Id", "REQUEST_ID") or fallback_id
    if not ident:
        msg = f"a {kind} record without EventIdentifier, Id or REQUEST_ID"
        raise DecodeError(msg, where=where, path="EventIdentifier")
    user = _first(fields, "Username", "USER_NAME", "UserId", "USER_ID")
    # (Salesforce's own requests say "Salesforce.com IP": no client address)
    ip = next((a for f in ("SourceIp", "SOURCE_IP", "CLIENT_IP") if (a := client_ip(fields.get(f)))), None)
    common: dict[str, Any] = {
        # A real-time event (LoginEventStream) and its stored copy (LoginEvent) share the
        # EventIdentifier: hashed under one type they are one event, not a login counted twice.
        # The stored types' ids are unchanged (they have no suffix to drop).
        "event_id": stable_id(NAME, kind.removesuffix("Stream"), ident, prefix="salesforce-"),
        "source": NAME,
        "occurred_at": _time(fields, where),
        "ingested_at": received_at,
    }
    if kind in LOGIN_TYPES:
        if user is None:
            msg = f"a {kind} record without Username or UserId"
            raise DecodeError(msg, where=where, path="Username")
        status = _first(fields, "Status", "LOGIN_STATUS") or "Success"
        return CrmLogin(
            **common,
            entities=Entities(vendor=NAME, employee=user, ip=ip),
            payload=CrmLoginPayload(
                platform="salesforce",
                user=user,
                user_agent=_first(fields, "Browser", "BROWSER_TYPE", "USER_AGENT"),
                geo=_geo(fields),
                success=status in ("Success", "LOGIN_NO_ERROR"),
            ),
        )
    if kind in EXPORT_TYPES:
        if kind != "ReportExport" and not _is_export(fields):
            return None  # a report run, not an export (see the module)
        return CrmRecordExport(
            **common,
            entities=Entities(vendor=NAME, employee=user, ip=ip),
            payload=CrmRecordExportPayload(
                platform="salesforce",
                object_type=_first(fields, "QueriedEntities", "ENTITY_NAME") or "report",
                record_count=_int(fields, where, "RowsProcessed", "ROWS_PROCESSED", "RecordCount"),
                export_id=_first(fields, "ReportId", "REPORT_ID") or ident,
                actor=user,
                customer_ids=_customer_ids(fields, where),
                geo=_geo(fields),
            ),
        )
    token = _first(fields, "ConnectedAppId", "CONNECTED_APP_ID", "CLIENT_ID", "SessionKey", "SESSION_KEY")
    if token is None:
        msg = f"an {kind} record names no connected app and no session"
        raise DecodeError(msg, where=where, path="ConnectedAppId")
    operation = _first(fields, "Operation", "METHOD", "API_TYPE", "ApiType") or "unknown"
    entity = _first(fields, "QueriedEntities", "ENTITY_NAME")
    return CrmApiTokenUsed(
        **common,
        entities=Entities(vendor=NAME, employee=user, ip=ip, api_key=token),
        payload=CrmApiTokenUsedPayload(
            platform="salesforce",
            token_id=token,
            operation=f"{operation} {entity}" if entity else operation,
            records_accessed=_int(fields, where, "RowsProcessed", "ROWS_PROCESSED", "RowsReturned"),
            user_agent=_first(fields, "UserAgent", "USER_AGENT", "Client"),
        ),
    )


def _json_records(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, dict) and isinstance(value.get("records"), list):
        return list(value["records"])
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    msg = f"expected a record, a list of records or {{'records': [...]}}, got {type(value).__name__}"
    raise DecodeError(msg, where=where)


class SalesforceNormalizer(Normalizer):
    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        where = webhook_where(NAME, record)
        out: list[Event] = []
        if is_xml(record.value):
            message = parse_outbound(record.value, where)
            for i, (note_id, kind, fields) in enumerate(message.notifications):
                event = record_to_event(
                    kind, fields, note_id, f"{where} Notification[{i}]", record.received_at
                )
                if event is not None:
                    out.append(event)
            return out
        try:
            value = json.loads(record.value)
        except (ValueError, RecursionError) as exc:  # (RecursionError: nested a thousand deep)
            msg = f"neither XML nor JSON: {exc}"
            raise DecodeError(msg, where=where) from None
        if may_hold_surrogates(record.value):  # (most bodies cannot: no walk)
            refuse_lone_surrogates(value, where)
        for i, item in enumerate(_json_records(value, where)):
            if not isinstance(item, dict):
                msg = f"expected a record object, got {type(item).__name__}"
                raise DecodeError(msg, where=where, path=f"records[{i}]")
            attributes = item.get("attributes")
            type_name: Any = (
                attributes.get("type") if isinstance(attributes, dict) else item.get("EVENT_TYPE")
            )
            if not isinstance(type_name, str):
                msg = "a record names no type (attributes.type or EVENT_TYPE)"
                raise DecodeError(msg, where=where, path=f"records[{i}].attributes.type")
            event = record_to_event(type_name, item, "", f"{where} records[{i}]", record.received_at)
            if event is not None:
                out.append(event)
        return out
