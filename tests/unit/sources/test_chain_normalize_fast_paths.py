"""The shortcuts the chain normalisers and raw-header decoding take for speed give exactly
what the plain computations give: ids, checks of values that repeat within a record, and
``vigil.meta`` decoded as ``json.loads`` decodes it."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from vigil.errors import DecodeError
from vigil.events.ids import stable_id
from vigil.hub.raw import META, RECEIVED_AT, RawRecord
from vigil.sources.chain_normalize import event_id
from vigil.sources.ethereum import TRANSFER_TOPIC
from vigil.sources.ethereum_normalize import EthereumNormalizer
from vigil.sources.normalize import decode_raw

RECEIVED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TX = "0x" + "ab" * 32


@pytest.mark.parametrize(
    ("event_type", "chain", "tx_hash", "part"),
    [
        ("chain_transfer", "ethereum", TX, "native"),
        ("chain_transfer", "ethereum", TX, 0),
        ("token_approval", "ethereum", TX, 123_456),
        ("chain_transfer", "bitcoin", "ff" * 32, 7),
        ("chain_transfer", "ethereum", "", ""),
    ],
)
def test_event_id_is_the_stable_id_of_the_same_parts(
    event_type: str, chain: str, tx_hash: str, part: str | int
) -> None:
    assert event_id(event_type, chain, tx_hash, part) == stable_id(event_type, chain, tx_hash, part)


def _transfer_log(log_index: int, **changes: Any) -> dict[str, Any]:
    log = {
        "address": "0x" + "33" * 20,
        "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + "11" * 20, "0x" + "00" * 12 + "22" * 20],
        "data": "0x" + format(10**18, "064x"),
        "blockNumber": "0x10",
        "transactionHash": TX,
        "logIndex": hex(log_index),
        "blockTimestamp": "0x65000000",
    }
    return {**log, **changes}


def _logs(*logs: dict[str, Any]) -> RawRecord:
    return RawRecord("ethereum", "eth_logs", json.dumps(list(logs)).encode(), RECEIVED, key=b"1")


def test_a_hash_checked_as_a_topic_is_still_refused_as_an_address() -> None:
    as_topic = "0x" + "33" * 32  # a valid topic, not a valid address
    first = _transfer_log(0, topics=[TRANSFER_TOPIC, as_topic, as_topic])
    second = _transfer_log(1, address=as_topic)
    with pytest.raises(DecodeError, match="20-byte hex address") as info:
        EthereumNormalizer().normalize(_logs(first, second))
    assert info.value.path == "$[1].address"


def test_a_bad_topic_is_reported_at_each_log_that_repeats_it_first() -> None:
    bad = _transfer_log(0, topics=[TRANSFER_TOPIC, "0x12", "0x12"])
    with pytest.raises(DecodeError, match="32-byte hex hash") as info:
        EthereumNormalizer().normalize(_logs(_transfer_log(0), bad, bad))
    assert info.value.path == "$[1].topics[1]"


def test_repeated_values_give_the_same_events_as_distinct_ones() -> None:
    upper = _transfer_log(1, transactionHash=TX.upper().replace("0X", "0x"))
    events = EthereumNormalizer().normalize(_logs(_transfer_log(0), upper, _transfer_log(2)))
    assert [e.event_id for e in events] == [stable_id("chain_transfer", "ethereum", TX, i) for i in range(3)]
    assert len({e.occurred_at for e in events}) == 1


@pytest.mark.parametrize(
    "meta",
    [
        b'{"block_timestamp": 1700000000, "failed_txs": ["0xab"]}',
        b'{"big": 123456789012345678901234567890, "f": 0.1, "e": 1e22}',
        b'{"a": 1, "a": 2}',
        b'{"nan": NaN, "inf": 1e400}',  # json.loads accepts these; msgspec does not
        b'{"s": "\\ud800"}',
    ],
)
def test_meta_decodes_as_json_loads_decodes_it(meta: bytes) -> None:
    headers = [("vigil.kind", b"eth_logs"), (RECEIVED_AT, RECEIVED.isoformat().encode()), (META, meta)]
    got = decode_raw("raw.ethereum", b"[]", None, headers).meta
    want = json.loads(meta)
    assert repr(got) == repr(want)
    assert all(type(got[k]) is type(want[k]) for k in want)
    if "nan" in want:
        assert math.isnan(got["nan"])


def test_record_from_headers_equals_the_record_sent() -> None:
    sent = RawRecord("ethereum", "eth_block", b"{}", RECEIVED, b"7", {"failed_txs": [TX]})
    got = RawRecord.from_headers("ethereum", b"{}", b"7", sent.headers())
    assert got == sent
    # Every field as __init__ sets it (from_headers fills __dict__ itself), and the headers as read.
    assert vars(got) == vars(sent) | {"received_headers": sent.headers()}
    assert got.received_at.tzinfo is UTC
    assert RawRecord.from_headers("ethereum", b"{}", None, None).received_at == datetime.fromtimestamp(0, UTC)


@pytest.mark.parametrize(
    ("field", "bad", "path"),
    [
        ("value", "0x5\n" + "0x" + "ab" * 32, "$.transactions[0].value"),
        ("hash", TX + "\n", "$.transactions[0].hash"),
        ("from", "0x" + "11" * 20 + "\n0x1", "$.transactions[0].from"),
    ],
)
def test_transaction_fields_checked_together_are_each_reported_by_path(
    field: str, bad: str, path: str
) -> None:
    tx = {"hash": TX, "from": "0x" + "11" * 20, "to": "0x" + "22" * 20, "value": "0x5", field: bad}
    block = {"number": "0x10", "hash": TX, "timestamp": "0x65000000", "transactions": [tx]}
    record = RawRecord("ethereum", "eth_block", json.dumps(block).encode(), RECEIVED, key=b"1")
    with pytest.raises(DecodeError, match="must be a 0x-prefixed") as info:
        EthereumNormalizer().normalize(record)
    assert info.value.path == path
