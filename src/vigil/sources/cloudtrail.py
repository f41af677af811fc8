"""AWS CloudTrail log files, as delivered to S3, and their normaliser.

:class:`CloudTrailSource` watches a directory laid out like a CloudTrail bucket
(``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/<file>.json.gz``, plain ``.json``
also accepted) and publishes each record of each new file to ``raw.cloudtrail``
(kind ``cloudtrail_record``), keyed by ``eventID``.  The record bytes are the exact
slice of the file (decoded with :class:`msgspec.Raw`), not a re-encoding.

Checkpoint (:class:`Checkpoint`): per listing prefix (``AWSLogs/<account>/CloudTrail/<region>/``,
the path before ``YYYY/MM/DD/``), a **floor**, under which every file is published, and the
files published above it.  Not "last file name" alone because delivery is not ordered across
regions and accounts, nor exactly within one (two files of a minute, a copy into the directory
running several transfers at once): a file can appear after later ones.  Files are ordered by
the delivery time in their names (``..._YYYYMMDDTHHmmZ_...``), then by name.  A published file
joins the floor once it is ``lateness`` (default 2 hours) older than the newest published file
of its prefix and no unpublished file of the prefix sorts before it; so the cursor holds about
``lateness`` worth of files per prefix however long the source runs (a list of every file
published reached Kafka's 1 MB record limit within days, and the source stopped for good).
The price: a file appearing more than ``lateness`` behind newer files of its prefix is taken
for published; set ``lateness`` above the lag of whatever copies the bucket into the directory.
Files whose names carry no time are kept by name (and dropped once gone from the directory).
Digest files (log file validation: ``AWSLogs/<account>/CloudTrail-Digest/...``, named
``..._CloudTrail-Digest_...``) are no log files and are left out of the scan altogether, as are
Insights files (``AWSLogs/<account>/CloudTrail-Insight/...``, named ``..._CloudTrail-Insight_...``):
their records are AWS's own findings about call rates (``AwsCloudTrailInsight``: no caller, no
address), not calls; the calls they count are in the log files.  Each kind is logged once a run.
Each file is published with the cursor that includes it, in one transaction, so a kill at
any point neither skips nor repeats a file.  A cursor of an earlier version (``{"files":
[...]}``, every file published) is read and folded into floors.

:class:`CloudTrailNormalizer` maps the security-relevant events (console logins,
access-key creation, MFA device changes, S3 reads and exports ...) into
``security_event`` with the employee from ``userIdentity`` and the IP from
``sourceIPAddress``.  Every other event is still kept, with ``action`` = the event name.
For an assumed role the employee is ``<role>/<session>``: the session name is chosen by
whoever calls AssumeRole (a CI role can call its session ``alice``), so it says who only
together with the role.  The exception is IAM Identity Center (``AWSReservedSSO_*`` roles whose
issuer, ``sessionContext.sessionIssuer.arn``, lies under ``role/aws-reserved/sso.amazonaws.com/``),
where AWS sets the session name to the signed-in user's name: that name alone is the employee.
The access key a call was signed with (``userIdentity.accessKeyId``, long-term ``AKIA...`` or
temporary ``ASIA...``) is attribute ``access_key`` and, unless the call made a new key, the
``api_key`` entity; a call that made one (CreateAccessKey, or STS credentials: AssumeRole,
GetSessionToken ...) has the new key's id as ``api_key`` instead, so that its later use joins
the event that made it.  Secret keys and session tokens are never read.  Whether the caller's
session was MFA-authenticated (``sessionContext.attributes.mfaAuthenticated``) is attribute
``mfa_authenticated`` (``true``/``false``) on any call that says.
Each account's root user is ``root@<account>``; the name CloudTrail hides on a failed sign-in
(:data:`HIDDEN_USER`) is nobody.  Identity and top-level fields of the wrong type refuse the
record by name (they never become an employee's ``repr``), as does an empty ``eventID``.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from vigil.config import Settings
from vigil.errors import ContractError, SourceError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.types import SecurityEvent, SecurityEventPayload
from vigil.hub.raw import RawRecord
from vigil.sources.addresses import client_ip
from vigil.sources.base import Normalizer, RawSink, Source, check_options, seconds_option

log = logging.getLogger(__name__)

NAME = "cloudtrail"
KIND = "cloudtrail_record"
SUFFIXES = (".json", ".json.gz")


class _LogFile(msgspec.Struct):
    Records: list[msgspec.Raw]


_file_decoder = msgspec.json.Decoder(_LogFile)
_id_decoder = msgspec.json.Decoder(dict[str, Any])


def read_log_file(path: Path) -> list[bytes]:
    """The records of one CloudTrail file, each as its exact bytes; raises SourceError if unreadable."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            data = _gunzip(data, path)
        return [bytes(raw) for raw in _file_decoder.decode(data).Records]
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        msg = f"cloudtrail: cannot read {path}: {exc}"
        raise SourceError(msg) from None
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        # (RecursionError: JSON nested about a thousand deep; uncaught, it stopped the source,
        # at every restart again, skip_bad_files or not.)
        msg = f'cloudtrail: {path} is not a CloudTrail log file ({{"Records": [...]}}): {exc}'
        raise SourceError(msg) from None


#: The most a log file may decompress to.  CloudTrail delivers files of a few MB; past this a
#: file is refused (a gzip bomb would take the machine's memory), named in the error.
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024


def _gunzip(data: bytes, path: Path) -> bytes:
    """``data`` decompressed (every gzip member), at most MAX_DECOMPRESSED_BYTES."""
    out = bytearray()
    while data:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while True:
            out += stream.decompress(data, MAX_DECOMPRESSED_BYTES + 1 - len(out))
            if len(out) > MAX_DECOMPRESSED_BYTES:
                msg = f"cloudtrail: {path} decompresses to more than {MAX_DECOMPRESSED_BYTES:,} bytes"
                raise SourceError(msg)
            data = stream.unconsumed_tail
            if stream.eof or not data:
                break
        if not stream.eof:
            msg = "compressed file ended before the end-of-stream marker was reached"
            raise EOFError(msg)
        data = stream.unused_data.lstrip(b"\x00")  # further members (gzip pads with zeros)
    return bytes(out)


#: How far behind newer files of its prefix (by the delivery times in their names) a file may
#: appear in the directory and still be published.  CloudTrail itself delivers in order within
#: minutes; the margin is for the copy into the directory (a sync catching up runs transfers
#: side by side, about 5 minutes of delivery apart each, and one may finish last).
LATENESS = timedelta(hours=2)

#: The directory CloudTrail delivers digest files to, next to ``CloudTrail/`` (log file
#: validation: ``AWSLogs/<account>/CloudTrail-Digest/<region>/YYYY/MM/DD/``), and the part of a
#: digest file's name that says so
#: (``<account>_CloudTrail-Digest_<region>_<trail>_<region>_<YYYYMMDDTHHmmssZ>.json.gz``).
#: A digest holds hashes of the log files, not ``{"Records": [...]}``.
DIGEST_DIR = "CloudTrail-Digest"
DIGEST_MARK = "_CloudTrail-Digest_"

#: The directory CloudTrail delivers Insights files to when CloudTrail Insights is on for the
#: trail (``AWSLogs/<account>/CloudTrail-Insight/<region>/YYYY/MM/DD/``), and the part of their
#: names that says so (``<account>_CloudTrail-Insight_<region>_<YYYYMMDDTHHmmZ>_<random>.json.gz``).
#: They hold ``{"Records": [...]}``, but each record (``eventType`` ``AwsCloudTrailInsight``) is
#: AWS's finding that a call's rate or error rate left its baseline, with no caller, address or
#: ``eventName`` of its own: no security event (read, every one was dead-lettered).
INSIGHT_DIR = "CloudTrail-Insight"
INSIGHT_MARK = "_CloudTrail-Insight_"

#: The files left out of the scan: (directory, name mark, what they are, for the log line).
_LEFT_OUT = (
    (DIGEST_DIR, DIGEST_MARK, "digest files (log file validation)"),
    (INSIGHT_DIR, INSIGHT_MARK, "Insights files (findings about call rates, not calls)"),
)

_DATED = re.compile(r"((?:.*/)?)([0-9]{4}/[0-9]{2}/[0-9]{2}/[^/]+)")
_STAMP = re.compile(r"_([0-9]{8}T[0-9]{4})Z_")
_STAMP_FORMAT = "%Y%m%dT%H%M"


def split_path(rel: str) -> tuple[str, str]:
    """``(prefix, key)`` of a file's relative path: the prefix is the path before its
    ``YYYY/MM/DD/`` directories (one account and region in CloudTrail's layout), else the
    file's directory; ``prefix + key == rel``."""
    dated = _DATED.fullmatch(rel)
    if dated is not None:
        return dated.group(1), dated.group(2)
    cut = rel.rfind("/") + 1
    return rel[:cut], rel[cut:]


def delivered(key: str) -> str | None:
    """The delivery time in a CloudTrail file name (``YYYYMMDDTHHmm``, sorting as the time
    does), or None when the name carries no valid one."""
    found = _STAMP.search(key.rpartition("/")[2])
    if found is None:
        return None
    try:
        datetime.strptime(found.group(1), _STAMP_FORMAT)  # noqa: DTZ007 - only validated
    except ValueError:
        return None
    return found.group(1)


class Checkpoint:
    """Which files are published, in a bounded cursor (the module docstring says how).

    ``floors``: prefix -> (delivery time, key); every file of the prefix whose (delivery
    time, key) is at most the floor is published.  ``done``: prefix -> keys published above
    the floor (and those whose names carry no time).
    """

    VERSION = 2

    def __init__(self, lateness: timedelta = LATENESS) -> None:
        self.lateness = lateness
        self.floors: dict[str, tuple[str, str]] = {}
        self.done: dict[str, set[str]] = {}

    @classmethod
    def from_cursor(cls, cursor: dict[str, Any] | None, lateness: timedelta = LATENESS) -> Checkpoint:
        """The checkpoint a cursor of this or the earlier version holds."""
        checkpoint = cls(lateness)
        if not cursor:
            return checkpoint
        for prefix, entry in cursor.get("prefixes", {}).items():
            floor = entry.get("floor")
            stamp = delivered(floor) if isinstance(floor, str) else None
            if stamp is None and floor is not None:
                msg = f"cloudtrail: cursor floor {floor!r} of {prefix!r} names no delivery time"
                raise SourceError(msg)
            if floor is not None and stamp is not None:
                checkpoint.floors[prefix] = (stamp, floor)
            for key in entry.get("done", []):
                checkpoint.done.setdefault(prefix, set()).add(key)
        for rel in cursor.get("files", []):  # version 1: every file published, by path
            checkpoint.add(rel)
        return checkpoint

    def cursor(self) -> dict[str, Any]:
        prefixes: dict[str, Any] = {}
        for prefix in sorted(set(self.floors) | set(self.done)):
            entry: dict[str, Any] = {}
            if prefix in self.floors:
                entry["floor"] = self.floors[prefix][1]
            if self.done.get(prefix):
                entry["done"] = sorted(self.done[prefix])
            prefixes[prefix] = entry
        return {"version": self.VERSION, "prefixes": prefixes}

    def is_done(self, rel: str) -> bool:
        prefix, key = split_path(rel)
        if key in self.done.get(prefix, ()):
            return True
        floor = self.floors.get(prefix)
        if floor is None:
            return False
        stamp = delivered(key)
        return stamp is not None and (stamp, key) <= floor

    def add(self, rel: str) -> None:
        prefix, key = split_path(rel)
        self.done.setdefault(prefix, set()).add(key)

    def forget_absent(self, present: set[str]) -> None:
        """Drop files gone from the directory that no floor can cover (no time in their names)."""
        for prefix, keys in list(self.done.items()):
            keys -= {k for k in keys if delivered(k) is None and prefix + k not in present}
            if not keys:
                del self.done[prefix]

    def compact(self, prefix: str, lowest_pending: tuple[str, str] | None) -> None:
        """Raise ``prefix``'s floor over the published files ``lateness`` older than its newest,
        up to ``lowest_pending`` (the first unpublished file present: never passed, or it
        would be taken for published)."""
        keys = self.done.get(prefix)
        timed = sorted((stamp, key) for key in keys or () if (stamp := delivered(key)) is not None)
        if not keys or not timed:
            return
        newest = datetime.strptime(timed[-1][0], _STAMP_FORMAT)  # noqa: DTZ007 - compared, both UTC
        cutoff = (newest - self.lateness).strftime(_STAMP_FORMAT)
        floor = self.floors.get(prefix)
        for entry in timed:
            if entry[0] > cutoff or (lowest_pending is not None and entry >= lowest_pending):
                break
            if floor is None or entry > floor:
                floor = entry
            keys.discard(entry[1])
        if floor is not None:
            self.floors[prefix] = floor
        if not keys:
            del self.done[prefix]


class _Pending:
    """The unpublished files of a scan, per prefix in (delivery time, key) order, for
    :meth:`Checkpoint.compact` (a file skipped as bad stays pending)."""

    def __init__(self, rels: Iterable[str]) -> None:
        self._order: dict[str, list[tuple[str, str]]] = {}
        for rel in rels:
            prefix, key = split_path(rel)
            stamp = delivered(key)
            if stamp is not None:  # files with no time never join a floor
                self._order.setdefault(prefix, []).append((stamp, key))
        for entries in self._order.values():
            entries.sort()
        self._next = dict.fromkeys(self._order, 0)
        self._published: set[str] = set()

    def published(self, rel: str) -> None:
        self._published.add(rel)

    def lowest(self, prefix: str) -> tuple[str, str] | None:
        entries = self._order.get(prefix, [])
        i = self._next.get(prefix, 0)
        while i < len(entries) and prefix + entries[i][1] in self._published:
            i += 1
        self._next[prefix] = i
        return entries[i] if i < len(entries) else None


class CloudTrailSource(Source):
    """Publishes every record of every CloudTrail file under ``directory``, once.

    ``poll_interval`` is how often the directory is rescanned.  Digest files (log file
    validation, :data:`DIGEST_DIR`, :data:`DIGEST_MARK`) and Insights files (:data:`INSIGHT_DIR`,
    :data:`INSIGHT_MARK`) are left out, each kind logged once.  A file that is not a
    CloudTrail log (bad gzip, not ``{"Records": [...]}``) stops the source with a
    :class:`SourceError` naming it (loudly, rather than skipping it for good) unless
    ``skip_bad_files`` is set, in which case it is recorded in ``bad_files`` (while it is in the
    directory) and read again once its size or modification time changes, until it is
    ``lateness`` behind the newest file of its folder (by the times in their names; a file whose
    name carries none: ``lateness`` after it was last modified): then it is no copy still being
    written, and it is given up (a warning; its place in the checkpoint taken, or every file
    after it would stay listed there).  ``lateness`` is the checkpoint's (:class:`Checkpoint`,
    :data:`LATENESS`).
    """

    name = NAME

    def __init__(
        self,
        directory: Path,
        *,
        poll_interval: float = 30.0,
        skip_bad_files: bool = False,
        lateness: timedelta = LATENESS,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id)
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self.skip_bad_files = skip_bad_files
        self.lateness = lateness
        self.bad_files: dict[str, str] = {}
        self.published_files = 0
        #: Digest files left out by the last scan (named as digests, or under a ``CloudTrail-Digest``
        #: directory, which is not walked: those count one each).
        self.skipped_digests = 0
        #: Insights files left out by the last scan (counted as digests are).
        self.skipped_insights = 0
        self._left_out_logged: set[str] = set()
        #: (size, mtime) of each bad file when its read failed: unchanged, it is not read again.
        self._bad_stat: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> CloudTrailSource:
        """Options: ``dir`` (required; the bucket copy or mount), ``poll_interval`` (s, 30),
        ``skip_bad_files`` (``true``/``false``), ``lateness_s`` (7200), ``source_id``."""
        del settings
        check_options(NAME, options, {"dir", "poll_interval", "skip_bad_files", "lateness_s", "source_id"})
        if "dir" not in options:
            msg = "cloudtrail: option 'dir' (the directory CloudTrail files are delivered to) is required"
            raise SourceError(msg)
        return cls(
            Path(options["dir"]),
            poll_interval=seconds_option(NAME, options, "poll_interval", 30.0),
            skip_bad_files=options.get("skip_bad_files", "false").lower() == "true",
            lateness=timedelta(seconds=float(options.get("lateness_s", str(LATENESS.total_seconds())))),
            source_id=options.get("source_id"),
        )

    def pending(self, checkpoint: Checkpoint) -> list[str]:
        """Relative paths of files not yet published, oldest name first."""
        return sorted(p for p in self._scan() if not checkpoint.is_done(p))

    def _scan(self) -> Iterator[str]:
        """Relative paths of the log files under the directory: not digest or Insights files,
        whose directories (``CloudTrail-Digest``, ``CloudTrail-Insight``) are not walked."""
        if not self.directory.is_dir():
            msg = f"cloudtrail: {self.directory} is not a directory"
            raise SourceError(msg)
        skipped: list[tuple[str, str, str]] = []  # (path, name mark, what), as in _LEFT_OUT
        for top, dirs, files in os.walk(self.directory):  # symlinked directories not followed
            parent = Path(top)
            here = parent.relative_to(self.directory).as_posix()
            here = "" if here == "." else here + "/"
            for folder, mark, what in _LEFT_OUT:
                if folder in dirs:
                    dirs.remove(folder)
                    skipped.append((here + folder + "/", mark, what))
            for name in files:
                if not name.endswith(SUFFIXES):
                    continue
                left_out = next((entry for entry in _LEFT_OUT if entry[1] in name), None)
                if left_out is not None:
                    skipped.append((here + name, left_out[1], left_out[2]))
                elif (parent / name).is_file():
                    yield here + name
        self.skipped_digests = sum(1 for _, mark, _ in skipped if mark == DIGEST_MARK)
        self.skipped_insights = sum(1 for _, mark, _ in skipped if mark == INSIGHT_MARK)
        for rel, mark, what in skipped:  # each directory logged once, files outside them once a kind
            seen = rel if rel.endswith("/") else mark
            if seen not in self._left_out_logged:
                self._left_out_logged.add(seen)
                log.info("cloudtrail: leaving out %s: %s", what, rel)

    def run(self, sink: RawSink) -> None:
        checkpoint = Checkpoint.from_cursor(sink.last_cursor(self.source_id), self.lateness)
        while self.running:
            present = set(self._scan())
            checkpoint.forget_absent(present)
            todo = sorted(rel for rel in present if not checkpoint.is_done(rel))
            pending = _Pending(todo)
            newest = _newest_by_prefix(present)
            for prefix in list(checkpoint.done):  # a cursor read at start (of any version) shrinks
                checkpoint.compact(prefix, pending.lowest(prefix))
            for rel in [rel for rel in self._bad_stat if rel not in present or checkpoint.is_done(rel)]:
                del self._bad_stat[rel]  # given up, published or gone: forgotten
            for rel in [rel for rel in self.bad_files if rel not in present]:
                del self.bad_files[rel]
            for rel in todo:
                if not self.running:
                    return
                path = self.directory / rel
                stat = _stat(path)
                failed = self._bad_stat.get(rel)
                if failed is not None and failed == stat:
                    # Unchanged since its read failed: not read (and decompressed) again at
                    # every scan; given up once it is lateness behind.
                    if self._given_up(rel, newest, failed):
                        self._give_up(rel, self.bad_files.get(rel, ""), checkpoint, pending, sink)
                    continue
                try:
                    values = read_log_file(path)
                except SourceError as exc:
                    if not self.skip_bad_files:
                        raise
                    self.bad_files[rel] = str(exc)
                    if stat is not None:
                        self._bad_stat[rel] = stat
                    if self._given_up(rel, newest, stat):
                        self._give_up(rel, str(exc), checkpoint, pending, sink)
                    continue
                now = datetime.now(UTC)
                records = [
                    RawRecord(
                        source=self.name,
                        kind=KIND,
                        value=value,
                        received_at=now,
                        key=_event_id(value),
                        meta={"file": rel, "index": i},
                    )
                    for i, value in enumerate(values)
                ]
                checkpoint.add(rel)
                pending.published(rel)
                prefix = split_path(rel)[0]
                checkpoint.compact(prefix, pending.lowest(prefix))
                self.bad_files.pop(rel, None)
                self._bad_stat.pop(rel, None)
                sink.publish(records, cursor=checkpoint.cursor())
                self.published_files += 1
            if self.wait(self.poll_interval):
                return

    def _given_up(self, rel: str, newest: dict[str, datetime], stat: tuple[int, int] | None) -> bool:
        """Whether the bad file ``rel`` is ``lateness`` behind the newest file of its folder (by
        the delivery times in their names), or, its name carrying no time, last modified
        ``lateness`` ago (``stat``: its size and modification time; None if it is gone)."""
        prefix, key = split_path(rel)
        stamp = delivered(key)
        if stamp is None:
            return stat is not None and time.time() - stat[1] / 1e9 >= self.lateness.total_seconds()
        latest = newest.get(prefix)
        if latest is None:
            return False
        return latest - datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC) >= self.lateness

    def _give_up(
        self, rel: str, error: str, checkpoint: Checkpoint, pending: _Pending, sink: RawSink
    ) -> None:
        """Takes the bad file ``rel`` for published, in the checkpoint (and the cursor)."""
        # Lateness behind it is no copy still being written: retried for ever it held the floor,
        # and every file published after it stayed in the cursor, until the record limit stopped
        # the source.  (A file whose name carries no time is kept by name, until it is gone.)
        behind = "behind newer files" if delivered(split_path(rel)[1]) else "after its last change"
        log.warning("cloudtrail: %s given up (still unreadable %s %s): %s", rel, self.lateness, behind, error)
        checkpoint.add(rel)
        pending.published(rel)
        prefix = split_path(rel)[0]
        checkpoint.compact(prefix, pending.lowest(prefix))
        sink.publish([], cursor=checkpoint.cursor())
        self._bad_stat.pop(rel, None)


def _stat(path: Path) -> tuple[int, int] | None:
    """A file's size and modification time (ns), None if it cannot be read."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


def _newest_by_prefix(rels: Iterable[str]) -> dict[str, datetime]:
    """The latest delivery time among the files of each folder."""
    newest: dict[str, datetime] = {}
    for rel in rels:
        prefix, key = split_path(rel)
        stamp = delivered(key)
        if stamp is not None:
            when = datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)
            if prefix not in newest or when > newest[prefix]:
                newest[prefix] = when
    return newest


def _event_id(value: bytes) -> bytes | None:
    try:
        found = _id_decoder.decode(value).get("eventID")
    except (msgspec.DecodeError, RecursionError):
        return None
    return found.encode() if isinstance(found, str) and found else None


# --------------------------------------------------------------------------- normaliser

#: eventName -> canonical action.  The ones detection keys on; anything else keeps its
#: own event name as the action so nothing is dropped.
ACTIONS: dict[str, str] = {
    "ConsoleLogin": "console_login",
    "CreateAccessKey": "access_key_created",
    "UpdateAccessKey": "access_key_updated",
    "DeleteAccessKey": "access_key_deleted",
    "CreateLoginProfile": "login_profile_created",
    "UpdateLoginProfile": "password_changed",
    "CreateVirtualMFADevice": "mfa_device_created",
    "EnableMFADevice": "mfa_enabled",
    "DeactivateMFADevice": "mfa_deactivated",
    "DeleteVirtualMFADevice": "mfa_device_deleted",
    "ResyncMFADevice": "mfa_resynced",
    "AttachUserPolicy": "policy_attached",
    "PutUserPolicy": "policy_attached",
    "CreateUser": "user_created",
    "GetObject": "s3_object_read",
    "CopyObject": "s3_object_copied",
    "PutBucketPolicy": "s3_bucket_policy_changed",
    "PutBucketAcl": "s3_bucket_acl_changed",
    "DeleteBucketPublicAccessBlock": "s3_public_access_block_removed",
    "PutBucketReplication": "s3_replication_configured",
    "CreateExportTask": "log_export_started",
    "StartExportTask": "snapshot_export_started",
    "ModifySnapshotAttribute": "snapshot_shared",
    "ModifyDBSnapshotAttribute": "snapshot_shared",
    "StopLogging": "cloudtrail_stopped",
    "DeleteTrail": "cloudtrail_deleted",
    "GetSecretValue": "secret_read",
    "AssumeRole": "role_assumed",
}


#: The roles IAM Identity Center (formerly AWS SSO) creates in each account; their session name is
#: the user's name in the identity store, set by AWS, not by the caller.
_SSO_ROLE_PREFIX = "AWSReservedSSO_"

#: The IAM path AWS creates those roles under (``arn:aws:iam::<account>:role/aws-reserved/
#: sso.amazonaws.com/[<region>/]AWSReservedSSO_...``), reserved to AWS.  The role name alone is
#: weaker proof: a name is whatever the role's creator typed, and who can create roles in an
#: account is the account's own policy, not AWS's.
_SSO_ROLE_PATH = ":role/aws-reserved/sso.amazonaws.com/"


#: The user name CloudTrail writes for a failed console sign-in whose name is no user of the
#: account (people type their password there): it names nobody, and every such record carries it.
HIDDEN_USER = "HIDDEN_DUE_TO_SECURITY_REASONS"


def _principal(identity: _Identity) -> str | None:
    """The person (or role session) behind the call, as the employee entity."""
    if identity.userName == HIDDEN_USER:
        return None  # (falling back to the principalId would name the account)
    if identity.type == "IAMUser" and identity.userName:
        return identity.userName
    if identity.type == "Root":
        # Each account has its own root user: one "root" made them all one employee.
        # (arn:<partition>:iam::<account>:root, in any partition: aws, aws-cn, aws-us-gov)
        parts = (identity.arn or "").split(":")
        account = identity.accountId or (parts[4] if len(parts) > 5 and parts[0] == "arn" else "")
        return f"root@{account}" if account else "root"
    if identity.type == "AssumedRole":
        # arn:aws:sts::123:assumed-role/<role>/<session> (neither name may hold a "/").  The
        # session name is the AssumeRole caller's free choice: taken alone, a CI role that named
        # its session "alice" acted as alice.  Only IAM Identity Center sets it itself, to the
        # signed-in user's name, on the roles it creates (AWSReservedSSO_<permission set>_<hash>).
        role, _, session = (identity.arn or "").partition(":assumed-role/")[2].partition("/")
        if role and session:  # (an arn ending in "/" names none: the fallbacks below name someone)
            return session if _is_sso_role(role, identity) else f"{role}/{session}"
    if identity.type == "IdentityCenterUser" and identity.onBehalfOf and identity.onBehalfOf.userId:
        # (Since 2025 its sign-ins and portal calls name the user by identity-store id alone: no
        # userName, arn or principalId, so they had no employee at all.)
        return f"identity-center:{identity.onBehalfOf.userId}"
    return identity.userName or identity.arn or identity.principalId or None


def _is_sso_role(role: str, identity: _Identity) -> bool:
    """Whether ``role`` (of an assumed-role ARN) is one IAM Identity Center made: its name, and
    its issuer's ARN under the path only AWS creates roles in, naming that same role."""
    context = identity.sessionContext
    issuer = (context.sessionIssuer.arn if context and context.sessionIssuer else None) or ""
    return role.startswith(_SSO_ROLE_PREFIX) and _SSO_ROLE_PATH in issuer and issuer.endswith("/" + role)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param(params: dict[str, Any], field: str) -> str | None:
    """A request parameter that names something: a non-empty string, else None (the same field
    name holds objects or lists in some of AWS's hundreds of APIs; a repr would name nothing)."""
    value = params.get(field)
    return value if isinstance(value, str) and value else None


def _resource(name: str, params: dict[str, Any], response: dict[str, Any]) -> str | None:
    bucket = _param(params, "bucketName")
    if name in ("GetObject", "CopyObject") and bucket:
        return f"arn:aws:s3:::{bucket}/{_param(params, 'key') or ''}"
    if bucket:
        return f"arn:aws:s3:::{bucket}"
    if name == "CreateAccessKey":
        return _access_key_id(response)
    for field in ("serialNumber", "virtualMFADeviceName", "userName", "roleArn", "secretId", "name"):
        if found := _param(params, field):
            return found
    return None


#: The STS calls that issue temporary credentials (``responseElements.credentials``, an ``ASIA...``
#: key with its secret and session token, of which only the key's id is read).
_ISSUE_CREDENTIALS = frozenset(
    {
        "AssumeRole",
        "AssumeRoleWithSAML",
        "AssumeRoleWithWebIdentity",
        "GetSessionToken",
        "GetFederationToken",
        "AssumeRoot",
    }
)


def _access_key_id(response: dict[str, Any]) -> str | None:
    key = response.get("accessKey")
    return _param(key, "accessKeyId") if isinstance(key, dict) else None


def _new_access_key(name: str, response: dict[str, Any]) -> str | None:
    """The id of the access key the call made: CreateAccessKey's, or the temporary one an STS
    call issued; None for any other call.  (Only the id: never the secret or the session token.)"""
    if name == "CreateAccessKey":
        return _access_key_id(response)
    credentials = response.get("credentials")
    if name in _ISSUE_CREDENTIALS and isinstance(credentials, dict):
        return _param(credentials, "accessKeyId")
    return None


def _get(record: dict[str, Any], field: str) -> dict[str, Any]:
    value = record.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = (
            f"CloudTrail record {record.get('eventID')!r}: {field} must be an object, "
            f"got {type(value).__name__}"
        )
        raise ContractError(msg)
    return value


_Name = Annotated[str, msgspec.Meta(min_length=1)]


class _OnBehalfOf(msgspec.Struct):
    """Who an IAM Identity Center call was made for (``userIdentity.onBehalfOf``)."""

    userId: str | None = None


class _Issuer(msgspec.Struct):
    """Who issued a temporary session (``userIdentity.sessionContext.sessionIssuer``): for an
    assumed role, the role's IAM ARN, path included."""

    arn: str | None = None


class _SessionAttributes(msgspec.Struct):
    """``userIdentity.sessionContext.attributes``.  ``mfaAuthenticated`` is the string ``"true"``
    or ``"false"`` as AWS writes it; a relay that made it a JSON boolean is read all the same."""

    mfaAuthenticated: str | bool | None = None


class _SessionContext(msgspec.Struct):
    sessionIssuer: _Issuer | None = None
    attributes: _SessionAttributes | None = None


class _Identity(msgspec.Struct):
    """The ``userIdentity`` fields the employee is made of, and the access key the call was
    signed with (strings; null taken for absent: a relay may write null for a field AWS leaves
    out; ``""`` for a call signed with no key, such as a console sign-in)."""

    type: str | None = None
    userName: str | None = None
    arn: str | None = None
    principalId: str | None = None
    accountId: str | None = None
    accessKeyId: str | None = None
    onBehalfOf: _OnBehalfOf | None = None
    sessionContext: _SessionContext | None = None


def _mfa_authenticated(identity: _Identity) -> str | None:
    """``"true"``/``"false"``: whether the caller's session was MFA-authenticated, if it says."""
    attributes = identity.sessionContext.attributes if identity.sessionContext else None
    said = attributes.mfaAuthenticated if attributes else None
    if said is True or (isinstance(said, str) and said.lower() == "true"):
        return "true"
    if said is False or (isinstance(said, str) and said.lower() == "false"):
        return "false"
    return None


class _Required(msgspec.Struct):
    """The fields every record must have, and those that say who and where, typed: a wrong
    type is refused by name (``str()`` of a list made an employee of its repr)."""

    eventID: _Name  # empty, every such record would share one event id
    eventTime: datetime
    eventName: _Name
    eventSource: _Name
    userIdentity: _Identity | None = None
    sourceIPAddress: str | None = None
    awsRegion: str | None = None
    recipientAccountId: str | None = None
    userAgent: str | None = None
    errorCode: str | None = None
    errorMessage: str | None = None


_required = msgspec.json.Decoder(_Required)
_record_decoder = msgspec.json.Decoder(dict[str, Any])


class CloudTrailNormalizer(Normalizer):
    """``cloudtrail_record`` -> ``security_event`` (provider ``aws``)."""

    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.kind != KIND:
            msg = f"raw.cloudtrail record of kind {record.kind!r}; expected {KIND!r}"
            raise ContractError(msg)
        try:
            body = _record_decoder.decode(record.value)
        except (msgspec.DecodeError, RecursionError) as exc:
            msg = f"CloudTrail record: {exc}"
            raise ContractError(msg) from None
        if body.get("eventType") == "AwsCloudTrailInsight":
            # (Its eventName and eventSource are under insightDetails: without this, it was
            # refused for a missing eventName, which says nothing of what it is.)
            named = body.get("eventID")
            which = f" {named!r}" if isinstance(named, str) and named else ""
            msg = (
                f"CloudTrail record{which}: a CloudTrail Insights record (eventType "
                "'AwsCloudTrailInsight', a finding about a call rate), not a call; expected the "
                "records of a log file (the source leaves Insights files out)"
            )
            raise ContractError(msg)
        try:
            head = _required.decode(record.value)
        except msgspec.ValidationError as exc:
            named = body.get("eventID")
            which = f" {named!r}" if isinstance(named, str) and named else ""
            msg = f"CloudTrail record{which}: {exc}"
            raise ContractError(msg) from None
        if head.eventTime.tzinfo is None:
            msg = f"CloudTrail record {head.eventID!r}: eventTime has no time zone"
            raise ContractError(msg)
        try:
            occurred_at = head.eventTime.astimezone(UTC)
        except OverflowError:  # "0001-01-01T00:00:00+01:00" decodes, but is before year 1 in UTC
            msg = (
                f"CloudTrail record {head.eventID!r}: eventTime {head.eventTime.isoformat()!r} is "
                "outside the years 1-9999 once converted to UTC"
            )
            raise ContractError(msg) from None
        identity = head.userIdentity or _Identity()
        params = _get(body, "requestParameters")
        response = _get(body, "responseElements")
        extra = _get(body, "additionalEventData")
        name = head.eventName
        outcome: Literal["success", "failure", "unknown"] = (
            "failure" if head.errorCode or head.errorMessage else "success"
        )
        if name == "ConsoleLogin":
            login = response.get("ConsoleLogin")
            if login == "Success":
                outcome = "success"
            elif login == "Failure":
                outcome = "failure"
        attributes: dict[str, str] = {
            "event_name": name,
            "event_source": head.eventSource,
        }
        for key, value in (
            ("region", head.awsRegion),
            ("account", head.recipientAccountId),
            ("user_agent", head.userAgent),
            ("error_code", head.errorCode),
            ("error_message", head.errorMessage),
            ("identity_type", identity.type or None),
            ("arn", identity.arn or None),
        ):
            if value is not None:
                attributes[key] = value
        if identity.userName == HIDDEN_USER:
            attributes["user_hidden"] = "true"
        if "MFAUsed" in extra:
            attributes["mfa_used"] = "true" if extra["MFAUsed"] == "Yes" else "false"
        if (mfa := _mfa_authenticated(identity)) is not None:
            attributes["mfa_authenticated"] = mfa
        # The key the call was signed with: which key did it, when one leaked.  ("" on calls
        # signed with none: a console sign-in, a failed one with a hidden user name.)
        calling_key = identity.accessKeyId or None
        if calling_key is not None:
            attributes["access_key"] = calling_key
        if name == "CreateAccessKey" and (target := _param(params, "userName")):
            attributes["target_user"] = target
        bytes_out = extra.get("bytesTransferredOut")
        if name in ("GetObject", "CopyObject") and _is_number(bytes_out):
            attributes["bytes_out"] = str(bytes_out)
        # The api_key entity is the key the event is about: a key the call made (its later uses
        # join this event on it), else the one that made the call (attribute access_key either way).
        new_key = _new_access_key(name, response)
        principal = _principal(identity)
        return [
            SecurityEvent(
                event_id=stable_id(NAME, head.eventID, prefix="ct-"),
                source=NAME,
                occurred_at=occurred_at,
                ingested_at=record.received_at,
                entities=Entities(
                    employee=principal,
                    # (an IP for calls from outside AWS, a service name, s3.amazonaws.com, for
                    # calls AWS makes on someone's behalf)
                    ip=client_ip(head.sourceIPAddress),
                    api_key=new_key or calling_key,
                ),
                payload=SecurityEventPayload(
                    provider="aws",
                    action=ACTIONS.get(name, name),
                    outcome=outcome,
                    principal=principal,
                    resource=_resource(name, params, response),
                    attributes=attributes,
                ),
            )
        ]
