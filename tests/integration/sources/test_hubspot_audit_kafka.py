"""HubSpot's audit log -> real Kafka through the transactional sink: each page lands with the
cursor, a restarted connector (new sink, new source) resumes from the cursor Kafka holds, and
what was published normalises into the logins and exports it recorded."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from pydantic import SecretStr
from tests.unit.sources.local_http import serving
from tests.unit.sources.test_hubspot_audit import TOKEN, FakeHubSpot, audit, parse_time, results

from vigil.config import Settings
from vigil.events.types import CrmLogin, CrmRecordExport
from vigil.hub.admin import ensure_topics
from vigil.hub.client import read_committed
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.hubspot import AUDIT_LOG, HubSpotNormalizer
from vigil.sources.hubspot_audit import HubSpotAuditSource
from vigil.sources.sink import KafkaRawSink


def test_pages_and_cursor_go_to_kafka_together_and_a_restart_resumes(
    settings: Settings, unique_topic: str
) -> None:
    ensure_topics(
        settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1)]
    )
    source_id = f"hubspot.audit-{uuid.uuid4().hex[:8]}"
    every = results(5)
    api = FakeHubSpot(every, order="newest")
    with serving(api.answer) as base:
        config = settings.model_copy(update={"hubspot_access_token": SecretStr(TOKEN)})

        def connector() -> HubSpotAuditSource:
            return HubSpotAuditSource.from_settings(config, base_url=base, page_size="2", source_id=source_id)

        sink = KafkaRawSink(config, source_id=source_id, topic_for=lambda _r: unique_topic)
        try:
            assert connector().poll_once(sink) == 5
        finally:
            sink.close()
        # Meanwhile: one at the cursor's very time, one newer.
        last = parse_time(every[-1]["occurredAt"])
        added = [audit(70, last, "EXPORT"), audit(71, last + timedelta(seconds=2))]
        api.results += added
        restarted = KafkaRawSink(config, source_id=source_id, topic_for=lambda _r: unique_topic)
        try:
            cursor = restarted.last_cursor(source_id)
            assert cursor is not None
            assert cursor["at"] == every[-1]["occurredAt"].replace("Z", "000Z")
            assert connector().poll_once(restarted) == 2
            cursor = restarted.last_cursor(source_id)
            assert cursor is not None
            assert (cursor["v"], cursor["at"], cursor["seen"]) == (
                2,
                added[1]["occurredAt"].replace("Z", "000Z"),
                [added[1]["id"]],
            )
            # (Every result within settle of the newest: what the next poll, asked from there, leaves out.)
            assert sorted(key for key, _ in cursor["recent"]) == sorted(x["id"] for x in [*every, *added])
        finally:
            restarted.close()

    messages = read_committed(settings, unique_topic)
    records = [RawRecord.from_headers("hubspot", m.value(), m.key(), m.headers()) for m in messages]
    assert [r.value for r in records[:3]] == api.bodies[:3]  # the first poll's pages, as received
    assert {r.kind for r in records} == {AUDIT_LOG}
    ids = [x["id"] for r in records for x in json.loads(r.value)["results"]]
    assert sorted(ids) == sorted(x["id"] for x in [*every, *added])  # each once
    for m in messages:  # never the token, in a value or a header
        assert TOKEN.encode() not in m.value()
        assert all(TOKEN.encode() not in value for _, value in m.headers() or [])
    events = [e for r in records for e in HubSpotNormalizer().normalize(r)]
    assert sorted(type(e).__name__ for e in events) == sorted(
        {"LOGIN": "CrmLogin", "EXPORT": "CrmRecordExport"}[x["category"]]
        for x in [*every, *added]
        if x["category"] != "CRM_OBJECT"
    )
    assert any(isinstance(e, CrmLogin) for e in events)
    assert any(isinstance(e, CrmRecordExport) and e.payload.export_id == "export-70" for e in events)
