"""Encoding and decoding events with msgspec.

Decoders are built once per set of types and reused: msgspec decodes a tagged union
straight into the right struct, validating types, required fields and time zones.
A failure becomes :class:`~vigil.errors.DecodeError` naming the field path, what was
expected and what was received, e.g. ``Expected `float`, got `str` - at `$.payload.amount```.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from operator import or_
from typing import Any

import msgspec

from vigil.errors import DecodeError
from vigil.events.base import Event
from vigil.events.types import AnyEvent

_encoder = msgspec.json.Encoder()


def encode(record: msgspec.Struct) -> bytes:
    """JSON bytes of an event or record (UTC datetimes as RFC 3339)."""
    return _encoder.encode(record)


def _path_of(message: str) -> str | None:
    marker = " - at `"
    if marker in message and message.endswith("`"):
        return message.rsplit(marker, 1)[1][:-1]
    return None


#: How much of an error message is kept (msgspec quotes the offending value whole).
_MAX_ERROR_CHARS = 500


def inert(text: str) -> str:
    """``text`` with control characters escaped, and bounded: msgspec quotes an unknown type tag
    or field name as given, so a newline or an ESC sequence in it forged log lines or drove the
    terminal, and a 450 KB tag made a 450 KB error (and a dead letter too large to send)."""
    if len(text) > _MAX_ERROR_CHARS:
        # The field path msgspec ends with (" - at `$.payload.x`") is kept: callers read it.
        head, sep, path = text.rpartition(" - at `")
        if not sep or len(path) > 200:
            head, sep, path = text, "", ""
        text = f"{head[: _MAX_ERROR_CHARS - 60]}... ({len(head):,} characters in all){sep}{path}"
    return escaped(text)


def escaped(text: str) -> str:
    """``text`` with every character that is not printable written as its escape (``\\x1b``,
    ``\\n``, ``\\ud800``: a lone surrogate, which no UTF-8 encoder takes, too)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class _NoEvent(msgspec.Struct, tag_field="type", tag="\x00no-event", frozen=True):
    """A type no record names (its tag is not text a producer writes): decoding one event type
    in a union with it, msgspec requires the ``type`` tag.  Decoded into its struct alone, a
    record without the tag was taken (the single-type topics: ``events.security``,
    ``intel.indicators``, ``alerts``), which the schemas and the runtime's codec refuse."""


class EventCodec:
    """Decodes bytes into one of a fixed set of event types (a topic's contract)."""

    def __init__(self, types: Iterable[type[Event]] | None = None) -> None:
        classes = tuple(types) if types is not None else None
        if classes == ():
            # (It took every type, as ``None`` does: a topic's contract left open by accident.)
            msg = "EventCodec: an empty list of event types; pass None for every canonical type"
            raise ValueError(msg)
        # One type alone goes in a union with _NoEvent, so that its tag is required (see there).
        target: Any = (
            AnyEvent if not classes else reduce(or_, (*classes, _NoEvent) if len(classes) == 1 else classes)
        )
        self.types = classes
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(target)

    def decode(self, data: bytes | str, *, where: str | None = None) -> Event:
        try:
            event: Event | _NoEvent = self._decoder.decode(data)
            if isinstance(event, _NoEvent):
                # (Only a record written with the NUL-led tag itself: it names no event type.)
                msg = f"Invalid value {_NoEvent.__struct_config__.tag!r} - at `$.type`"
                raise msgspec.ValidationError(msg)
        except msgspec.ValidationError as exc:
            text = inert(str(exc))
            raise DecodeError(text, where=where, path=_path_of(text)) from None
        except msgspec.DecodeError as exc:
            msg = f"not valid JSON: {inert(str(exc))}"
            raise DecodeError(msg, where=where) from None
        except RecursionError as exc:  # nested too deep for msgspec (a field before the type tag)
            raise DecodeError(too_deep(exc), where=where) from None
        return event

    def decode_lines(self, data: bytes) -> list[Event]:
        """Decode newline-delimited JSON; raises on the first bad line (with its 1-based number)."""
        out = []
        for n, line in enumerate(data.splitlines(), 1):
            if line.strip():
                out.append(self.decode(line, where=f"line {n}"))
        return out


def too_deep(exc: RecursionError) -> str:
    """Why JSON msgspec could not decode for its nesting is refused."""
    return f"not valid JSON: nested too deeply ({exc})"


_any = EventCodec()


def decode_event(data: bytes | str, *, where: str | None = None) -> Event:
    """Decode any canonical event type."""
    return _any.decode(data, where=where)
