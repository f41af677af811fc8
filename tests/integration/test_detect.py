"""Detection on the real broker: route and detect applications over a small simulated stream.

The stream, the intel list and every topic and consumer group are unique to this test (a
uuid prefix), so other users of a shared broker neither see nor disturb it.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from tests.integration.kafka_read import read_raw
from tests.integration.stream.conftest import wait_for

from vigil.config import Settings
from vigil.detect.app import DetectionService, DetectTopology, IntelFeed, delete_scoped_topics
from vigil.detect.engine import ALERTS_TOPIC, DetectOperator, RuleSet
from vigil.detect.eval import intel_for
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.validate import load_rules
from vigil.events.codec import EventCodec
from vigil.events.records import DeadLetter
from vigil.events.types import Alert, Decision, IntelIndicator, IntelIndicatorPayload
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer, make_consumer
from vigil.sim import SimConfig, Simulation
from vigil.testing import run_operators

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
CHUNK = 200
BAD = b'{"type": "login", "event_id": 7}'


def what(alert: Alert) -> tuple[str, str]:
    return alert.payload.rule_id, f"{alert.payload.entity.kind}:{alert.payload.entity.id}"


def decided(decision: Decision) -> tuple[str, str, str]:
    p = decision.payload
    return p.rule_id, p.action, f"{p.entity.kind}:{p.entity.id}"


def read_all(settings: Settings, topic: str, until: Any, timeout_s: float) -> list[Any]:
    """Read ``topic`` from the start until ``until(records)`` holds or the deadline passes."""
    decode = EventCodec().decode
    consumer = make_consumer(settings, f"test-read-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(out):
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None and msg.value() is not None:
                    out.append(decode(msg.value()))
    finally:
        consumer.close()
    return out


def test_detection_application_on_the_broker_matches_in_memory_detection(settings: Settings) -> None:
    prefix = f"t-detect-{uuid.uuid4().hex[:8]}."
    topo = DetectTopology.scoped(prefix, PARTITIONS)
    ensure_topics(settings, topo.topic_specs(PARTITIONS))

    rules = load_rules([ROOT / "rules"])
    config = SimConfig(seed=3, customers=300, events=12_000, attack_rate=2.0)
    sim = Simulation(config)
    events = list(sim.canonical())
    intel = intel_for(config.intel_dir, config.start)

    # What detection must find: the same operator in memory, one partition.
    expected_result = run_operators([DetectOperator(RuleSet(rules, IntelIndex()))], [*intel, *events])
    expected = {a.event_id: a for a in expected_result.emitted(ALERTS_TOPIC)}
    assert len(expected) >= 10

    producer = EventProducer(settings)
    for ind in intel:
        assert isinstance(ind, IntelIndicator)
        producer.produce(ind, topic=topo.intel)
    # One indicator listed, then withdrawn by a tombstone: the feed must drop it.
    withdrawn = IntelIndicator(
        event_id="withdrawn",
        source="test",
        occurred_at=config.start,
        payload=IntelIndicatorPayload(
            indicator_type="eth_address",
            value="0x" + "e" * 40,
            category="sanctioned",
            feed="test",
            list_version="1",
        ),
    )
    producer.produce(withdrawn, topic=topo.intel)
    producer.produce_raw(topo.intel, withdrawn.key(), None)  # type: ignore[arg-type]
    # Two STIX indicators of one feed list one IP; a tombstone withdraws the first only.
    campaigns = [
        IntelIndicator(
            event_id=f"campaign-{n}",
            source="test",
            occurred_at=config.start,
            payload=IntelIndicatorPayload(
                indicator_type="ipv4",
                value="203.0.113.9",
                category="c2",
                feed="taxii-test",
                list_version="2026-01-01T00:00:00+00:00",
                stix_id=f"indicator--{n}a8c6b2e-1f4d-4a57-9d8e-6a1f2b3c4d5e",
            ),
        )
        for n in (1, 2)
    ]
    for campaign in campaigns:
        producer.produce(campaign, topic=topo.intel)
    producer.produce_raw(topo.intel, campaigns[0].key(), None)  # type: ignore[arg-type]
    # Not an indicator: skipped and counted; the list loads and detection runs regardless.
    producer.produce_raw(topo.intel, "eth_address:0xbad@test", b"{not an indicator")
    producer.flush()

    service = DetectionService(
        settings, rules, topology=topo, guarantee="exactly_once", checkpoint_interval_s=0.3
    )
    service.start(intel_timeout_s=60)
    try:
        assert len(service.index) == len(IntelIndex.from_events(intel)) + 1  # + the STIX IP
        assert withdrawn.payload.value not in service.index
        listing = service.index.lookup("203.0.113.9")
        assert listing is not None
        assert listing.stix_id == campaigns[1].payload.stix_id
        assert service.feed.errors == 1
        # Events arrive as they happen, a chunk (some 25 minutes of event time) at a time, each
        # chunk through both stages before the next, as a live exchange produces them.  In each
        # chunk one source lags (each in turn): its events go out only once the others' have
        # been through both stages.  Live, any source can lag, and detection must judge in event
        # time whatever arrives first.
        sources = sorted({type(e).domain for e in events})
        sent = 0
        for n, start in enumerate(range(0, len(events), CHUNK)):
            chunk = events[start : start + CHUNK]
            lagging = sources[n % len(sources)]
            for lags in (False, True):
                part = [e for e in chunk if (type(e).domain == lagging) is lags]
                for event in part:
                    producer.produce(event, topic=f"{prefix}events.{type(event).domain}")
                producer.flush()
                sent += len(part)
                service.wait_caught_up(sent, timeout_s=30)
            if start == 0:
                # A record that is not an event goes to the dead-letter topic, with the reason.
                producer.produce_raw(f"{prefix}events.identity", b"cust-x", BAD)
                producer.flush()
                sent += 1
                service.wait_caught_up(sent, timeout_s=30)

        def done(got: list[Alert]) -> bool:
            service.check()  # a failed stage ends the wait at once, with its error
            return len({a.event_id for a in got}) >= len(expected)

        read_all(settings, topo.alerts, done, timeout_s=30)
        service.check()
    finally:
        service.stop()
    # The service has stopped (everything committed): the alerts read to the end, not just
    # until as many as expected were seen (a broker run may write a few more alert ids).
    codec = EventCodec()
    alerts: list[Alert] = [codec.decode(r.value) for r in read_raw(settings, topo.alerts, "detect")]
    got = {a.event_id: a for a in alerts}
    # Exactly once: no alert id is written twice.
    assert len(alerts) == len(got)
    # The same detections (rule, entity) as in memory.  Where a rule re-keys events from
    # several input partitions (an IP's failed logins come from many customers' partitions)
    # the order those partitions' records meet in is not fixed, so a window can open on a
    # different first event (another alert id) or close at another count: compared as sets.
    assert {what(a) for a in got.values()} == {what(a) for a in expected.values()}
    same_key = {
        "ato-sequence",
        "security-change-new-address",
        "api-key-new-ip",
        "structuring",
        "card-testing",
    }
    assert {i for i in got if got[i].payload.rule_id in same_key} == {
        i for i in expected if expected[i].payload.rule_id in same_key
    }
    # Decisions too, to the end.
    decisions: list[Decision] = [codec.decode(r.value) for r in read_raw(settings, topo.decisions, "detect")]
    expected_decisions = expected_result.emitted("decisions")
    assert len(decisions) == len({d.event_id for d in decisions})
    assert {decided(d) for d in decisions} == {decided(d) for d in expected_decisions}
    letters = [msgspec.json.decode(r.value, type=DeadLetter) for r in read_raw(settings, topo.dlq, "detect")]
    assert [(x.topic, x.raw) for x in letters] == [(f"{prefix}events.identity", BAD)]
    assert "event_id" in letters[0].reason
    by_rule: dict[str, int] = defaultdict(int)
    for a in alerts:
        by_rule[a.payload.rule_id] += 1
    assert by_rule["sanctioned-counterparty"] + by_rule["sanctioned-exposure"] >= 1


def test_replaying_a_backlog_scores_like_in_memory_detection(settings: Settings) -> None:
    """A Kappa replay: every event is in Kafka before detection starts.  Event-time alignment in
    the route stage must restore the order across topics, so the scores equal the in-memory run."""
    from vigil.detect.eval import evaluate, evaluate_kafka

    rules = load_rules([ROOT / "rules"])
    size = {"seed": 11, "events": 12_000, "customers": 300}
    in_memory = evaluate(rules, **size).as_json()  # type: ignore[arg-type]
    replayed = evaluate_kafka(settings, rules, backlog=True, **size).as_json()  # type: ignore[arg-type]
    assert replayed["scenarios"].keys() == in_memory["scenarios"].keys()
    for name, expected in in_memory["scenarios"].items():
        got = replayed["scenarios"][name]
        assert got["recall"] == expected["recall"], name
        assert got["hold_before_funds_leave"] == expected["hold_before_funds_leave"], name
    assert replayed["false_positives_per_10k"] <= in_memory["false_positives_per_10k"] + 1.0


def test_unequal_input_partitions_turn_the_local_stage_off_and_detection_still_runs(
    settings: Settings,
) -> None:
    prefix = f"t-detect-{uuid.uuid4().hex[:8]}."
    topo = DetectTopology.scoped(prefix, PARTITIONS)
    specs = topo.topic_specs(PARTITIONS)
    # One input topic with more partitions than the others: stage 1 cannot keep state.
    market = f"{prefix}events.market"
    ensure_topics(settings, [replace(s, partitions=PARTITIONS + 1) if s.name == market else s for s in specs])
    rules = load_rules([ROOT / "rules"])
    service = DetectionService(settings, rules, topology=topo, guarantee="at_least_once")
    assert service.local_stage  # as built, before start
    assert service.route_app.stores
    try:
        service.start(intel_timeout_s=60)
        assert not service.local_stage
        assert not service.route_app.stores  # the route stage holds no state now
        assert service.detector.subset == service.ruleset.detectors  # every rule in stage 2
        config = SimConfig(seed=5, customers=100, events=2_000)
        events = list(Simulation(config).canonical())
        producer = EventProducer(settings)
        for event in events:
            producer.produce(event, topic=f"{prefix}events.{type(event).domain}")
        producer.flush()
        service.wait_caught_up(len(events), timeout_s=60)
    finally:
        try:
            service.stop()
        finally:
            delete_scoped_topics(settings, prefix)


def test_intel_feed_started_again_reads_the_list_afresh(settings: Settings) -> None:
    prefix = f"t-intel-{uuid.uuid4().hex[:8]}."
    topo = DetectTopology.scoped(prefix, 1)
    ensure_topics(settings, topo.topic_specs(1))
    listed = IntelIndicator(
        event_id="listed",
        source="test",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload=IntelIndicatorPayload(
            indicator_type="eth_address",
            value="0x" + "a" * 40,
            category="sanctioned",
            feed="test",
            list_version="1",
        ),
    )
    producer = EventProducer(settings)
    producer.produce(listed, topic=topo.intel)
    producer.flush()
    index = IntelIndex()
    feed = IntelFeed(settings, topo.intel, index)
    try:
        feed.start(60)
        assert listed.payload.value in index
        # Started again while it runs (a caller retrying a start that timed out): the same reader,
        # the same index (it was cleared, and the reader never read the list again).
        feed.start(60)
        assert listed.payload.value in index
        feed.stop()
        # Withdrawn while the feed was stopped, its tombstone since compacted away: read again,
        # the list no longer has it, and neither may the index.
        gone = "0x" + "b" * 40
        index.add([gone], indicator_type="eth_address", category="sanctioned", feed="test", list_version="1")
        feed.start(60)
        assert listed.payload.value in index
        assert gone not in index
        # An update under its key that cannot be read withdraws the listing, as a process reading
        # the topic afresh (the older record compacted away) would not have it either.  (It kept
        # the listing: processes answered differently.)
        producer.produce_raw(topo.intel, listed.key(), b'{"type": "intel_indicator", "event_id": 7}')
        producer.flush()
        wait_for(lambda: feed.errors >= 1, 30, "the unreadable update read")
        assert feed.errors == 1
        assert listed.payload.value not in index
    finally:
        feed.stop()
        delete_scoped_topics(settings, prefix)
