"""Producing a simulation to Kafka: events (canonical or native), then the ground truth.

Canonical events go to their declared ``events.<domain>`` topic keyed by entity (the
same routing as :meth:`vigil.hub.client.EventProducer.topic_for`); native records go to
``raw.<source>`` with the raw-topic headers.  Labels (attacks and look-alikes, the
latter with scenario ``benign:<name>``) follow on ``labels`` keyed by episode id, and
to a JSONL file when asked.

Pacing: ``rate`` caps events per wall second; ``speed`` is simulated seconds per wall
second (86400/60 plays a day in a minute).  Both only delay producing: event times are
those of the simulation, so windows see the same stream at any pace.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Message

from vigil.config import Settings
from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.events.records import EpisodeLabel
from vigil.hub.admin import ensure_topics
from vigil.hub.client import DeliveryFailed, make_producer, producer_config
from vigil.hub.topics import TOPICS, TopicSpec
from vigil.sim.engine import Simulation

LABELS_TOPIC = "labels"
#: Delivery reports and progress are served every this many records (and while pacing waits).
_CHECK_EVERY = 512


@dataclass
class PublishStats:
    events: int = 0
    labels: int = 0
    seconds: float = 0.0
    #: The topics written to.
    topics: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def write_labels(path: Path, labels: Iterable[EpisodeLabel]) -> int:
    """Write labels as JSON lines (one episode per line); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("wb") as fh:
        for label in labels:
            fh.write(encode(label) + b"\n")
            n += 1
    return n


class _Pacer:
    """Holds each record back until it is due, so that neither the wall rate nor the simulated
    speed is exceeded: record ``n`` (from 0) is due ``n / rate`` wall seconds after the first,
    and an event ``t - t0`` simulated seconds after the first one ``(t - t0) / speed`` after it.

    Checked before every record (a record may never go out early: at ``--speed 1`` that would
    publish events from the future), yet cheap: the clock is read only when a record is due
    later than the last reading.  ``idle`` is called before each sleep (the publisher serves
    delivery reports and progress there)."""

    def __init__(
        self,
        rate: float | None,
        speed: float | None,
        idle: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.speed = speed
        self.idle = idle
        # (Given, a test checks the waits asked for instead of timing them.)
        self._clock = clock
        self._sleep = sleep
        self.wall0 = clock()
        self.sim0: float | None = None
        self._now = self.wall0

    def wait(self, sent: int, event_ts: float) -> None:
        """Returns when the record after ``sent`` others, with event time ``event_ts``, is due."""
        if self.sim0 is None:
            # The pace starts with the first record, not when the pacer was made: building the
            # first slice of the simulation takes a while, and would put the rest ahead of it.
            self.sim0 = event_ts
            self.wall0 = self._now = self._clock()
        target = 0.0
        if self.rate:
            target = sent / self.rate
        if self.speed:
            target = max(target, (event_ts - self.sim0) / self.speed)
        due = self.wall0 + target
        if due <= self._now:
            return
        now = self._clock()
        if due > now:
            if self.idle is not None:
                self.idle()
                now = self._clock()
            if due > now:
                self._sleep(due - now)
                now = self._clock()
        self._now = now


class SimPublisher:
    """Produces one simulation's stream and labels.  ``topic_prefix`` renames every topic
    (``<prefix>events.identity``), for tests and demos on a shared cluster."""

    def __init__(self, settings: Settings, *, topic_prefix: str = "", **producer_overrides: Any) -> None:
        self.settings = settings
        self.prefix = topic_prefix
        self._errors: list[str] = []
        # Throughput settings: larger, later batches (the simulator produces in bursts, and
        # per-request overhead dominates at 5 ms linger), and delivery reports only for
        # failures, so Python is not called back once per acknowledged record.  Compression
        # stays LZ4 (the producer default): "none" saves the LZ4 pass (4-5% of the process's
        # CPU in a profile, not measurable end to end on a shared host) but sends and stores
        # 3-4x the bytes, and a broker with a small heap holds the bigger requests.
        overrides = {
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1024 * 1024,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            **producer_overrides,
        }
        self._producer = make_producer(settings, **overrides)
        #: The codec on the wire (librdkafka compresses on its own threads, which share the
        #: simulator's core when it is pinned).
        self.compression = str(producer_config(settings, **overrides)["compression.type"])
        self._topic_of: dict[type[Event], str] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self._errors) < 100:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def topic_for(self, event: Event) -> str:
        cls = type(event)
        topic = self._topic_of.get(cls)
        if topic is None:
            topic = self._topic_of[cls] = self.prefix + TOPICS.for_event(cls).name
        return topic

    def ensure_topics(self, *, canonical: bool) -> list[str]:
        """Create the topics this publisher writes to (declared settings, prefixed names)."""
        specs: list[TopicSpec] = [
            s
            for s in TOPICS
            if s.name == LABELS_TOPIC
            or (canonical and s.name.startswith("events."))
            or (not canonical and s.name.startswith("raw."))
        ]
        if self.prefix:
            specs = [dataclasses.replace(s, name=self.prefix + s.name) for s in specs]
        ensure_topics(self.settings, specs)
        return [s.name for s in specs]

    def _produce(self, topic: str, key: bytes | str | None, value: bytes, headers: Any = None) -> None:
        producer = self._producer
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                producer.poll(0.05)

    def _produce_canonical(self, sim: Simulation, progress: Callable[[int], None] | None) -> int:
        """The unpaced hot loop: one ``produce`` per event, nothing else per event.

        Each event is encoded once, by a reused msgspec encoder; its topic and key entity
        come from a per-type table (``key`` is :meth:`Event.key`, inlined); delivery reports
        are served once per batch (a slice of simulated time), and only failures call back
        into Python (``delivery.report.only.error``)."""
        producer = self._producer
        produce = producer.produce
        enc = msgspec.json.Encoder().encode
        routes: dict[type[Event], tuple[str, str]] = {}
        count = 0
        # Events hold no reference cycles (gc=False structs), so the cyclic collector would
        # only keep re-walking the population while the stream is generated: 3-5% of the
        # loop.  It runs again, as it was, when the loop ends.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for batch in sim.batches():
                count += len(batch)
                # Encoded one by one: encoding a whole batch in one call (encode_lines) builds
                # megabytes that fall out of the cache before produce() copies them, and costs more.
                # Each event is taken out of the batch, so it is freed as soon as it is produced,
                # while it is still in the cache: a slice's events are a few megabytes, and freeing
                # them all at the end of the slice missed the cache on each (9% of the loop, measured
                # side by side).  The batches are the simulation's fresh lists, not shared.
                batch.reverse()
                take = batch.pop
                while batch:
                    event = take()
                    route = routes.get(type(event))
                    if route is None:
                        route = routes[type(event)] = (self.topic_for(event), event.key_entity)
                    # Encoded before the key is read: the encoder has just brought the event's
                    # entities and their strings into the cache, where reading the key first
                    # missed it (that read went from 6.8% to 2.3% of a profile of the publish;
                    # side by side, 1-4% less CPU per event, within the noise of this machine).
                    value = enc(event)
                    topic = route[0]
                    key = getattr(event.entities, route[1]) or event.event_id
                    try:
                        produce(topic, value, key)
                    except BufferError:
                        self._produce(topic, key, value)
                producer.poll(0)
                if progress:
                    progress(count)
        finally:
            if collecting:
                gc.enable()
        return count

    def _check_delivered(self, remaining: int, flush_timeout: float) -> None:
        """Raise if records are still queued after a flush, or failed delivery."""
        if remaining:
            msg = f"{remaining} simulated records not delivered within {flush_timeout:g}s"
            raise DeliveryFailed(msg)
        if self._errors:
            msg = f"{len(self._errors)}+ simulated records failed delivery; first: {self._errors[0]}"
            raise DeliveryFailed(msg)

    def publish(
        self,
        sim: Simulation,
        *,
        canonical: bool = True,
        rate: float | None = None,
        speed: float | None = None,
        labels_file: Path | None = None,
        progress: Callable[[int], None] | None = None,
        flush_timeout: float = 120.0,
    ) -> PublishStats:
        """Produce the simulation's labels, then every event; returns when all are acknowledged.

        The labels (and the labels file) go first: every episode is known once the simulation is
        built, and written after the events, a run stopped on the way (Ctrl-C in a paced run, a
        delivery failure) left its attacks in Kafka with no ground truth.  An episode of a run
        stopped early may not have been injected (its ``start`` is after the last event sent)."""
        stats = PublishStats()
        started = time.perf_counter()
        producer = self._producer
        count = 0
        labels = sim.labels + sim.lookalikes
        if labels_file is not None:
            write_labels(labels_file, labels)
        for label in labels:
            self._produce(self.prefix + LABELS_TOPIC, label.episode_id, encode(label))
        if labels:
            # Delivered before any event: what cannot take the labels will not take the events.
            self._check_delivered(producer.flush(flush_timeout), flush_timeout)

        def idle() -> None:
            # Waiting for a record's time: serve delivery reports, show how far the run is.
            producer.poll(0)
            if progress:
                progress(count)

        pacer = _Pacer(rate, speed, idle) if (rate or speed) else None
        native_topics: set[str] = set()
        if canonical and pacer is None:
            count = self._produce_canonical(sim, progress)
        elif canonical and pacer is not None:
            for event in sim.canonical():
                pacer.wait(count, event.occurred_at.timestamp())
                self._produce(self.topic_for(event), event.key(), encode(event))
                count += 1
                if count % _CHECK_EVERY == 0:
                    producer.poll(0)
                    if progress:
                        progress(count)
        else:
            for raw_topic, record in sim.native():
                if pacer is not None:
                    pacer.wait(count, record.received_at.timestamp())
                topic = self.prefix + raw_topic
                self._produce(topic, record.key, record.value, record.headers())
                count += 1
                native_topics.add(topic)
                if count % _CHECK_EVERY == 0:
                    producer.poll(0)
                    if progress:
                        progress(count)
        if progress:
            progress(count)
        self._check_delivered(producer.flush(flush_timeout), flush_timeout)
        stats.events = count
        stats.labels = len(labels)
        stats.topics = sorted(native_topics | set(self._topic_of.values()))
        stats.seconds = time.perf_counter() - started
        return stats
