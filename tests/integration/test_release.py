"""`vigil release` on the real broker: an analyst releases an alert's holds, once."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.detect.test_release import ALERT, OTHER, decided
from typer.testing import CliRunner

from vigil.cli import app
from vigil.config import Settings
from vigil.detect.release import MIN_ID_PREFIX, release_id
from vigil.errors import ConfigError, ContractError
from vigil.events.codec import decode_event
from vigil.events.ids import stable_id
from vigil.events.types import Decision, Release
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer, make_admin, make_producer, read_committed
from vigil.hub.topics import TOPICS

STANDING = datetime.now(UTC) + timedelta(days=1)
#: ALERT's hold, and OTHER's hold of the same withdrawal.
HOLD = decided("hold_withdrawal", expires=STANDING)
ALSO = decided("hold_withdrawal", OTHER, expires=STANDING)


@pytest.fixture
def prefix(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Decisions and releases topics of this test's own (under a prefix), the decisions holding
    HOLD and ALSO and a record that is no decision; deleted after."""
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(settings.home))
    prefix = f"test.release.{uuid.uuid4().hex[:8]}."
    ensure_topics(
        settings, [dataclasses.replace(TOPICS.get(n), name=prefix + n) for n in ("decisions", "releases")]
    )
    producer = EventProducer(settings)
    for decision in (HOLD, ALSO):
        producer.produce(decision, topic=prefix + "decisions")
    producer.flush()
    raw = make_producer(settings)
    raw.produce(prefix + "decisions", key=b"x", value=b"not a decision")
    assert raw.flush(30) == 0
    yield prefix
    make_admin(settings).delete_topics([prefix + "decisions", prefix + "releases"])


def read(settings: Settings, topic: str) -> list[tuple[int, Release]]:
    out = []
    for message in read_committed(settings, topic):
        event = decode_event(message.value() or b"")
        assert isinstance(event, Release)
        out.append((message.partition(), event))
    return out


def read_decisions(settings: Settings, prefix: str) -> list[tuple[int, Decision]]:
    """The decisions topic's decisions (the record that is none left out)."""
    messages = read_committed(settings, prefix + "decisions")
    return [(m.partition(), d) for m in messages if isinstance(d := decode_or_none(m.value()), Decision)]


def decode_or_none(value: bytes | None) -> object:
    try:
        return decode_event(value or b"")
    except ContractError:
        return None


def release(*args: str) -> Any:
    return CliRunner().invoke(app, ["release", *args], terminal_width=400)


def test_an_alerts_hold_is_released_once_and_the_other_alerts_hold_said_to_stand(
    settings: Settings, prefix: str
) -> None:
    short = ALERT[:MIN_ID_PREFIX]
    asked = ["--by", "alice", "--reason", "called the customer", "--topic-prefix", prefix]
    tried = release(short, *asked, "--dry-run")
    assert tried.exit_code == 0, tried.output
    assert "would release 1 decision(s)" in tried.output
    said = " ".join(tried.output.split())  # (as wrapped to the terminal's width)
    assert f"1 record(s) of {prefix}decisions are not decisions Vigil can read" in said
    assert read(settings, prefix + "releases") == []  # a dry run sends nothing

    done = release(short, *asked)
    assert done.exit_code == 0, done.output
    assert f"released 1 decision(s) of alert {ALERT}; 1 other decision(s) stopping it stand" in done.output
    line = f"sent: release hold_withdrawal customer:c1 withdrawal w1 {short}: released by alice: "
    assert line + "called the customer" in done.output
    assert "still stopped by another alert's: hold_withdrawal customer:c1 withdrawal w1" in done.output
    ((_, sent),) = read(settings, prefix + "releases")
    assert sent.event_id == release_id(HOLD)
    assert (sent.payload.decision_id, sent.payload.released_by) == (HOLD.event_id, "alice")
    assert sent.key() == HOLD.key()
    assert [d.event_id for _, d in read_decisions(settings, prefix)] == [HOLD.event_id, ALSO.event_id]

    again = release(ALERT, "--by", "bob", "--reason", "again", "--topic-prefix", prefix)
    assert again.exit_code == 0, again.output
    assert "already released" in again.output
    assert "by alice: called the customer" in again.output
    assert "released 0 decision(s)" in again.output
    assert len(read(settings, prefix + "releases")) == 1  # nothing sent twice


def test_a_lapsed_hold_is_said_and_left(settings: Settings, prefix: str) -> None:
    lapsed = decided(
        "block",
        stable_id("lapsed", prefix="alert-"),
        withdrawal=None,
        expires=datetime.now(UTC) - timedelta(1),
    )
    producer = EventProducer(settings)
    producer.produce(lapsed, topic=prefix + "decisions")
    producer.flush()
    result = release(lapsed.payload.alert_id, "--by", "alice", "--reason", "x", "--topic-prefix", prefix)
    assert result.exit_code == 0, result.output
    assert "lapsed, nothing to release: block customer:c1" in result.output
    assert "released 0 decision(s)" in result.output
    assert read(settings, prefix + "releases") == []


def test_an_alert_without_decisions_a_topic_missing_or_a_bad_request_is_named(prefix: str) -> None:
    unknown = "alert-" + "0" * 32
    result = release(unknown, "--by", "alice", "--reason", "x", "--topic-prefix", prefix)
    assert isinstance(result.exception, ConfigError)
    assert f"no decision names alert {unknown!r}" in str(result.exception)
    result = release(ALERT, "--by", "alice", "--reason", "x", "--topic-prefix", prefix + "missing.")
    assert isinstance(result.exception, ConfigError)
    assert f"no topic '{prefix}missing.decisions'" in str(result.exception)
    # A bad request is said before anything is read (here, where nothing could be).
    result = release(ALERT, "--by", "", "--reason", "x", "--topic-prefix", prefix + "missing.")
    assert isinstance(result.exception, ConfigError)
    assert "a release needs --by" in str(result.exception)
