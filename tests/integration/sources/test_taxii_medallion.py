"""The TAXII 2.1 client against a real `medallion` server (memory backend loaded with the
OASIS default data), publishing to real Kafka; resuming from the `added_after` cursor after a
SIGKILL neither skips nor repeats an object."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from taxii2client.v21 import Collection
from tests.integration.kafka_read import START_S, watermarks

from vigil.config import Settings, shared_data_dir
from vigil.events.types import STIX_WITHDRAWAL, IntelIndicator
from vigil.hub.admin import ensure_topics
from vigil.hub.broker import free_port_block
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.intel.taxii import TaxiiSource
from vigil.sources.sink import KafkaRawSink

DATA = shared_data_dir() / "intel" / "taxii" / "medallion_default_data.json"
MEDALLION = Path(sys.executable).parent / "medallion"
USER, PASSWORD = "analyst", "medallion-test-password"  # test values for a throwaway local server
HIGH_VALUE = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"  # the read/write collection with 5 objects
TAXII_ACCEPT = {"Accept": "application/taxii+json;version=2.1"}
WRONG = "guess"  # a wrong password, on purpose
WRITABLE = "365fed99-08fa-fdcd-a1b3-fb247eb41d01"  # empty, can_write

RUNNER = """
import sys
from vigil.config import load_settings
from vigil.sources.intel.taxii import TaxiiSource
from vigil.sources.sink import KafkaRawSink
url, user, topic, source_id = sys.argv[1:5]
import os
sink = KafkaRawSink(load_settings(), source_id=source_id, topic_for=lambda _r: topic)
TaxiiSource(url, user=user, password=os.environ["VIGIL_TAXII_PASSWORD"], poll_interval=0.1,
            page_size=1, source_id=source_id).run(sink)
"""


def free_port() -> int:
    # Below the kernel's range for outgoing source ports: a port from bind(0) lies inside it,
    # and any client's connection (Kafka's, during the server's start-up) could take it first.
    return free_port_block(1)


@contextlib.contextmanager
def serving_medallion(home: Path) -> Iterator[str]:
    """A medallion server (memory backend, the OASIS default data) on a free loopback port."""
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(DATA),
        },
        "users": {USER: PASSWORD},
        "taxii": {"max_page_size": 100},
    }
    (home / "config.json").write_text(json.dumps(config))
    port = free_port()
    with (home / "medallion.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(MEDALLION), "--host", "127.0.0.1", "--port", str(port), str(home / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (home / "medallion.log").read_text()
            try:
                resp = httpx.get(f"{base}/taxii2/", auth=(USER, PASSWORD), headers=TAXII_ACCEPT, timeout=2)
                if resp.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "medallion did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def medallion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_medallion(tmp_path_factory.mktemp("medallion")) as base:
        yield base


def read_committed(settings: Settings, topic: str, until: int, timeout: float = START_S) -> list[RawRecord]:
    """Records of the topic until ``until`` objects were seen, plus a short quiet period."""
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
    seen = 0
    deadline = time.monotonic() + timeout
    quiet_until = None
    while True:
        assert time.monotonic() < deadline, f"only {seen} of {until} objects in {topic}"
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            rec = RawRecord.from_headers("intel", msg.value(), msg.key(), msg.headers())
            out.append(rec)
            seen += len(json.loads(rec.value)["objects"])
            quiet_until = None
        elif seen >= until:
            quiet_until = quiet_until or time.monotonic() + 1.0
            if time.monotonic() > quiet_until:
                break
    consumer.close()
    return out


def make_topic(settings: Settings) -> str:
    topic = f"test.taxii.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(name=topic, key="k", value="raw", description="t", partitions=1)])
    return topic


def test_poll_publishes_pages_and_resumes_from_cursor(medallion: str, settings: Settings) -> None:
    topic = make_topic(settings)
    source_id = f"taxii-{uuid.uuid4().hex[:8]}"
    url = f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/"
    sink = KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: topic)
    source = TaxiiSource(url, user=USER, password=PASSWORD, page_size=2, source_id=source_id)
    assert source.poll_once(sink, {}) == 5
    sink.close()

    records = read_committed(settings, topic, 5)
    assert [r.kind for r in records] == ["taxii_objects"] * 3  # pages of 2, 2, 1
    assert PASSWORD.encode() not in b"".join(r.value + json.dumps(r.meta).encode() for r in records)
    events = [e for r in records for e in IntelNormalizer().normalize(r) if isinstance(e, IntelIndicator)]
    assert len(events) == sum(len(IntelNormalizer().normalize(r)) for r in records)
    # The collection's only IP/domain/URL indicator, at its latest version; the file-hash one is
    # skipped, and as a first version (created == modified) has no older one to withdraw: no
    # withdrawal marker either.
    assert [(e.key().rpartition("@")[0], e.payload.list_version) for e in events] == [
        ("url:http://x4z9arb.cn/4712", "2017-01-27T13:49:53.935000+00:00")
    ]
    assert not [e for e in events if e.payload.indicator_type == STIX_WITHDRAWAL]

    # A restarted connector (new sink, new source) resumes after the last page: nothing new.
    restarted_sink = KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: topic)
    cursor = restarted_sink.last_cursor(source_id)
    assert cursor == {"collections": {url: records[-1].meta["added_last"]}}
    assert (
        TaxiiSource(url, user=USER, password=PASSWORD, source_id=source_id).poll_once(restarted_sink, cursor)
        == 0
    )
    restarted_sink.close()


def test_wrong_password_is_a_source_error_without_the_password(medallion: str) -> None:
    from vigil.errors import SourceError
    from vigil.sources.sink import MemorySink

    source = TaxiiSource(f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/", user=USER, password=WRONG)
    with pytest.raises(SourceError, match="401") as info:
        source.poll_once(MemorySink(), {})
    assert WRONG not in str(info.value)


def test_kill_and_restart_neither_skips_nor_duplicates(medallion: str, settings: Settings) -> None:
    url = f"{medallion}/trustgroup1/collections/{WRITABLE}/"
    collection = Collection(url, user=USER, password=PASSWORD)
    ids = []
    for i in range(40):
        # One object per request so every object gets its own date_added (see taxii.py caveat).
        ind = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{uuid.uuid4()}",
            "created": "2026-11-29T00:00:00.000Z",
            "modified": "2026-11-29T00:00:00.000Z",
            "pattern": f"[ipv4-addr:value = '198.51.100.{i}']",
            "pattern_type": "stix",
            "valid_from": "2026-11-29T00:00:00Z",
            "indicator_types": ["malicious-activity"],
        }
        status = collection.add_objects({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [ind]})
        assert status.success_count == 1
        ids.append(ind["id"])

    topic = make_topic(settings)
    source_id = f"taxii-kill-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_client_config()["bootstrap.servers"],
        "VIGIL_TAXII_PASSWORD": PASSWORD,
    }
    cmd = [sys.executable, "-c", RUNNER, url, USER, topic, source_id]
    watcher = Consumer(settings.kafka_client_config() | {"group.id": f"w-{uuid.uuid4().hex}"})
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + START_S
        while watermarks(watcher, TopicPartition(topic, 0))[1] < 10:
            assert proc.poll() is None, "connector exited early"
            assert time.monotonic() < deadline, "connector published nothing"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = subprocess.Popen(cmd, env=env)
        records = read_committed(settings, topic, len(ids))
    finally:
        proc.kill()
        proc.wait(10)
        watcher.close()
    got = [obj["id"] for r in records for obj in json.loads(r.value)["objects"]]
    assert got == ids  # every object once, in order
    values = [e.payload.value for r in records for e in IntelNormalizer().normalize(r)]  # type: ignore[attr-defined]
    assert values == [f"198.51.100.{i}" for i in range(40)]


def test_api_root_discovery_polls_every_readable_collection(medallion: str) -> None:
    from vigil.sources.sink import MemorySink

    source = TaxiiSource(api_root=f"{medallion}/trustgroup1/", user=USER, password=PASSWORD)
    urls = source.collections()
    # Every collection of the data set the server lets us read; write-only ones are left out.
    readable = [c["id"] for c in json.loads(DATA.read_text())["trustgroup1"]["collections"] if c["can_read"]]
    assert sorted(u.rstrip("/").rsplit("/", 1)[-1] for u in urls) == sorted(readable)
    sink = MemorySink()
    cursor: dict[str, dict[str, str]] = {}
    assert source.poll_once(sink, cursor) >= 5
    polled = {r.meta["collection"] for r in sink.records}
    assert f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/" in polled
    assert polled == set(cursor["collections"])


def _indicator(value: str) -> dict[str, object]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-29T00:00:00.000Z",
        "modified": "2026-11-29T00:00:00.000Z",
        "pattern": f"[ipv4-addr:value = '{value}']",
        "pattern_type": "stix",
        "valid_from": "2026-11-29T00:00:00Z",
        "indicator_types": ["malicious-activity"],
    }


def test_one_upload_over_several_pages_is_read_whole(tmp_path: Path) -> None:
    # The server stamps every object of one upload with one date_added: asking each next page
    # "added after" the last page's time skipped the rest of the upload for good.
    from vigil.sources.sink import MemorySink

    with serving_medallion(tmp_path) as base:
        url = f"{base}/trustgroup1/collections/{WRITABLE}/"
        collection = Collection(url, user=USER, password=PASSWORD)
        sink, cursor = MemorySink(), {}  # type: ignore[var-annotated]
        source = TaxiiSource(url, user=USER, password=PASSWORD, page_size=2)
        for batch in range(2):  # the second upload read after the first one's cursor
            values = [f"203.0.{113 + batch}.{i}" for i in range(5)]
            bundle = {
                "type": "bundle",
                "id": f"bundle--{uuid.uuid4()}",
                "objects": [_indicator(v) for v in values],
            }
            assert collection.add_objects(bundle).success_count == 5
            mark = len(sink.records)
            assert source.poll_once(sink, cursor) == 5
            got = [e.payload.value for r in sink.records[mark:] for e in IntelNormalizer().normalize(r)]  # type: ignore[attr-defined]
            assert sorted(got) == sorted(values)
            assert len(sink.records) - mark == 3  # pages of 2, 2, 1
        assert source.poll_once(sink, cursor) == 0


@pytest.mark.parametrize("pages", [1, 2])
def test_a_poll_stopped_inside_one_upload_resumes_at_its_time_without_loss_or_repeat(
    tmp_path: Path, pages: int
) -> None:
    # One upload of 7 objects shares one date_added, read in pages of 2.  The connector stops
    # after publishing 1 or 2 pages: resuming "added after" that time (as before) missed the
    # rest of the upload for good; resuming at it, leaving out of every page the objects already
    # out (2 pages: the server's first two pages again), reads each object once.
    from vigil.errors import BrokerError
    from vigil.sources.sink import MemorySink

    class StopsAfter(MemorySink):
        def __init__(self, pages: int) -> None:
            super().__init__()
            self.pages = pages
            self.source_id = "t"

        def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
            if self.pages == 0:
                raise BrokerError("the connector stops here")
            self.pages -= 1
            super().publish(records, cursor)

    with serving_medallion(tmp_path) as base:
        url = f"{base}/trustgroup1/collections/{WRITABLE}/"
        collection = Collection(url, user=USER, password=PASSWORD)
        values = [f"203.0.113.{i}" for i in range(7)]
        bundle = {
            "type": "bundle",
            "id": f"bundle--{uuid.uuid4()}",
            "objects": [_indicator(v) for v in values],
        }
        assert collection.add_objects(bundle).success_count == 7
        first = StopsAfter(pages=pages)
        with pytest.raises(BrokerError):
            TaxiiSource(url, user=USER, password=PASSWORD, page_size=2, source_id="t").poll_once(first, {})
        assert len(first.records) == pages
        position = first.cursors["t"]["collections"][url]
        assert isinstance(position, dict)
        assert len(position["seen"]) == 2 * pages  # the objects out, at the upload's time
        # Restarted: a new source and sink, from the cursor the first one committed.
        again = MemorySink()
        again.source_id = "t"
        cursor = dict(first.cursors["t"])
        source = TaxiiSource(url, user=USER, password=PASSWORD, page_size=2, source_id="t")
        assert source.poll_once(again, cursor) == 7 - 2 * pages
        records = first.records + again.records
        got = [e.payload.value for r in records for e in IntelNormalizer().normalize(r)]  # type: ignore[attr-defined]
        assert sorted(got) == sorted(values)  # each once
        # Caught up: the cursor is a time again, and the next poll finds nothing new.
        assert isinstance(again.cursors["t"]["collections"][url], str)
        assert source.poll_once(again, cursor) == 0


TOKEN = "tok-%2B/key=1"  # noqa: S105 - a test query token, which medallion ignores


def test_a_collection_url_with_a_query_is_polled_with_it_and_named_without_it(medallion: str) -> None:
    # The slash taxii2client wants went after the query (".../?apikey=<token>/"), so it asked
    # ".../?apikey=<token>/objects/", the collection's information, and found no objects; the
    # feed was named after the URL's last segment, "?apikey=<token>".
    from vigil.sources.sink import MemorySink

    named = f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/"
    source = TaxiiSource(f"{named}?apikey={TOKEN}", user=USER, password=PASSWORD, page_size=2)
    sink, cursor = MemorySink(), {}  # type: ignore[var-annotated]
    assert source.poll_once(sink, cursor) == 5
    assert TOKEN not in json.dumps(cursor)
    assert list(cursor["collections"]) == [named]
    for record in sink.records:
        assert record.key == f"taxii:{HIGH_VALUE}".encode()
        assert record.meta["collection"] == named
        assert TOKEN not in json.dumps(record.meta)
    events = [e for r in sink.records for e in IntelNormalizer().normalize(r)]
    assert events
    assert {e.payload.feed for e in events} == {f"taxii:{HIGH_VALUE}"}  # type: ignore[attr-defined]


def test_a_url_user_info_authenticates_and_is_in_no_record_or_cursor(medallion: str) -> None:
    from vigil.sources.sink import MemorySink

    named = f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/"
    source = TaxiiSource(named.replace("http://", f"http://{USER}:{PASSWORD}@"), page_size=2)
    sink, cursor = MemorySink(), {}  # type: ignore[var-annotated]
    assert source.poll_once(sink, cursor) == 5
    assert list(cursor["collections"]) == [named]
    assert all(r.meta["collection"] == named for r in sink.records)


def test_a_cursor_kept_under_a_url_with_user_info_is_taken_over_without_it(medallion: str) -> None:
    # The cursor named a collection by its URL as given, user-info (a password) and all; it is
    # now named without: an old cursor is resumed from, and rewritten under the new name.
    from vigil.sources.sink import MemorySink

    named = f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/"
    with_user_info = named.replace("http://", f"http://{USER}:{PASSWORD}@")
    caught_up: dict[str, dict[str, str]] = {}
    assert TaxiiSource(named, user=USER, password=PASSWORD).poll_once(MemorySink(), caught_up) == 5
    cursor = {"collections": {with_user_info: caught_up["collections"][named]}}
    assert TaxiiSource(with_user_info).poll_once(MemorySink(), cursor) == 0  # resumed: nothing new
    assert cursor == caught_up


def test_an_api_root_query_goes_with_its_collections_and_is_named_nowhere(medallion: str) -> None:
    from vigil.sources.sink import MemorySink

    source = TaxiiSource(api_root=f"{medallion}/trustgroup1/?apikey={TOKEN}", user=USER, password=PASSWORD)
    urls = source.collections()
    assert urls
    assert all(u.endswith(f"/?apikey={TOKEN}") for u in urls)  # the token, for their requests
    sink, cursor = MemorySink(), {}  # type: ignore[var-annotated]
    assert source.poll_once(sink, cursor) >= 5
    assert f"{medallion}/trustgroup1/collections/{HIGH_VALUE}/" in cursor["collections"]
    assert TOKEN not in json.dumps(cursor) + json.dumps([r.meta for r in sink.records])
