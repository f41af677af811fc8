"""CloudTrail's source in an account directory with log file validation on (digest files next to
the log files), and bad files it cannot date by name: none stops the source, none is read again
at every scan."""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vigil.sources import cloudtrail
from vigil.sources.cloudtrail import CloudTrailSource
from vigil.sources.sink import MemorySink

ACCOUNT = "111122223333"
REGIONS = ("us-east-1", "eu-west-1")


class Scans(CloudTrailSource):
    """Runs ``scans`` scans of the directory, back to back, and returns (no waiting in tests)."""

    def __init__(self, directory: Path, *, scans: int = 1, **options: Any) -> None:
        super().__init__(directory, **options)
        self.scans_left = scans

    def wait(self, seconds: float) -> bool:
        self.scans_left -= 1
        return self.scans_left <= 0


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each file (by name) was read by the source."""
    counts: Counter[str] = Counter()
    read = cloudtrail.read_log_file

    def counting(path: Path) -> list[bytes]:
        counts[path.name] += 1
        return read(path)

    monkeypatch.setattr(cloudtrail, "read_log_file", counting)
    return counts


def account(root: Path) -> tuple[Path, list[str]]:
    """An account's directory as CloudTrail fills it with log file validation on: for each
    region, log files every 5 minutes of an hour (``CloudTrail/``) and the hour's digest files
    (``CloudTrail-Digest/``), all gzip, named and placed as AWS documents; and the event ids."""
    acct = root / "AWSLogs" / ACCOUNT
    ids = []
    for region in REGIONS:
        logs = acct / f"CloudTrail/{region}/2026/11/28"
        digests = acct / f"CloudTrail-Digest/{region}/2026/11/28"
        logs.mkdir(parents=True)
        digests.mkdir(parents=True)
        for minute in range(0, 60, 5):
            event_id = f"{region}-{minute:02d}"
            ids.append(event_id)
            record = {"eventID": event_id, "eventTime": f"2026-11-28T09:{minute:02d}:00Z"}
            name = f"{ACCOUNT}_CloudTrail_{region}_20261128T09{minute:02d}Z_{minute:016x}.json.gz"
            (logs / name).write_bytes(gzip.compress(json.dumps({"Records": [record]}).encode()))
        for hour in ("08", "09", "10"):
            digest: dict[str, Any] = {
                "awsAccountId": ACCOUNT,
                "digestStartTime": f"2026-11-28T{hour}:00:00Z",
                "digestEndTime": f"2026-11-28T{hour}:59:59Z",
                "digestS3Bucket": "trail-bucket",
                "digestPublicKeyFingerprint": "0a1b2c",
                "digestSignatureAlgorithm": "SHA256withRSA",
                "previousDigestS3Object": None,
                "logFiles": [],
            }
            name = f"{ACCOUNT}_CloudTrail-Digest_{region}_trail_{region}_20261128T{hour}1531Z.json.gz"
            (digests / name).write_bytes(gzip.compress(json.dumps(digest).encode()))
    return acct, ids


def published(sink: MemorySink) -> Counter[str]:
    return Counter(json.loads(r.value)["eventID"] for r in sink.records)


def new_sink() -> MemorySink:
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    return sink


def insights(acct: Path) -> None:
    """Insights files next to the logs, as CloudTrail delivers them with CloudTrail Insights on
    (``CloudTrail-Insight/``), and one copied among the log files."""
    for region in REGIONS:
        folder = acct / f"CloudTrail-Insight/{region}/2026/11/28"
        folder.mkdir(parents=True)
        record = {
            "eventVersion": "1.07",
            "eventTime": "2026-11-28T09:10:00Z",
            "awsRegion": region,
            "eventID": f"insight-{region}",
            "eventType": "AwsCloudTrailInsight",
            "recipientAccountId": ACCOUNT,
            "insightDetails": {
                "state": "Start",
                "eventName": "DeleteAccessKey",
                "insightType": "ApiCallRateInsight",
            },
            "eventCategory": "Insight",
        }
        name = f"{ACCOUNT}_CloudTrail-Insight_{region}_20261128T0915Z_a1b2c3d4e5f6a7b8.json.gz"
        (folder / name).write_bytes(gzip.compress(json.dumps({"Records": [record]}).encode()))
    stray = next((acct / "CloudTrail-Insight/us-east-1/2026/11/28").iterdir())
    (acct / "CloudTrail/us-east-1/2026/11/28" / stray.name).write_bytes(stray.read_bytes())


def test_insights_files_are_left_out_and_said_once(
    tmp_path: Path, reads: Counter[str], caplog: pytest.LogCaptureFixture
) -> None:
    # They are {"Records": [...]}, so they were published, and every record (a finding about a
    # call rate, with no eventName of its own) was dead-lettered by the normaliser.
    acct, ids = account(tmp_path)
    insights(acct)
    caplog.set_level(logging.INFO, logger="vigil.sources.cloudtrail")
    sink = new_sink()
    source = Scans(acct, scans=3)
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert not any("Insight" in name for name in reads)
    assert source.skipped_insights == 2  # the directory (not walked) and the stray copy
    said = [r.getMessage() for r in caplog.records if "Insights" in r.getMessage()]
    assert said == [
        "cloudtrail: leaving out Insights files (findings about call rates, not calls): CloudTrail-Insight/",
        "cloudtrail: leaving out Insights files (findings about call rates, not calls): "
        f"CloudTrail/us-east-1/2026/11/28/{ACCOUNT}_CloudTrail-Insight_us-east-1_20261128T0915Z_a1b2c3d4e5f6a7b8.json.gz",
    ]


@pytest.mark.parametrize("level", ["account", "bucket"])
def test_digest_files_next_to_the_logs_neither_stop_the_source_nor_are_read(
    tmp_path: Path, reads: Counter[str], level: str
) -> None:
    # CloudTrail-Digest/ sorts before CloudTrail/, and a digest is no {"Records": [...]}: the
    # source stopped on the first digest before publishing anything.
    acct, ids = account(tmp_path)
    sink = new_sink()
    source = Scans(acct if level == "account" else tmp_path, scans=3)  # default options
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert source.published_files == len(ids)
    assert not any("Digest" in name for name in reads)
    assert not source.bad_files
    assert source.skipped_digests == 1  # the account's digest directory, not walked
    assert "Digest" not in json.dumps(sink.cursors["cloudtrail"])


def test_digest_files_outside_their_directory_are_left_out_by_name(
    tmp_path: Path, reads: Counter[str]
) -> None:
    # The digest directory itself given as the directory, and a digest copied next to the logs.
    acct, ids = account(tmp_path)
    digests = acct / "CloudTrail-Digest"
    sink = new_sink()
    Scans(digests, scans=2).run(sink)
    assert not sink.records
    assert not reads
    stray = next((digests / "us-east-1/2026/11/28").iterdir())
    (acct / "CloudTrail/us-east-1/2026/11/28" / stray.name).write_bytes(stray.read_bytes())
    source = Scans(acct / "CloudTrail", scans=2, skip_bad_files=True)
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert not source.bad_files
    assert source.skipped_digests == 1
    assert not any("Digest" in name for name in reads)


def test_with_skip_bad_files_digests_are_not_bad_files_read_at_every_scan(
    tmp_path: Path, reads: Counter[str]
) -> None:
    # Their names end _YYYYMMDDTHHmmssZ, not dated by the log files' pattern: never given up,
    # they were read and decompressed at every scan.
    acct, ids = account(tmp_path)
    sink = new_sink()
    source = Scans(acct, scans=5, skip_bad_files=True)
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert not source.bad_files
    assert set(reads.values()) == {1}  # each log file read once, no digest at all
    assert len(reads) == len(ids)


def test_a_bad_file_whose_name_carries_no_time_is_read_once_not_at_every_scan(
    tmp_path: Path, reads: Counter[str]
) -> None:
    acct, ids = account(tmp_path)
    bad = acct / "CloudTrail/us-east-1/2026/11/28/export-broken.json.gz"
    bad.write_bytes(b"\x1f\x8b not whole")
    sink = new_sink()
    source = Scans(acct, scans=6, skip_bad_files=True)
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert reads[bad.name] == 1
    assert list(source.bad_files) == [bad.relative_to(acct).as_posix()]
    # Written just now: maybe a copy still being written, so not given up yet ...
    assert bad.name not in json.dumps(sink.cursors["cloudtrail"])
    # ... and read again when it changes, once more.
    bad.write_bytes(b"\x1f\x8b still not whole")
    source.scans_left = 3
    source.run(sink)
    assert reads[bad.name] == 2
    # Unchanged for ``lateness`` it is given up (without another read): kept in the cursor, so a
    # restart does not read it either.
    old = time.time() - cloudtrail.LATENESS.total_seconds() - 60
    os.utime(bad, (old, old))
    source.scans_left = 3
    source.run(sink)
    assert reads[bad.name] == 3  # its modification time changed: read once, then given up
    assert bad.name in json.dumps(sink.cursors["cloudtrail"])
    restarted = Scans(acct, scans=3, skip_bad_files=True)
    restarted.run(sink)
    assert reads[bad.name] == 3
    assert published(sink) == Counter(ids)


def test_a_long_unchanged_bad_file_without_a_time_is_given_up_at_its_first_read(
    tmp_path: Path, reads: Counter[str]
) -> None:
    (tmp_path / "broken.json").write_text("{}")
    old = time.time() - cloudtrail.LATENESS.total_seconds() - 60
    os.utime(tmp_path / "broken.json", (old, old))
    sink = new_sink()
    Scans(tmp_path, scans=4, skip_bad_files=True).run(sink)
    assert reads["broken.json"] == 1
    assert sink.cursors["cloudtrail"] == {"version": 2, "prefixes": {"": {"done": ["broken.json"]}}}
    Scans(tmp_path, scans=2, skip_bad_files=True).run(sink)
    assert reads["broken.json"] == 1


def test_a_bad_last_file_of_a_quiet_region_is_not_read_at_every_scan(
    tmp_path: Path, reads: Counter[str]
) -> None:
    # Nothing newer arrives in its region, so it is never lateness behind: it was read (and
    # decompressed) at every scan for as long as the source ran.
    acct, ids = account(tmp_path)
    bad = acct / f"CloudTrail/eu-west-1/2026/11/28/{ACCOUNT}_CloudTrail_eu-west-1_20261128T1000Z_ff.json.gz"
    bad.write_bytes(gzip.compress(b'{"Records": [{"eventID": "cut off'))
    sink = new_sink()
    source = Scans(acct, scans=5, skip_bad_files=True)
    source.run(sink)
    assert published(sink) == Counter(ids)
    assert reads[bad.name] == 1
    assert list(source.bad_files) == [bad.relative_to(acct).as_posix()]
