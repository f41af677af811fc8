"""Native shapes against the real recordings in the shared data: same fields, same JSON types."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pytest

from vigil.events.base import Event
from vigil.events.codec import decode_event
from vigil.hub.raw import RawRecord
from vigil.sim import Simulation
from vigil.sim.config import default_data_dir
from vigil.sim.native import APPROVAL_TOPIC, TRANSFER_TOPIC

DATA = default_data_dir()


def _shape(value: Any) -> Any:
    """Field names and JSON types, recursively (lists by the shape of their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if value is None:
        return "null"
    return type(value).__name__


def _recorded(name: str, predicate: str) -> list[dict[str, Any]]:
    """Messages the exchange sent in a cryptofeed recording (``ts: {json}`` lines)."""
    out = []
    for line in (DATA / "feeds" / name).read_text().splitlines():
        head, sep, body = line.partition(": ")
        if sep and " " not in head and predicate in body:
            out.append(json.loads(body))
    return out


@pytest.fixture(scope="module")
def native(sim: Simulation) -> list[tuple[str, RawRecord]]:
    return list(sim.native())


def _values(native: list[tuple[str, RawRecord]], topic: str, kind: str) -> list[Any]:
    return [json.loads(r.value) for tp, r in native if tp == topic and r.kind == kind]


def test_coinbase_match_and_ticker_have_the_recorded_fields_and_types(
    native: list[tuple[str, RawRecord]],
) -> None:
    sent = _values(native, "raw.coinbase", "ws_message")
    for msg_type in ("match", "ticker"):
        recorded = {json.dumps(_shape(m)) for m in _recorded("COINBASE.ws.28.0", f'"type":"{msg_type}"')}
        ours = [m for m in sent if m["type"] == msg_type]
        assert ours, msg_type
        assert recorded, msg_type
        assert {json.dumps(_shape(m)) for m in ours} <= recorded, msg_type


def test_binance_aggtrade_has_the_recorded_fields_and_types(native: list[tuple[str, RawRecord]]) -> None:
    recorded = {json.dumps(_shape(m)) for m in _recorded("BINANCE.ws.1.0", '"e":"aggTrade"')}
    ours = _values(native, "raw.binance", "ws_message")
    assert ours
    assert {json.dumps(_shape(m)) for m in ours} <= recorded


def test_ethereum_blocks_and_logs_have_the_recorded_shapes(
    native: list[tuple[str, RawRecord]], stream: list[Event]
) -> None:
    block_fixture = json.loads((DATA / "chain" / "ethereum" / "block_0x1ac9f3.json").read_text())["result"]
    receipt = json.loads((DATA / "chain" / "ethereum" / "receipt_0x2e3d.json").read_text())["result"]
    blocks = _values(native, "raw.ethereum", "eth_block")
    logs = [log for batch in _values(native, "raw.ethereum", "eth_logs") for log in batch]
    assert blocks
    assert logs
    for block in blocks:
        assert _shape({**block, "transactions": []}) == _shape({**block_fixture, "transactions": []})
        for tx in block["transactions"]:
            assert _shape(tx) == _shape(block_fixture["transactions"][0])
    for log in logs:
        assert _shape(log) == _shape(receipt["logs"][0])
    # Every ERC-20 transfer and approval in the canonical stream is a log with its exact value.
    by_tx: dict[tuple[str, str], int] = {}
    for log in logs:
        by_tx[(log["transactionHash"], log["topics"][0])] = int(log["data"], 16)
    for e in stream:
        if e.type == "chain_transfer" and e.payload.token_contract:  # type: ignore[attr-defined]
            assert by_tx[(e.payload.tx_hash, TRANSFER_TOPIC)] == e.payload.value_raw  # type: ignore[attr-defined]
        if e.type == "token_approval":
            assert by_tx[(e.payload.tx_hash, APPROVAL_TOPIC)] == e.payload.amount_raw  # type: ignore[attr-defined]


def test_each_ethereum_sender_counts_its_nonces_up(native: list[tuple[str, RawRecord]]) -> None:
    # A nonce is used once per account, in order: a block with two transactions of one sender
    # and one nonce is impossible on chain.
    by_sender: dict[str, list[int]] = {}
    for block in _values(native, "raw.ethereum", "eth_block"):
        for tx in block["transactions"]:
            by_sender.setdefault(tx["from"], []).append(int(tx["nonce"], 16))
    assert any(len(n) > 1 for n in by_sender.values())
    for sender, nonces in by_sender.items():
        assert nonces == list(range(nonces[0], nonces[0] + len(nonces))), sender


def test_bitcoin_blocks_have_the_getblock_verbosity_2_shape(native: list[tuple[str, RawRecord]]) -> None:
    fixture = json.loads(
        next((DATA / "chain" / "bitcoin").glob("block_with_transactions_*1c920d495e*_2.json")).read_text()
    )
    blocks = _values(native, "raw.bitcoin", "btc_block")
    assert blocks
    for block in blocks:
        assert set(block) == set(fixture)
        assert {k: _shape(v) for k, v in block.items() if k != "tx"} == {
            k: _shape(v) for k, v in fixture.items() if k != "tx"
        }
        assert set(block["tx"][0]) == set(fixture["tx"][0])
        assert _shape(block["tx"][0]["vin"]) == _shape(fixture["tx"][0]["vin"])
        for tx in block["tx"][1:]:
            assert set(tx) == set(fixture["tx"][1])
            assert _shape(tx["vin"]) == _shape(fixture["tx"][1]["vin"])
            assert _shape(tx["vout"][0]) == _shape(fixture["tx"][1]["vout"][0])
        assert block["nTx"] == len(block["tx"])


def test_every_canonical_event_is_carried_and_backend_events_are_canonical(
    native: list[tuple[str, RawRecord]], stream: list[Event]
) -> None:
    carried = {eid for _, r in native for eid in r.meta["sim_event_ids"]}
    assert carried == {e.event_id for e in stream}
    by_id = {e.event_id: e for e in stream}
    backend = [r for tp, r in native if tp == "raw.backend"]
    assert backend
    for r in backend[:2000]:
        assert r.kind == "canonical"
        assert decode_event(r.value) == by_id[r.meta["sim_event_ids"][0]]
    times = [r.received_at for _, r in native]
    assert times == sorted(times)


def test_saas_and_cloudtrail_records_carry_their_facts(
    native: list[tuple[str, RawRecord]], stream: list[Event]
) -> None:
    by_id: dict[str, Any] = {e.event_id: e for e in stream}
    kinds = {(tp, r.kind) for tp, r in native}
    assert {
        ("raw.hubspot", "webhook"),
        ("raw.salesforce", "webhook"),
        ("raw.mailchimp", "webhook"),
        ("raw.cloudtrail", "cloudtrail_record"),
    } <= kinds
    for tp, r in native:
        event = by_id[r.meta["sim_event_ids"][0]]
        if tp == "raw.mailchimp":
            form = dict(parse_qsl(r.value.decode()))
            if "mandrill_events" in form:
                click = json.loads(form["mandrill_events"])[0]
                assert click["url"] == event.payload.url
                assert click["msg"]["metadata"]["customer_id"] == event.entities.customer
            else:
                assert form["type"] == "campaign"
                assert form["data[id]"] == event.payload.campaign_id
        elif tp == "raw.salesforce":
            body = json.loads(r.value)
            assert body["SourceIp"] == event.entities.ip
            assert body["attributes"]["type"].endswith("EventStream")
        elif tp == "raw.hubspot" and r.kind == "webhook":
            body = json.loads(r.value)
            assert {item["sourceId"] for item in body} == {event.payload.token_id}
        elif tp == "raw.cloudtrail":
            body = json.loads(r.value)
            assert body["eventName"] == event.payload.attributes["event_name"]
            assert body["sourceIPAddress"] == event.entities.ip


def test_native_records_go_to_declared_raw_topics(native: list[tuple[str, RawRecord]]) -> None:
    from vigil.hub.topics import TOPICS

    topics = {tp for tp, _ in native}
    assert topics <= set(TOPICS.names())
    assert all(tp == f"raw.{r.source}" for tp, r in native)
