"""What an event producer's flush says of records still on their way (a closed port: no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.hub.broker import free_port_block
from vigil.hub.client import DeliveryFailed, EventProducer


def test_records_still_on_their_way_are_said_not_acknowledged_not_undelivered(tmp_path: Path) -> None:
    # "Not delivered" of records librdkafka may still write invited a rerun that could write them
    # twice (found in review): whether they were written is not known.
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}", home=tmp_path)
    producer = EventProducer(settings)
    producer.produce_raw("raw.coinbase", "k", b"v")
    with pytest.raises(
        DeliveryFailed, match=r"^1 records not acknowledged within 0\.5s: whether they were written"
    ):
        producer.flush(0.5)
