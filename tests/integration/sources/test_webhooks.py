"""The SaaS webhook receivers under a real uvicorn server on a free port, publishing to the real broker."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from tests.integration.sources.test_feeds import PARTITIONS, read_raw

from vigil.config import Settings, load_settings
from vigil.events.types import CrmApiTokenUsed, CrmLogin, EmailCampaignSent
from vigil.hub.admin import ensure_topics
from vigil.hub.topics import TopicSpec
from vigil.sources.base import RawSink
from vigil.sources.hubspot import HubSpotNormalizer, HubSpotSource, HubSpotWebhook, sign_v3
from vigil.sources.mailchimp import MailchimpNormalizer, MailchimpSource, MailchimpWebhook
from vigil.sources.salesforce import SalesforceNormalizer, SalesforceSource, SalesforceWebhook
from vigil.sources.sink import KafkaRawSink
from vigil.sources.webhooks import WebhookSource

HS_SECRET = "hubspot-app-secret-" + uuid.uuid4().hex
SF_TOKEN = "sf-" + uuid.uuid4().hex
MC_SECRET = "mc-" + uuid.uuid4().hex
ORG = "00D5e000000AbCdEAK"
#: What the receivers below may wait for Kafka: a fresh broker makes its transaction coordinator
#: for the first transactional producer, which takes longer than the default publish_timeout_s
#: (3 s), and these tests are not about that bound (the last one is).
COLD_START_S = 30.0

HUBSPOT_EVENTS = json.dumps(
    [
        {"eventId": 4001, "subscriptionId": 1, "portalId": 62515, "appId": 777, "occurredAt": 1772366400000,
         "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": 5,
         "propertyName": "email", "propertyValue": "x@example.com", "changeSource": "INTEGRATION",
         "sourceId": "app:777"},
    ]
).encode()  # fmt: skip
OUTBOUND = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>{ORG}</OrganizationId><ActionId>04k5e000000AAAAAA2</ActionId>
<Notification><Id>04l5e00000AAAAA1</Id>
<sObject xsi:type="sf:LoginEvent" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
<sf:EventIdentifier>login-77</sf:EventIdentifier><sf:EventDate>2026-03-01T11:00:00.000+0000</sf:EventDate>
<sf:Username>alice@acme.example</sf:Username><sf:SourceIp>203.0.113.9</sf:SourceIp><sf:Status>Success</sf:Status>
</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>""".encode()
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&x;</OrganizationId></notifications>"""
CAMPAIGN = urlencode(
    {"type": "campaign", "fired_at": "2026-03-01 11:30:00", "data[id]": "5aa2102003",
     "data[subject]": "Verify your wallet", "data[status]": "sent", "data[list_id]": "a6b5da1054"}
).encode()  # fmt: skip


@pytest.fixture
def topic(settings: Settings, unique_topic: str) -> str:
    spec = TopicSpec(name=unique_topic, key="tenant", value="raw", description="t", partitions=PARTITIONS)
    ensure_topics(settings, [spec])
    return unique_topic


@pytest.fixture
def sink(settings: Settings, topic: str) -> Iterator[KafkaRawSink]:
    raw = KafkaRawSink(
        settings, source_id=f"test-webhooks-{uuid.uuid4().hex[:8]}", topic_for=lambda _r: topic
    )
    yield raw
    raw.close()


#: The platforms whose deliveries carry a secret in the URL's path, not a signature.
PATH_TOKEN_PLATFORMS = frozenset({"salesforce", "mailchimp"})


@contextmanager
def serving(source: WebhookSource, sink: RawSink) -> Iterator[str]:
    """Run the source (uvicorn on a free port) in a thread; yields its base URL."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(sink)
        except BaseException as exc:
            errors.append(exc)
            source.ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert source.ready.wait(15), "the webhook server did not start within 15s"
    if errors:
        raise errors[0]
    try:
        # Where the command line says it listens: the tests' requests go there.
        where = source.listening(0)
        assert where is not None
        assert where.startswith("http://127.0.0.1:")
        # Where the path token goes, for the platforms that need one (not the token itself):
        # known here, not taken from the platform's own flag (one that forgot it would pass).
        token = source.name in PATH_TOKEN_PLATFORMS
        assert source.platform.path_token == token
        route = f"/webhooks/{source.name}" + ("/<token>" if token else "")
        assert where.endswith(route)
        yield where.removesuffix(route)
    finally:
        source.stop()
        thread.join(15)
        assert not thread.is_alive(), "the webhook server did not stop within 15s"


def rejected(base: str, platform: str, reason: str) -> float:
    """The receiver's own counter, read over HTTP from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    needle = f'vigil_webhook_rejected_total{{platform="{platform}",reason="{reason}"}} '
    lines = [line for line in text.splitlines() if line.startswith(needle)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def hubspot_headers(
    url: str, body: bytes, key: str = HS_SECRET, at: datetime | None = None
) -> dict[str, str]:
    stamp = str(int((at or datetime.now(UTC)).timestamp() * 1000))
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": stamp,
        "X-HubSpot-Signature-v3": sign_v3(key, "POST", url, body, stamp),
    }


def test_hubspot_signed_delivery_is_in_kafka_when_acknowledged_and_forgeries_are_401(
    settings: Settings, topic: str, sink: KafkaRawSink
) -> None:
    source = HubSpotSource(HubSpotWebhook(HS_SECRET), port=0, publish_timeout_s=COLD_START_S)
    with serving(source, sink) as base:
        url = f"{base}/webhooks/hubspot"
        signed = hubspot_headers(url, HUBSPOT_EVENTS)
        ok = httpx.post(url, content=HUBSPOT_EVENTS, headers=signed, timeout=60)
        assert ok.status_code == 204
        # Acknowledged means committed: the record is readable right after the answer.
        [record] = read_raw(settings, topic, "hubspot")
        replayed = httpx.post(url, content=HUBSPOT_EVENTS, headers=signed, timeout=10)
        assert replayed.status_code == 401

        forged = httpx.post(
            url,
            content=HUBSPOT_EVENTS,
            headers=hubspot_headers(url, HUBSPOT_EVENTS, key="guess"),
            timeout=10,
        )
        old = datetime.now(UTC) - timedelta(minutes=6)
        stale = httpx.post(
            url, content=HUBSPOT_EVENTS, headers=hubspot_headers(url, HUBSPOT_EVENTS, at=old), timeout=10
        )
        unsigned = httpx.post(url, content=HUBSPOT_EVENTS, timeout=10)
        assert [forged.status_code, stale.status_code, unsigned.status_code] == [401, 401, 401]
        assert HS_SECRET not in forged.text
        assert rejected(base, "hubspot", "bad_signature") == 1
        assert rejected(base, "hubspot", "stale") == 1
        assert rejected(base, "hubspot", "missing_signature") == 1
        assert rejected(base, "hubspot", "replayed") == 1
    assert (record.value, record.kind, record.key) == (HUBSPOT_EVENTS, "webhook", b"62515")
    assert record.meta["path"] == "/webhooks/hubspot"
    assert len(read_raw(settings, topic, "hubspot")) == 1  # nothing rejected was published
    [event] = HubSpotNormalizer().normalize(record)
    assert isinstance(event, CrmApiTokenUsed)
    assert event.payload.token_id == "app:777"  # noqa: S105 - an app id, not a secret


def test_salesforce_outbound_message_gets_its_soap_ack_and_hostile_xml_is_refused(
    settings: Settings, topic: str, sink: KafkaRawSink
) -> None:
    source = SalesforceSource(SalesforceWebhook(SF_TOKEN, [ORG]), port=0, publish_timeout_s=COLD_START_S)
    with serving(source, sink) as base:
        url = f"{base}/webhooks/salesforce/{SF_TOKEN}"
        xml = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
        ack = httpx.post(url, content=OUTBOUND, headers=xml, timeout=10)
        assert ack.status_code == 200
        assert ack.headers["content-type"].startswith("text/xml")
        assert "<Ack>true</Ack>" in ack.text
        login = {"attributes": {"type": "LoginEvent"}, "EventIdentifier": "login-78", "Status": "Failed",
                 "EventDate": "2026-03-01T11:01:00Z", "Username": "alice@acme.example"}  # fmt: skip
        relayed_body = json.dumps({"records": [login]}).encode()
        relayed = httpx.post(
            url, content=relayed_body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert relayed.status_code == 204

        xxe = httpx.post(url, content=XXE, headers=xml, timeout=10)
        other_org = httpx.post(
            url, content=OUTBOUND.replace(ORG.encode(), b"00D000000000001AAA"), headers=xml, timeout=10
        )
        wrong_token = httpx.post(
            f"{base}/webhooks/salesforce/{SF_TOKEN}x", content=OUTBOUND, headers=xml, timeout=10
        )
        assert [xxe.status_code, other_org.status_code, wrong_token.status_code] == [400, 401, 401]
        assert "root:" not in xxe.text
        assert rejected(base, "salesforce", "malformed") == 1
        assert rejected(base, "salesforce", "unknown_org") == 1
        assert rejected(base, "salesforce", "bad_token") == 1
    records = read_raw(settings, topic, "salesforce")
    assert sorted(r.value for r in records) == sorted([OUTBOUND, relayed_body])
    assert all(SF_TOKEN not in json.dumps(r.meta) for r in records)
    events = [e for r in records for e in SalesforceNormalizer().normalize(r)]
    assert sorted((e.payload.user, e.payload.success) for e in events if isinstance(e, CrmLogin)) == [
        ("alice@acme.example", False),
        ("alice@acme.example", True),
    ]


def test_mailchimp_url_check_campaign_and_wrong_secret(
    settings: Settings, topic: str, sink: KafkaRawSink
) -> None:
    source = MailchimpSource(
        MailchimpWebhook(MC_SECRET, sender_domain="news.acme.example"), port=0, publish_timeout_s=COLD_START_S
    )
    with serving(source, sink) as base:
        url = f"{base}/webhooks/mailchimp/{MC_SECRET}"
        assert httpx.get(url, timeout=10).status_code == 200  # Mailchimp's check of a new webhook URL
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert httpx.post(url, content=CAMPAIGN, headers=form, timeout=10).status_code == 204
        wrong = httpx.post(
            f"{base}/webhooks/mailchimp/not-the-secret", content=CAMPAIGN, headers=form, timeout=10
        )
        assert wrong.status_code == 401
        assert httpx.get(f"{base}/webhooks/mailchimp/not-the-secret", timeout=10).status_code == 401
        assert rejected(base, "mailchimp", "bad_token") == 2
    [record] = read_raw(settings, topic, "mailchimp")
    assert record.value == CAMPAIGN
    assert record.meta["path"] == "/webhooks/mailchimp/<token>"
    [event] = MailchimpNormalizer().normalize(record)
    assert isinstance(event, EmailCampaignSent)
    assert (event.payload.campaign_id, event.payload.sender_domain) == ("5aa2102003", "news.acme.example")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_broker_failure_answers_503_with_retry_after(tmp_path: Path) -> None:
    dead = load_settings(kafka_bootstrap=f"127.0.0.1:{_dead_port()}", home=tmp_path)
    sink = KafkaRawSink(dead, source_id=f"test-dead-{uuid.uuid4().hex[:8]}", timeout_s=2)
    source = MailchimpSource(MailchimpWebhook(MC_SECRET), port=0)
    with serving(source, sink) as base:
        # The sink gives up after its 2 s and the receiver answers; a receiver that waited on
        # the dead broker for ever would leave the client to its own deadline (ReadTimeout).
        answer = httpx.post(f"{base}/webhooks/mailchimp/{MC_SECRET}", content=CAMPAIGN, timeout=30)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "30"
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'vigil_webhook_unavailable_total{platform="mailchimp"} 1.0' in metrics
        assert 'vigil_webhook_accepted_total{platform="mailchimp"}' not in metrics


def test_with_the_broker_down_deliveries_are_answered_within_publish_timeout_s(tmp_path: Path) -> None:
    # The sink's own waits (30 s for its start, each commit try, the abort) made the 503 come
    # after some 90 s, and each delivery queued behind it 30 s later: HubSpot waits about 5 s.
    dead = load_settings(kafka_bootstrap=f"127.0.0.1:{_dead_port()}", home=tmp_path)
    sink = KafkaRawSink(dead, source_id=f"test-dead-{uuid.uuid4().hex[:8]}")  # its own 30 s waits
    source = MailchimpSource(MailchimpWebhook(MC_SECRET), port=0)  # publish_timeout_s: 3 s
    answers: list[tuple[int | str, float]] = []

    def deliver() -> None:
        started = time.monotonic()
        try:
            status: int | str = httpx.post(
                f"{base}/webhooks/mailchimp/{MC_SECRET}", content=CAMPAIGN, timeout=10
            ).status_code
        except httpx.TimeoutException:
            status = "no answer within 10 s"
        answers.append((status, time.monotonic() - started))

    with serving(source, sink) as base:
        clients = [threading.Thread(target=deliver) for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
    assert [status for status, _ in answers] == [503, 503, 503], answers
    assert max(elapsed for _, elapsed in answers) < 5.0, answers
