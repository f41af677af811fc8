"""AWS CloudTrail log files, as delivered to S3, and their normaliser.

:class:`CloudTrailSource` watches a directory laid out like a CloudTrail bucket
(``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/<file>.json.gz``, plain ``.json``
also accepted) and publishes each record of each new file to ``raw.cloudtrail``
(kind ``cloudtrail_record``), keyed by ``eventID``.  The record bytes are the exact
slice of the file (decoded with :class:`msgspec.Raw`), not a re-encoding.

Checkpoint: the cursor is the sorted list of files already published.  A set rather than
"last file name" because S3 delivery is not ordered across regions and accounts: a file
for region A can land after files of region B that sort later.  Each file is published
with the cursor that includes it, in one transaction, so a kill at any point neither
skips nor repeats a file.  Entries for files no longer in the directory (expired by an S3
lifecycle rule) are dropped from the cursor, which keeps it bounded by the directory.

:class:`CloudTrailNormalizer` maps the security-relevant events (console logins,
access-key creation, MFA device changes, S3 reads and exports ...) into
``security_event`` with the employee from ``userIdentity`` and the IP from
``sourceIPAddress``.  Every other event is still kept, with ``action`` = the event name.
"""

from __future__ import annotations

import gzip
import ipaddress
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from vigil.config import Settings
from vigil.errors import ContractError, SourceError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.types import SecurityEvent, SecurityEventPayload
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer, RawSink, Source

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
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
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


class CloudTrailSource(Source):
    """Publishes every record of every CloudTrail file under ``directory``, once.

    ``poll_interval`` is how often the directory is rescanned.  A file that is not a
    CloudTrail log (bad gzip, not ``{"Records": [...]}``) stops the source with a
    :class:`SourceError` naming it (loudly, rather than skipping it for good) unless
    ``skip_bad_files`` is set, in which case it is recorded in ``bad_files`` and retried
    on the next scan.
    """

    name = NAME

    def __init__(
        self,
        directory: Path,
        *,
        poll_interval: float = 30.0,
        skip_bad_files: bool = False,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id)
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self.skip_bad_files = skip_bad_files
        self.bad_files: dict[str, str] = {}
        self.published_files = 0

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> CloudTrailSource:
        """Options: ``dir`` (required; the bucket copy or mount), ``poll_interval`` (s, 30),
        ``skip_bad_files`` (``true``/``false``), ``source_id``."""
        del settings
        if "dir" not in options:
            msg = "cloudtrail: option 'dir' (the directory CloudTrail files are delivered to) is required"
            raise SourceError(msg)
        return cls(
            Path(options["dir"]),
            poll_interval=float(options.get("poll_interval", "30")),
            skip_bad_files=options.get("skip_bad_files", "false").lower() == "true",
            source_id=options.get("source_id"),
        )

    def pending(self, done: set[str]) -> list[str]:
        """Relative paths of files not yet published, oldest name first."""
        return sorted(p for p in self._scan() if p not in done)

    def _scan(self) -> Iterator[str]:
        if not self.directory.is_dir():
            msg = f"cloudtrail: {self.directory} is not a directory"
            raise SourceError(msg)
        for path in self.directory.rglob("*"):
            if path.is_file() and path.name.endswith(SUFFIXES):
                yield path.relative_to(self.directory).as_posix()

    def run(self, sink: RawSink) -> None:
        cursor = sink.last_cursor(self.source_id) or {}
        done: set[str] = set(cursor.get("files", []))
        while self.running:
            present = set(self._scan())
            done &= present
            for rel in sorted(present - done):
                if not self.running:
                    return
                try:
                    values = read_log_file(self.directory / rel)
                except SourceError as exc:
                    if not self.skip_bad_files:
                        raise
                    self.bad_files[rel] = str(exc)
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
                done.add(rel)
                self.bad_files.pop(rel, None)
                sink.publish(records, cursor={"files": sorted(done)})
                self.published_files += 1
            if self.wait(self.poll_interval):
                return


def _event_id(value: bytes) -> bytes | None:
    try:
        found = _id_decoder.decode(value).get("eventID")
    except msgspec.DecodeError:
        return None
    return str(found).encode() if found else None


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


def _principal(identity: dict[str, Any]) -> str | None:
    """The person (or role session) behind the call, as the employee entity."""
    kind = identity.get("type")
    if kind == "IAMUser" and identity.get("userName"):
        return str(identity["userName"])
    if kind == "Root":
        return "root"
    if kind == "AssumedRole":
        role_arn = str(identity.get("arn") or "")
        # arn:aws:sts::123:assumed-role/<role>/<session>: the session name is usually the person.
        session = role_arn.rsplit("/", 1)[1] if role_arn.count("/") >= 2 else ""
        if session:  # (an arn ending in "/" names none: the fallbacks below name someone)
            return session
    if identity.get("userName"):
        return str(identity["userName"])
    arn = identity.get("arn") or identity.get("principalId")
    return str(arn) if arn else None


def _ip(value: object) -> str | None:
    """sourceIPAddress is an IP for calls from outside AWS and a service name
    (``s3.amazonaws.com``) for calls made by AWS on someone's behalf."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _resource(name: str, params: dict[str, Any], response: dict[str, Any]) -> str | None:
    if name in ("GetObject", "CopyObject") and params.get("bucketName"):
        return f"arn:aws:s3:::{params['bucketName']}/{params.get('key', '')}"
    if params.get("bucketName"):
        return f"arn:aws:s3:::{params['bucketName']}"
    if name == "CreateAccessKey":
        return _access_key_id(response)
    for field in ("serialNumber", "virtualMFADeviceName", "userName", "roleArn", "secretId", "name"):
        if params.get(field):
            return str(params[field])
    return None


def _access_key_id(response: dict[str, Any]) -> str | None:
    key = response.get("accessKey")
    found = key.get("accessKeyId") if isinstance(key, dict) else None
    return str(found) if found else None


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


class _Required(msgspec.Struct):
    eventID: str
    eventTime: datetime
    eventName: str
    eventSource: str


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
            head = _required.decode(record.value)
            body = _record_decoder.decode(record.value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            msg = f"CloudTrail record: {exc}"
            raise ContractError(msg) from None
        if head.eventTime.tzinfo is None:
            msg = f"CloudTrail record {head.eventID!r}: eventTime has no time zone"
            raise ContractError(msg)
        identity = _get(body, "userIdentity")
        params = _get(body, "requestParameters")
        response = _get(body, "responseElements")
        extra = _get(body, "additionalEventData")
        name = head.eventName
        outcome: Literal["success", "failure", "unknown"] = (
            "failure" if body.get("errorCode") or body.get("errorMessage") else "success"
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
        for key, field in (
            ("region", "awsRegion"),
            ("account", "recipientAccountId"),
            ("user_agent", "userAgent"),
            ("error_code", "errorCode"),
            ("error_message", "errorMessage"),
            ("identity_type", None),
            ("arn", None),
        ):
            value = body.get(field) if field else identity.get("type" if key == "identity_type" else key)
            if value is not None:
                attributes[key] = str(value)
        if "MFAUsed" in extra:
            attributes["mfa_used"] = "true" if extra["MFAUsed"] == "Yes" else "false"
        if name == "CreateAccessKey" and params.get("userName"):
            attributes["target_user"] = str(params["userName"])
        if name in ("GetObject", "CopyObject") and "bytesTransferredOut" in extra:
            attributes["bytes_out"] = str(extra["bytesTransferredOut"])
        access_key = _access_key_id(response) if name == "CreateAccessKey" else None
        principal = _principal(identity)
        return [
            SecurityEvent(
                event_id=stable_id(NAME, head.eventID, prefix="ct-"),
                source=NAME,
                occurred_at=head.eventTime.astimezone(UTC),
                ingested_at=record.received_at,
                entities=Entities(
                    employee=principal,
                    ip=_ip(body.get("sourceIPAddress")),
                    api_key=str(access_key) if access_key else None,
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
