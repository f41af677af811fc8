"""Mailchimp audience webhooks: verification by a secret path token, and the normaliser.

Mailchimp does not sign audience webhooks; its documented protection is a secret you
put in the webhook URL yourself (https://mailchimp.com/developer/marketing/guides/
sync-audience-data-webhooks/).  The receiver's URL is
``/webhooks/mailchimp/<secret>``; the token is compared in constant time and redacted
from everything Vigil keeps.  Mailchimp checks a new webhook URL with a ``GET`` (Mandrill
with a ``HEAD``), which is answered 200 when the token is right.

Deliveries are form-encoded (``type=campaign&fired_at=2009-03-26 21:31:21&data[id]=...``).
``fired_at`` is taken as UTC.  Mailchimp Transactional (Mandrill) posts
``mandrill_events=<JSON array>`` to the same kind of URL, and signs it: given the webhook's
key (the setting ``mandrill_webhook_key`` or the option ``mandrill_key``), a Mandrill delivery must
carry ``X-Mandrill-Signature``, base64 of HMAC-SHA1 over the URL as entered in Mandrill
(``public_url`` plus the path, else the URL the request came to) followed by each POST
field's name and value, sorted by name (https://mailchimp.com/developer/transactional/guides/
track-respond-activity-webhooks/#authenticating-webhook-requests); compared in constant time.
Without the key, Mandrill deliveries are checked by the path token alone, like audience ones.
When a webhook is added, Mandrill then POSTs ``mandrill_events=[]`` signed with the key
``test-webhook`` (its real key is not issued yet): that request, with an empty event list and
nothing else, is accepted (200) and published nothing; ``test-webhook`` signs nothing else.

Normaliser:

- ``type=campaign`` with ``data[status]=sent`` -> ``email_campaign_sent``.  The webhook
  carries the campaign id, subject and list, not the sender or the recipient count: the
  sender domain comes from the receiver's ``sender_domain`` option (kept in the record's
  meta; ``"unknown"`` without it) and ``recipient_count`` is 0 (not reported);
- Mandrill ``click`` events -> ``email_link_clicked`` (url and its domain; the campaign
  is ``metadata.campaign_id`` when the sender tagged it, else the message id);
- subscribe, unsubscribe, profile, upemail, cleaned and other Mandrill events carry no
  canonical event and yield nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from vigil.config import Settings
from vigil.errors import DecodeError
from vigil.events.base import Entities, Event
from vigil.events.domains import C0_OR_SPACE, domain_to_ascii
from vigil.events.ids import stable_id
from vigil.events.types import (
    EmailCampaignSent,
    EmailCampaignSentPayload,
    EmailLinkClicked,
    EmailLinkClickedPayload,
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

NAME = "mailchimp"
MAX_FIELDS = 2000
MANDRILL_SIGNATURE = "x-mandrill-signature"
#: The key Mandrill signs its test POST with, when a webhook is added.
MANDRILL_TEST_KEY = "test-webhook"


def parse_form(body: bytes, where: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"expected a form-encoded body (application/x-www-form-urlencoded): {exc}"
        raise DecodeError(msg, where=where) from None
    return dict(pairs)


def mandrill_signature(key: str, signed: bytes) -> bytes:
    """``X-Mandrill-Signature`` for the signed text (URL then sorted fields), as Mandrill sends it."""
    return base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha1).digest())


def _is_test(form: dict[str, str]) -> bool:
    """Whether a form is Mandrill's test POST: an empty event list and nothing else."""
    if set(form) != {"mandrill_events"}:
        return False
    try:
        events = json.loads(form["mandrill_events"])
    except (ValueError, RecursionError):
        return False
    return isinstance(events, list) and not events


class MailchimpWebhook(WebhookPlatform):
    name = NAME
    path_token = True

    def __init__(
        self,
        secret: str,
        *,
        sender_domain: str | None = None,
        mandrill_key: str | None = None,
        public_url: str | None = None,
    ) -> None:
        problem = path_token_problem(secret)
        if problem is not None:
            msg = f"mailchimp: the webhook path secret {problem}"
            raise ValueError(msg)
        self._secret = secret
        self.sender_domain = sender_domain
        self._mandrill_key = mandrill_key or None
        self.public_url = public_url.rstrip("/") if public_url else None

    def precheck(self, head: Delivery) -> None:
        """The path secret, before the body is read."""
        verify_path_token(head, self._secret, "webhook")

    def verify(self, delivery: Delivery) -> None:
        verify_path_token(delivery, self._secret, "webhook")
        if self._mandrill_key is None:
            return
        try:
            form = parse_form(delivery.body, "mailchimp")
        except DecodeError:
            return  # not a form: the normaliser dead-letters it, naming why
        if "mandrill_events" not in form:
            return  # an audience webhook: Mailchimp does not sign those
        signature = delivery.headers.get(MANDRILL_SIGNATURE)
        if not signature:
            raise Rejected(reason="missing_signature", detail=f"{MANDRILL_SIGNATURE} header is required")
        url = (
            delivery.url
            if self.public_url is None
            else self.public_url + delivery.path + (f"?{delivery.query}" if delivery.query else "")
        )
        signed = (url + "".join(name + value for name, value in sorted(form.items()))).encode("utf-8")
        given = signature.encode()
        if hmac.compare_digest(given, mandrill_signature(self._mandrill_key, signed)):
            return
        # Mandrill's test POST when a webhook is added (refused, the webhook could not be added).
        if _is_test(form) and hmac.compare_digest(given, mandrill_signature(MANDRILL_TEST_KEY, signed)):
            return
        raise Rejected(reason="bad_signature", detail="signature does not match")

    def answers_get(self) -> bool:
        return True

    def publishes(self, delivery: Delivery) -> bool:
        """Not Mandrill's test POST (no events: nothing to keep)."""
        try:
            return not _is_test(parse_form(delivery.body, "mailchimp"))
        except DecodeError:
            return True  # published; the normaliser dead-letters it, naming why

    def key(self, delivery: Delivery) -> bytes | None:
        try:
            form = parse_form(delivery.body, "mailchimp")
        except DecodeError:
            return None
        list_id = form.get("data[list_id]")
        return list_id.encode() if list_id else None

    def meta(self, delivery: Delivery) -> dict[str, Any]:
        return {"sender_domain": self.sender_domain} if self.sender_domain else {}


class MailchimpSource(WebhookSource):
    """``vigil source mailchimp``: options ``host``, ``port``, ``sender_domain``, ``public_url``;
    the path secret comes from the setting ``mailchimp_webhook_secret``
    (``VIGIL_MAILCHIMP_WEBHOOK_SECRET``, or the option ``secret``), the Mandrill webhook key from
    ``mandrill_webhook_key`` (``VIGIL_MANDRILL_WEBHOOK_KEY``, or the option ``mandrill_key``)."""

    name = NAME

    def __init__(self, webhook: MailchimpWebhook, **kwargs: Any) -> None:
        super().__init__(webhook, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> MailchimpSource:
        check_options(
            NAME, options, {*LISTEN_OPTIONS, "sender_domain", "secret", "mandrill_key", "public_url"}
        )
        secret = path_token_option(options, "secret", settings, "mailchimp_webhook_secret", NAME)
        configured = settings.mandrill_webhook_key
        mandrill_key = options.get("mandrill_key") or (
            configured.get_secret_value() if configured is not None else None
        )
        return cls(
            MailchimpWebhook(
                secret,
                sender_domain=options.get("sender_domain"),
                mandrill_key=mandrill_key,
                public_url=options.get("public_url"),
            ),
            **listen_options(options, 8091),
        )


# ---------------------------------------------------------------------------- normaliser


def _fired_at(value: str | None, where: str) -> datetime:
    if not value:
        msg = "fired_at is missing"
        raise DecodeError(msg, where=where, path="fired_at")
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        msg = f"expected fired_at like '2009-03-26 21:35:57', got {value[:40]!r}"
        raise DecodeError(msg, where=where, path="fired_at") from None


#: Schemes the WHATWG URL standard calls special (but ``file``, parsed its own way): for them a
#: browser reads a backslash as ``/`` and skips any run of slashes after ``scheme:``.
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):[/\\]*")
#: What a browser removes anywhere in a URL (it strips C0 controls and space from both ends).
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")


def _domain(url: str, where: str, path: str) -> str:
    """The host a browser opening ``url`` goes to, in the ASCII form intel lists store: lower-case,
    internationalised labels in punycode (``xn--``), without a trailing dot.  ``urlsplit`` follows
    RFC 3986, where browsers follow the WHATWG URL standard: ``https://evil.example\\@paypal.com/``
    was read as paypal.com while the click went to evil.example, ``evil.example.`` matched no
    listed ``evil.example``, and ``%65vil.example``, ``evil%2Eexample`` or full-width
    ``\uff25\uff36\uff29\uff2c.example`` (each evil.example to a browser) matched nothing either."""
    text = url.strip(C0_OR_SPACE).translate(_TAB_OR_NEWLINE)
    m = _SCHEME.match(text)
    if m is not None and m.group(1).lower() in _SPECIAL_SCHEMES:
        rest = text[m.end() :].replace("\\", "/")
        text = f"{m.group(1)}://{rest}"
    try:
        host = urlsplit(text).hostname if text else None
    except ValueError:  # "https://[x/": an unclosed IPv6 bracket stopped the stage
        host = None
    if not host:
        msg = f"expected an absolute URL, got {url[:80]!r}"
        raise DecodeError(msg, where=where, path=path)
    if ":" in host:  # an IPv6 literal (urlsplit took it from its brackets): no labels to map
        return host.lower()
    ascii_host = domain_to_ascii(host)
    if ascii_host is None:
        msg = (
            f"expected a URL whose host a browser can open, got {url[:80]!r} (its host "
            f"{host[:80]!r} has characters no domain may have, or is not UTF-8 once percent-decoded)"
        )
        raise DecodeError(msg, where=where, path=path)
    return ascii_host


def _click_time(ts: float, where: str, path: str) -> datetime:
    """A click's ``ts`` (Unix seconds) as a UTC time.  ``json.loads`` accepts NaN and Infinity,
    and 1e20 is a number: each stopped the stage with a ValueError or OverflowError."""
    try:
        if math.isfinite(ts):
            return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # past year 9999, or beyond the platform's time_t
        pass
    msg = f"{path}: expected 'ts' as Unix seconds within the years 1-9999, got {ts!r:.40}"
    raise DecodeError(msg, where=where, path=path)


class MailchimpNormalizer(Normalizer):
    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        where = webhook_where(NAME, record)
        form = parse_form(record.value, where)
        if "mandrill_events" in form:
            return self._mandrill(form["mandrill_events"], record, where)
        kind = form.get("type")
        if not kind:
            msg = "expected a 'type' field (or 'mandrill_events'); got neither"
            raise DecodeError(msg, where=where, path="type")
        if kind != "campaign":
            if kind in ("subscribe", "unsubscribe", "profile", "upemail", "cleaned"):
                return []
            msg = f"unknown Mailchimp webhook type {kind[:40]!r}"
            raise DecodeError(msg, where=where, path="type")
        if form.get("data[status]") != "sent":
            return []
        campaign = form.get("data[id]")
        if not campaign:
            msg = "a campaign webhook without data[id]"
            raise DecodeError(msg, where=where, path="data[id]")
        sender = record.meta.get("sender_domain")
        return [
            EmailCampaignSent(
                event_id=stable_id(NAME, "campaign", campaign, "sent", prefix="mailchimp-"),
                source=NAME,
                occurred_at=_fired_at(form.get("fired_at"), where),
                ingested_at=record.received_at,
                entities=Entities(vendor=NAME),
                payload=EmailCampaignSentPayload(
                    platform="mailchimp",
                    campaign_id=campaign,
                    subject=form.get("data[subject]", ""),
                    sender_domain=sender if isinstance(sender, str) and sender else "unknown",
                    recipient_count=0,
                ),
            )
        ]

    def _mandrill(self, text: str, record: RawRecord, where: str) -> list[Event]:
        try:
            events = json.loads(text)
        except (ValueError, RecursionError) as exc:  # (RecursionError: nested a thousand deep)
            msg = f"mandrill_events is not JSON: {exc}"
            raise DecodeError(msg, where=where, path="mandrill_events") from None
        if not isinstance(events, list):
            msg = f"mandrill_events must be a JSON array, got {type(events).__name__}"
            raise DecodeError(msg, where=where, path="mandrill_events")
        if may_hold_surrogates(text):  # (most cannot: no walk)
            refuse_lone_surrogates(events, where, "mandrill_events")
        out: list[Event] = []
        for i, event in enumerate(events):
            path = f"mandrill_events[{i}]"
            if not isinstance(event, dict):
                msg = f"expected an object, got {type(event).__name__}"
                raise DecodeError(msg, where=where, path=path)
            if event.get("event") != "click":
                continue
            found = event.get("msg")
            msg_info: dict[str, Any] = found if isinstance(found, dict) else {}
            url, ts = event.get("url"), event.get("ts")
            if not isinstance(url, str) or not isinstance(ts, int | float) or isinstance(ts, bool):
                msg = "a click needs a string 'url' and a numeric 'ts'"
                raise DecodeError(msg, where=where, path=path)
            occurred_at = _click_time(ts, where, f"{path}.ts")
            tagged = msg_info.get("metadata")
            metadata: dict[str, Any] = tagged if isinstance(tagged, dict) else {}
            # (A campaign id the sender tagged as a number is that number's digits.)
            campaign = next(
                (
                    str(c).strip()
                    for c in (metadata.get("campaign_id"), msg_info.get("_id"), event.get("_id"))
                    if (isinstance(c, str) and c.strip()) or (isinstance(c, int) and not isinstance(c, bool))
                ),
                None,
            )
            if campaign is None:
                msg = "a click names no campaign (metadata.campaign_id) and no message id (msg._id)"
                raise DecodeError(msg, where=where, path=path)
            email = msg_info.get("email")
            ip = event.get("ip")
            out.append(
                EmailLinkClicked(
                    event_id=stable_id(
                        NAME, "click", event.get("_id") or campaign, ts, url, prefix="mailchimp-"
                    ),
                    source=NAME,
                    occurred_at=occurred_at,
                    ingested_at=record.received_at,
                    entities=Entities(
                        vendor=NAME,
                        # Absent, not "" (an entity key every click without one would share).
                        email=email.strip().lower() if isinstance(email, str) and email.strip() else None,
                        ip=client_ip(ip),
                    ),
                    payload=EmailLinkClickedPayload(
                        platform="mailchimp",
                        campaign_id=campaign,
                        url=url,
                        url_domain=_domain(url, where, f"{path}.url"),
                    ),
                )
            )
        return out
