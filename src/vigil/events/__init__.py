"""Typed event, alert and decision contracts; their codec and JSON Schema export.

Every record on a canonical topic is one :class:`~vigil.events.base.Event` subclass,
tagged by its ``type`` field.  See :mod:`vigil.events.types` for the catalogue.
"""

from vigil.events.base import Entities, Event, UtcDateTime, utcnow
from vigil.events.codec import EventCodec, decode_event, encode
from vigil.events.ids import stable_id
from vigil.events.types import EVENT_TYPES, AnyEvent, event_class

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "Entities",
    "Event",
    "EventCodec",
    "UtcDateTime",
    "decode_event",
    "encode",
    "event_class",
    "stable_id",
    "utcnow",
]
