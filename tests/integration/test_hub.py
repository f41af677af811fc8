"""The hub against a real broker: declared topics apply idempotently and carry their contracts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    ResourceType,
)
from tests.integration.kafka_read import wait_for

from vigil.config import Settings
from vigil.errors import BrokerError
from vigil.events import encode
from vigil.events.codec import EventCodec
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter, EpisodeLabel
from vigil.events.types import EntityRef
from vigil.hub import admin as topic_admin
from vigil.hub.client import EventProducer, consumer_config, make_admin, make_producer, watermarks
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TOPICS, TopicSpec


@pytest.fixture(scope="module")
def applied(settings: Settings) -> Settings:
    topic_admin.apply(make_admin(settings), TOPICS, settings)
    return settings


def test_apply_is_idempotent(applied: Settings) -> None:
    assert topic_admin.apply(make_admin(applied), TOPICS, applied) == []
    live = topic_admin.describe_live(make_admin(applied), TOPICS.names())
    assert set(live) == set(TOPICS.names())
    assert live["intel.indicators"].config["cleanup.policy"] == "compact"


def test_live_topics_say_which_settings_were_made_on_the_topic(settings: Settings) -> None:
    # An application keeps a min.insync.replicas lowered on its own topic, but raises one that
    # comes from the broker's defaults: which is which is read from the cluster.
    name = f"test.own.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, key="k", value="raw", description="d", partitions=1, cleanup="compact")
    admin = make_admin(settings)
    try:
        topic_admin.apply(admin, [spec], settings)
        live = topic_admin.describe_live(admin, [name])[name]
        assert {"cleanup.policy", "min.cleanable.dirty.ratio"} <= live.set_on_topic
        assert "segment.bytes" in live.config
        assert "segment.bytes" not in live.set_on_topic
    finally:
        admin.delete_topics([name])


def test_apply_adds_partitions_only_when_asked_and_fixes_config(settings: Settings) -> None:
    name = f"test.apply.{uuid.uuid4().hex[:8]}"
    small = TopicSpec(name=name, key="k", value="raw", description="d", partitions=1)
    admin = make_admin(settings)
    try:
        topic_admin.apply(admin, [small], settings)
        grown = TopicSpec(name=name, key="k", value="raw", description="d", partitions=3)
        # Keys would move away from the state kept for them: said, and left as it is.
        (left,) = topic_admin.apply(admin, [grown], settings)
        assert left.in_sync
        assert "has 1 partitions, declared 3 (not grown" in left.describe()
        assert "--add-partitions" in left.describe()
        assert topic_admin.describe_live(admin, [name])[name].partitions == 1
        (changed,) = topic_admin.apply(admin, [grown], settings, add_partitions=True)
        assert changed.describe() == "partitions 1 -> 3"
        compacted = TopicSpec(
            name=name, key="k", value="raw", description="d", partitions=3, cleanup="compact"
        )
        changed = topic_admin.apply(admin, [compacted], settings)
        assert [d.describe() for d in changed] == [
            "cleanup.policy: delete -> compact; min.cleanable.dirty.ratio: 0.5 -> 0.1; "
            "segment.ms: 604800000 -> 86400000"
        ]
        live = topic_admin.describe_live(admin, [name])[name]
        assert live.partitions == 3
        assert live.config["cleanup.policy"] == "compact"
        assert topic_admin.apply(admin, [compacted], settings) == []
    finally:
        admin.delete_topics([name])


def test_applications_create_missing_topics_and_leave_live_settings_alone(settings: Settings) -> None:
    # ensure_topics runs at every connector and application start: an operator's retention on
    # a production topic was set back to the declaration, and Kafka deleted the older data.
    name = f"test.ensure.{uuid.uuid4().hex[:8]}"
    three_days = str(3 * 86_400_000)
    declared = TopicSpec(
        name=name, key="k", value="raw", description="d", partitions=1, retention=timedelta(days=3)
    )
    admin = make_admin(settings)
    try:
        topic_admin.ensure_topics(settings, [declared])
        assert topic_admin.describe_live(admin, [name])[name].config["retention.ms"] == three_days
        topic_admin.apply(admin, [replace(declared, retention=None)], settings)  # what an operator set
        topic_admin.ensure_topics(settings, [declared])
        assert topic_admin.describe_live(admin, [name])[name].config["retention.ms"] == "-1"
        (left,) = topic_admin.apply(admin, [declared], settings, alter_configs=False)
        assert f"settings left as they are: retention.ms -1 (declared {three_days})" in left.describe()
        # A larger record limit deletes nothing: set even so (a topic made before a block or a
        # changelog value needed more kept the 1 MB default, and its writer failed).
        larger = replace(declared, max_message_bytes=8 << 20)
        topic_admin.ensure_topics(settings, [larger])
        live = topic_admin.describe_live(admin, [name])[name].config
        assert (live["retention.ms"], live["max.message.bytes"]) == ("-1", str(8 << 20))
        # An application's own topics (changelogs) keep their declared settings; asked (vigil topics
        # apply), any topic's are set.
        topic_admin.ensure_topics(settings, [larger], owned=True)
        assert topic_admin.describe_live(admin, [name])[name].config["retention.ms"] == three_days
        topic_admin.apply(admin, [replace(larger, retention=None)], settings)
        topic_admin.apply(admin, [larger], settings)
        assert topic_admin.describe_live(admin, [name])[name].config["retention.ms"] == three_days
    finally:
        admin.delete_topics([name])


def test_settings_that_lose_data_are_compared_and_warned_of_at_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Retention was declared by time only: retention.bytes set on `alerts` (or the cluster's
    # log.retention.bytes) deleted a year's alerts while `topics list` said ok; a stage starting
    # on a topic set to lose data said so at INFO, which the command line does not show.
    name = f"test.lose.{uuid.uuid4().hex[:8]}"
    declared = TopicSpec(name=name, key="k", value="raw", description="d", partitions=1, retention=None)
    admin = make_admin(settings)
    try:
        topic_admin.ensure_topics(settings, [declared])
        assert topic_admin.describe_live(admin, [name])[name].config["retention.bytes"] == "-1"
        assert topic_admin.plan([declared], topic_admin.describe_live(admin, [name]), settings)[0].in_sync
        op = AlterConfigOpType.SET
        resource = ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[ConfigEntry("retention.bytes", "1024", incremental_operation=op)],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)
        # (The broker applies a change once its metadata record reaches it: described at once,
        # the topic still said -1 once in CI.)
        wait_for(
            lambda: topic_admin.describe_live(admin, [name])[name].config["retention.bytes"] == "1024",
            30,
            "the broker to apply retention.bytes 1024",
        )
        (diff,) = topic_admin.plan([declared], topic_admin.describe_live(admin, [name]), settings)
        assert diff.config_changes == {"retention.bytes": ("1024", "-1")}
        with caplog.at_level(logging.INFO, logger="vigil.hub.admin"):
            topic_admin.ensure_topics(settings, [declared])
        (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert (
            f"topic {name}: settings left as they are: retention.bytes 1024 (declared -1)"
            in warned.getMessage()
        )
        # A longer retention than declared is an operator's choice: said, not warned of.
        caplog.clear()
        topic_admin.apply(admin, [declared], settings)  # `vigil topics apply` sets it back
        shorter = replace(declared, retention=timedelta(days=3))
        with caplog.at_level(logging.INFO, logger="vigil.hub.admin"):
            topic_admin.ensure_topics(settings, [shorter])
        assert "settings left as they are: retention.ms -1" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        admin.delete_topics([name])


def test_created_and_grown_partitions_are_served_by_their_leaders_when_apply_returns(
    settings: Settings,
) -> None:
    # Metadata names a new partition's leader a moment before that broker serves it; writes in
    # that window were refused and retried, and in 6 of 93 runs of the simulator's tests an
    # acknowledged record never reached the log.  Once apply returns, every leader answers at
    # once: one offsets request per partition, not retried (without the wait, 6 of 6 runs of
    # this test were refused).
    # (As many partitions as the simulator's raw topics: the more, the longer leaders take.)
    names = [f"test.led.{uuid.uuid4().hex[:8]}.{i}" for i in range(8)]
    specs = [TopicSpec(name=n, key="k", value="raw", description="d", partitions=6) for n in names]
    admin = make_admin(settings)
    consumer = Consumer(consumer_config(settings, f"test.{names[0]}"))
    try:
        topic_admin.apply(admin, specs, settings)
        for name in names:
            # (This client's own metadata first: not knowing a topic, it answers "unknown partition".)
            assert len(consumer.list_topics(name, timeout=10).topics[name].partitions) == 6
            for p in range(6):
                assert consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10) == (0, 0)
        grown = [replace(specs[0], partitions=9)]
        topic_admin.apply(admin, grown, settings, add_partitions=True)
        assert len(consumer.list_topics(names[0], timeout=10).topics[names[0]].partitions) == 9
        for p in range(9):
            assert consumer.get_watermark_offsets(TopicPartition(names[0], p), timeout=10) == (0, 0)
    finally:
        consumer.close()
        admin.delete_topics(names)


def test_a_new_partition_the_clients_metadata_does_not_list_yet_is_asked_again(settings: Settings) -> None:
    # On a 3-node cluster, the broker a fresh client asked about a just-created topic did not
    # list its partition yet, and the wait for leaders failed at once with "Unknown partition".
    # Here the client's metadata is stale the same way: it learnt the topic with one partition,
    # then the topic grew behind its back.
    name = f"test.unlisted.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, key="k", value="raw", description="d", partitions=1)
    admin = make_admin(settings)
    topic_admin.apply(admin, [spec], settings)
    stale = [Consumer(consumer_config(settings, f"test.{name}.{i}")) for i in range(2)]
    try:
        for consumer in stale:
            assert len(consumer.list_topics(name, timeout=10).topics[name].partitions) == 1
        (grown,) = admin.create_partitions([NewPartitions(name, 2)]).values()
        grown.result(timeout=30)
        # Not known to be new: a partition the client does not list does not exist, said at once.
        with pytest.raises(BrokerError, match=r"test\.unlisted\..*\[1\]: .*[Uu]nknown partition"):
            watermarks(stale[0], TopicPartition(name, 1), 0.0)
        # Known to be new: the client asks the cluster for the topic again, and gets its answer.
        # (Asking the partition again alone was answered "unknown partition" for as long as it
        # was asked, 5 s: the client does not refresh its metadata for it on its own.)
        assert watermarks(stale[1], TopicPartition(name, 1), 30.0, new=True) == (0, 0)
    finally:
        for consumer in stale:
            consumer.close()
        admin.delete_topics([name])


@pytest.mark.parametrize("replication", [None, 1], ids=["clusters-default", "declared"])
def test_a_created_topic_carries_its_own_min_insync_replicas(
    settings: Settings, replication: int | None
) -> None:
    # The broker's default applied (Kafka's is 1, whatever the replicas): a record held
    # by the leader alone was acknowledged.  The topic carries its own, for the replicas it got
    # (the cluster's default replication factor is known only once the topic exists).
    name = f"test.insync.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=name, key="k", value="raw", description="d", partitions=1, replication=replication)
    admin = make_admin(settings)
    topic_admin.ensure_topics(settings, [spec])
    try:
        entries = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
        (entry,) = [f.result(timeout=30)["min.insync.replicas"] for f in entries.values()]
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        live = topic_admin.describe_live(admin, [name])[name]
        assert entry.value == spec.config(live.replication)["min.insync.replicas"]
        assert topic_admin.apply(admin, [spec], settings) == []
    finally:
        admin.delete_topics([name])


def _read_from(
    settings: Settings, topic: str, start: dict[int, int], expected: int
) -> list[tuple[bytes | None, bytes, list]]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, off) for p, off in start.items()])
    out: list[tuple[bytes | None, bytes, list]] = []
    try:
        idle = 0
        while len(out) < expected and idle < 40:
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            idle = 0 if batch else idle + 1
            for msg in batch:
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value(), msg.headers() or []))
    finally:
        consumer.close()
    return out


def _high_watermarks(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        return {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in meta.topics[topic].partitions}
    finally:
        consumer.close()


def _examples_for(spec: TopicSpec, run: str) -> list[bytes]:
    at = datetime.now(UTC)
    if spec.event_types:
        events = [e for e in example_events(at) if type(e) in spec.event_types]
        return [encode(msgspec.structs.replace(e, event_id=f"{run}-{e.event_id}")) for e in events]
    if spec.value == "label":
        label = EpisodeLabel(
            episode_id=run,
            scenario="ato",
            entity=EntityRef(kind="customer", id="c1"),
            event_ids=["e1", "e2"],
            start=at,
            end=at,
        )
        return [encode(label)]
    if spec.value == "dead_letter":
        dead = DeadLetter(
            stage="normalize",
            reason=f"{run}: not JSON",
            topic="raw.coinbase",
            partition=0,
            offset=7,
            raw=b"\x00\xffnot json",
            failed_at=at,
        )
        return [encode(dead)]
    return [f'{{"run": "{run}", "bytes": "as received"}}'.encode()]


@pytest.mark.parametrize("spec", list(TOPICS), ids=lambda s: s.name)
def test_every_declared_topic_round_trips_its_contract(applied: Settings, spec: TopicSpec) -> None:
    run = uuid.uuid4().hex
    values = _examples_for(spec, run)
    assert values
    start = _high_watermarks(applied, spec.name)
    producer = EventProducer(applied)
    raw_headers = RawRecord(
        source="test", kind="ws_message", value=b"", received_at=datetime.now(UTC)
    ).headers()
    for value in values:
        producer._producer.produce(
            spec.name, value=value, key=run.encode(), headers=raw_headers if spec.value == "raw" else None
        )
    producer.flush()
    got = _read_from(applied, spec.name, start, len(values))
    mine = [(k, v, h) for k, v, h in got if k == run.encode()]
    assert sorted(v for _, v, _ in mine) == sorted(values)
    if spec.event_types:
        codec = EventCodec(spec.event_types)
        decoded = [codec.decode(v) for _, v, _ in mine]
        assert {type(e) for e in decoded} <= set(spec.event_types)
        assert all(e.event_id.startswith(run) for e in decoded)
    elif spec.value == "raw":
        record = RawRecord.from_headers("test", mine[0][1], mine[0][0], mine[0][2])
        assert record.kind == "ws_message"
        assert record.value == values[0]


def test_a_partition_unlisted_while_the_cluster_is_out_of_reach_is_asked_again(applied: Settings) -> None:
    # A broker restarting as a stage started: the restore's offsets failed at once ("Unknown
    # partition" from a client that had reached nothing, or "All broker connections are down"),
    # and the stage stopped, where the README promises two minutes.
    from confluent_kafka import KafkaError, KafkaException

    from vigil.hub.broker import free_port_block
    from vigil.hub.client import _may_be_listed, is_transient

    assert is_transient(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)))
    nowhere = Consumer({"bootstrap.servers": f"127.0.0.1:{free_port_block(1)}", "group.id": "t"})
    try:
        assert _may_be_listed(nowhere, TopicPartition("alerts", 0), time.monotonic() + 1)
    finally:
        nowhere.close()
    here = Consumer({**applied.kafka_client_config(), "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        deadline = time.monotonic() + 10
        assert _may_be_listed(here, TopicPartition("alerts", 0), deadline)
        # The cluster answers without it: it does not exist, said at once.
        assert not _may_be_listed(here, TopicPartition("alerts", 999), deadline)
        assert not _may_be_listed(here, TopicPartition(f"test.none.{uuid.uuid4().hex[:8]}", 0), deadline)
    finally:
        here.close()


def test_event_producer_routes_by_type_and_keys_by_entity(applied: Settings) -> None:
    run = uuid.uuid4().hex
    at = datetime.now(UTC)
    events = [msgspec.structs.replace(e, event_id=f"{run}-{e.event_id}") for e in example_events(at)]
    deposit = next(e for e in events if e.type == "deposit")
    start = _high_watermarks(applied, "events.payments")
    producer = EventProducer(applied)
    producer.produce(deposit)
    producer.flush()
    got = _read_from(applied, "events.payments", start, 1)
    assert [(k, v) for k, v, _ in got if v == encode(deposit)] == [(b"cust-000042", encode(deposit))]


def test_the_in_memory_harness_partitions_keys_as_the_broker_does(settings: Settings) -> None:
    # vigil.testing.run_operators promises the broker's split of events over partitions; a test
    # comparing a Kafka run with an in-memory one relies on it.
    from vigil.testing import partition_for

    name = f"test.partitions.{uuid.uuid4().hex[:8]}"
    topic_admin.apply(
        make_admin(settings),
        [TopicSpec(name=name, key="k", value="raw", description="d", partitions=7)],
        settings,
    )
    producer = make_producer(settings)  # configured as every Vigil producer is
    landed: dict[bytes, int] = {}
    keys = [f"acct-{i}".encode() for i in range(200)] + ["ключ-é".encode(), b"0x" + b"ab" * 20]
    for key in keys:
        producer.produce(
            name, b"x", key, on_delivery=lambda err, msg: landed.__setitem__(msg.key(), msg.partition())
        )
    producer.flush()
    assert len(landed) == len(keys)
    assert {k: partition_for(k, 7) for k in keys} == landed
    assert len(set(landed.values())) == 7


def test_tail_prints_every_partitions_records_and_two_tails_see_all_of_them(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # It subscribed under one group per topic with an eager assign() in a cooperative group:
    # the first assignment failed, and two tails would have split the partitions between them.
    name = f"test.tail.{uuid.uuid4().hex[:8]}"
    topic_admin.ensure_topics(
        settings, [TopicSpec(name=name, key="k", value="raw", description="d", partitions=3)]
    )
    producer = make_producer(settings)
    for p in range(3):
        producer.produce(name, key=f"key-{p}".encode(), value=b"{}", partition=p)
    assert producer.flush(30) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "vigil.cli",
        "tail",
        name,
        "--from-beginning",
        "-n",
        "3",
        "--timeout",
        "30",
    ]
    tails = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in tails:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert all(f"key=key-{p}" in out for p in range(3)), out
    make_admin(settings).delete_topics([name])


def test_topics_list_prints_every_declared_key_as_written(
    applied: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The indicator topic's key "<indicator_type>:<value>@<feed>[#<STIX id>]" lost its
    # "[#<STIX id>]" (Rich read it as a style).
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path), "COLUMNS": "400"}
    out = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "topics", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if "intel.indicators" in line]
    assert TOPICS.get("intel.indicators").key == "<indicator_type>:<value>@<feed>[#<STIX id>]"
    assert "<indicator_type>:<value>@<feed>[#<STIX id>]" in row
