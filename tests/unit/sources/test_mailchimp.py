"""Mailchimp audience (and Transactional) webhooks: path-secret verification and normalisation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from vigil.errors import DecodeError
from vigil.events.codec import decode_event, encode
from vigil.events.types import EmailCampaignSent, EmailLinkClicked
from vigil.hub.raw import RawRecord
from vigil.sources.mailchimp import MailchimpNormalizer, MailchimpWebhook
from vigil.sources.sink import MemorySink
from vigil.sources.webhooks import Delivery, Rejected, create_app

SECRET = "mc-secret-0123456789abcdef"  # noqa: S105 - a test secret
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CAMPAIGN = urlencode(
    {
        "type": "campaign",
        "fired_at": "2026-03-01 11:30:00",
        "data[id]": "5aa2102003",
        "data[subject]": "Verify your wallet now",
        "data[status]": "sent",
        "data[reason]": "",
        "data[list_id]": "a6b5da1054",
    }
).encode()
SUBSCRIBE = urlencode(
    {
        "type": "subscribe",
        "fired_at": "2026-03-01 11:00:00",
        "data[id]": "8a25ff1d98",
        "data[list_id]": "a6b5da1054",
        "data[email]": "api@mailchimp.com",
        "data[email_type]": "html",
        "data[merges][EMAIL]": "api@mailchimp.com",
        "data[ip_opt]": "10.20.10.30",
    }
).encode()
CLICKS = [
    {
        "event": "click",
        "_id": "evt-1",
        "ts": 1772364600,
        "url": "https://wallet-verify.example.net/login?u=1",
        "ip": "203.0.113.50",
        "user_agent": "Mozilla/5.0",
        "msg": {
            "_id": "msg-1",
            "email": "Bob@Example.com",
            "subject": "Verify",
            "metadata": {"campaign_id": "cmp-77"},
        },
    },
    {"event": "open", "_id": "evt-2", "ts": 1772364601, "msg": {"_id": "msg-1"}},
]
MANDRILL = urlencode({"mandrill_events": json.dumps(CLICKS)}).encode()


def delivery(token: str | None = SECRET, body: bytes = CAMPAIGN) -> Delivery:
    return Delivery("mailchimp", "POST", "http://h/", "/webhooks/mailchimp/t", "", {}, body, NOW, token=token)


def record(body: bytes, meta: dict[str, object] | None = None) -> RawRecord:
    return RawRecord("mailchimp", "webhook", body, received_at=NOW, meta=meta or {})


def test_the_path_secret_is_required_and_compared() -> None:
    hook = MailchimpWebhook(SECRET, sender_domain="news.acme.example")
    hook.verify(delivery())
    assert hook.key(delivery()) == b"a6b5da1054"
    assert hook.meta(delivery()) == {"sender_domain": "news.acme.example"}
    assert hook.answers_get()
    for token, reason in [
        (None, "missing_token"),
        ("mc-secret-0123456789abcdeX", "bad_token"),
        ("", "bad_token"),
    ]:
        with pytest.raises(Rejected) as caught:
            hook.verify(delivery(token))
        assert caught.value.reason == reason
    with pytest.raises(ValueError, match="at least 16"):
        MailchimpWebhook("short")


def test_mandrill_deliveries_must_carry_mandrills_signature_when_the_key_is_given() -> None:
    # Mandrill signs its posts (base64 HMAC-SHA1 over the URL and the sorted fields): with the
    # key, a delivery that only knows the path token is refused.
    key = "mandrill-key-0123"
    url = "https://hooks.acme.example/webhooks/mailchimp/" + SECRET
    signed = url + "mandrill_events" + json.dumps(CLICKS)
    signature = base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()

    def mandrill(headers: dict[str, str], body: bytes = MANDRILL) -> Delivery:
        path = "/webhooks/mailchimp/" + SECRET
        return Delivery(
            "mailchimp", "POST", "http://127.0.0.1:8091" + path, path, "", headers, body, NOW, token=SECRET
        )

    hook = MailchimpWebhook(SECRET, mandrill_key=key, public_url="https://hooks.acme.example/")
    hook.verify(mandrill({"x-mandrill-signature": signature}))
    hook.verify(delivery())  # audience webhooks are not signed: the path token suffices
    tampered = MANDRILL.replace(b"wallet-verify", b"wallet-verifx")
    for headers, body, reason in [
        ({}, MANDRILL, "missing_signature"),
        ({"x-mandrill-signature": signature}, tampered, "bad_signature"),
        ({"x-mandrill-signature": "AAAA"}, MANDRILL, "bad_signature"),
    ]:
        with pytest.raises(Rejected) as caught:
            hook.verify(mandrill(headers, body))
        assert caught.value.reason == reason
        assert key not in caught.value.detail
    # Without the key, the path token alone (as the module says).
    MailchimpWebhook(SECRET).verify(mandrill({}))
    # A URL entered with a query string is signed with it.
    signed = url + "?src=mandrill" + "mandrill_events" + json.dumps(CLICKS)
    with_query = base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    path = "/webhooks/mailchimp/" + SECRET
    hook.verify(
        Delivery(
            "mailchimp",
            "POST",
            "http://127.0.0.1:8091" + path + "?src=mandrill",
            path,
            "src=mandrill",
            {"x-mandrill-signature": with_query},
            MANDRILL,
            NOW,
            token=SECRET,
        )
    )


def mandrill_test_post(events: str, key: str = "test-webhook") -> Delivery:
    """A POST as Mandrill sends it when a webhook is added: signed with ``key``."""
    path = "/webhooks/mailchimp/" + SECRET
    url = "http://127.0.0.1:8091" + path
    signature = base64.b64encode(
        hmac.new(key.encode(), (url + "mandrill_events" + events).encode(), hashlib.sha1).digest()
    ).decode()
    body = urlencode({"mandrill_events": events}).encode()
    headers = {"x-mandrill-signature": signature}
    return Delivery("mailchimp", "POST", url, path, "", headers, body, NOW, token=SECRET)


def test_mandrills_test_post_signed_with_test_webhook_is_accepted_and_not_published() -> None:
    # Mandrill signs the POST that checks a new webhook with "test-webhook", not the webhook's key
    # (not issued yet): refused, the webhook could not be added.
    hook = MailchimpWebhook(SECRET, mandrill_key="mandrill-key-0123")
    test = mandrill_test_post("[]")
    hook.verify(test)
    assert not hook.publishes(test)
    sink = MemorySink()
    app = create_app(sink, [hook], clock=lambda: NOW)

    async def send() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8091") as http:
            headers = {**test.headers, "content-type": "application/x-www-form-urlencoded"}
            answer = await http.post(test.path, content=test.body, headers=headers)
            return answer.status_code

    assert asyncio.run(send()) == 200
    assert sink.records == []
    # Events, or anything besides the empty list, are never taken on the test key.
    for events in (json.dumps(CLICKS), "[{}]", "{}"):
        with pytest.raises(Rejected, match="bad_signature"):
            hook.verify(mandrill_test_post(events))
    # Deliveries that carry events are published as before.
    assert hook.publishes(delivery())


def test_sent_campaign_becomes_email_campaign_sent() -> None:
    [event] = MailchimpNormalizer().normalize(record(CAMPAIGN, {"sender_domain": "news.acme.example"}))
    assert isinstance(event, EmailCampaignSent)
    p = event.payload
    assert (p.campaign_id, p.subject, p.sender_domain, p.recipient_count) == (
        "5aa2102003",
        "Verify your wallet now",
        "news.acme.example",
        0,
    )
    assert event.occurred_at == datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
    assert MailchimpNormalizer().normalize(record(CAMPAIGN))[0].payload.sender_domain == "unknown"  # type: ignore[attr-defined]


def test_audience_changes_and_unsent_campaigns_yield_nothing() -> None:
    assert MailchimpNormalizer().normalize(record(SUBSCRIBE)) == []
    assert (
        MailchimpNormalizer().normalize(record(CAMPAIGN.replace(b"status%5D=sent", b"status%5D=canceled")))
        == []
    )


def test_transactional_clicks_become_link_clicks() -> None:
    [event] = MailchimpNormalizer().normalize(record(MANDRILL))
    assert isinstance(event, EmailLinkClicked)
    assert (event.payload.campaign_id, event.payload.url_domain) == ("cmp-77", "wallet-verify.example.net")
    assert (event.entities.email, event.entities.ip) == ("bob@example.com", "203.0.113.50")
    assert event.occurred_at == datetime.fromtimestamp(1772364600, UTC)


@pytest.mark.parametrize(("address", "ip"), [("::ffff:203.0.113.50", "203.0.113.50"), ("n/a", None)])
def test_a_click_ip_is_canonical_and_no_address_is_no_ip(address: str, ip: str | None) -> None:
    click = {**CLICKS[0], "ip": address}
    [event] = MailchimpNormalizer().normalize(
        record(urlencode({"mandrill_events": json.dumps([click])}).encode())
    )
    assert event.entities.ip == ip


def test_a_click_without_an_ip_or_address_names_none() -> None:
    # Mandrill sends "" for what it lacks: every such click shared the IP "" (a key the contract
    # refuses, as an entity key is never empty).
    click = {**CLICKS[0], "ip": "", "msg": {**CLICKS[0]["msg"], "email": ""}}  # type: ignore[dict-item]
    [event] = MailchimpNormalizer().normalize(
        record(urlencode({"mandrill_events": json.dumps([click])}).encode())
    )
    assert (event.entities.email, event.entities.ip) == (None, None)
    assert decode_event(encode(event)) == event


def _clicked_domain(url: str) -> str:
    click = {**CLICKS[0], "url": url}
    [event] = MailchimpNormalizer().normalize(
        record(urlencode({"mandrill_events": json.dumps([click])}).encode())
    )
    assert isinstance(event, EmailLinkClicked)
    assert event.payload.url == url  # the URL itself is kept as sent
    return event.payload.url_domain


@pytest.mark.parametrize(
    ("url", "domain"),
    [
        # A browser (WHATWG URL) reads "\\" as "/": the click goes to evil.example, not paypal.com.
        ("https://evil.example\\@paypal.com/login", "evil.example"),
        ("HTTPS:\\\\evil.example\\login", "evil.example"),
        ("https:/evil.example/login", "evil.example"),
        (" https://evil.exa\tmple/login", "evil.example"),
        # Intel lists store domains lower-case without the root's trailing dot.
        ("https://Evil.Example./x", "evil.example"),
        # Not a special scheme: a backslash is no separator there.
        ("mailto-ish://a\\@b.example/", "b.example"),
        ("https://user:pw@wallet-verify.example.net:8443/login", "wallet-verify.example.net"),
    ],
)
def test_the_clicked_domain_is_the_host_a_browser_goes_to(url: str, domain: str) -> None:
    assert _clicked_domain(url) == domain


@pytest.mark.parametrize(
    ("url", "domain"),
    [
        # A browser percent-decodes the host and maps it (UTS-46): each of these opens evil.example,
        # and was kept as written, matching no listed evil.example.
        ("https://%65vil.example/", "evil.example"),
        ("https://evil%2Eexample/x", "evil.example"),
        ("https://\uff25\uff36\uff29\uff2c.example/", "evil.example"),  # full-width
        ("https://evil\u3002example/", "evil.example"),  # an ideographic full stop
        ("https://evil.example%2E/", "evil.example"),
        # Unicode hosts in the ASCII form intel lists store (and a browser sends to DNS).
        ("https://b\u00fccher.example/", "xn--bcher-kva.example"),
        ("https://B%C3%BCcher.example/", "xn--bcher-kva.example"),
        ("https://fa\u00df.example/", "xn--fa-hia.example"),  # non-transitional, as browsers
        ("https://xn--bcher-kva.example/", "xn--bcher-kva.example"),
        ("https://[2001:DB8::1]/x", "2001:db8::1"),
    ],
)
def test_the_clicked_domain_is_decoded_and_mapped_as_a_browser_does(url: str, domain: str) -> None:
    assert _clicked_domain(url) == domain


@pytest.mark.parametrize(
    "url",
    [
        "https://evil%FF.example/",  # not UTF-8 once decoded
        "https://evil%2Fexample/",  # a "/" no domain may hold
        "https://evil%20example/",
        "https://a\ufffdb.example/",  # disallowed by UTS-46
    ],
)
def test_a_clicked_host_a_browser_refuses_is_a_decode_error_naming_the_url(url: str) -> None:
    events = json.dumps([{**CLICKS[0], "url": url}])
    with pytest.raises(DecodeError, match="expected a URL whose host a browser can open") as caught:
        MailchimpNormalizer().normalize(record(urlencode({"mandrill_events": events}).encode()))
    assert caught.value.path == "mandrill_events[0].url"


@pytest.mark.parametrize("ts", ["NaN", "Infinity", "-Infinity", "1e20", "-1e20"])
def test_a_click_time_out_of_range_is_a_decode_error_naming_ts(ts: str) -> None:
    events = json.dumps([{**CLICKS[0], "ts": "X"}]).replace('"X"', ts)
    with pytest.raises(
        DecodeError, match=r"mandrill_events\[0\]\.ts: expected 'ts' as Unix seconds"
    ) as caught:
        MailchimpNormalizer().normalize(record(urlencode({"mandrill_events": events}).encode()))
    assert caught.value.path == "mandrill_events[0].ts"


def test_a_lone_surrogate_in_a_click_is_refused_naming_the_field() -> None:
    events = json.dumps([{**CLICKS[0], "url": "https://x.example/\ud800"}])
    assert "\\ud800" in events
    with pytest.raises(DecodeError, match="lone UTF-16 surrogate") as caught:
        MailchimpNormalizer().normalize(record(urlencode({"mandrill_events": events}).encode()))
    assert caught.value.path == "mandrill_events[0].url"


def test_a_surrogate_pair_in_a_click_is_well_formed_text() -> None:
    assert _clicked_domain("https://x.example/\U0001f600").startswith("x.example")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xfe", "form-encoded"),
        (b"fired_at=2026-03-01+11%3A00%3A00", "'type'"),
        (b"type=weird", "unknown Mailchimp webhook type 'weird'"),
        (CAMPAIGN.replace(b"fired_at=2026-03-01+11%3A30%3A00", b"fired_at=soon"), "fired_at"),
        (CAMPAIGN.replace(b"data%5Bid%5D=5aa2102003", b"data%5Bid%5D="), r"data\[id\]"),
        (urlencode({"mandrill_events": "{"}).encode(), "not JSON"),
        (urlencode({"mandrill_events": "{}"}).encode(), "JSON array"),
        (
            urlencode({"mandrill_events": json.dumps([{**CLICKS[0], "url": "/relative"}])}).encode(),
            "absolute URL",
        ),
        (
            urlencode({"mandrill_events": json.dumps([{**CLICKS[0], "url": "https://[x/claim"}])}).encode(),
            "absolute URL",
        ),
        (
            urlencode(
                {"mandrill_events": json.dumps([{"event": "click", "url": "https://x", "ts": 1}])}
            ).encode(),
            "names no campaign",
        ),
    ],
)
def test_malformed_deliveries_are_rejected_with_the_reason(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        MailchimpNormalizer().normalize(record(body))


def _one_click(**changes: Any) -> list[Any]:
    click = {**CLICKS[0], **changes}
    return MailchimpNormalizer().normalize(
        record(urlencode({"mandrill_events": json.dumps([click])}).encode())
    )


def test_a_blank_address_is_no_email_and_a_numeric_campaign_is_its_digits() -> None:
    msg = {**CLICKS[0]["msg"], "email": "  ", "metadata": {"campaign_id": 4107}}  # type: ignore[dict-item]
    [event] = _one_click(msg=msg)
    assert event.entities.email is None
    assert event.payload.campaign_id == "4107"


def test_a_click_error_names_the_click_it_is_in() -> None:
    # The path was kept beside the message, and a dead letter's reason is the message alone.
    events = [CLICKS[0], {**CLICKS[0], "url": "mailto:x@example.com"}]
    body = urlencode({"mandrill_events": json.dumps(events)}).encode()
    with pytest.raises(DecodeError) as caught:
        MailchimpNormalizer().normalize(record(body))
    assert "mandrill_events[1].url" in str(caught.value)


def test_mandrill_events_nested_too_deep_are_a_decode_error() -> None:
    body = urlencode({"mandrill_events": "[" * 5000}).encode()
    with pytest.raises(DecodeError, match="mandrill_events is not JSON"):
        MailchimpNormalizer().normalize(record(body))
