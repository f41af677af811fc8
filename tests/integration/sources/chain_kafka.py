"""Helpers for the chain connectors' integration tests: a raw topic per test, read back.

Topics are unique per test (other suites share the broker); they are created through
the project's own admin code and read back under ``read_committed``, as the normaliser
application reads them, so aborted transactions of a killed connector are invisible.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.integration.kafka_read import START_S, read_raw, wait_for

from vigil.config import Settings
from vigil.hub.admin import ensure_topics
from vigil.hub.topics import TopicSpec
from vigil.sources.sink import KafkaRawSink


def make_raw_topic(settings: Settings, name: str) -> str:
    topic = f"test.raw.{name}.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=topic, key="height", value="raw", description="test raw topic", partitions=3)
    ensure_topics(settings, [spec])
    return topic


def stored_cursor(settings: Settings, source_id: str, expected_next: int, field: str) -> dict[str, Any]:
    """The connector's stored cursor once it names ``expected_next``.

    Polled: the transaction markers that make a just-committed cursor visible to a
    ``read_committed`` reader are written an instant after the commit returns.
    """
    found: dict[str, Any] = {}

    def arrived() -> bool:
        found.clear()
        found.update(KafkaRawSink(settings, source_id=source_id).last_cursor(source_id) or {})
        return found.get(field) == expected_next

    wait_for(arrived, 20, f"the cursor of {source_id} to reach {field}={expected_next} (last: {found})")
    return dict(found)


__all__ = ["START_S", "make_raw_topic", "read_raw", "stored_cursor", "wait_for"]
