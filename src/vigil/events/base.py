"""The canonical envelope every Vigil event shares.

An event is a msgspec ``Struct`` tagged by ``type``.  The envelope carries what every
stage needs without looking inside the payload: a stable ``event_id`` (deduplication),
the ``source`` system, the event time ``occurred_at`` (windows run on it, never on
arrival time), ``ingested_at``, the entity keys present, and ``schema_version``.
Each subclass adds one ``payload`` struct of its own.

Structs are frozen (events are facts) and ``gc=False``: they hold no reference cycles,
and untracked objects make large decoded batches cheap for the garbage collector.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec

#: A datetime that must carry a timezone; naive datetimes are rejected at decode.  The JSON Schema
#: says so with a pattern too: its ``format: date-time`` is an annotation most validators do not
#: check unless asked, so a schema-checking producer took "2026-01-01T00:00:00".
UtcDateTime = Annotated[
    datetime,
    msgspec.Meta(tz=True, extra_json_schema={"pattern": "([Zz]|[+-][0-9]{2}:[0-9]{2})$"}),
]
#: An identifier or entity key: never empty.  An empty ``event_id`` deduplicated unrelated events
#: into one; an empty customer or wallet grouped every event missing it as one entity.
Id = Annotated[str, msgspec.Meta(min_length=1)]
#: An amount, price or quantity: never negative.  A refund or reversal is not a negative payment,
#: and a negative amount lowered every sum a rule keeps (a withdrawal velocity sum could be
#: talked under its threshold).  JSON numbers decode finite (msgspec refuses 1e999).
Amount = Annotated[float, msgspec.Meta(ge=0)]
#: A count, block number, index or integer value in base units: never negative.
Count = Annotated[int, msgspec.Meta(ge=0)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Struct(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, omit_defaults=True):
    """Base for payloads and nested records: frozen, strict about unknown fields."""


class Entities(Struct, kw_only=True, frozen=True):
    """The entity keys an event is about, as present.

    Detection groups and joins on these; they are the keys of the canonical topics.
    Addresses are stored normalised (EVM addresses lower-case).
    """

    customer: Id | None = None
    account: Id | None = None
    wallet: Id | None = None
    counterparty: Id | None = None
    device: Id | None = None
    ip: Id | None = None
    employee: Id | None = None
    vendor: Id | None = None
    api_key: Id | None = None
    email: Id | None = None
    domain: Id | None = None

    KINDS: ClassVar[tuple[str, ...]] = (
        "customer",
        "account",
        "wallet",
        "counterparty",
        "device",
        "ip",
        "employee",
        "vendor",
        "api_key",
        "email",
        "domain",
    )

    def get(self, kind: str) -> str | None:
        value: str | None = getattr(self, kind, None)
        return value


class Event(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
):
    """The envelope.  Subclasses set ``tag=`` (their ``type``) and add ``payload``."""

    event_id: Id
    source: Id
    occurred_at: UtcDateTime
    ingested_at: UtcDateTime | None = None
    entities: Entities = Entities()
    schema_version: Annotated[int, msgspec.Meta(ge=1)] = 1

    #: Topic domain this type belongs to (``events.<domain>``); set on each subclass.
    domain: ClassVar[str] = ""
    #: Entity kind used as the Kafka key on the canonical topic.
    key_entity: ClassVar[str] = "customer"

    @property
    def type(self) -> str:
        return str(type(self).__struct_config__.tag)

    def key(self) -> str | None:
        """The Kafka key: the entity named by ``key_entity``, else the event id."""
        return self.entities.get(self.key_entity) or self.event_id
