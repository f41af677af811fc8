"""The project's own broker lifecycle: start, find running, status, stop, and a 3-node cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, ResourceType
from tests.integration.kafka_read import wait_for

from vigil.config import Settings, load_settings
from vigil.errors import BrokerError
from vigil.hub.admin import TopicDiff, apply, describe_live, ensure_topics
from vigil.hub.broker import _CHILDREN, LocalBroker, free_port_block
from vigil.hub.client import make_admin, make_producer
from vigil.hub.topics import TopicSpec

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / ".vigil" / "kafka-dist"


def _vigil(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_HOME": str(home), "VIGIL_BROKER_PORT": str(port)}
    # The CLI would fetch jars into <home>/kafka-dist; share the suite's cache instead.
    (home / "kafka-dist").parent.mkdir(parents=True, exist_ok=True)
    if not (home / "kafka-dist").exists():
        (home / "kafka-dist").symlink_to(DIST, target_is_directory=True)
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_cli_start_is_idempotent_and_stop_is_clean(tmp_path: Path) -> None:
    port = free_port_block(2)
    first = _vigil(tmp_path, port, "broker", "start")
    try:
        assert first.returncode == 0, first.stderr
        assert f"127.0.0.1:{port}" in first.stdout
        assert "started in" in first.stdout
        second = _vigil(tmp_path, port, "broker", "start")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        status = _vigil(tmp_path, port, "broker", "status")
        assert status.returncode == 0
        assert "up" in status.stdout
        assert "4." in status.stdout  # the Kafka 4.x version is reported
    finally:
        stopped = _vigil(tmp_path, port, "broker", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped node(s) [1]" in stopped.stdout
    down = _vigil(tmp_path, port, "broker", "status")
    assert down.returncode == 3
    assert "down" in down.stdout
    # A broker formatted by an earlier Vigil starts with this one's settings: its properties are
    # written at every start (the consumer group protocol's 10 s session was missing from them).
    props = tmp_path / "kafka" / "node-1" / "server.properties"
    stale = [line for line in props.read_text().splitlines() if not line.startswith("group.consumer.")]
    props.write_text("\n".join(stale) + "\n")
    again = _vigil(tmp_path, port, "broker", "start")
    try:
        assert again.returncode == 0, again.stderr
        assert "started in" in again.stdout
        assert "group.consumer.session.timeout.ms=10000" in props.read_text().splitlines()
    finally:
        assert _vigil(tmp_path, port, "broker", "stop").returncode == 0


def test_external_cluster_setting_starts_nothing(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_HOME": str(tmp_path), "VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap}
    out = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "broker", "start"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "does nothing" in out.stderr
    assert not (tmp_path / "kafka").exists()


def _nothing_left_to_apply(admin: AdminClient, declared: TopicSpec, settings: Settings) -> None:
    """Wait until ``apply`` finds the topic as declared: the broker answering may be another than
    the one that confirmed the change, and learn of it a moment later (a run failed so, once)."""
    found: list[list[TopicDiff]] = []

    def settled() -> bool:
        found.append(apply(admin, [declared], settings))
        return found[-1] == []

    try:
        wait_for(settled, 30, f"{declared.name} as declared")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last plan: {found[-1]}") from None


def _set_on_topic(admin: AdminClient, name: str, key: str, expected: str | None) -> str | None:
    """The value of ``key`` set on the topic itself (None: a broker's or Kafka's default applies),
    once it is ``expected`` or after 30 s: each broker learns of a change in its own time, and
    the next request may go to another than the one that confirmed it."""
    seen: list[str | None] = []

    def current() -> str | None:
        (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
        try:
            entry = future.result(timeout=30)[key]
        except KafkaException as exc:  # asked a broker that does not know the topic yet
            seen.append(f"(describe failed: {exc.args[0]})")
            return seen[-1]
        own = ConfigSource(entry.source) is ConfigSource.DYNAMIC_TOPIC_CONFIG
        seen.append(str(entry.value) if own else None)
        return seen[-1]

    deadline = time.monotonic() + 30
    while current() != expected and time.monotonic() < deadline:
        time.sleep(0.2)  # a poll of the brokers' view, bounded by the deadline
    return seen[-1]


def _described(admin: AdminClient, name: str) -> bool:
    """Whether ``name`` is described with its replicas: a broker whose metadata lags may list a
    topic just made and refuse to describe it (UNKNOWN_TOPIC_OR_PART) a moment longer."""
    try:
        return name in describe_live(admin, [name])
    except KafkaException:
        return False


def _apply_gives_topics_min_insync_for_their_replicas(settings: Settings) -> None:
    """``apply`` on three brokers: ``min.insync.replicas`` follows the replicas a topic has.  The
    brokers' own default here is already 2, so what is checked is the value set on the topic
    (Kafka's stock default, 1, is what a cluster without one gives)."""
    admin = make_admin(settings)
    tag = uuid.uuid4().hex[:8]

    def spec(name: str) -> TopicSpec:
        return TopicSpec(name=name, key="k", value="raw", description="d", partitions=2)

    # Created with the cluster's replication (3): min.insync.replicas for the replicas it got,
    # set by applications (alter_configs=False, they made the topic) and by `topics apply`.
    cluster_default = settings.model_copy(update={"default_replication": None})
    for alter_configs in (True, False):
        name = f"test.insync.default.{alter_configs}.{tag}"
        (created,) = apply(admin, [spec(name)], cluster_default, alter_configs=alter_configs)
        assert created.missing
        wait_for(lambda name=name: _described(admin, name), 30, f"{name} described")
        assert describe_live(admin, [name])[name].replication == 3
        assert _set_on_topic(admin, name, "min.insync.replicas", "2") == "2"
        _nothing_left_to_apply(admin, spec(name), cluster_default)

    # Replication declared (3): created with its min.insync.replicas.
    name = f"test.insync.declared.{tag}"
    apply(admin, [spec(name)], settings.model_copy(update={"default_replication": 3}))
    assert _set_on_topic(admin, name, "min.insync.replicas", "2") == "2"

    # Made before it was declared, with a lower min.insync.replicas: applications leave it with a
    # note, `topics apply` raises it.
    name = f"test.insync.lower.{tag}"
    (made,) = admin.create_topics([NewTopic(name, 2, 3, config={"min.insync.replicas": "1"})]).values()
    made.result(timeout=30)
    wait_for(lambda: _described(admin, name), 30, f"{name} described")
    plans: list[TopicDiff] = []

    def known() -> bool:
        # Asked of a broker that has not heard of the topic yet, apply plans to create it (and
        # Kafka says it exists): asked again until the one answering knows it.
        (diff,) = apply(admin, [spec(name)], cluster_default, alter_configs=False)
        plans.append(diff)
        return not diff.missing

    wait_for(known, 30, f"{name} known to the broker answering")
    left = plans[-1]
    assert "settings left as they are: min.insync.replicas 1 (declared 2)" in left.describe()
    assert _set_on_topic(admin, name, "min.insync.replicas", "1") == "1"
    (raised,) = apply(admin, [spec(name)], cluster_default)
    assert raised.describe() == "min.insync.replicas: 1 -> 2"
    assert _set_on_topic(admin, name, "min.insync.replicas", "2") == "2"
    _nothing_left_to_apply(admin, spec(name), cluster_default)


@pytest.mark.slow
def test_three_node_cluster_replicates(tmp_path: Path) -> None:
    # Three JVMs starting at once on two shared cores, beside the session's broker: generous.
    broker = LocalBroker(tmp_path, port=free_port_block(6), dist_root=DIST, heap_mb=384, start_timeout_s=240)
    result = broker.start(nodes=3)
    try:
        assert len(result.bootstrap.split(",")) == 3
        assert broker.running_nodes() == (1, 2, 3)
        settings = load_settings(kafka_bootstrap=result.bootstrap)
        name = f"test.rf3.{uuid.uuid4().hex[:8]}"
        ensure_topics(settings, [TopicSpec(name=name, key="k", value="raw", description="d", replication=3)])
        # Metadata reaches each broker in its own time: another client may ask one that lags.
        wait_for(lambda: name in describe_live(make_admin(settings), [name]), 30, f"{name} in the metadata")
        live = describe_live(make_admin(settings), [name])
        assert live[name].replication == 3
        # Two copies before an acks=all write is acknowledged: a lone leader's is not.
        assert live[name].config["min.insync.replicas"] == "2"
        # And the brokers' default, for topics without their own (consumer offsets).
        admin = make_admin(settings)
        described = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")])
        (broker_conf,) = [f.result(timeout=30) for f in described.values()]
        assert broker_conf["min.insync.replicas"].value == "2"
        _apply_gives_topics_min_insync_for_their_replicas(settings)

        producer = make_producer(settings)
        for i in range(20):
            producer.produce(name, key=str(i).encode(), value=f"v{i}".encode())
        assert producer.flush(30) == 0

        # Kill one node: with RF 3 the topic stays readable and writable.
        broker.kill_node(2)
        assert broker.running_nodes() == (1, 3)
        producer.produce(name, key=b"after", value=b"after-kill")
        assert producer.flush(60) == 0
        group = f"g-{uuid.uuid4().hex}"
        consumer = Consumer({"bootstrap.servers": result.bootstrap, "group.id": group})
        meta = consumer.list_topics(name, timeout=10).topics[name]
        consumer.assign([TopicPartition(name, p, 0) for p in meta.partitions])
        seen: set[bytes] = set()
        while len(seen) < 21:
            msg = consumer.poll(30)
            assert msg is not None, f"only {len(seen)} of 21 records came back after a node was killed"
            if not msg.error():
                seen.add(msg.value())
        consumer.close()
        assert b"after-kill" in seen
    finally:
        broker.stop()
    assert broker.running_nodes() == ()
    # Every node launched here (node 2 by its kill, the others by the stop) is reaped: none is
    # left for Python to warn of, as still running, when it exits.
    assert not [child.pid for child in _CHILDREN.values() if str(tmp_path) in str(child.args)]


def test_a_sigterm_while_the_broker_starts_stops_it_as_ctrl_c_does(tmp_path: Path) -> None:
    # SIGTERM's default (systemd, a CI's timeout) ended the command with the broker's JVM left
    # running; Ctrl-C stopped it (found in review).
    port = free_port_block(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_HOME": str(tmp_path), "VIGIL_BROKER_PORT": str(port)}
    (tmp_path / "kafka-dist").symlink_to(DIST, target_is_directory=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "broker", "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid_file = tmp_path / "kafka" / "node-1" / "pid"
    try:
        wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip() != "", 60, "the JVM launched")
        jvm = int(pid_file.read_text().strip())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        assert proc.returncode != 0, err[-2000:]
        wait_for(lambda: not Path(f"/proc/{jvm}").exists(), 30, "the JVM gone")
        assert _vigil(tmp_path, port, "broker", "status").returncode == 3  # (down)
    finally:
        _vigil(tmp_path, port, "broker", "stop")  # (a failing run leaves no broker behind)


def test_a_failed_start_stops_what_it_launched_and_keeps_the_clusters_shape(tmp_path: Path) -> None:
    port = free_port_block(6)
    # Too short a wait: the start fails.  Its nodes were left running on their own.
    broker = LocalBroker(tmp_path, port=port, dist_root=DIST, heap_mb=256, start_timeout_s=0.2)
    with pytest.raises(BrokerError, match="did not answer"):
        broker.start(nodes=3)
    assert broker.running_nodes() == ()
    assert not [c.pid for c in _CHILDREN.values() if str(tmp_path) in str(c.args) and c.poll() is None]
    # Started again without a node count, a stopped three-node cluster stays three nodes (it was
    # formatted afresh as one, its data deleted).
    info = broker.read_info()
    assert info is not None
    with pytest.raises(BrokerError, match="did not answer"):
        broker.start()
    again = broker.read_info()
    assert again is not None
    assert (again.nodes, again.cluster_id) == (3, info.cluster_id)
    # Its port now another program's: named before anything is launched (another broker there
    # answered in our node's place).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(
            BrokerError, match=f"port 127.0.0.1:{port} of the local cluster in .* is in use"
        ) as told:
            broker.start()
    # Freed, not moved: another VIGIL_BROKER_PORT is another shape, refused next.
    assert "free it" in str(told.value)
    assert "VIGIL_BROKER_PORT" not in str(told.value)
    assert broker.running_nodes() == ()


def _wait_started(pid: int) -> None:
    """Until the process's command line is readable (it reads empty for a moment after Popen)."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, f"process {pid} did not start"
        time.sleep(0.01)  # poll interval; the command line is what is waited for


def test_a_pid_file_naming_another_broker_is_not_ours(tmp_path: Path) -> None:
    # After a reboot the number in a stale pid file may be another checkout's broker, which
    # "broker stop" would then have killed.
    broker = LocalBroker(tmp_path, port=free_port_block(2), dist_root=DIST)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", "/elsewhere/server.properties"]
    )
    try:
        _wait_started(other.pid)
        (tmp_path / "kafka").mkdir()
        (tmp_path / "kafka" / "cluster.json").write_text(
            json.dumps(
                {"version": "4.1.1", "host": "127.0.0.1", "port": broker.port, "nodes": 1, "cluster_id": "x"}
            )
        )
        broker.node_dir(1).mkdir(parents=True)
        (broker.node_dir(1) / "pid").write_text(str(other.pid))
        assert broker.running_nodes() == ()
        assert broker.stop() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    # Our own node is ours however its home is spelt: launched with a relative path from the
    # home's parent, found through the absolute one.
    ours = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "kafka.Kafka",
            "kafka/node-1/server.properties",
        ],
        cwd=tmp_path,
    )
    try:
        _wait_started(ours.pid)
        (broker.node_dir(1) / "pid").write_text(str(ours.pid))
        assert LocalBroker(tmp_path.resolve(), port=broker.port, dist_root=DIST).running_nodes() == (1,)
    finally:
        ours.kill()
        ours.wait()
