"""Helpers for the stream integration tests: topics, producing, running an app in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer

from vigil.config import CLASSIC_GROUP_OPTIONS, Settings, load_settings
from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer, make_admin, producer_config
from vigil.hub.topics import TopicSpec
from vigil.stream.app import Application


def make_topics(settings: Settings, *names: str, partitions: int = 3) -> None:
    ensure_topics(
        settings,
        [
            TopicSpec(name=n, key="test", value="raw", description="test", partitions=partitions)
            for n in names
        ],
    )


def home_at(settings: Settings, home: Path) -> Settings:
    """The test cluster's settings with another home: another machine, or another process's."""
    return load_settings(kafka_bootstrap=settings.kafka_bootstrap, home=home)


def produce(settings: Settings, topic: str, events: Sequence[Event]) -> None:
    producer = EventProducer(settings)
    for event in events:
        producer.produce(event, topic=topic)
    producer.flush()


def produce_in_transactions(settings: Settings, topic: str, events: Sequence[Event], per: int = 5) -> None:
    """As a source publishes to a canonical topic: in transactions (``per`` events each), whose
    commit markers take offsets of their own that no consumer is handed."""
    producer = Producer(producer_config(settings, **{"transactional.id": f"test-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    for start in range(0, len(events), per):
        producer.begin_transaction()
        for event in events[start : start + per]:
            producer.produce(topic, encode(event), event.key())
        producer.commit_transaction(30)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, said: Callable[[], str] | None = None
) -> None:
    """Wait up to ``timeout`` seconds for ``condition``; at the timeout, fail naming ``what``, and
    with what ``said`` then tells (the state of what was waited for, for a failure seen once)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            told = ""
            if said is not None:
                try:
                    told = f"; {said()}"
                except Exception as exc:  # (what it tells is extra: the timeout is the failure)
                    told = f"; (what it would tell failed: {exc!r})"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{told}")
        time.sleep(0.05)  # poll interval; the condition is what synchronises


def group_said(settings: Settings, group: str) -> str:
    """Consumer group ``group`` as the broker describes it: its state, members and their
    partitions, and its committed offsets (or why it could not be described)."""
    admin = make_admin(settings)
    try:
        found = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=10)
        members = [
            f"{m.member_id} {sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)}"
            for m in found.members
        ]
        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        committed = sorted(
            (tp.topic, tp.partition, tp.offset) for tp in offsets.result(timeout=10).topic_partitions
        )
    except (KafkaException, TimeoutError) as exc:
        return f"group {group!r} not described: {exc}"
    state = getattr(found.state, "name", found.state)  # (None when the broker gave none)
    return f"group {group!r}: {state}, members {members}, committed {committed}"


@dataclass
class Running:
    app: Application
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def stop(self, timeout: float = 30.0) -> None:
        self.app.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "application did not stop"


@pytest.fixture
def run_app() -> Iterator[Callable[[Application], Running]]:
    started: list[Running] = []

    def start(app: Application) -> Running:
        running = Running(app, threading.Thread(target=lambda: None))

        def target() -> None:
            try:
                app.run()
            except BaseException as exc:
                running.errors.append(exc)

        running.thread = threading.Thread(target=target, daemon=True)
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def names() -> Callable[[str], str]:
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"test.stream.{base}.{suffix}"


def for_protocol(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """A test's consumer ``overrides`` for the group protocol ``settings`` use: under the consumer
    protocol (``VIGIL_KAFKA_GROUP_PROTOCOL=consumer``) its classic session and heartbeat go, as the
    runtime refuses them there; the broker's (10 s and 1 s on the test broker) apply instead."""
    if settings.kafka_group_protocol == "classic":
        return overrides
    return {key: value for key, value in overrides.items() if key not in CLASSIC_GROUP_OPTIONS}
