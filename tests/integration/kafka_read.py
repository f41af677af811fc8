"""Reading topics back in integration tests, the way the pipeline reads them.

Everything is read under ``read_committed`` (aborted transactions of a killed connector
stay invisible) and up to the end *now*.  Transaction markers take offsets and are never
delivered, so the end is judged by the consumer's position, never by counting messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vigil.config import Settings
from vigil.hub.client import read_committed, watermarks
from vigil.hub.raw import RawRecord
from vigil.sources.sink import SOURCE_TXN_TIMEOUT_S

__all__ = ["START_S", "read_raw", "wait_for", "watermarks"]

#: How long a connector started by a test may take to publish: its start-up (Python, the
#: compiled modules) and its first read of its cursor topic, which waits out any transaction
#: a killed source left open there (the sources' transaction timeout and Kafka's check).
START_S = SOURCE_TXN_TIMEOUT_S + 60


def read_raw(settings: Settings, topic: str, source: str, timeout_s: float = 30.0) -> list[RawRecord]:
    """Every committed record of ``topic``, partition by partition in offset order."""
    return [
        RawRecord.from_headers(source, msg.value(), msg.key(), msg.headers())
        for msg in read_committed(settings, topic, timeout_s)
    ]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true, or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
