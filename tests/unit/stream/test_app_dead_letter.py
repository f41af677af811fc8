"""What a dead letter over the size limit leaves out, and in which order (the runtime against a
real broker: tests/integration/stream/test_app.py, test_a_dead_letter_over_the_limit_...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.unit.stream.offline import offline_app

from vigil.events.records import DeadLetter
from vigil.stream.app import OUTPUT_MAX_BYTES, late_headers
from vigil.stream.base import Record


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


Headers = list[tuple[str, bytes | None]]


def late_headers_of(own: Headers, room: int) -> Headers:
    """The headers the runtime gives a late copy of a record at in/0 offset 7 with headers ``own``."""
    record: Record[Any] = Record(None, "in", 0, 7, b"k", 0, b"v")
    return late_headers(own, record, "w", room)


WHERE = [
    ("vigil.late.topic", b"in"),
    ("vigil.late.partition", b"0"),
    ("vigil.late.offset", b"7"),
    ("vigil.late.operator", b"w"),
]


def test_a_late_copy_leaves_out_its_largest_headers_first_and_names_them() -> None:
    # All or nothing, one large trace took the raw record's small headers with it (found in
    # review, 2026-12-07).
    own: list[tuple[str, bytes | None]] = [
        ("vigil.kind", b"canonical"),
        ("trace", b"t" * 5_000),
        ("span", b"s" * 3_000),
        ("vigil.late.operator", b"forged"),  # (an input's own are never taken for the copy's)
    ]
    assert late_headers_of(own, 100_000) == [own[0], own[1], own[2], *WHERE]
    assert late_headers_of(own, 4_000) == [
        own[0],
        own[2],
        *WHERE,
        ("vigil.late.headers-left-out", b"trace"),
    ]
    assert late_headers_of(own, 1_000) == [
        own[0],
        *WHERE,
        ("vigil.late.headers-left-out", b"trace, span"),
    ]
    # Nothing of its own to leave out: no note, however little room.
    assert late_headers_of([], 10) == WHERE
    # Many names: cut, and counted.
    many: list[tuple[str, bytes | None]] = [(f"h{i:04}", b"x" * 100) for i in range(300)]
    (*_, (name, note)) = late_headers_of(many, 600)
    assert name == "vigil.late.headers-left-out"
    assert note is not None
    assert note.endswith(b"... (300 in all)")
    assert len(note) < 300
