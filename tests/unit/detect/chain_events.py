"""Chain events for detection tests, built in one place."""

from __future__ import annotations

from datetime import datetime

from vigil.events.base import Entities
from vigil.events.types import ChainTransfer, ChainTransferPayload


def transfer(n: int, sender: str, receiver: str, at: datetime, usd: float = 3000.0) -> ChainTransfer:
    """Transfer ``n`` (its id and block) of ``usd`` worth of ETH from ``sender`` to ``receiver``."""
    return ChainTransfer(
        event_id=f"tx-{n}",
        source="ethereum",
        occurred_at=at,
        entities=Entities(wallet=sender, counterparty=receiver),
        payload=ChainTransferPayload(
            chain="ethereum",
            tx_hash=f"0x{n:064x}",
            block_number=n,
            from_address=sender,
            to_address=receiver,
            asset="ETH",
            value_raw=round(usd / 3000 * 10**18),
            decimals=18,
            amount=usd / 3000,
            amount_usd=usd,
        ),
    )
