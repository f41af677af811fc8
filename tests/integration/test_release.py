"""`vigil release` on the real broker: an analyst releases an alert's holds, once."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.detect.test_release import ALERT, OTHER, decided
from typer.testing import CliRunner

from vigil.cli import app
from vigil.config import Settings
from vigil.detect.release import MIN_ID_PREFIX, release_id
from vigil.errors import ConfigError
from vigil.events.codec import decode_event
from vigil.events.types import Decision
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer, make_admin, read_committed
from vigil.hub.topics import TOPICS


@pytest.fixture
def decisions(settings: Settings, unique_topic: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A decisions topic of this test's own, holding a hold and a step-up of ALERT and a hold of
    OTHER; deleted after."""
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(settings.home))
    ensure_topics(settings, [dataclasses.replace(TOPICS.get("decisions"), name=unique_topic)])
    standing = datetime.now(UTC) + timedelta(days=1)
    producer = EventProducer(settings)
    for decision in (
        decided("hold_withdrawal", expires=standing),
        decided("require_step_up", withdrawal=None, expires=standing),
        decided("hold_withdrawal", OTHER, customer="c2"),
    ):
        producer.produce(decision, topic=unique_topic)
    producer.flush()
    yield unique_topic
    make_admin(settings).delete_topics([unique_topic])


def read(settings: Settings, topic: str) -> list[tuple[int, Decision]]:
    out = []
    for message in read_committed(settings, topic):
        event = decode_event(message.value() or b"")
        assert isinstance(event, Decision)
        out.append((message.partition(), event))
    return out


def release(*args: str) -> Any:
    return CliRunner().invoke(app, ["release", *args], terminal_width=400)


def test_an_alerts_decisions_are_released_beside_them_once(settings: Settings, decisions: str) -> None:
    prefix = ALERT[:MIN_ID_PREFIX]
    tried = release(
        prefix, "--by", "alice", "--reason", "called the customer", "--topic", decisions, "--dry-run"
    )
    assert tried.exit_code == 0, tried.output
    assert "would release 2 decision(s)" in tried.output
    assert len(read(settings, decisions)) == 3  # a dry run sends nothing

    done = release(prefix, "--by", "alice", "--reason", "called the customer", "--topic", decisions)
    assert done.exit_code == 0, done.output
    assert f"released 2 decision(s) of alert {ALERT}" in done.output
    line = f"sent: release customer:c1 withdrawal w1 {prefix}: released by alice: called the customer"
    assert line in done.output
    records = read(settings, decisions)
    held = {d.event_id: (partition, d) for partition, d in records if d.payload.action != "release"}
    releases = [(partition, d) for partition, d in records if d.payload.action == "release"]
    assert len(releases) == 2
    for partition, r in releases:
        (released,) = [(p, d) for p, d in held.values() if release_id(d) == r.event_id]
        assert partition == released[0]  # beside it: the same key, the same partition
        assert r.payload.alert_id == ALERT
        assert r.payload.withdrawal_id == released[1].payload.withdrawal_id
        assert r.payload.reason == "released by alice: called the customer"
        assert r.source == "vigil.release"

    again = release(ALERT, "--by", "bob", "--reason", "again", "--topic", decisions)
    assert again.exit_code == 0, again.output
    assert again.output.count("already released") == 2
    assert "released 0 decision(s)" in again.output
    assert len(read(settings, decisions)) == 5  # nothing sent twice


def test_an_alert_without_decisions_or_a_topic_missing_is_named(decisions: str) -> None:
    unknown = "alert-" + "0" * 32
    result = release(unknown, "--by", "alice", "--reason", "x", "--topic", decisions)
    assert isinstance(result.exception, ConfigError)
    assert f"no decision names alert {unknown!r}" in str(result.exception)
    result = release(ALERT, "--by", "alice", "--reason", "x", "--topic", decisions + ".missing")
    assert isinstance(result.exception, ConfigError)
    assert f"no topic '{decisions}.missing'" in str(result.exception)
