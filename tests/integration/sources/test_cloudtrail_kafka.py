"""CloudTrail files -> real Kafka; the connector killed with SIGKILL mid-way and restarted
publishes every record exactly once (no gap, no duplicate), thanks to the transactional cursor."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from tests.integration.kafka_read import START_S, watermarks

from vigil.config import Settings
from vigil.events.types import SecurityEvent
from vigil.hub.admin import ensure_topics
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.cloudtrail import CloudTrailNormalizer

# The connector as its own process, so it can be killed for real.
RUNNER = """
import sys
from pathlib import Path
from vigil.config import load_settings
from vigil.sources.cloudtrail import CloudTrailSource
from vigil.sources.sink import KafkaRawSink
directory, topic, source_id = sys.argv[1:4]
sink = KafkaRawSink(load_settings(), source_id=source_id, topic_for=lambda _r: topic)
CloudTrailSource(Path(directory), poll_interval=0.05, source_id=source_id).run(sink)
"""

#: Enough files that the connector cannot finish the last three quarters between the test seeing
#: a quarter published and its SIGKILL landing, even when the test process is descheduled.
FILES, PER_FILE = 240, 3


def record(i: int) -> dict[str, object]:
    return {
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser",
            "userName": f"user{i % 7}",
            "arn": f"arn:aws:iam::111122223333:user/u{i}",
        },
        "eventTime": f"2026-11-28T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z",
        "eventSource": "signin.amazonaws.com",
        "eventName": "ConsoleLogin",
        "awsRegion": "us-east-1",
        "sourceIPAddress": f"198.51.100.{i % 250}",
        "responseElements": {"ConsoleLogin": "Success" if i % 5 else "Failure"},
        "additionalEventData": {"MFAUsed": "Yes" if i % 2 else "No"},
        "eventID": f"00000000-0000-4000-8000-{i:012d}",
        "eventType": "AwsConsoleSignIn",
        "recipientAccountId": "111122223333",
    }


def deliver(root: Path) -> list[str]:
    """Log files as CloudTrail delivers them, with log file validation on: an hourly digest file
    under ``CloudTrail-Digest/`` (which sorts first), no log file, never published."""
    ids = []
    day = root / "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/28"
    day.mkdir(parents=True)
    digests = root / "AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/11/28"
    digests.mkdir(parents=True)
    for hour in range(FILES // 60 + 1):
        name = f"111122223333_CloudTrail-Digest_us-east-1_trail_us-east-1_20261128T{hour:02d}1531Z.json.gz"
        digest = {"awsAccountId": "111122223333", "digestSignatureAlgorithm": "SHA256withRSA", "logFiles": []}
        (digests / name).write_bytes(gzip.compress(json.dumps(digest).encode()))
    for f in range(FILES):
        records = [record(f * PER_FILE + j) for j in range(PER_FILE)]
        ids += [str(r["eventID"]) for r in records]
        name = f"111122223333_CloudTrail_us-east-1_20261128T{f:04d}Z_{uuid.uuid4().hex[:16]}.json.gz"
        (day / name).write_bytes(gzip.compress(json.dumps({"Records": records}).encode()))
    return ids


def high_watermark(consumer: Consumer, topic: str) -> int:
    return watermarks(consumer, TopicPartition(topic, 0))[1]


def read_committed(settings: Settings, topic: str, count: int, timeout: float = START_S) -> list[RawRecord]:
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
    idle_until = None
    while True:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} records in {topic}"
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append(RawRecord.from_headers("cloudtrail", msg.value(), msg.key(), msg.headers()))
            idle_until = None
        elif len(out) >= count:
            # Everything expected is here; keep reading briefly to catch any duplicate.
            idle_until = idle_until or time.monotonic() + 1.0
            if time.monotonic() > idle_until:
                break
    consumer.close()
    return out


def start(directory: Path, topic: str, source_id: str, settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_client_config()["bootstrap.servers"]}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(directory), topic, source_id], env=env)


def test_kill_and_restart_neither_skips_nor_duplicates(
    settings: Settings, unique_topic: str, tmp_path: Path
) -> None:
    ensure_topics(
        settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1)]
    )
    ids = deliver(tmp_path)
    total = len(ids)
    source_id = f"cloudtrail-{uuid.uuid4().hex[:8]}"
    watcher = Consumer(settings.kafka_client_config() | {"group.id": f"w-{uuid.uuid4().hex}"})
    proc = start(tmp_path, unique_topic, source_id, settings)
    try:
        deadline = time.monotonic() + START_S
        while high_watermark(watcher, unique_topic) < total // 4:
            assert proc.poll() is None, "connector exited early"
            assert time.monotonic() < deadline, "connector published nothing"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = high_watermark(watcher, unique_topic)
        assert at_kill < total, "the connector finished before it could be killed mid-way"

        proc = start(tmp_path, unique_topic, source_id, settings)
        records = read_committed(settings, unique_topic, total)
    finally:
        proc.kill()
        proc.wait(10)
        watcher.close()
    keys = [r.key.decode() for r in records if r.key]
    assert len(keys) == len(records)
    assert sorted(keys) == sorted(ids)  # no gap
    assert len(set(keys)) == len(keys)  # no duplicate
    assert keys == ids  # and in delivery order
    events = [e for r in records for e in CloudTrailNormalizer().normalize(r) if isinstance(e, SecurityEvent)]
    assert len(events) == total
    assert {e.payload.action for e in events} == {"console_login"}
    assert sum(e.payload.outcome == "failure" for e in events) == sum(1 for i in range(total) if i % 5 == 0)
