"""HubSpot webhooks: v3 request-signature verification and the normaliser.

Verification (https://developers.hubspot.com/docs/api/webhooks/validating-requests):
``X-HubSpot-Signature-v3`` is the base64 HMAC-SHA256, keyed with the app's client
secret, of ``method + uri + body + timestamp``, where ``timestamp`` is the
``X-HubSpot-Request-Timestamp`` header (epoch milliseconds) and ``uri`` is the full URL
HubSpot called, with the URL-encoded characters ``: / ? @ ! $ ' ( ) * , ;`` decoded.
A timestamp more than five minutes old (or ahead) is rejected, and a signature already
seen is rejected as a replay (HubSpot signs every retry anew) for as long as its timestamp
would still pass.
Behind a TLS terminator the app sees another URL than HubSpot called: give
``public_url`` (scheme and host HubSpot uses) so the signed URI can be rebuilt.

Normaliser: a delivery is a JSON array of events (``eventId``, ``subscriptionType``,
``portalId``, ``occurredAt`` ms, ``objectId``, ``changeSource``, ``sourceId`` ...).
HubSpot webhooks report CRM object changes, not logins or exports, so only changes
made through the API by an app or private-app token are canonical: they become
``crm_api_token_used`` (token = ``sourceId``, else ``app:<appId>``; operation = the
subscription type).  Changes made in the UI, by imports or workflows yield nothing.

Audit log (kind ``audit_log``): what the account activity API
(``GET /account-info/v3/activity/audit-logs``, Enterprise) returns, one record or a page
(``{"results": [...]}``): ``id``, ``category``, ``subCategory``, ``action``,
``targetObjectId``, ``occurredAt`` (RFC 3339, or epoch milliseconds), ``actingUser``
(``userId``, ``userEmail``).  Webhooks never report logins or exports; the audit log does.
``LOGIN`` records become ``crm_login`` (failed when ``subCategory`` is ``LOGIN_FAILED``),
``EXPORT`` records ``crm_record_export``; other categories yield nothing.  The acting
user's e-mail (else ``hubspot-user:<userId>``) is the employee.  Optional fields an export
may add (``ipAddress``, ``countryCode``, ``userAgent``, ``details.objectType``,
``details.recordCount``, ``details.objectIds``) are used when present; without a record
count, the number of listed object ids is taken (0 when none are listed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vigil.config import Settings
from vigil.errors import DecodeError
from vigil.events.base import Count, Entities, Event, Id
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
    secret_option,
    webhook_where,
)

NAME = "hubspot"
SIGNATURE = "x-hubspot-signature-v3"
TIMESTAMP = "x-hubspot-request-timestamp"
MAX_AGE = timedelta(minutes=5)

# HubSpot decodes these percent-escapes in the URI before signing.
_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
_ESCAPE = re.compile("|".join(_DECODED), re.IGNORECASE)
# ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses, and that
# unauthenticated request was a 500.  At most 13: epoch milliseconds until the year 2286 (a
# year past 9999 was a 500 too).
_EPOCH_MS = re.compile(r"[0-9]{1,13}")


def signed_uri(uri: str) -> str:
    return _ESCAPE.sub(lambda m: _DECODED[m.group(0).upper()], uri)


def sign_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The v3 signature HubSpot sends for this request (also used by tests as HubSpot would)."""
    message = method.encode() + signed_uri(uri).encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


class HubSpotWebhook(WebhookPlatform):
    name = NAME

    def __init__(
        self, client_secret: str, *, public_url: str | None = None, max_age: timedelta = MAX_AGE
    ) -> None:
        if not client_secret:
            msg = "hubspot: the app client secret is empty"
            raise ValueError(msg)
        self._secret = client_secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self.max_age = max_age
        self.max_remembered = 100_000
        #: signature -> when it may be forgotten; the lock: verify runs on the receiver's worker
        #: threads, several at once (unlocked, the trimming raised "mutated during iteration",
        #: a 400 for a genuine delivery, and a replay at the same moment passed: found in review).
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self._seen_lock = threading.Lock()

    def uri(self, delivery: Delivery) -> str:
        if self.public_url is None:
            return delivery.url
        return self.public_url + delivery.path + (f"?{delivery.query}" if delivery.query else "")

    def precheck(self, head: Delivery) -> None:
        """The signature headers there, the timestamp well-formed and fresh: a request without
        them is refused before its body is read."""
        self._signed_headers(head)

    def _signed_headers(self, delivery: Delivery) -> tuple[str, str, datetime]:
        """The signature, the timestamp and when it says the request was sent; or Rejected."""
        signature = delivery.headers.get(SIGNATURE)
        stamp = delivery.headers.get(TIMESTAMP)
        if not signature or not stamp:
            raise Rejected(
                reason="missing_signature", detail=f"{SIGNATURE} and {TIMESTAMP} headers are required"
            )
        if _EPOCH_MS.fullmatch(stamp) is None:
            raise Rejected(reason="bad_timestamp", detail=f"{TIMESTAMP} must be epoch milliseconds")
        sent = datetime.fromtimestamp(int(stamp) / 1000, UTC)
        if abs(delivery.received_at - sent) > self.max_age:
            raise Rejected(reason="stale", detail=f"request timestamp is more than {self.max_age} from now")
        return signature, stamp, sent

    def verify(self, delivery: Delivery) -> None:
        # The headers again (precheck saw them before the body came): verify stands alone.
        signature, stamp, sent = self._signed_headers(delivery)
        expected = sign_v3(self._secret, delivery.method, self.uri(delivery), delivery.body, stamp)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise Rejected(reason="bad_signature", detail="signature does not match")
        if self._replayed(signature, delivery.received_at, sent):
            raise Rejected(reason="replayed", detail="this signed request was already received")

    def _replayed(self, signature: str, now: datetime, sent: datetime) -> bool:
        """True if this exact signed request came before.  HubSpot signs each attempt with a new
        timestamp, so a repeated signature is a replay, not a retry.  A signature is remembered
        until ``max(now, sent) + max_age``, the last moment the freshness check still passes it:
        remembered for ``max_age`` from its arrival only, a request signed by a clock ahead of
        ours could be replayed once forgotten and still be fresh.  Memory is per process and
        bounded; across processes, stable event ids deduplicate downstream."""
        # Entries are in arrival order, their expiries nearly so: one expiring later at the front
        # only keeps those behind it a little longer (max_remembered bounds them all).
        with self._seen_lock:
            seen = self._seen
            while seen and (next(iter(seen.values())) < now or len(seen) >= self.max_remembered):
                seen.popitem(last=False)
            if signature in seen:
                return True
            seen[signature] = max(now, sent) + self.max_age
            return False

    def key(self, delivery: Delivery) -> bytes | None:
        try:
            events = msgspec.json.decode(delivery.body)
        except (msgspec.DecodeError, RecursionError):
            return None  # published anyway; the normaliser dead-letters it with the reason
        if isinstance(events, list) and events and isinstance(events[0], dict):
            portal = events[0].get("portalId")
            return str(portal).encode() if isinstance(portal, int) else None
        return None

    def meta(self, delivery: Delivery) -> dict[str, Any]:
        return {"signature": "v3"}


class HubSpotSource(WebhookSource):
    """``vigil source hubspot``: options ``host``, ``port``, ``public_url``; the client secret
    comes from the setting ``hubspot_client_secret`` (``VIGIL_HUBSPOT_CLIENT_SECRET``, or the
    option ``client_secret``)."""

    name = NAME

    def __init__(self, webhook: HubSpotWebhook, **kwargs: Any) -> None:
        super().__init__(webhook, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> HubSpotSource:
        check_options(NAME, options, {*LISTEN_OPTIONS, "public_url", "client_secret"})
        secret = secret_option(options, "client_secret", settings, "hubspot_client_secret")
        return cls(
            HubSpotWebhook(secret, public_url=options.get("public_url")),
            **listen_options(options, 8089),
        )


# ---------------------------------------------------------------------------- normaliser


class _Event(msgspec.Struct):
    eventId: int
    subscriptionType: str
    portalId: int
    occurredAt: int
    appId: int | None = None
    objectId: int | None = None
    changeSource: str | None = None
    sourceId: str | None = None
    propertyName: str | None = None


_decoder = msgspec.json.Decoder(list[_Event])

#: ``changeSource`` values meaning "done through the API by an app or token".
API_SOURCES = frozenset({"API", "INTEGRATION", "APP"})


AUDIT_LOG = "audit_log"


class _Actor(msgspec.Struct):
    userId: int | None = None
    userEmail: str | None = None


class _Details(msgspec.Struct):
    objectType: str | None = None
    recordCount: Count | None = None
    objectIds: list[str | int] = msgspec.field(default_factory=list)


class _Audit(msgspec.Struct):
    id: Id
    category: str
    occurredAt: str | int
    subCategory: str | None = None
    action: str | None = None
    targetObjectId: str | None = None
    actingUser: _Actor | None = None
    ipAddress: str | None = None
    countryCode: str | None = None
    userAgent: str | None = None
    details: _Details | None = None


class _AuditPage(msgspec.Struct):
    #: Absent: the record is a single audit record, not a page.
    results: list[_Audit] | None = None


_page_decoder = msgspec.json.Decoder(_AuditPage)
_audit_decoder = msgspec.json.Decoder(_Audit)


class HubSpotNormalizer(Normalizer):
    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.kind == AUDIT_LOG:
            return _audit_events(record)
        where = webhook_where(NAME, record)
        try:
            events = _decoder.decode(record.value)
        except msgspec.ValidationError as exc:
            raise DecodeError(str(exc), where=where) from None
        except msgspec.DecodeError as exc:
            msg = f"expected a JSON array of HubSpot webhook events: {exc}"
            raise DecodeError(msg, where=where) from None
        out: list[Event] = []
        for i, event in enumerate(events):
            if (event.changeSource or "").upper() not in API_SOURCES:
                continue
            token = event.sourceId or (f"app:{event.appId}" if event.appId is not None else None)
            if token is None:
                msg = "an API change names neither sourceId nor appId"
                raise DecodeError(msg, where=where, path=f"$[{i}]")
            try:
                occurred = datetime.fromtimestamp(event.occurredAt / 1000, UTC)
            except (OverflowError, OSError, ValueError):
                msg = f"expected epoch milliseconds, got {event.occurredAt}"
                raise DecodeError(msg, where=where, path=f"$[{i}].occurredAt") from None
            out.append(
                CrmApiTokenUsed(
                    event_id=stable_id(NAME, event.portalId, event.eventId, prefix="hubspot-"),
                    source=NAME,
                    occurred_at=occurred,
                    ingested_at=record.received_at,
                    entities=Entities(vendor=NAME, api_key=token),
                    payload=CrmApiTokenUsedPayload(
                        platform="hubspot",
                        token_id=token,
                        operation=event.subscriptionType,
                        records_accessed=1,
                    ),
                )
            )
        return out


def _audit_events(record: RawRecord) -> list[Event]:
    where = f"raw.{NAME} ({AUDIT_LOG})"
    try:
        results = _page_decoder.decode(record.value).results
        page = results if results is not None else [_audit_decoder.decode(record.value)]
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc), where=where) from None
    except msgspec.DecodeError as exc:
        msg = f'expected a HubSpot audit-log record or a page of them ({{"results": [...]}}): {exc}'
        raise DecodeError(msg, where=where) from None
    out: list[Event] = []
    for i, audit in enumerate(page):
        path = f"$.results[{i}]" if results is not None else "$"
        category = audit.category.upper()
        if category not in ("LOGIN", "EXPORT"):
            continue
        actor = audit.actingUser
        user = (actor.userEmail if actor else None) or (
            f"hubspot-user:{actor.userId}" if actor and actor.userId is not None else None
        )
        if user is None:
            msg = f"a {category} record names no acting user (actingUser.userEmail or userId)"
            raise DecodeError(msg, where=where, path=f"{path}.actingUser")
        common: dict[str, Any] = {
            "event_id": stable_id(NAME, AUDIT_LOG, audit.id, prefix="hubspot-"),
            "source": NAME,
            "occurred_at": _audit_time(audit.occurredAt, where, f"{path}.occurredAt"),
            "ingested_at": record.received_at,
            # HubSpot leaves ipAddress "" when it has none: no IP, not an IP of "" shared by all.
            "entities": Entities(vendor=NAME, employee=user, ip=client_ip(audit.ipAddress)),
        }
        geo = Geo(country=audit.countryCode.upper()) if audit.countryCode else None
        if category == "LOGIN":
            failed = (audit.subCategory or "").upper() == "LOGIN_FAILED"
            out.append(
                CrmLogin(
                    **common,
                    payload=CrmLoginPayload(
                        platform="hubspot", user=user, user_agent=audit.userAgent, geo=geo, success=not failed
                    ),
                )
            )
            continue
        details = audit.details or _Details()
        ids = [str(x) for x in details.objectIds if x != ""]
        out.append(
            CrmRecordExport(
                **common,
                payload=CrmRecordExportPayload(
                    platform="hubspot",
                    object_type=details.objectType or (audit.subCategory or "unknown").lower(),
                    record_count=details.recordCount if details.recordCount is not None else len(ids),
                    export_id=audit.targetObjectId or audit.id,
                    actor=user,
                    customer_ids=ids,
                    geo=geo,
                ),
            )
        )
    return out


def _audit_time(value: str | int, where: str, path: str) -> datetime:
    try:
        if isinstance(value, int):
            return datetime.fromtimestamp(value / 1000, UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (OverflowError, OSError, ValueError):
        msg = f"expected an RFC 3339 time or epoch milliseconds, got {value!r}"
        raise DecodeError(msg, where=where, path=path) from None
    if parsed.tzinfo is None:
        msg = f"expected a time with its UTC offset, got {value!r}"
        raise DecodeError(msg, where=where, path=path)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" parses, but is before year 1 in UTC
        msg = f"{path}: expected a time between the years 1 and 9999 in UTC, got {value!r}"
        raise DecodeError(msg, where=where, path=path) from None
