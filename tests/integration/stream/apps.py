"""Operators and a worker entry point shared by the stream integration tests.

``python -m tests.integration.stream.apps <config.json>`` runs one worker process of
the counting application (the kill -9 tests start and kill these).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.stream.conftest import for_protocol

from vigil.config import Settings, load_settings
from vigil.events.base import Entities
from vigil.events.types import Payment, PaymentPayload
from vigil.hub.client import read_committed
from vigil.stream.base import Context, Operator, Record, StoreSpec

COUNTS = StoreSpec("counts", 1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class RunningCount(Operator[Payment]):
    """Emits, per input payment, a copy whose id says how many payments its customer made so far.

    If state were lost, replayed twice or shared wrongly the ids would differ from the expected ones.
    """

    id = "running-count"
    stores = (COUNTS,)

    def __init__(self, output: str, pause_s: float = 0.0, hold: tuple[int, str] | None = None) -> None:
        self.output = output
        # Simulated per-batch work, so a kill lands while a transaction is open.
        self.pause_s = pause_s
        #: (n, path): once n records are processed and their outputs emitted, the worker writes
        #: ``path`` and stops in the middle of its batch, its checkpoint's transaction open, until
        #: it is killed (the test's kill then lands in an open transaction for certain).
        self.hold = hold
        #: Records processed by this process (for ``hold``; named apart from subclasses' counts).
        self.held_after = 0

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        if self.pause_s:
            time.sleep(self.pause_s)
        state = ctx.state(COUNTS)
        for rec in batch:
            customer = rec.event.entities.customer or "?"
            n = state.get(customer, 0) + 1
            state.set(customer, n)
            out = Payment(
                event_id=f"{rec.event.event_id}#{n}",
                source="test",
                occurred_at=rec.event.occurred_at,
                entities=rec.event.entities,
                payload=rec.event.payload,
            )
            ctx.emit(self.output, out)
        self.held_after += len(batch)
        if self.hold is not None and self.held_after >= self.hold[0]:
            Path(self.hold[1]).touch()
            while True:
                time.sleep(1)  # the stall under test (killed here), not a synchronisation


def payments(n: int, customers: int, prefix: str = "p") -> list[Payment]:
    return [
        Payment(
            event_id=f"{prefix}{i}",
            source="test",
            occurred_at=T0 + timedelta(seconds=i),
            entities=Entities(customer=f"c{i % customers}"),
            payload=PaymentPayload(payment_id=f"{prefix}{i}", amount=float(i % 97), currency="USD"),
        )
        for i in range(n)
    ]


def expected_ids(events: Sequence[Payment]) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for e in events:
        c = e.entities.customer or "?"
        seen[c] = seen.get(c, 0) + 1
        out.add(f"{e.event_id}#{seen[c]}")
    return out


def read_all(settings: Settings, topic: str, partitions: int) -> list[tuple[bytes | None, bytes]]:
    """Every committed record of ``topic`` (read_committed, up to its high watermark: the last
    checkpoint of an application just stopped included; see read_committed)."""
    got = read_committed(settings, topic, timeout_s=60)
    assert {m.partition() for m in got} <= set(range(partitions)), (
        f"{topic}: more than {partitions} partitions"
    )
    return [(m.key(), m.value()) for m in got]


def worker(config: dict[str, Any]) -> None:
    from vigil.stream.app import Application

    protocol = {"kafka_group_protocol": config["group_protocol"]} if "group_protocol" in config else {}
    settings = load_settings(kafka_bootstrap=config["bootstrap"], home=Path(config["home"]), **protocol)
    go = config.get("go")
    if go is not None:
        # Started ahead and held here, imports done, until the test says: a join then costs the
        # group protocol only, not an interpreter's start on a loaded machine.
        while not Path(go).exists():
            time.sleep(0.02)
    app = Application(
        settings,
        name=config["name"],
        inputs=[config["input"]],
        operators=[
            RunningCount(
                config["output"],
                config.get("pause_s", 0.0),
                (config["hold_at"], config["hold_file"]) if "hold_at" in config else None,
            )
        ],
        guarantee=config.get("guarantee", "exactly_once"),
        instance_id=config.get("instance"),
        batch_size=config.get("batch_size", 200),
        checkpoint_interval_s=config.get("checkpoint_interval_s", 0.1),
        consumer_overrides=for_protocol(
            settings, {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, **config.get("consumer", {})}
        ),
        producer_overrides={"transaction.timeout.ms": config.get("transaction_timeout_ms", 8000)},
    )
    status = Path(config["status"])

    def report() -> None:
        # The test reads which partitions this worker owns (tmp file + rename: never half-written).
        while True:
            tmp = status.with_suffix(".tmp")
            progress = {
                "assigned": app.metrics.assigned,
                "restoring": app.metrics.restoring,
                "processed": app.metrics.processed,
            }
            tmp.write_text(json.dumps({**progress, "instance_id": app.instance_id}))
            tmp.replace(status)
            time.sleep(0.1)

    threading.Thread(target=report, daemon=True).start()
    app.run()


if __name__ == "__main__":
    worker(json.loads(Path(sys.argv[1]).read_text()))
