"""Malformed input of every kind: each normaliser either returns valid events or raises
ContractError (which the normalise stage dead-letters) -- never another exception, nor an event
the contract refuses downstream (an empty id, a negative count).  Inputs are seeded random
mutations of real records (and of the documented shapes of the SaaS and exchange ones)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError
from vigil.events.base import Event
from vigil.events.codec import decode_event, encode
from vigil.events.examples import example_events
from vigil.hub.raw import RawRecord
from vigil.sources.backend import BackendNormalizer
from vigil.sources.binance import BinanceNormalizer
from vigil.sources.bitcoin_normalize import BitcoinNormalizer
from vigil.sources.cloudtrail import CloudTrailNormalizer
from vigil.sources.coinbase import CoinbaseNormalizer
from vigil.sources.ethereum_normalize import EthereumNormalizer
from vigil.sources.hubspot import HubSpotNormalizer
from vigil.sources.intel.lists import content_version
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.mailchimp import MailchimpNormalizer
from vigil.sources.salesforce import SalesforceNormalizer
from vigil.sources.syslog import SyslogNormalizer

NOW = datetime(2026, 11, 29, tzinfo=UTC)
STIX = shared_data_dir() / "intel" / "stix" / "indicators-for-C2-with-COA.json"
CHAIN = shared_data_dir() / "chain"
ETH_BLOCK = json.loads((CHAIN / "ethereum" / "block_0x1ac9f3.json").read_bytes())["result"]
ETH_LOGS = json.loads((CHAIN / "ethereum" / "receipt_0x2e3d.json").read_bytes())["result"]["logs"]
(BTC_BLOCK,) = (CHAIN / "bitcoin").glob("block_with_transactions_*_000000001c920d49*_2.json")

SYSLOG = (
    b'<38>1 2026-11-29T09:00:01.123456Z bastion-1 sshd 4242 AUTH_FAIL [auth@32473 user="alice" '
    b'src="203.0.113.7" outcome="failure"] Failed password for alice'
)
CLOUDTRAIL: dict[str, Any] = {
    "eventVersion": "1.08",
    "userIdentity": {
        "type": "IAMUser",
        "userName": "alice",
        "arn": "arn:aws:iam::111122223333:user/alice",
        "accessKeyId": "AKIAI44QH8DHBEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {"arn": "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/x"},
            "attributes": {"mfaAuthenticated": "true"},
        },
    },
    "eventTime": "2026-11-28T09:20:11Z",
    "eventSource": "iam.amazonaws.com",
    "eventName": "CreateAccessKey",
    "sourceIPAddress": "198.51.100.23",
    "requestParameters": {"userName": "deploy-bot"},
    "responseElements": {"accessKey": {"accessKeyId": "AKIAIOSFODNN7EXAMPLE", "status": "Active"}},
    "additionalEventData": {"MFAUsed": "Yes"},
    "eventID": "3fcfb586-5d2b-4d4e-a9b7-0c1f5b1c0003",
}

HUBSPOT_AUDIT: dict[str, Any] = {
    "results": [
        {
            "id": "a1",
            "category": "LOGIN",
            "subCategory": "LOGIN_FAILED",
            "occurredAt": "2026-11-28T12:01:00Z",
            "actingUser": {"userId": 89274502, "userEmail": "mark.scout@example.com"},
            "ipAddress": "198.51.100.7",
            "countryCode": "ie",
        },
        {
            "id": "a2",
            "category": "EXPORT",
            "targetObjectId": "export-9",
            "occurredAt": "2026-11-28T12:02:00Z",
            "actingUser": {"userId": 89274502},
            "ipAddress": "198.51.100.7",
            "details": {"objectType": "CONTACT", "recordCount": 2, "objectIds": [901, "902"]},
        },
    ]
}
SALESFORCE_LOGINS: dict[str, Any] = {
    "records": [
        {
            "attributes": {"type": "LoginEvent"},
            "EventIdentifier": "login-1",
            "EventDate": "2026-11-28T11:00:00.000Z",
            "Username": "alice@acme.example",
            "SourceIp": "203.0.113.9",
            "Status": "Success",
            "CountryIso": "RO",
            "Latitude": 44.43,
            "Longitude": 26.1,
        },
        {
            "attributes": {"type": "ApiEvent"},
            "EventIdentifier": "api-1",
            "EventDate": "2026-11-28T11:05:00Z",
            "Username": "svc@acme.example",
            "ConnectedAppId": "0H45e000000001",
            "Operation": "Query",
            "RowsProcessed": 9000,
            "SourceIp": "192.0.2.55",
        },
    ]
}
MANDRILL_CLICK: list[dict[str, Any]] = [
    {
        "event": "click",
        "_id": "evt-1",
        "ts": 1795000000,
        "url": "https://wallet-verify.example.net/login?u=1",
        "ip": "203.0.113.50",
        "msg": {"_id": "msg-1", "email": "Bob@Example.com", "metadata": {"campaign_id": "cmp-77"}},
    }
]
COINBASE_MATCH: dict[str, Any] = {
    "type": "match",
    "trade_id": 1568268,
    "side": "sell",
    "size": "450",
    "price": "0.791",
    "product_id": "SKL-USD",
    "time": "2026-11-28T16:43:37.121358Z",
}
BINANCE_TRADE: dict[str, Any] = {
    "e": "trade", "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100", "b": 88, "a": 50,
    "T": 1795000000000, "m": True,
}  # fmt: skip


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 1 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2 and b:
        i = rng.randrange(len(b))
        del b[i : i + rng.randrange(1, 8)]
    else:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.choice([b"\x00", b'"', b"]", b"[", b"\\", b" ", b"\xff", b"{", b"-"])
    return bytes(b)


_ODD: list[Any] = [
    None,
    0,
    -1,
    1.5,
    "",
    "x",
    [],
    {},
    True,
    [1, "a"],
    {"a": None},
    91.0,
    10**400,
    "1e400",
    ".",
]


def mutate_json(doc: Any, rng: random.Random) -> Any:
    """Replace one value somewhere in the document with a value of another type."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        key = rng.choice(list(doc))
        if rng.random() < 0.1:  # a key changed instead (a domain map's keys are its values)
            return {
                **{k: v for k, v in doc.items() if k != key},
                rng.choice(["", ".", " ", key.upper()]): doc[key],
            }
        return {**doc, key: mutate_json(doc[key], rng)}
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        i = rng.randrange(len(doc))
        return [*doc[:i], mutate_json(doc[i], rng), *doc[i + 1 :]]
    return rng.choice(_ODD)


def check(normalize: Callable[[RawRecord], list[Event]], record: RawRecord) -> str:
    try:
        events = normalize(record)
    except ContractError:
        return "rejected"
    for event in events:
        assert decode_event(encode(event)) == event  # anything returned is a valid contract instance
    return "ok"


def _records(
    kind: str, source: str, base: bytes, rng: random.Random, meta: dict[str, Any]
) -> list[RawRecord]:
    out = [RawRecord(source, kind, mutate_bytes(base, rng), NOW, meta=meta) for _ in range(150)]
    try:
        doc = json.loads(base)
    except ValueError:
        return out
    out += [
        RawRecord(source, kind, json.dumps(mutate_json(doc, rng)).encode(), NOW, meta=meta)
        for _ in range(150)
    ]
    return out


def _list_meta(data: bytes) -> dict[str, Any]:
    return {"list": "t", "format": "json_domain_map", "feed": "scamsniffer", "version": content_version(data)}


CASES: list[tuple[str, Callable[[RawRecord], list[Event]], str, bytes, dict[str, Any]]] = [
    ("syslog", SyslogNormalizer().normalize, "syslog", SYSLOG, {}),
    (
        "cloudtrail",
        CloudTrailNormalizer().normalize,
        "cloudtrail_record",
        json.dumps(CLOUDTRAIL).encode(),
        {},
    ),
    ("backend", BackendNormalizer().normalize, "canonical", encode(example_events(NOW)[0]), {}),
    ("hubspot", HubSpotNormalizer().normalize, "audit_log", json.dumps(HUBSPOT_AUDIT).encode(), {}),
    ("salesforce", SalesforceNormalizer().normalize, "webhook", json.dumps(SALESFORCE_LOGINS).encode(), {}),
    (
        "mailchimp",
        MailchimpNormalizer().normalize,
        "webhook",
        urlencode({"mandrill_events": json.dumps(MANDRILL_CLICK)}).encode(),
        {},
    ),
    ("ethereum", EthereumNormalizer().normalize, "eth_block", json.dumps(ETH_BLOCK).encode(), {}),
    (
        "ethereum",
        EthereumNormalizer().normalize,
        "eth_logs",
        json.dumps(ETH_LOGS).encode(),
        {"block_timestamp": int(ETH_BLOCK["timestamp"], 16)},
    ),
    ("bitcoin", BitcoinNormalizer().normalize, "btc_block", BTC_BLOCK.read_bytes(), {}),
    ("coinbase", CoinbaseNormalizer().normalize, "ws_message", json.dumps(COINBASE_MATCH).encode(), {}),
    ("binance", BinanceNormalizer().normalize, "ws_message", json.dumps(BINANCE_TRADE).encode(), {}),
    ("intel", IntelNormalizer().normalize, "stix_bundle", STIX.read_bytes(), {"feed": "oasis"}),
    (
        "intel",
        IntelNormalizer().normalize,
        "address_list",
        b'{"evil.example": ["0x00000000000000000000000000000000000dead1"], "b.example": []}',
        _list_meta(b"x"),
    ),
]


@pytest.mark.parametrize(
    ("source", "normalize", "kind", "base", "meta"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_mutated_records_are_events_or_contract_errors(
    source: str, normalize: Callable[[RawRecord], list[Event]], kind: str, base: bytes, meta: dict[str, Any]
) -> None:
    rng = random.Random(f"{source}-{kind}-{len(base)}-5424")
    outcomes = [check(normalize, rec) for rec in _records(kind, source, base, rng, meta)]
    # Both paths are exercised, so the test really probes the error handling.
    assert "rejected" in outcomes
    assert check(normalize, RawRecord(source, kind, base, NOW, meta=meta)) == "ok"
