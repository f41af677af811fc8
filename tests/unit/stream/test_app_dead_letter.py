"""What a dead letter over the size limit leaves out, and in which order (the runtime against a
real broker: tests/integration/stream/test_app.py, test_a_dead_letter_over_the_limit_...)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from tests.unit.stream.offline import offline_app

from vigil.events.records import DeadLetter
from vigil.stream.app import OUTPUT_MAX_BYTES


class Kept:
    """A producer that keeps what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        self.sent.append((topic, value, key))


def letter_of(
    tmp_path: Path, raw: bytes, key: bytes | None, headers: list[tuple[str, bytes | None]] | None
) -> tuple[DeadLetter, bytes | None, int]:
    app = offline_app(tmp_path, "at_least_once")
    producer = Kept()
    app._producer = producer  # type: ignore[assignment]
    app._dead_letter("in", 0, 7, key, raw, "not valid JSON", "DecodeError", headers)
    ((_, value, sent_key),) = producer.sent
    return msgspec.json.decode(value, type=DeadLetter), sent_key, len(value) + len(sent_key or b"")


@pytest.mark.parametrize(
    ("raw", "key", "headers", "kept"),
    [
        # Headers alone too much: they go; key and bytes stay.
        (b"x" * 9, b"k1", [("trace", b"h" * 900_000)], {"raw", "key"}),
        # A 760 KB key (in the letter in base64, and its key): the key goes, the bytes stay.
        (b"\xff" * 200_000, b"k" * 760_000, [("kind", b"x")], {"raw"}),
        # 2 MB of bytes and a small key: without the key it would not fit either, so the bytes
        # go and the key stays (the key went too, found in review, 2026-12-04).
        (b"\xff" * 2_000_000, b"customer-1", [("kind", b"block")], {"key"}),
        # Both too large: both go.
        (b"\xff" * 2_000_000, b"k" * 760_000, None, set()),
    ],
    ids=["headers", "key", "bytes", "bytes-and-key"],
)
def test_a_letter_over_the_limit_keeps_what_fits_the_records_bytes_first(
    tmp_path: Path, raw: bytes, key: bytes, headers: list[tuple[str, bytes | None]] | None, kept: set[str]
) -> None:
    letter, sent_key, size = letter_of(tmp_path, raw, key, headers)
    assert size <= OUTPUT_MAX_BYTES
    assert (letter.raw == raw) == ("raw" in kept)
    assert (letter.key == key) == ("key" in kept)
    assert (sent_key == key) == ("key" in kept)
    assert (letter.headers == headers and headers is not None) == ("headers" in kept)
    assert ("bytes are left out" in letter.reason) == ("raw" not in kept)
    assert ("key is left out" in letter.reason) == ("key" not in kept)
    # Anything left out: not rebuildable by redrive (which needs the headers, and the key).
    if kept != {"raw", "key", "headers"}:
        assert letter.headers is None
