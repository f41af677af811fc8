"""Stable identifiers.

Event, alert and decision ids are derived from content, never random, so a replay or
a retried producer yields the same id and downstream deduplication is exact.  Python's
``hash()`` is salted per process and must never be used for this.
"""

from __future__ import annotations

import hashlib


def stable_id(*parts: object, prefix: str = "") -> str:
    """A 32-hex-digit id from the parts (joined unambiguously) with an optional prefix."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = str(part).encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return prefix + h.hexdigest()


def stable_hash(value: str | bytes) -> int:
    """A 64-bit hash that is the same in every process (for routing and sharding)."""
    data = value.encode() if isinstance(value, str) else value
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
