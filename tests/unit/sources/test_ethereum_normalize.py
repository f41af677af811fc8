"""The Ethereum normaliser on real mainnet JSON-RPC responses (../shared/data/chain/ethereum).

Block 1755635 (0x1ac9f3) and one receipt are raw node responses.  Blocks 17173049-50
are ethereum-etl exports; the test turns them back into the node's JSON-RPC shape (hex
quantities, camelCase) and checks the normaliser finds exactly the 282 ERC-20 transfers among
the 291 token transfers ethereum-etl extracted independently (the other 9 are ERC-721).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError, DecodeError
from vigil.events.codec import decode_event, encode
from vigil.events.ids import stable_id
from vigil.events.types import ChainTransfer, ChainTransferPayload, TokenApproval
from vigil.hub.raw import RawRecord
from vigil.sources.ethereum import APPROVAL_FOR_ALL_TOPIC, APPROVAL_TOPIC, LOG_TOPICS, TRANSFER_TOPIC
from vigil.sources.ethereum_normalize import EthereumNormalizer, Token

DATA = shared_data_dir() / "chain" / "ethereum"
RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _record(kind: str, value: Any, **meta: Any) -> RawRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord("ethereum", kind, raw, RECEIVED, key=b"1", meta=meta)


def _rpc_log(etl: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": etl["address"],
        "topics": etl["topics"],
        "data": etl["data"],
        "blockNumber": hex(etl["block_number"]),
        "blockHash": etl["block_hash"],
        "transactionHash": etl["transaction_hash"],
        "transactionIndex": hex(etl["transaction_index"]),
        "logIndex": hex(etl["log_index"]),
        "removed": False,
    }


def _rpc_block(etl_block: dict[str, Any], txs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "number": hex(etl_block["number"]),
        "hash": etl_block["hash"],
        "parentHash": etl_block["parent_hash"],
        "timestamp": hex(etl_block["timestamp"]),
        "transactions": [
            {
                "hash": tx["hash"],
                "from": tx["from_address"],
                "to": tx["to_address"],
                "value": hex(tx["value"]),
                "input": tx["input"],
                "nonce": hex(tx["nonce"]),
                "blockNumber": hex(tx["block_number"]),
            }
            for tx in txs
            if tx["block_number"] == etl_block["number"]
        ],
    }


@pytest.fixture(scope="module")
def mainnet_block() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DATA / "block_0x1ac9f3.json").read_text())["result"]
    return result


@pytest.fixture(scope="module")
def mainnet_receipt() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DATA / "receipt_0x2e3d.json").read_text())["result"]
    return result


def test_native_transfers_from_a_raw_mainnet_block(mainnet_block: dict[str, Any]) -> None:
    events = EthereumNormalizer().normalize(_record("eth_block", mainnet_block))

    # Of the two transactions, only 0x9a54... carries ether (the other is a 0-value contract call).
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, ChainTransfer)
    assert ev.payload.tx_hash == "0x9a5437ec71b74ecf5930b406908ac6999966d38a86d1534b7190ece7599095eb"
    assert ev.payload.value_raw == int("0x5a178a89b930e00", 16)
    assert ev.payload.amount == pytest.approx(0.405738107)
    assert ev.payload.log_index is None
    assert ev.payload.block_number == 0x1AC9F3
    assert ev.entities.wallet == "0x3763e6e1228bfeab94191c856412d1bb0a8e6996"
    assert ev.entities.counterparty == "0xec1ebac9da3430213281c80fa6d46378341a96ae"
    assert ev.occurred_at == datetime.fromtimestamp(0x576B99FA, UTC)


def test_erc20_transfers_from_a_raw_mainnet_receipt(
    mainnet_block: dict[str, Any], mainnet_receipt: dict[str, Any]
) -> None:
    logs = mainnet_receipt["logs"]
    events = EthereumNormalizer().normalize(
        _record("eth_logs", logs, block_timestamp=int(mainnet_block["timestamp"], 16))
    )

    transfers = [e for e in events if isinstance(e, ChainTransfer)]
    expected = [log for log in logs if log["topics"][0] == TRANSFER_TOPIC and len(log["topics"]) == 3]
    assert len(transfers) == len(expected) > 0
    first = transfers[0]
    assert first.payload.log_index == 0
    assert first.payload.from_address == "0x6498077292a0921c8804924fdf47b5e91e2a215f"
    assert first.payload.to_address == "0x8b3b3b624c3c0397d3da8fd861512393d51dcbac"
    assert first.payload.value_raw == 5 * 10**18
    # Unknown token: named by its contract, 18 decimals assumed.
    assert first.payload.asset == first.payload.token_contract == "0xbb9bc244d798123fde783fcc1c72d3bb8c189413"
    assert first.payload.amount == 5.0
    assert first.occurred_at == datetime.fromtimestamp(0x576B99FA, UTC)


def test_all_token_transfers_of_blocks_17173049_50_match_ethereum_etl() -> None:
    logs = _lines("17173049_expected_logs.json")
    blocks = {b["number"]: b for b in _lines("17173049_expected_blocks.json")}
    normalizer = EthereumNormalizer()
    found: set[tuple[str, int, str, str, str, int]] = set()
    for number in sorted(blocks):
        block_logs = [_rpc_log(log) for log in logs if log["block_number"] == number]
        record = _record("eth_logs", block_logs, block_timestamp=blocks[number]["timestamp"])
        for ev in normalizer.normalize(record):
            if isinstance(ev, ChainTransfer):
                p = ev.payload
                assert p.log_index is not None
                found.add(
                    (
                        p.tx_hash,
                        p.log_index,
                        p.token_contract or "",
                        p.from_address,
                        p.to_address,
                        p.value_raw,
                    )
                )

    # ethereum-etl also lists ERC-721 transfers (four topics, the token id indexed); Vigil does not.
    nft = {
        (log["transaction_hash"], log["log_index"])
        for log in logs
        if len(log["topics"]) == 4 and log["topics"][0] == TRANSFER_TOPIC
    }
    etl = _lines("17173049_expected_token_transfers.json")
    expected = {
        (
            t["transaction_hash"],
            t["log_index"],
            t["token_address"],
            t["from_address"],
            t["to_address"],
            t["value"],
        )
        for t in etl
        if (t["transaction_hash"], t["log_index"]) not in nft
    }
    assert (len(etl), len(nft), len(expected)) == (291, 9, 282)
    assert found == expected


def test_known_tokens_get_their_decimals_and_symbol() -> None:
    logs = [_rpc_log(log) for log in _lines("17173049_expected_logs.json") if log["block_number"] == 17173049]
    events = EthereumNormalizer().normalize(_record("eth_logs", logs, block_timestamp=1683029999))

    weth = [e for e in events if isinstance(e, ChainTransfer) and e.payload.asset == "WETH"]
    assert weth, "block 17173049 has WETH transfers"
    assert weth[0].payload.token_contract == "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"  # noqa: S105
    assert weth[0].payload.amount == pytest.approx(weth[0].payload.value_raw / 1e18)
    usdc = [e for e in events if isinstance(e, ChainTransfer) and e.payload.asset == "USDC"]
    assert usdc
    assert all(e.payload.decimals == 6 for e in usdc)
    assert usdc[0].payload.amount == pytest.approx(usdc[0].payload.value_raw / 1e6)


def test_wbtc_has_its_8_decimals_and_unknown_tokens_say_theirs_are_assumed() -> None:
    # WBTC was not known: 3.88 WBTC read 3.88e-10, its 18 decimals stated as fact.
    logs = [_rpc_log(log) for log in _lines("17173049_expected_logs.json") if log["block_number"] == 17173049]
    events = EthereumNormalizer().normalize(_record("eth_logs", logs, block_timestamp=1683029999))
    transfers = [e.payload for e in events if isinstance(e, ChainTransfer)]
    wbtc = [p for p in transfers if p.token_contract == "0x2260fac5e5542a773aa44fbcfedf7c193bc2c599"]  # noqa: S105
    assert [(p.asset, p.value_raw, p.decimals, p.amount, p.decimals_assumed) for p in wbtc] == [
        ("WBTC", 388_000_000, 8, 3.88, False)
    ] * 2
    known = {t.token_contract for t in transfers if t.asset in {"WETH", "USDC", "USDT", "WBTC", "DAI"}}
    assert all(p.decimals_assumed is (p.token_contract not in known) for p in transfers)
    assert any(p.decimals_assumed for p in transfers)


def test_decimals_the_connector_learned_are_used_and_not_assumed() -> None:
    log = _approval_log(0)
    log["topics"] = [TRANSFER_TOPIC, *log["topics"][1:]]
    log["data"] = "0x" + format(388_000_000, "064x")
    log["address"] = "0x" + "3C" * 20
    learned = {"0x" + "3c" * 20: 8}
    (ev,) = EthereumNormalizer().normalize(_record("eth_logs", [log], token_decimals=learned))
    assert isinstance(ev, ChainTransfer)
    assert (ev.payload.asset, ev.payload.decimals, ev.payload.amount) == ("0x" + "3c" * 20, 8, 3.88)
    assert ev.payload.decimals_assumed is False
    (assumed,) = EthereumNormalizer().normalize(_record("eth_logs", [log]))
    assert isinstance(assumed, ChainTransfer)
    assert (assumed.payload.decimals, assumed.payload.decimals_assumed) == (18, True)
    with pytest.raises(ContractError, match=r"meta\.token_decimals must map token contract addresses"):
        EthereumNormalizer().normalize(_record("eth_logs", [log], token_decimals={"0x" + "3c" * 20: 300}))


def test_events_name_the_block_of_the_record(mainnet_block: dict[str, Any]) -> None:
    (native,) = EthereumNormalizer().normalize(_record("eth_block", mainnet_block))
    assert isinstance(native, ChainTransfer)
    assert native.payload.block_hash == mainnet_block["hash"].lower()
    logs = [_rpc_log(log) for log in _lines("17173049_expected_logs.json") if log["block_number"] == 17173049]
    events = EthereumNormalizer().normalize(_record("eth_logs", logs, block_timestamp=1683029999))
    assert {e.payload.block_hash for e in events} == {logs[0]["blockHash"].lower()}
    # A log without blockHash (some providers) takes the record's, which the connector sets.
    log = _approval_log(5)
    meta_hash = "0x" + "cd" * 32
    (approval,) = EthereumNormalizer().normalize(_record("eth_logs", [log], hash=meta_hash))
    assert isinstance(approval, TokenApproval)
    assert approval.payload.block_hash == meta_hash
    assert decode_event(encode(approval)) == approval


def test_native_transfers_of_block_17173049_match_the_transactions_with_value() -> None:
    txs = _lines("17173049_expected_transactions.json")
    block = next(b for b in _lines("17173049_expected_blocks.json") if b["number"] == 17173049)
    events = EthereumNormalizer().normalize(_record("eth_block", _rpc_block(block, txs)))

    expected = {
        (t["hash"], t["from_address"], t["to_address"], t["value"])
        for t in txs
        if t["block_number"] == 17173049 and t["value"] > 0 and t["to_address"] is not None
    }
    got = {
        (e.payload.tx_hash, e.payload.from_address, e.payload.to_address, e.payload.value_raw)
        for e in events
        if isinstance(e, ChainTransfer)
    }
    assert len(got) == len(events)
    assert got == expected
    assert len(got) > 10


def test_failed_transactions_listed_by_the_connector_move_no_ether(mainnet_block: dict[str, Any]) -> None:
    failed = mainnet_block["transactions"][1]["hash"]
    assert (
        EthereumNormalizer().normalize(_record("eth_block", mainnet_block, failed_txs=[failed.upper()])) == []
    )
    assert len(EthereumNormalizer().normalize(_record("eth_block", mainnet_block, failed_txs=[]))) == 1


def test_without_the_failed_list_the_native_transfers_are_not_stated_as_successful(
    mainnet_block: dict[str, Any],
) -> None:
    # Read as "every transaction succeeded", a reverted 5 ETH send became a transfer of 5 ETH.
    (unknown,) = EthereumNormalizer().normalize(_record("eth_block", mainnet_block))
    (known,) = EthereumNormalizer().normalize(_record("eth_block", mainnet_block, failed_txs=[]))
    assert isinstance(unknown, ChainTransfer)
    assert isinstance(known, ChainTransfer)
    assert (unknown.payload.success_unknown, known.payload.success_unknown) == (True, False)
    assert unknown.event_id == known.event_id  # the same transfer, said with less certainty
    assert decode_event(encode(unknown)) == unknown


def test_malformed_failed_list_is_rejected(mainnet_block: dict[str, Any]) -> None:
    with pytest.raises(ContractError, match="failed_txs must be a list"):
        EthereumNormalizer().normalize(_record("eth_block", mainnet_block, failed_txs="0xab"))


def test_event_ids_are_stable_and_events_round_trip_the_contract(mainnet_receipt: dict[str, Any]) -> None:
    record = _record("eth_logs", mainnet_receipt["logs"], block_timestamp=1)
    first = EthereumNormalizer().normalize(record)
    again = EthereumNormalizer().normalize(record)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == len(first)
    for ev in first:
        assert decode_event(encode(ev)) == ev


def _approval_log(amount: int, *, log_index: int = 3) -> dict[str, Any]:
    owner = "0x" + "00" * 12 + "11" * 20
    spender = "0x" + "00" * 12 + "22" * 20
    return {
        "address": "0xDAC17F958D2EE523A2206206994597C13D831EC7",
        "topics": [APPROVAL_TOPIC, owner, spender],
        "data": "0x" + format(amount, "064x"),
        "blockNumber": "0x10",
        "transactionHash": "0x" + "ab" * 32,
        "logIndex": hex(log_index),
        "blockTimestamp": "0x65000000",
    }


def test_unlimited_approval_is_flagged() -> None:
    events = EthereumNormalizer().normalize(_record("eth_logs", [_approval_log(2**256 - 1)]))
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, TokenApproval)
    assert ev.payload.unlimited is True
    assert ev.payload.amount_raw == 2**256 - 1
    assert ev.payload.owner == ev.entities.wallet == "0x" + "11" * 20
    assert ev.payload.spender == ev.entities.counterparty == "0x" + "22" * 20
    assert ev.payload.asset == "USDT"
    assert ev.payload.token_contract == "0xdac17f958d2ee523a2206206994597c13d831ec7"  # noqa: S105
    assert ev.occurred_at == datetime.fromtimestamp(0x65000000, UTC)
    assert decode_event(encode(ev)) == ev


def test_bounded_approval_is_not_unlimited() -> None:
    (ev,) = EthereumNormalizer().normalize(_record("eth_logs", [_approval_log(2**255 - 1)]))
    assert isinstance(ev, TokenApproval)
    assert ev.payload.unlimited is False


def test_tokens_passed_to_the_normaliser_override_the_default_decimals() -> None:
    log = _approval_log(0)
    log["topics"] = [TRANSFER_TOPIC, *log["topics"][1:]]
    log["data"] = "0x" + format(2_500_000, "064x")
    log["address"] = "0x" + "33" * 20
    (ev,) = EthereumNormalizer({"0x" + "33" * 20: Token("VTT", 6)}).normalize(_record("eth_logs", [log]))
    assert isinstance(ev, ChainTransfer)
    assert (ev.payload.asset, ev.payload.decimals, ev.payload.amount) == ("VTT", 6, 2.5)


def test_erc721_transfers_and_other_events_are_skipped() -> None:
    nft = _approval_log(0)
    nft["topics"] = [TRANSFER_TOPIC, nft["topics"][1], nft["topics"][2], "0x" + "00" * 31 + "07"]
    nft["data"] = "0x"
    other = _approval_log(5)
    other["topics"][0] = "0x" + "99" * 32
    removed = {**_approval_log(5), "removed": True}
    # Four topics and data besides: no ERC-721 approval either.
    odd = {**_approval_log(5), "topics": [*nft["topics"][:3], "0x" + "00" * 31 + "07"]}
    odd["topics"][0] = APPROVAL_TOPIC
    assert EthereumNormalizer().normalize(_record("eth_logs", [nft, other, removed, odd])) == []


def test_an_erc721_approval_of_one_token_is_an_approval_of_that_token() -> None:
    # approve(spender, token_id): one NFT handed over, as drainers also ask.  It was skipped
    # with ERC-721 transfers (its third topic is a token id, not an amount).
    token_id = 2**200 + 7
    granted = _approval_log(0)
    granted["address"] = "0xBC4CA0EdA7647A8aB7C2061c2E118A18a936f13D"  # an NFT collection
    granted["topics"] = [*granted["topics"], "0x" + format(token_id, "064x")]
    granted["data"] = "0x"
    # Cleared (older collections clear on every transfer): nothing at risk, no event.
    cleared = {**granted, "logIndex": hex(4)}
    cleared["topics"] = [granted["topics"][0], granted["topics"][1], "0x" + "00" * 32, granted["topics"][3]]
    (one,) = EthereumNormalizer().normalize(_record("eth_logs", [granted, cleared]))
    assert isinstance(one, TokenApproval)
    assert (one.payload.kind, one.payload.token_id, one.payload.amount_raw, one.payload.unlimited) == (
        "approve_nft",
        token_id,
        1,
        False,
    )
    assert (one.payload.owner, one.payload.spender) == ("0x" + "11" * 20, "0x" + "22" * 20)
    assert (one.entities.wallet, one.entities.counterparty) == ("0x" + "11" * 20, "0x" + "22" * 20)


def test_a_known_erc20_that_indexes_its_approval_amount_is_read_as_an_amount() -> None:
    # The same four-topic layout: a known token's revocation of a drainer (amount 0) read as an
    # NFT handed over would hold a wallet that did the right thing.
    revoked = _approval_log(0)  # the USDT contract, known
    revoked["topics"] = [*revoked["topics"], "0x" + "00" * 32]
    revoked["data"] = "0x"
    (ev,) = EthereumNormalizer().normalize(_record("eth_logs", [revoked]))
    assert isinstance(ev, TokenApproval)
    assert (ev.payload.kind, ev.payload.amount_raw, ev.payload.token_id, ev.payload.asset) == (
        "approve",
        0,
        None,
        "USDT",
    )


# ---------------------------------------------------------------------- malformed input


def test_bad_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        EthereumNormalizer().normalize(_record("eth_block", b'{"number": "0x1",'))


def test_missing_field_names_the_field(mainnet_block: dict[str, Any]) -> None:
    broken = {k: v for k, v in mainnet_block.items() if k != "timestamp"}
    with pytest.raises(DecodeError, match="timestamp") as info:
        EthereumNormalizer().normalize(_record("eth_block", broken))
    assert "raw.ethereum eth_block" in str(info.value)


def test_wrong_hex_names_the_path(mainnet_block: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(mainnet_block))
    broken["transactions"][1]["value"] = "0xZZ"
    with pytest.raises(DecodeError, match="hex quantity") as info:
        EthereumNormalizer().normalize(_record("eth_block", broken))
    assert info.value.path == "$.transactions[1].value"


def test_bad_address_in_a_transfer_log_is_rejected() -> None:
    log = _approval_log(1)
    log["address"] = "0x1234"
    with pytest.raises(DecodeError, match="20-byte hex address") as info:
        EthereumNormalizer().normalize(_record("eth_logs", [log]))
    assert info.value.path == "$[0].address"


def test_hashes_only_block_is_rejected(mainnet_block: dict[str, Any]) -> None:
    hashes_only = {**mainnet_block, "transactions": [tx["hash"] for tx in mainnet_block["transactions"]]}
    with pytest.raises(DecodeError, match="full transaction objects"):
        EthereumNormalizer().normalize(_record("eth_block", hashes_only))


def test_log_without_any_block_time_is_rejected() -> None:
    log = _approval_log(1)
    del log["blockTimestamp"]
    with pytest.raises(DecodeError, match="no block time"):
        EthereumNormalizer().normalize(_record("eth_logs", [log]))


def test_unknown_kind_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="unknown record kind 'eth_trace'"):
        EthereumNormalizer().normalize(_record("eth_trace", []))


def test_logs_that_are_not_a_list_are_rejected() -> None:
    with pytest.raises(DecodeError, match="Expected `array`"):
        EthereumNormalizer().normalize(_record("eth_logs", {"logs": []}))


def _approval_for_all(approved: int, *, log_index: int = 7) -> dict[str, Any]:
    return {
        **_approval_log(0, log_index=log_index),
        "address": "0xBC4CA0EdA7647A8aB7C2061c2E118A18a936f13D",  # an NFT collection
        "topics": [APPROVAL_FOR_ALL_TOPIC, "0x" + "00" * 12 + "11" * 20, "0x" + "00" * 12 + "22" * 20],
        "data": "0x" + format(approved, "064x"),
    }


def test_approval_for_all_is_an_unlimited_approval_of_the_whole_collection() -> None:
    # What NFT drainers ask a victim to sign; the connector did not even ask the node for it.
    assert APPROVAL_FOR_ALL_TOPIC in LOG_TOPICS
    logs = [_approval_for_all(1), _approval_for_all(0, log_index=8), _approval_for_all(7, log_index=9)]
    granted, revoked = EthereumNormalizer().normalize(_record("eth_logs", logs))  # 7: not a bool
    assert isinstance(granted, TokenApproval)
    assert isinstance(revoked, TokenApproval)
    assert (granted.payload.kind, granted.payload.amount_raw, granted.payload.unlimited) == (
        "set_approval_for_all",
        1,
        True,
    )
    assert (revoked.payload.amount_raw, revoked.payload.unlimited) == (0, False)
    assert granted.payload.spender == "0x" + "22" * 20
    assert granted.payload.token_contract == "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"  # noqa: S105
    assert granted.event_id != revoked.event_id


def test_block_times_past_year_9999_are_named_decode_errors_and_null_removed_is_false() -> None:
    log = {**_approval_log(1), "blockTimestamp": hex(2**62)}
    with pytest.raises(DecodeError, match=r"block time \d+ is not a Unix time"):
        EthereumNormalizer().normalize(_record("eth_logs", [log]))
    # Some providers send "removed": null; the record failed whole.
    (ev,) = EthereumNormalizer().normalize(_record("eth_logs", [{**_approval_log(1), "removed": None}]))
    assert isinstance(ev, TokenApproval)


def test_mints_and_burns_do_not_make_the_zero_address_an_entity() -> None:
    zero = "0x" + "00" * 32
    holder = "0x" + "00" * 12 + "33" * 20
    mint = {**_approval_log(5, log_index=1), "topics": [TRANSFER_TOPIC, zero, holder]}
    burn = {**_approval_log(5, log_index=2), "topics": [TRANSFER_TOPIC, holder, zero]}
    minted, burnt = EthereumNormalizer().normalize(_record("eth_logs", [mint, burn]))
    assert isinstance(minted, ChainTransfer)
    assert isinstance(burnt, ChainTransfer)
    assert (minted.entities.wallet, minted.entities.counterparty) == (None, "0x" + "33" * 20)
    assert (burnt.entities.wallet, burnt.entities.counterparty) == ("0x" + "33" * 20, None)
    assert minted.payload.from_address == "0x" + "0" * 40  # the transfer itself says what it was


# ---------------------------------------------------------------------- event ids of logs

_MOVED_TX = "0x" + "ab" * 32
_OTHER_TX = "0x" + "cd" * 32


def _transfer(tx: str, log_index: int, amount: int) -> dict[str, Any]:
    return {
        **_approval_log(amount, log_index=log_index),
        "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + "11" * 20, "0x" + "00" * 12 + "22" * 20],
        "transactionHash": tx,
    }


def _ids(logs: list[dict[str, Any]], tx: str) -> dict[tuple[str, int], tuple[str, int | None]]:
    """(type, amount) -> (event id, log_index) of ``tx``'s events."""
    out: dict[tuple[str, int], tuple[str, int | None]] = {}
    for ev in EthereumNormalizer().normalize(_record("eth_logs", logs)):
        assert isinstance(ev, ChainTransfer | TokenApproval)
        p = ev.payload
        if p.tx_hash == tx:
            amount = p.value_raw if isinstance(p, ChainTransferPayload) else p.amount_raw
            out[ev.type, amount] = (ev.event_id, p.log_index)
    return out


def test_a_transaction_moved_within_its_block_keeps_its_token_event_ids() -> None:
    # A reorg that keeps a transaction may put it elsewhere in the block: each of its logs gets
    # another block-wide logIndex.  Ids keyed on logIndex counted its transfers twice.
    moved = [_transfer(_MOVED_TX, 0, 5), {**_approval_log(7, log_index=1), "transactionHash": _MOVED_TX}]
    before = [_transfer(_OTHER_TX, 0, 1), _transfer(_OTHER_TX, 1, 2)]
    first = moved + before
    second = before + [{**log, "logIndex": hex(int(log["logIndex"], 16) + 2)} for log in moved]
    ids_first, ids_second = _ids(first, _MOVED_TX), _ids(second, _MOVED_TX)
    assert set(ids_first) == {("chain_transfer", 5), ("token_approval", 7)}
    assert {k: i for k, (i, _) in ids_first.items()} == {k: i for k, (i, _) in ids_second.items()}
    # The payload keeps the block-wide index.
    assert (ids_first["chain_transfer", 5][1], ids_second["chain_transfer", 5][1]) == (0, 2)
    assert (ids_first["token_approval", 7][1], ids_second["token_approval", 7][1]) == (1, 3)


def test_a_logs_id_is_its_place_among_its_transactions_logs_in_log_index_order() -> None:
    in_order = [_transfer(_MOVED_TX, 4, 1), _transfer(_OTHER_TX, 5, 9), _transfer(_MOVED_TX, 6, 2)]
    ids = _ids(in_order, _MOVED_TX)
    assert ids == _ids(list(reversed(in_order)), _MOVED_TX)  # the node's order is not relied on
    assert [ids["chain_transfer", n][0] for n in (1, 2)] == [
        stable_id("chain_transfer", "ethereum", _MOVED_TX, position) for position in (0, 1)
    ]
