"""Syslog over real UDP and TCP sockets into real Kafka, read back and normalised."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from vigil.config import Settings
from vigil.errors import ContractError
from vigil.events.types import SecurityEvent
from vigil.hub.admin import ensure_topics
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.sink import KafkaRawSink
from vigil.sources.syslog import SyslogNormalizer, SyslogSource

LINES = [
    b'<38>1 2026-11-29T09:00:01.000001Z bastion-1 sshd 4242 AUTH_FAIL [auth@32473 user="alice" '
    b'src="203.0.113.7" outcome="failure"] Failed password for alice',
    b'<38>1 2026-11-29T09:00:02.000002Z bastion-1 sshd 4242 AUTH_OK [auth@32473 user="alice" '
    b'src="203.0.113.7" outcome="success"] Accepted publickey for alice',
    b"<13>1 2026-11-29T09:00:03Z vault-2 vault - POLICY_CHANGE - policy 'withdrawals' updated",
    b"this is not syslog at all",
]


def read_until(settings: Settings, topic: str, count: int, timeout: float = 30.0) -> list[RawRecord]:
    consumer = Consumer(
        settings.kafka_client_config()
        | {
            "group.id": f"g-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} records arrived in {topic}"
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(RawRecord.from_headers("syslog", msg.value(), msg.key(), msg.headers()))
    consumer.close()
    return out


def test_udp_and_tcp_messages_land_unchanged_and_normalise(settings: Settings, unique_topic: str) -> None:
    ensure_topics(
        settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1)]
    )
    sink = KafkaRawSink(
        settings, source_id=f"syslog-{uuid.uuid4().hex[:8]}", topic_for=lambda _r: unique_topic
    )
    source = SyslogSource(udp_port=0, tcp_port=0, flush_interval=0.05)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(15)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(LINES[0], ("127.0.0.1", source.bound["udp"]))
        with socket.create_connection(("127.0.0.1", source.bound["tcp"])) as tcp:
            # octet-counting, then LF framing, on one connection
            tcp.sendall(b"%d %s" % (len(LINES[1]), LINES[1]) + LINES[2] + b"\n")
            tcp.sendall(b"%d %s" % (len(LINES[3]), LINES[3]))
        records = read_until(settings, unique_topic, 4)
    finally:
        source.stop()
        thread.join(15)
        sink.close()
    assert sorted(r.value for r in records) == sorted(LINES)
    assert {r.kind for r in records} == {"syslog"}
    events: list[SecurityEvent] = []
    rejected = []
    for rec in records:
        try:
            events += SyslogNormalizer().normalize(rec)  # type: ignore[arg-type]
        except ContractError as exc:
            rejected.append((rec.value, str(exc)))
    assert [v for v, _ in rejected] == [LINES[3]]
    assert "not RFC 5424 syslog" in rejected[0][1]
    outcomes = sorted((e.payload.action, e.payload.outcome) for e in events)
    assert outcomes == [("AUTH_FAIL", "failure"), ("AUTH_OK", "success"), ("POLICY_CHANGE", "unknown")]


def test_vigil_source_says_where_a_receiver_listens(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Ports of 0 (any free ones) were known to no one: the banner named only the topic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path), "COLUMNS": "200"}
    command = [sys.executable, "-m", "vigil.cli", "source", "syslog", "-o", "udp_port=0", "-o", "tcp_port=0"]
    command += ["-o", f"source_id=listening-{uuid.uuid4().hex[:8]}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda out=proc.stdout: [lines.put(line) for line in out], daemon=True).start()
    try:
        said = ""
        while "listening on" not in said:
            said = lines.get(timeout=60)
        found = re.search(r"syslog listening on udp 127\.0\.0\.1:(\d+), tcp 127\.0\.0\.1:(\d+)", said)
        assert found, said
        udp, tcp = int(found[1]), int(found[2])
        assert 0 not in (udp, tcp)
        with socket.create_connection(("127.0.0.1", tcp), timeout=10):
            pass  # (it listens where it said)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
