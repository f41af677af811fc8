"""The declared topic registry."""

from __future__ import annotations

import re

import pytest

from vigil.errors import TopicError
from vigil.events import EVENT_TYPES
from vigil.hub.topics import TOPICS, TopicRegistry, TopicSpec

NAMING = re.compile(
    r"^(raw\.[a-z0-9]+|events\.[a-z]+|intel\.indicators|alerts|decisions|labels|dlq\.[a-z]+|"
    r"vigil\.cursors)$"
)


def test_names_follow_the_convention() -> None:
    bad = [t.name for t in TOPICS if not NAMING.match(t.name)]
    assert bad == []


def test_every_event_type_has_exactly_one_topic() -> None:
    for cls in EVENT_TYPES.values():
        carriers = [t.name for t in TOPICS if cls in t.event_types]
        assert len(carriers) == 1, (cls.__name__, carriers)


def test_intel_is_compacted_and_kept_forever() -> None:
    spec = TOPICS.get("intel.indicators")
    assert spec.config()["cleanup.policy"] == "compact"
    assert spec.config()["retention.ms"] == "-1"


def test_unknown_topic_names_the_declared_ones() -> None:
    with pytest.raises(TopicError, match=r"'nope' is not declared; declared topics: .*alerts"):
        TOPICS.get("nope")


def test_duplicate_declaration_fails() -> None:
    spec = TopicSpec(name="alerts", key="k", value="raw", description="d")
    with pytest.raises(TopicError, match="declared twice"):
        TopicRegistry((spec, spec))
