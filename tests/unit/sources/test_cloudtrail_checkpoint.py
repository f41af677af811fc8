"""CloudTrail's checkpoint: bounded however many files were published, and a restart (after a
kill, or from a cursor of the earlier version) neither skips nor repeats a file."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vigil.errors import BrokerError
from vigil.hub.raw import RawRecord
from vigil.sources import cloudtrail
from vigil.sources.cloudtrail import CloudTrailSource
from vigil.sources.sink import MemorySink

PREFIX = "AWSLogs/111122223333/CloudTrail/us-east-1/"
#: Files kept above the floor per region: the default lateness, 2 hours, of files every 5 minutes.
WITHIN_LATENESS = 24


START = datetime(2026, 11, 28, tzinfo=UTC)


def deliver(root: Path, region: str, at: datetime, *, body: bytes | None = None) -> str:
    """A file as CloudTrail names and places it (one record, its eventID the file's path);
    returns its path relative to ``root``."""
    unique = hashlib.sha256(f"{region}{at}".encode()).hexdigest()[:16]
    rel = (
        f"AWSLogs/111122223333/CloudTrail/{region}/{at:%Y/%m/%d}/"
        f"111122223333_CloudTrail_{region}_{at:%Y%m%dT%H%M}Z_{unique}.json"
    )
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body if body is not None else json.dumps({"Records": [{"eventID": rel}]}).encode())
    return rel


def every_5_minutes(root: Path, region: str, start: datetime, count: int) -> list[str]:
    return [deliver(root, region, start + timedelta(minutes=5 * i)) for i in range(count)]


class OneScan(CloudTrailSource):
    """Scans the directory once, publishes what is new, and returns (no waiting in tests)."""

    def wait(self, seconds: float) -> bool:
        return True


class CrashingSink(MemorySink):
    """Kafka fails the ``fail_at``-th publish (nothing of it is kept, as with a transaction)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.source_id = "cloudtrail"
        self.fail_at = fail_at
        self.calls = 0

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise BrokerError("Kafka went away")
        super().publish(records, cursor)


def published(sink: MemorySink) -> Counter[str]:
    return Counter(json.loads(r.value)["eventID"] for r in sink.records)


def test_the_cursor_stays_small_however_many_files_were_published(tmp_path: Path) -> None:
    # The cursor listed every file: one account's 17 regions passed Kafka's 1 MB record limit
    # within days, and the source stopped for good.  Here 2,304 files: that list was 230 KB.
    files = []
    for region in ("us-east-1", "eu-west-1"):
        files += every_5_minutes(tmp_path, region, START, 4 * 288)  # four days
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files)
    cursor = sink.cursors["cloudtrail"]
    # What is kept: per region a floor, and the files of the last ``lateness`` above it.
    assert len(json.dumps(cursor)) < 6_000
    for region in ("us-east-1", "eu-west-1"):
        kept = cursor["prefixes"][f"AWSLogs/111122223333/CloudTrail/{region}/"]
        assert len(kept["done"]) == WITHIN_LATENESS
    # A restart publishes the next day's files, and nothing again.
    more = every_5_minutes(tmp_path, "us-east-1", START + timedelta(days=4), 288)
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files + more)
    assert len(json.dumps(sink.cursors["cloudtrail"])) < 6_000


def test_a_kill_and_restart_neither_skips_nor_repeats_and_late_files_within_lateness_are_taken(
    tmp_path: Path,
) -> None:
    files = every_5_minutes(tmp_path, "us-east-1", START, 60)  # five hours
    sink = CrashingSink(fail_at=37)
    with pytest.raises(BrokerError):
        OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files[:36])
    # Files of the same minute appear late: one before files already published (by its name;
    # within ``lateness`` of the newest), and one among those not yet published.
    late = [deliver(tmp_path, "us-east-1", START + timedelta(minutes=2 * 60 + 1))]
    late.append(deliver(tmp_path, "us-east-1", START + timedelta(minutes=4 * 60 + 1)))
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files + late)  # each exactly once
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files + late)
    # The trade: a file appearing further behind newer ones than ``lateness`` is taken for
    # published (it sorts under the floor).
    deliver(tmp_path, "us-east-1", START + timedelta(minutes=1))
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(files + late)


def test_a_cursor_listing_every_file_is_read_and_folded(tmp_path: Path) -> None:
    # The earlier cursor, {"files": [...]}: a restart after the upgrade repeats nothing.
    old = every_5_minutes(tmp_path, "us-east-1", START, 300)
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    sink.cursors["cloudtrail"] = {"files": old}
    new = every_5_minutes(tmp_path, "us-east-1", START + timedelta(minutes=5 * 300), 2)
    OneScan(tmp_path).run(sink)
    assert published(sink) == Counter(new)
    cursor = sink.cursors["cloudtrail"]
    assert cursor["version"] == 2
    assert "files" not in cursor
    assert len(cursor["prefixes"][PREFIX]["done"]) == WITHIN_LATENESS


def test_a_file_that_cannot_be_read_holds_the_floor_until_it_can(tmp_path: Path) -> None:
    files = every_5_minutes(tmp_path, "us-east-1", START, 60)
    bad = files[50]  # 45 minutes behind the newest: a copy still being written?
    (tmp_path / bad).write_bytes(b"not yet whole")
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    source = OneScan(tmp_path, skip_bad_files=True)
    source.run(sink)
    assert list(source.bad_files) == [bad]
    floor = sink.cursors["cloudtrail"]["prefixes"][PREFIX]["floor"]
    assert floor < bad.removeprefix(PREFIX)
    (tmp_path / bad).write_bytes(json.dumps({"Records": [{"eventID": bad}]}).encode())
    OneScan(tmp_path, skip_bad_files=True).run(sink)
    assert published(sink) == Counter(files)


def test_files_whose_names_carry_no_time_are_kept_by_name_until_they_are_gone() -> None:
    checkpoint = cloudtrail.Checkpoint()
    checkpoint.add("exports/a.json")
    checkpoint.compact("exports/", None)
    assert checkpoint.is_done("exports/a.json")
    checkpoint.forget_absent(set())
    assert not checkpoint.is_done("exports/a.json")
    assert cloudtrail.Checkpoint.from_cursor(checkpoint.cursor()).cursor() == {"version": 2, "prefixes": {}}


def test_a_file_unreadable_long_behind_newer_ones_is_given_up_and_the_cursor_stays_small(
    tmp_path: Path,
) -> None:
    # Retried for ever, one corrupt file held the floor, and every file after it stayed in the
    # cursor until the record limit stopped the source.
    files = every_5_minutes(tmp_path, "us-east-1", START, 864)  # three days
    bad = files[10]
    (tmp_path / bad).write_bytes(b"corrupt for good")
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    source = OneScan(tmp_path, skip_bad_files=True)
    source.run(sink)
    assert list(source.bad_files) == [bad]
    assert published(sink) == Counter(f for f in files if f != bad)
    cursor = sink.cursors["cloudtrail"]
    assert cursor["prefixes"][PREFIX]["floor"] > bad.removeprefix(PREFIX)
    assert len(json.dumps(cursor)) < 6000
