"""The Bitcoin normaliser on real Bitcoin Core ``getblock <hash> 2`` responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError, DecodeError
from vigil.events.codec import decode_event, encode
from vigil.events.types import ChainTransfer
from vigil.hub.raw import RawRecord
from vigil.sources.bitcoin_normalize import BitcoinNormalizer

DATA = shared_data_dir() / "chain" / "bitcoin"
GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
BLOCK_50001 = "000000001c920d495e1eeef2452b6d1c6c229a919b28196c103ecffebabee141"


def _raw(block_hash: str) -> bytes:
    (path,) = [p for p in DATA.glob(f"block_*_{block_hash}_2.json")]
    return path.read_bytes()


def _record(value: bytes | dict[str, Any], kind: str = "btc_block") -> RawRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord("bitcoin", kind, raw, datetime(2026, 1, 1, tzinfo=UTC), key=b"50001")


def _transfers(record: RawRecord) -> list[ChainTransfer]:
    events = BitcoinNormalizer().normalize(record)
    transfers = [e for e in events if isinstance(e, ChainTransfer)]
    assert len(transfers) == len(events)
    return transfers


def test_genesis_coinbase_pays_satoshi() -> None:
    (ev,) = _transfers(_record(_raw(GENESIS)))
    assert isinstance(ev, ChainTransfer)
    assert ev.payload.chain == "bitcoin"
    assert ev.payload.to_address == ev.entities.counterparty == "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
    assert ev.payload.from_address == "coinbase"
    assert ev.entities.wallet is None
    assert (ev.payload.value_raw, ev.payload.amount, ev.payload.decimals) == (5_000_000_000, 50.0, 8)
    assert ev.payload.block_number == 0
    assert ev.occurred_at == datetime(2009, 1, 3, 18, 15, 5, tzinfo=UTC)


def test_block_50001_has_one_event_per_paying_output() -> None:
    raw = _raw(BLOCK_50001)
    events = _transfers(_record(raw))
    block = json.loads(raw)
    outputs = [(tx["txid"], out["n"]) for tx in block["tx"] for out in tx["vout"]]
    assert len(events) == len(outputs) == 3
    got = [
        (e.payload.tx_hash, e.payload.to_address, e.payload.value_raw, e.payload.from_address) for e in events
    ]
    miner, payee = "1PkqKGbNLDdDJGveCcNUMV9CEFH77ADrPQ", "1HaHTfmvoUW6i6nhJf8jJs6tU4cHNmBQHQ"
    assert got == [
        (
            "e1882d41800d96d0fddc196cd8d3f0b45d65b030c652d97eaba79a1174e64d58",
            miner,
            5_000_000_000,
            "coinbase",
        ),
        (
            "7940cdde4d713e171849efc6bd89939185be270266c94e92369e3877ad89455a",
            payee,
            10_000_000_000,
            "unknown",
        ),
        ("f84761459a00c6df3176ae5d94c99e69f25100d09548e5686bd0c354bb8cc60a", payee, 5_000_000_000, "unknown"),
    ]
    # Verbosity 2 has no prevout: the spender is not resolvable, so no wallet is invented.
    assert all(e.entities.wallet is None for e in events)
    assert len({e.event_id for e in events}) == 3
    for ev in events:
        assert decode_event(encode(ev)) == ev


def test_every_recorded_block_normalises_with_stable_ids() -> None:
    files = sorted(DATA.glob("*_getblock_*_2.json"))
    assert len(files) == 7
    for path in files:
        first = _transfers(_record(path.read_bytes()))
        again = _transfers(_record(path.read_bytes()))
        assert first, path.name
        assert [e.event_id for e in first] == [e.event_id for e in again]


def test_prevout_resolves_the_sender() -> None:
    block = json.loads(_raw(BLOCK_50001))
    # Shape of Bitcoin Core 25+ verbosity 3: each input carries the output it spends.
    block["tx"][1]["vin"][0]["prevout"] = {
        "value": 50.0,
        "scriptPubKey": {"type": "pubkeyhash", "address": "1BitcoinEaterAddressDontSendf59kuE"},
    }
    events = _transfers(_record(block))
    assert events[1].payload.from_address == events[1].entities.wallet == "1BitcoinEaterAddressDontSendf59kuE"
    assert events[2].payload.from_address == "unknown"


def test_outputs_without_an_address_are_skipped() -> None:
    block = json.loads(_raw(BLOCK_50001))
    block["tx"][1]["vout"].append(
        {"value": 0.0, "n": 1, "scriptPubKey": {"type": "nulldata", "asm": "OP_RETURN 6869"}}
    )
    block["tx"][1]["vout"].append(
        {"value": 1.0, "n": 2, "scriptPubKey": {"type": "multisig", "addresses": ["1A", "1B"]}}
    )
    assert len(_transfers(_record(block))) == 3


def test_segwit_address_in_the_newer_field_is_used() -> None:
    block = json.loads(_raw(BLOCK_50001))
    block["tx"][1]["vout"][0]["scriptPubKey"] = {
        "type": "witness_v0_keyhash",
        "address": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    }
    events = _transfers(_record(block))
    assert events[1].payload.to_address == "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


def test_satoshi_amounts_are_exact() -> None:
    block = json.loads(_raw(BLOCK_50001))
    block["tx"][1]["vout"][0]["value"] = 0.1 + 0.2  # 0.30000000000000004 as a double
    events = _transfers(_record(block))
    assert events[1].payload.value_raw == 30_000_000


# ---------------------------------------------------------------------- malformed input


def test_bad_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        _transfers(_record(b'{"hash": "00'))


def test_missing_field_names_it() -> None:
    block = json.loads(_raw(GENESIS))
    del block["time"]
    with pytest.raises(DecodeError, match="time"):
        _transfers(_record(block))


def test_bad_txid_names_the_path() -> None:
    block = json.loads(_raw(BLOCK_50001))
    block["tx"][2]["txid"] = "not-a-txid"
    with pytest.raises(DecodeError, match="64-hex txid") as info:
        _transfers(_record(block))
    assert info.value.path == "$.tx[2].txid"


def test_bad_block_hash_is_rejected() -> None:
    block = json.loads(_raw(GENESIS))
    block["hash"] = "0xZZ"
    with pytest.raises(DecodeError, match="block hash"):
        _transfers(_record(block))


def test_verbosity_1_block_is_rejected() -> None:
    block = json.loads(_raw(BLOCK_50001))
    block["tx"] = [tx["txid"] for tx in block["tx"]]
    with pytest.raises(DecodeError, match="verbosity 2 or 3"):
        _transfers(_record(block))


def test_negative_value_is_rejected() -> None:
    block = json.loads(_raw(GENESIS))
    block["tx"][0]["vout"][0]["value"] = -1
    with pytest.raises(DecodeError, match="between 0 and 21e6") as info:
        _transfers(_record(block))
    assert info.value.path == "$.tx[0].vout[0].value"


def test_attacker_string_as_address_is_rejected_as_data() -> None:
    block = json.loads(_raw(GENESIS))
    block["tx"][0]["vout"][0]["scriptPubKey"]["addresses"] = ["<script>alert(1)</script>"]
    with pytest.raises(DecodeError, match="Bitcoin address"):
        _transfers(_record(block))


def test_unknown_kind_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="unknown record kind 'btc_tx'"):
        _transfers(_record(_raw(GENESIS), kind="btc_tx"))


def test_each_transfer_names_its_block() -> None:
    # Without it, the events of a block a reorg replaced could not be told from the new block's.
    events = _transfers(_record(_raw(BLOCK_50001)))
    assert {e.payload.block_hash for e in events} == {BLOCK_50001}
    assert all(decode_event(encode(e)) == e for e in events)
