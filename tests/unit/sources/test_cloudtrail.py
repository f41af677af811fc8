"""CloudTrail: reading delivered log files, the directory source's cursor, the normaliser."""

from __future__ import annotations

import gzip
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vigil.errors import ContractError, SourceError
from vigil.events.codec import decode_event, encode
from vigil.events.types import SecurityEvent
from vigil.hub.raw import RawRecord
from vigil.sources import cloudtrail
from vigil.sources.cloudtrail import CloudTrailNormalizer, CloudTrailSource, read_log_file
from vigil.sources.sink import MemorySink

# Realistic CloudTrail records, in the shape AWS documents (CloudTrail User Guide, "CloudTrail
# record contents" and the IAM / sign-in / S3 examples). Ids, keys and addresses are
# documentation values (111122223333, AKIAIOSFODNN7EXAMPLE, 192.0.2.x, 198.51.100.x, 203.0.113.x).

ALICE = {
    "type": "IAMUser",
    "principalId": "AIDACKCEVSQ6C2EXAMPLE",
    "arn": "arn:aws:iam::111122223333:user/alice",
    "accountId": "111122223333",
    "userName": "alice",
}


def _base(event_id: str, name: str, source: str, time: str, ip: str, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": ALICE,
        "eventTime": time,
        "eventSource": source,
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": ip,
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        "requestParameters": None,
        "responseElements": None,
        "eventID": event_id,
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management",
    }
    record.update(extra)
    return record


CONSOLE_LOGIN_OK = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0001",
    "ConsoleLogin",
    "signin.amazonaws.com",
    "2026-11-28T09:15:02Z",
    "198.51.100.23",
    eventType="AwsConsoleSignIn",
    responseElements={"ConsoleLogin": "Success"},
    additionalEventData={
        "LoginTo": "https://console.aws.amazon.com/console/home",
        "MobileVersion": "No",
        "MFAUsed": "Yes",
    },
)

CONSOLE_LOGIN_FAIL = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0002",
    "ConsoleLogin",
    "signin.amazonaws.com",
    "2026-11-28T09:14:40Z",
    "203.0.113.77",
    eventType="AwsConsoleSignIn",
    errorMessage="Failed authentication",
    responseElements={"ConsoleLogin": "Failure"},
    additionalEventData={
        "LoginTo": "https://console.aws.amazon.com/console/home",
        "MobileVersion": "No",
        "MFAUsed": "No",
    },
)

CREATE_ACCESS_KEY = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0003",
    "CreateAccessKey",
    "iam.amazonaws.com",
    "2026-11-28T09:20:11Z",
    "198.51.100.23",
    requestParameters={"userName": "deploy-bot"},
    responseElements={
        "accessKey": {
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "status": "Active",
            "userName": "deploy-bot",
            "createDate": "Nov 28, 2026 9:20:11 AM",
        }
    },
)

CREATE_VIRTUAL_MFA = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0004",
    "CreateVirtualMFADevice",
    "iam.amazonaws.com",
    "2026-11-28T09:21:00Z",
    "198.51.100.23",
    requestParameters={"virtualMFADeviceName": "alice-phone", "path": "/"},
    responseElements={"virtualMFADevice": {"serialNumber": "arn:aws:iam::111122223333:mfa/alice-phone"}},
)

ENABLE_MFA = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0005",
    "EnableMFADevice",
    "iam.amazonaws.com",
    "2026-11-28T09:21:30Z",
    "198.51.100.23",
    requestParameters={"userName": "alice", "serialNumber": "arn:aws:iam::111122223333:mfa/alice-phone"},
)

DEACTIVATE_MFA = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0006",
    "DeactivateMFADevice",
    "iam.amazonaws.com",
    "2026-11-28T09:22:00Z",
    "203.0.113.77",
    requestParameters={"userName": "bob", "serialNumber": "arn:aws:iam::111122223333:mfa/bob"},
)

GET_OBJECT = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0007",
    "GetObject",
    "s3.amazonaws.com",
    "2026-11-28T09:30:45Z",
    "203.0.113.77",
    userAgent="[aws-cli/2.15.0 Python/3.11.6 Linux/6.5 exe/x86_64]",
    readOnly=True,
    eventType="AwsApiCall",
    managementEvent=False,
    eventCategory="Data",
    requestParameters={
        "bucketName": "exchange-kyc-exports",
        "Host": "exchange-kyc-exports.s3.us-east-1.amazonaws.com",
        "key": "customers/2026-11-27.csv.gz",
    },
    additionalEventData={"bytesTransferredIn": 0, "bytesTransferredOut": 734003200},
    resources=[
        {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::exchange-kyc-exports/customers/2026-11-27.csv.gz"},
        {"accountId": "111122223333", "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::exchange-kyc-exports"},
    ],
)

ASSUMED_ROLE_BUCKET_POLICY = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0008",
    "PutBucketPolicy",
    "s3.amazonaws.com",
    "2026-11-28T09:31:00Z",
    "192.0.2.10",
    userIdentity={
        "type": "AssumedRole",
        "principalId": "AROAEXAMPLEID:carol@example.com",
        "arn": "arn:aws:sts::111122223333:assumed-role/Admin/carol@example.com",
        "accountId": "111122223333",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "arn": "arn:aws:iam::111122223333:role/Admin",
                "userName": "Admin",
            }
        },
    },
    requestParameters={"bucketName": "exchange-kyc-exports", "bucketPolicy": {"Version": "2012-10-17"}},
)

SERVICE_CALL = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0009",
    "DescribeInstances",
    "ec2.amazonaws.com",
    "2026-11-28T09:32:00Z",
    "autoscaling.amazonaws.com",
    errorCode="Client.UnauthorizedOperation",
    errorMessage="You are not authorized to perform this operation.",
)

ALL = [
    CONSOLE_LOGIN_OK,
    CONSOLE_LOGIN_FAIL,
    CREATE_ACCESS_KEY,
    CREATE_VIRTUAL_MFA,
    ENABLE_MFA,
    DEACTIVATE_MFA,
    GET_OBJECT,
    ASSUMED_ROLE_BUCKET_POLICY,
    SERVICE_CALL,
]


PREFIX = "AWSLogs/111122223333/CloudTrail/us-east-1/"


def write_log(root: Path, name: str, records: list[dict[str, Any]], *, gz: bool = True) -> Path:
    """A file where CloudTrail would deliver it in S3."""
    path = root / "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/28" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Pretty-printed like some delivery pipelines do, so exact slicing is really tested.
    data = json.dumps({"Records": records}, indent=2).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def normalize(record: dict[str, Any]) -> SecurityEvent:
    raw = RawRecord(
        source="cloudtrail",
        kind="cloudtrail_record",
        value=json.dumps(record).encode(),
        received_at=datetime(2026, 11, 28, 10, tzinfo=UTC),
    )
    (event,) = CloudTrailNormalizer().normalize(raw)
    assert isinstance(event, SecurityEvent)
    assert decode_event(encode(event)) == event
    return event


def test_read_log_file_returns_each_record_as_its_exact_bytes(tmp_path: Path) -> None:
    path = write_log(tmp_path, "a.json.gz", ALL[:3])
    values = read_log_file(path)
    text = gzip.decompress(path.read_bytes())
    assert [json.loads(v) for v in values] == ALL[:3]
    assert all(v in text for v in values)  # slices of the file, not re-encodings


def test_read_log_file_rejects_non_cloudtrail_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"records": []}')
    with pytest.raises(SourceError, match=r"x.json is not a CloudTrail log file"):
        read_log_file(bad)
    broken = tmp_path / "y.json.gz"
    broken.write_bytes(gzip.compress(b'{"Records": [')[:-4])
    with pytest.raises(SourceError, match="cannot read"):
        read_log_file(broken)
    # A corrupt deflate stream raised zlib.error, which stopped the source even when skipping
    # bad files (and again at every restart: the file never joined the cursor).
    garbage = tmp_path / "z.json.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 40)
    with pytest.raises(SourceError, match=r"cannot read .*z.json.gz: Error -3"):
        read_log_file(garbage)


def test_json_nested_too_deep_is_refused_not_a_crash(tmp_path: Path) -> None:
    # A thousand levels of nesting raised RecursionError in the decoder, which stopped the
    # source (skip_bad_files or not, and again at every restart) and the normaliser.
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / "deep.json"
    path.write_text('{"Records": [' + deep + "]}")
    with pytest.raises(SourceError, match=r"deep.json is not a CloudTrail log file"):
        read_log_file(path)
    value = json.dumps(ALL[0])[:-1] + ', "requestParameters": {"a": ' + deep + "}}"
    raw = RawRecord("cloudtrail", "cloudtrail_record", value.encode(), datetime.now(UTC))
    with pytest.raises(ContractError, match="CloudTrail record"):
        CloudTrailNormalizer().normalize(raw)


def test_a_file_that_decompresses_too_far_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gzip bomb would take the machine's memory: decompression stops at the limit.
    monkeypatch.setattr(cloudtrail, "MAX_DECOMPRESSED_BYTES", 10_000)
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b'{"Records": [' + b" " * 1_000_000 + b"]}"))
    with pytest.raises(SourceError, match=r"bomb.json.gz decompresses to more than 10,000 bytes"):
        read_log_file(bomb)
    # Several gzip members (as concatenated files are) still read whole.
    two = tmp_path / "two.json.gz"
    two.write_bytes(gzip.compress(b'{"Records": [{"a": 1},') + gzip.compress(b' {"b": 2}]}'))
    assert read_log_file(two) == [b'{"a": 1}', b'{"b": 2}']


def test_console_login_success_with_mfa() -> None:
    e = normalize(CONSOLE_LOGIN_OK)
    assert (e.payload.provider, e.payload.action, e.payload.outcome) == ("aws", "console_login", "success")
    assert e.payload.attributes["mfa_used"] == "true"
    assert e.entities.employee == "alice"
    assert e.entities.ip == "198.51.100.23"
    assert e.occurred_at == datetime(2026, 11, 28, 9, 15, 2, tzinfo=UTC)


def test_console_login_failure_without_mfa() -> None:
    e = normalize(CONSOLE_LOGIN_FAIL)
    assert (e.payload.action, e.payload.outcome) == ("console_login", "failure")
    assert e.payload.attributes["mfa_used"] == "false"
    assert e.payload.attributes["error_message"] == "Failed authentication"
    assert e.entities.ip == "203.0.113.77"


def test_create_access_key_names_key_and_target_user() -> None:
    e = normalize(CREATE_ACCESS_KEY)
    assert e.payload.action == "access_key_created"
    assert e.payload.resource == "AKIAIOSFODNN7EXAMPLE"
    assert e.entities.api_key == "AKIAIOSFODNN7EXAMPLE"
    assert e.payload.attributes["target_user"] == "deploy-bot"
    assert e.entities.employee == "alice"


@pytest.mark.parametrize(
    ("record", "action", "resource"),
    [
        (CREATE_VIRTUAL_MFA, "mfa_device_created", "alice-phone"),
        (ENABLE_MFA, "mfa_enabled", "arn:aws:iam::111122223333:mfa/alice-phone"),
        (DEACTIVATE_MFA, "mfa_deactivated", "arn:aws:iam::111122223333:mfa/bob"),
    ],
)
def test_mfa_changes(record: dict[str, Any], action: str, resource: str) -> None:
    e = normalize(record)
    assert (e.payload.action, e.payload.outcome, e.payload.resource) == (action, "success", resource)


def test_s3_get_object_is_an_export_with_size_and_object_arn() -> None:
    e = normalize(GET_OBJECT)
    assert e.payload.action == "s3_object_read"
    assert e.payload.resource == "arn:aws:s3:::exchange-kyc-exports/customers/2026-11-27.csv.gz"
    assert e.payload.attributes["bytes_out"] == "734003200"


def test_assumed_role_principal_is_the_role_and_the_session_name() -> None:
    # The session name is chosen by the AssumeRole caller: alone, it would name anyone.
    e = normalize(ASSUMED_ROLE_BUCKET_POLICY)
    assert e.entities.employee == "Admin/carol@example.com"
    assert e.payload.principal == "Admin/carol@example.com"
    assert e.payload.action == "s3_bucket_policy_changed"
    assert e.payload.resource == "arn:aws:s3:::exchange-kyc-exports"


def test_a_role_session_named_after_a_person_is_not_that_person() -> None:
    identity = {
        **ASSUMED_ROLE_BUCKET_POLICY["userIdentity"],
        "principalId": "AROAEXAMPLEID:alice",
        "arn": "arn:aws:sts::111122223333:assumed-role/ci-deployer/alice",
    }
    e = normalize({**ASSUMED_ROLE_BUCKET_POLICY, "userIdentity": identity})
    assert e.entities.employee == "ci-deployer/alice"
    assert e.entities.employee != normalize(CONSOLE_LOGIN_OK).entities.employee  # alice, the IAM user


SSO_ROLE = "AWSReservedSSO_AdministratorAccess_0123456789abcdef"


def sso_session(issuer: str | None) -> dict[str, Any]:
    """An IAM Identity Center role session of carol's, as AWS records it, with the issuer ARN given
    (None: no sessionContext at all)."""
    identity = {
        **ASSUMED_ROLE_BUCKET_POLICY["userIdentity"],
        "principalId": "AROAEXAMPLEID:carol",
        "arn": f"arn:aws:sts::111122223333:assumed-role/{SSO_ROLE}/carol",
        "sessionContext": {"sessionIssuer": {"type": "Role", "arn": issuer, "userName": SSO_ROLE}},
    }
    if issuer is None:
        del identity["sessionContext"]
    return {**ASSUMED_ROLE_BUCKET_POLICY, "userIdentity": identity}


@pytest.mark.parametrize("region", ["", "eu-west-1/"])
def test_an_identity_center_role_session_is_the_signed_in_user(region: str) -> None:
    # IAM Identity Center sets the session name to the user's name itself; the caller cannot.
    # (Its roles are under aws-reserved/sso.amazonaws.com/, with the region when it is not us-east-1.)
    issuer = f"arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/{region}{SSO_ROLE}"
    assert normalize(sso_session(issuer)).entities.employee == "carol"


@pytest.mark.parametrize(
    "issuer",
    [
        None,
        f"arn:aws:iam::111122223333:role/{SSO_ROLE}",  # anyone may name a role so, on another path
        f"arn:aws:iam::111122223333:role/ci/sso.amazonaws.com/{SSO_ROLE}",
        "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_ReadOnly_99",
    ],
)
def test_an_sso_named_role_not_issued_by_identity_center_is_not_its_session_name(issuer: str | None) -> None:
    # The role name alone is no proof: a role called AWSReservedSSO_... made by anyone with
    # iam:CreateRole let its callers pick any session name, and be that employee.
    e = normalize(sso_session(issuer))
    assert e.entities.employee == f"{SSO_ROLE}/carol"


def test_an_assumed_role_arn_without_a_session_name_names_the_arn() -> None:
    # The session name of ".../assumed-role/Admin/" is "": an employee the contract refuses.
    arn = "arn:aws:sts::111122223333:assumed-role/Admin/"
    identity = {**ASSUMED_ROLE_BUCKET_POLICY["userIdentity"], "arn": arn}
    e = normalize({**ASSUMED_ROLE_BUCKET_POLICY, "userIdentity": identity})
    assert e.entities.employee == arn
    assert decode_event(encode(e)) == e


def test_a_hidden_user_name_is_nobody_not_one_shared_employee() -> None:
    # A failed sign-in with a name that is no user of the account: CloudTrail hides the name
    # (people type their password there), the same word in every such record.
    identity = {
        "type": "IAMUser",
        "principalId": "111122223333",
        "accountId": "111122223333",
        "accessKeyId": "",
        "userName": cloudtrail.HIDDEN_USER,
    }
    e = normalize({**CONSOLE_LOGIN_FAIL, "userIdentity": identity})
    assert e.entities.employee is None
    assert e.payload.principal is None
    assert e.payload.attributes["user_hidden"] == "true"
    assert e.payload.outcome == "failure"
    assert e.entities.ip == "203.0.113.77"


def test_each_account_root_user_is_its_own_employee() -> None:
    def root(account: str) -> SecurityEvent:
        identity = {
            "type": "Root",
            "principalId": account,
            "arn": f"arn:aws:iam::{account}:root",
            "accountId": account,
        }
        return normalize({**CONSOLE_LOGIN_OK, "userIdentity": identity})

    assert root("111122223333").entities.employee == "root@111122223333"
    assert root("444455556666").entities.employee == "root@444455556666"
    no_account = {"type": "Root", "arn": "arn:aws:iam::777788889999:root"}
    assert normalize({**CONSOLE_LOGIN_OK, "userIdentity": no_account}).entities.employee == (
        "root@777788889999"
    )
    gov = {"type": "Root", "arn": "arn:aws-us-gov:iam::222233334444:root", "accountId": None}
    assert normalize({**CONSOLE_LOGIN_OK, "userIdentity": gov}).entities.employee == "root@222233334444"


def test_an_identity_center_user_is_named_by_its_identity_store_id() -> None:
    identity = {
        "type": "IdentityCenterUser",
        "accountId": "111122223333",
        "onBehalfOf": {
            "userId": "544894e8-80c1-707f-60e3-3ba6510dfac1",
            "identityStoreArn": "arn:aws:identitystore::111122223333:identitystore/d-9067642ac7",
        },
        "credentialId": "EXAMPLEVHULjJdTUdPJfofVa1sufHDoj7aYcOYcxFVllWR_Whr1fEXAMPLE",
    }
    e = normalize({**CONSOLE_LOGIN_OK, "userIdentity": identity})
    assert e.entities.employee == "identity-center:544894e8-80c1-707f-60e3-3ba6510dfac1"
    assert e.payload.attributes["identity_type"] == "IdentityCenterUser"


def test_a_null_identity_field_is_taken_for_absent() -> None:
    # A relay may write null where AWS leaves a field out: not a refused record.
    e = normalize({**CONSOLE_LOGIN_OK, "userIdentity": {**ALICE, "accountId": None, "principalId": None}})
    assert e.entities.employee == "alice"
    e = normalize({**CONSOLE_LOGIN_OK, "userIdentity": {**ALICE, "userName": None}})
    assert e.entities.employee == ALICE["arn"]


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("userName", ["alice"], "$.userIdentity.userName"),
        ("arn", {"a": 1}, "$.userIdentity.arn"),
        ("type", 7, "$.userIdentity.type"),
        ("accessKeyId", ["AKIAIOSFODNN7EXAMPLE"], "$.userIdentity.accessKeyId"),
        ("sessionContext", {"sessionIssuer": "x"}, "$.userIdentity.sessionContext.sessionIssuer"),
    ],
)
def test_an_identity_field_of_the_wrong_type_is_refused_by_name(field: str, value: Any, where: str) -> None:
    # str() of it made an employee of a list's repr.
    record = {**CONSOLE_LOGIN_OK, "userIdentity": {**ALICE, field: value}}
    raw = RawRecord("cloudtrail", "cloudtrail_record", json.dumps(record).encode(), datetime.now(UTC))
    with pytest.raises(
        ContractError, match=rf"CloudTrail record '{CONSOLE_LOGIN_OK['eventID']}': .* - at `\{where}`"
    ):
        CloudTrailNormalizer().normalize(raw)


@pytest.mark.parametrize("field", ["sourceIPAddress", "userAgent", "errorCode", "recipientAccountId"])
def test_a_top_level_field_of_the_wrong_type_is_refused_by_name(field: str) -> None:
    raw = RawRecord(
        "cloudtrail",
        "cloudtrail_record",
        json.dumps({**CONSOLE_LOGIN_OK, field: {"x": 1}}).encode(),
        datetime.now(UTC),
    )
    with pytest.raises(ContractError, match=rf"Expected `str \| null`, got `object` - at `\$\.{field}`"):
        CloudTrailNormalizer().normalize(raw)


def test_request_parameters_that_are_no_names_make_no_resource() -> None:
    # The same parameter name holds an object in some APIs: its repr names nothing.
    e = normalize({**ENABLE_MFA, "requestParameters": {"serialNumber": {"arn": "x"}, "userName": "alice"}})
    assert e.payload.resource == "alice"
    e = normalize({**GET_OBJECT, "requestParameters": {"bucketName": ["b"], "key": "k"}})
    assert e.payload.resource is None
    e = normalize({**GET_OBJECT, "additionalEventData": {"bytesTransferredOut": "lots"}})
    assert "bytes_out" not in e.payload.attributes


def test_unknown_event_kept_with_its_name_and_service_source_is_not_an_ip() -> None:
    e = normalize(SERVICE_CALL)
    assert e.payload.action == "DescribeInstances"
    assert e.payload.outcome == "failure"
    assert e.entities.ip is None
    assert e.payload.attributes["error_code"] == "Client.UnauthorizedOperation"


LEAKED_KEY_USE = _base(
    "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0010",
    "GetSecretValue",
    "secretsmanager.amazonaws.com",
    "2026-11-28T09:40:00Z",
    "203.0.113.99",
    userIdentity={
        **ALICE,
        "accessKeyId": "AKIAI44QH8DHBEXAMPLE",
        "sessionContext": {
            "attributes": {"creationDate": "2026-11-28T09:40:00Z", "mfaAuthenticated": "false"}
        },
    },
    requestParameters={"secretId": "hot-wallet-signer"},
)


def test_the_key_a_call_was_signed_with_is_its_api_key() -> None:
    # A leaked key in use: without its id nothing downstream could tell which key it was.
    e = normalize(LEAKED_KEY_USE)
    assert e.entities.api_key == "AKIAI44QH8DHBEXAMPLE"
    assert e.payload.attributes["access_key"] == "AKIAI44QH8DHBEXAMPLE"
    assert e.entities.employee == "alice"
    # A role session's temporary key is as much a key (and what a stolen session token signs with).
    identity = {**ASSUMED_ROLE_BUCKET_POLICY["userIdentity"], "accessKeyId": "ASIAIOSFODNN7EXAMPLE"}
    e = normalize({**ASSUMED_ROLE_BUCKET_POLICY, "userIdentity": identity})
    assert (e.entities.api_key, e.payload.attributes["access_key"]) == ("ASIAIOSFODNN7EXAMPLE",) * 2


def test_a_call_signed_with_no_key_has_none() -> None:
    # A console sign-in: accessKeyId is "" (an empty api_key the contract refuses).
    e = normalize({**CONSOLE_LOGIN_FAIL, "userIdentity": {**ALICE, "accessKeyId": ""}})
    assert e.entities.api_key is None
    assert "access_key" not in e.payload.attributes


@pytest.mark.parametrize(
    ("record", "made"),
    [
        (CREATE_ACCESS_KEY, "AKIAIOSFODNN7EXAMPLE"),
        (
            _base(
                "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0011",
                "AssumeRole",
                "sts.amazonaws.com",
                "2026-11-28T09:41:00Z",
                "203.0.113.99",
                requestParameters={"roleArn": "arn:aws:iam::111122223333:role/Admin", "roleSessionName": "a"},
                responseElements={
                    "credentials": {
                        "accessKeyId": "ASIAJEXAMPLEXEG2JICEA",
                        "sessionToken": "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN",
                        "expiration": "Nov 28, 2026, 10:41:00 AM",
                    },
                    "assumedRoleUser": {"assumedRoleId": "AROAEXAMPLEID:a", "arn": "arn:aws:sts::1:x"},
                },
            ),
            "ASIAJEXAMPLEXEG2JICEA",
        ),
    ],
)
def test_a_call_that_made_a_key_is_about_the_new_key_and_names_the_one_it_was_signed_with(
    record: dict[str, Any], made: str
) -> None:
    # The made key is the api_key (its later uses join this event on it); the calling one is kept.
    signed = {**record, "userIdentity": {**ALICE, "accessKeyId": "AKIAI44QH8DHBEXAMPLE"}}
    e = normalize(signed)
    assert e.entities.api_key == made
    assert e.payload.attributes["access_key"] == "AKIAI44QH8DHBEXAMPLE"
    # Only key ids: never a secret or a session token, anywhere in the event.
    assert "SESSIONTOKEN" not in encode(e).decode()


@pytest.mark.parametrize(("said", "recorded"), [("true", "true"), ("false", "false"), (True, "true")])
def test_whether_the_session_was_mfa_authenticated_is_kept_for_any_call(said: Any, recorded: str) -> None:
    # Not only console sign-ins (MFAUsed): an API call of a session made without MFA is worth knowing.
    identity = {**ALICE, "sessionContext": {"attributes": {"mfaAuthenticated": said}}}
    e = normalize({**LEAKED_KEY_USE, "userIdentity": identity})
    assert e.payload.attributes["mfa_authenticated"] == recorded
    assert "mfa_authenticated" not in normalize(CREATE_ACCESS_KEY).payload.attributes  # said nothing


def test_an_insights_record_is_refused_as_what_it_is() -> None:
    # An Insights record carries its eventName under insightDetails: refused for a missing
    # eventName, nothing said what it was.
    insight = {
        "eventVersion": "1.07",
        "eventTime": "2026-11-28T09:00:00Z",
        "awsRegion": "us-east-1",
        "eventID": "a9edc959-9488-4790-be0f-05d60e56b547",
        "eventType": "AwsCloudTrailInsight",
        "recipientAccountId": "111122223333",
        "sharedEventID": "c2806063-d85d-42c3-9027-d2c56a477314",
        "insightDetails": {
            "state": "Start",
            "eventSource": "iam.amazonaws.com",
            "eventName": "DeleteAccessKey",
            "insightType": "ApiCallRateInsight",
        },
        "eventCategory": "Insight",
    }
    raw = RawRecord("cloudtrail", "cloudtrail_record", json.dumps(insight).encode(), datetime.now(UTC))
    with pytest.raises(ContractError, match=r"'a9edc959-.*': a CloudTrail Insights record .* not a call"):
        CloudTrailNormalizer().normalize(raw)


def test_event_id_is_stable_per_cloudtrail_event_id() -> None:
    assert normalize(CONSOLE_LOGIN_OK).event_id == normalize(CONSOLE_LOGIN_OK).event_id
    assert normalize(CONSOLE_LOGIN_OK).event_id != normalize(CONSOLE_LOGIN_FAIL).event_id


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "CloudTrail record"),
        (b'{"eventTime": "2026-11-28T09:15:02Z", "eventName": "X", "eventSource": "y"}', "eventID"),
        (
            b'{"eventID": "", "eventTime": "2026-11-28T09:15:02Z", "eventName": "X", "eventSource": "y"}',
            r"Expected `str` of length >= 1 - at `\$.eventID`",
        ),
        (
            b'{"eventID": "1", "eventTime": "2026-11-28T09:15:02Z", "eventName": "", "eventSource": "y"}',
            r"CloudTrail record '1': Expected `str` of length >= 1 - at `\$.eventName`",
        ),
        (
            b'{"eventID": "1", "eventTime": "yesterday", "eventName": "X", "eventSource": "y"}',
            "eventTime",
        ),
        (
            b'{"eventID": "1", "eventTime": "2026-11-28T09:15:02Z", "eventName": "X", "eventSource": "y",'
            b' "userIdentity": "root"}',
            r"CloudTrail record .1.: Expected `object \| null`, got `str` - at `\$.userIdentity`",
        ),
        (
            b'{"eventID": "1", "eventTime": "0001-01-01T00:00:00+01:00", "eventName": "X",'
            b' "eventSource": "y"}',
            "eventTime '0001-01-01T00:00:00\\+01:00' is outside the years 1-9999",
        ),
        (
            b'{"eventID": "1", "eventTime": "9999-12-31T23:59:59-01:00", "eventName": "X",'
            b' "eventSource": "y"}',
            "eventTime .* is outside the years 1-9999",
        ),
    ],
)
def test_malformed_records_raise_contract_error(value: bytes, reason: str) -> None:
    raw = RawRecord("cloudtrail", "cloudtrail_record", value, datetime.now(UTC))
    with pytest.raises(ContractError, match=reason):
        CloudTrailNormalizer().normalize(raw)


def _run_until(source: CloudTrailSource, sink: MemorySink, files: int) -> None:
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    end = time.monotonic() + 10.0
    while source.published_files < files and time.monotonic() < end and thread.is_alive():
        time.sleep(0.01)
    source.stop()
    thread.join(10)
    assert source.published_files == files


def test_source_publishes_each_file_once_and_resumes_from_cursor(tmp_path: Path) -> None:
    write_log(tmp_path, "111122223333_CloudTrail_us-east-1_20261128T0915Z_a.json.gz", ALL[:4])
    write_log(tmp_path, "111122223333_CloudTrail_us-east-1_20261128T0920Z_b.json", ALL[4:], gz=False)
    sink = MemorySink()
    sink.source_id = "cloudtrail"
    _run_until(CloudTrailSource(tmp_path, poll_interval=0.05), sink, 2)
    assert [json.loads(r.value)["eventID"] for r in sink.records] == [r["eventID"] for r in ALL]
    assert [r.key for r in sink.records] == [r["eventID"].encode() for r in ALL]
    assert len(sink.cursors["cloudtrail"]["prefixes"][PREFIX]["done"]) == 2
    # A restart with the same cursor publishes only what is new.
    write_log(tmp_path, "111122223333_CloudTrail_us-east-1_20261128T0925Z_c.json.gz", [CONSOLE_LOGIN_OK])
    before = len(sink.records)
    _run_until(CloudTrailSource(tmp_path, poll_interval=0.05), sink, 1)
    assert len(sink.records) == before + 1
    assert len(sink.cursors["cloudtrail"]["prefixes"][PREFIX]["done"]) == 3


def test_bad_file_stops_the_source_unless_skipping(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(SourceError, match=r"broken\.json"):
        CloudTrailSource(tmp_path, poll_interval=0.05).run(MemorySink())
    write_log(tmp_path, "good.json.gz", ALL[:1])
    source = CloudTrailSource(tmp_path, poll_interval=0.05, skip_bad_files=True)
    sink = MemorySink()
    _run_until(source, sink, 1)
    assert list(source.bad_files) == ["broken.json"]
    assert len(sink.records) == 1


def test_from_settings_options(tmp_path: Path) -> None:
    from vigil.config import Settings

    source = CloudTrailSource.from_settings(
        Settings(), dir=str(tmp_path), poll_interval="2", skip_bad_files="true"
    )
    assert (source.directory, source.poll_interval, source.skip_bad_files) == (tmp_path, 2.0, True)
    with pytest.raises(SourceError, match="option 'dir'"):
        CloudTrailSource.from_settings(Settings())
