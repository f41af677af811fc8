"""The broker a benchmark runs against: the cluster the settings name (``VIGIL_KAFKA_BOOTSTRAP``),
else a single-node local broker of its own in the benchmark's work directory."""

from __future__ import annotations

from pathlib import Path

from vigil.config import load_settings
from vigil.hub.broker import LocalBroker, free_port_block

REPO = Path(__file__).resolve().parents[1]


def bench_broker(work: Path) -> tuple[str, LocalBroker | None]:
    """The bootstrap address, and the broker to stop afterwards (``None``: an external cluster)."""
    external = load_settings().kafka_bootstrap
    if external:
        return external, None
    broker = LocalBroker(
        home=work / "broker", port=free_port_block(2), dist_root=REPO / ".vigil" / "kafka-dist", heap_mb=1024
    )
    return broker.start(nodes=1).bootstrap, broker
