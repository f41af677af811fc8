"""The broker a benchmark runs against: the cluster the settings name (``VIGIL_KAFKA_BOOTSTRAP``),
else a single-node local broker of its own in the benchmark's work directory."""

from __future__ import annotations

import os
from pathlib import Path

from vigil.config import load_settings
from vigil.hub.broker import LocalBroker, free_port_block

REPO = Path(__file__).resolve().parents[1]


def bench_broker(work: Path, *, cpus: set[int] | None = None) -> tuple[str, LocalBroker | None]:
    """The bootstrap address, and the broker to stop afterwards (``None``: an external cluster).

    ``cpus``: the CPUs the local broker may run on (it inherits this process's affinity
    while it starts), so that a benchmark pinned to the other CPUs measures its own work,
    not the broker's, as it would against a broker on other machines."""
    external = load_settings().kafka_bootstrap
    if external:
        return external, None
    broker = LocalBroker(
        home=work / "broker", port=free_port_block(2), dist_root=REPO / ".vigil" / "kafka-dist", heap_mb=1024
    )
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return broker.start(nodes=1).bootstrap, broker
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return broker.start(nodes=1).bootstrap, broker
    finally:
        os.sched_setaffinity(0, before)


def set_broker_cpus(broker: LocalBroker | None, cpus: set[int]) -> None:
    """Move a running local broker (every thread of it) onto ``cpus``; nothing for an external one.

    Threads inherit their creator's CPUs, so the walk repeats until it finds no thread left to
    move (one started during a walk by a thread not moved yet).  The JVM's pools keep the sizes
    it chose for the CPUs it started on."""
    if broker is None or not hasattr(os, "sched_setaffinity"):
        return
    for pid in broker.node_pids():
        try:
            while _move_threads(pid, cpus):
                pass
        except FileNotFoundError:  # the node stopped meanwhile
            continue


def _move_threads(pid: int, cpus: set[int]) -> bool:
    """Put every thread of ``pid`` on ``cpus``; whether any had to move."""
    moved = False
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            if os.sched_getaffinity(tid) != cpus:
                os.sched_setaffinity(tid, cpus)
                moved = True
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return moved
