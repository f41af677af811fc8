"""The native records go through the Sources normalisers and come back as the canonical facts.

This is the contract between the simulator and the normalisers: what the simulator
produces to ``raw.<source>`` is what the normalisers read, every kind of record included
(HubSpot logins and exports arrive as audit-log records, which webhooks do not report).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pytest

from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.hub.raw import RawRecord
from vigil.sim import SimConfig, Simulation
from vigil.sources.hubspot import HubSpotNormalizer

NORMALIZERS = {
    "backend": "vigil.sources.backend:BackendNormalizer",
    "coinbase": "vigil.sources.coinbase:CoinbaseNormalizer",
    "binance": "vigil.sources.binance:BinanceNormalizer",
    "hubspot": "vigil.sources.hubspot:HubSpotNormalizer",
    "salesforce": "vigil.sources.salesforce:SalesforceNormalizer",
    "mailchimp": "vigil.sources.mailchimp:MailchimpNormalizer",
    "cloudtrail": "vigil.sources.cloudtrail:CloudTrailNormalizer",
    "ethereum": "vigil.sources.ethereum_normalize:EthereumNormalizer",
    "bitcoin": "vigil.sources.bitcoin_normalize:BitcoinNormalizer",
}
EXPECTED_REJECTS: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def normalised(sim: Simulation) -> tuple[dict[str, list[Event]], Counter[tuple[str, str]]]:
    normalizers: dict[str, Any] = {}
    for source, path in NORMALIZERS.items():
        module, _, name = path.partition(":")
        normalizers[source] = getattr(pytest.importorskip(module), name)()
    out: dict[str, list[Event]] = {s: [] for s in NORMALIZERS}
    rejected: Counter[tuple[str, str]] = Counter()
    for _, record in sim.native():
        raw: RawRecord = record
        try:
            out[raw.source].extend(normalizers[raw.source].normalize(raw))
        except Exception:
            if (raw.source, raw.kind) not in EXPECTED_REJECTS:
                raise
            rejected[(raw.source, raw.kind)] += 1
    return out, rejected


def test_only_the_documented_records_are_rejected(
    normalised: tuple[dict[str, list[Event]], Counter[tuple[str, str]]],
) -> None:
    _, rejected = normalised
    assert set(rejected) <= EXPECTED_REJECTS


def test_backend_events_come_back_unchanged(
    normalised: tuple[dict[str, list[Event]], Counter[tuple[str, str]]], stream: list[Event]
) -> None:
    out, _ = normalised
    mine = [e for e in stream if e.source == "backend"]
    back = out["backend"]
    strip = importlib.import_module("msgspec").structs.replace
    assert [strip(e, ingested_at=None) for e in back] == mine


def test_chain_transfers_and_approvals_come_back(
    normalised: tuple[dict[str, list[Any]], Counter[tuple[str, str]]], stream: list[Any]
) -> None:
    out, _ = normalised

    def facts(events: list[Any], chain: str) -> Counter[tuple[Any, ...]]:
        return Counter(
            (
                e.payload.tx_hash,
                e.payload.from_address,
                e.payload.to_address,
                e.payload.value_raw,
                e.payload.asset,
            )
            for e in events
            if e.type == "chain_transfer" and e.payload.chain == chain and e.payload.value_raw > 0
        )

    assert facts(out["ethereum"], "ethereum") == facts(stream, "ethereum")
    approvals = Counter(
        (e.payload.owner, e.payload.spender, e.payload.amount_raw, e.payload.unlimited)
        for e in stream
        if e.type == "token_approval"
    )
    back = Counter(
        (e.payload.owner, e.payload.spender, e.payload.amount_raw, e.payload.unlimited)
        for e in out["ethereum"]
        if e.type == "token_approval"
    )
    assert back == approvals
    # Bitcoin outputs: every simulated payment is an output (the sender is not in a verbosity-2 block).
    paid = {(e.payload.tx_hash, e.payload.to_address, e.payload.value_raw) for e in out["bitcoin"]}
    for e in stream:
        if e.type == "chain_transfer" and e.payload.chain == "bitcoin":
            assert (e.payload.tx_hash, e.payload.to_address, e.payload.value_raw) in paid


def test_exchange_trades_and_saas_facts_come_back(
    normalised: tuple[dict[str, list[Any]], Counter[tuple[str, str]]], stream: list[Any]
) -> None:
    out, _ = normalised
    for venue in ("coinbase", "binance"):
        mine = sorted((e.payload.price, e.payload.quantity) for e in stream if e.source == venue)
        back = sorted((e.payload.price, e.payload.quantity) for e in out[venue])
        assert back == mine, venue
    exports = [e for e in stream if e.type == "crm_record_export" and e.source == "salesforce"]
    back_exports = [e for e in out["salesforce"] if e.type == "crm_record_export"]
    assert sorted(e.payload.customer_ids for e in back_exports) == sorted(
        e.payload.customer_ids for e in exports
    )
    clicks = sorted((e.payload.url, e.entities.ip) for e in stream if e.type == "email_link_clicked")
    back_clicks = sorted(
        (e.payload.url, e.entities.ip) for e in out["mailchimp"] if e.type == "email_link_clicked"
    )
    assert back_clicks == clicks
    security: list[Any] = [e for e in stream if e.type == "security_event"]
    back_security: list[Any] = out["cloudtrail"]
    assert sorted((e.occurred_at, encode(e.payload), e.entities) for e in back_security) == sorted(
        (e.occurred_at, encode(e.payload), e.entities) for e in security
    )


def test_hubspot_exports_come_back_from_the_audit_log() -> None:
    # HubSpot is the vendor of the supply-chain scenario; its exports are rare otherwise.
    sim = Simulation(SimConfig(seed=7, customers=400, events=30_000))
    normalizer = HubSpotNormalizer()

    def ms(at: datetime) -> datetime:  # HubSpot reports milliseconds
        return at.replace(microsecond=at.microsecond // 1000 * 1000)

    def facts(events: Iterable[Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (e.type, ms(e.occurred_at), e.entities.ip, e.payload.record_count, tuple(e.payload.customer_ids))
            for e in events
            if e.type == "crm_record_export" and e.source == "hubspot"
        )

    mine = facts(sim.canonical())
    assert mine, "seed 7 exports from HubSpot"
    back = [e for _, r in sim.native() if r.source == "hubspot" for e in normalizer.normalize(r)]
    assert facts(back) == mine


def test_hubspot_token_uses_come_back_one_event_per_object_changed() -> None:
    # A webhook delivery lists one event per object the token changed, each with its own
    # eventId: the normalised events must not collapse into one id (downstream dedup is by id).
    sim = Simulation(SimConfig(seed=7, customers=400, events=30_000, scenarios=["supply_chain_compromise"]))
    uses = [e for e in sim.canonical() if e.type == "crm_api_token_used" and e.source == "hubspot"]
    assert uses, "the supply-chain scenario uses a HubSpot token"
    normalizer = HubSpotNormalizer()
    back = [
        e
        for _, r in sim.native()
        if r.source == "hubspot" and r.kind == "webhook"
        for e in normalizer.normalize(r)
    ]
    assert len(back) == sum(min(max(e.payload.records_accessed, 1), 20) for e in uses)
    assert len({e.event_id for e in back}) == len(back)
    expected: Counter[str] = Counter()
    for e in uses:
        expected[e.payload.token_id] += min(max(e.payload.records_accessed, 1), 20)
    assert Counter(e.payload.token_id for e in back) == expected
