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

# The date-time pattern, in parts.  It takes what the decoder (msgspec) takes, character for
# character: RFC 3339's ``full-date "T" full-time`` with ``T``, ``t`` or a space between them, any
# number of fraction digits, and an offset of ``Z``/``z``, ``+hh:mm`` or ``+hhmm`` (either sign;
# msgspec reads ``+0100`` as ``+01:00``, and refusing it would take a scan of every record before
# decoding: the schema follows the decoder).  Days are checked against their month and February 29
# against the leap years, as the decoder does.  ASCII classes, never ``\d``: Python's matches any
# script's digits, which the decoder refuses.  One refusal is left to the decoder: seven or more
# fraction digits that round up past 9999-12-31T23:59:59.999999 (beyond ``datetime``).
_YEAR = "(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"  # 0001-9999: Python has no year 0
_MONTH_DAY = (
    "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"  # 31 days
    "|(0[469]|11)-(0[1-9]|[12][0-9]|30)"  # 30 days
    "|02-(0[1-9]|1[0-9]|2[0-8]))"  # February 29 is in DATE_TIME_PATTERN, with the leap years
)
_MULTIPLE_OF_4 = "(0[48]|[2468][048]|[13579][26])"  # two digits, 04 to 96 (00 is left to the caller)
#: Years divisible by 4 and not by 100, or by 400 (0000 is not a year: see ``_YEAR``).
_LEAP_YEAR = f"([0-9]{{2}}{_MULTIPLE_OF_4}|{_MULTIPLE_OF_4}00)"
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?"  # no leap second: the decoder refuses :60
_OFFSET = "([Zz]|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])"
#: Anchored at both ends (unanchored at the start, "hello Z" matched).  ``(?!\n)`` because Python's
#: ``$``, which jsonschema uses, also matches before a final newline; ECMA 262's does not.
DATE_TIME_PATTERN = f"^({_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)[Tt ]{_TIME}{_OFFSET}(?!\\n)$"

#: A datetime that must carry a timezone; naive datetimes are rejected at decode.  The JSON Schema
#: says so with a pattern too: its ``format: date-time`` is an annotation most validators do not
#: check unless asked, so a schema-checking producer took "2026-01-01T00:00:00".
UtcDateTime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description=(
            "RFC 3339 date-time with an offset: Z or +hh:mm/-hh:mm (the decoder also takes +hhmm, "
            "and a space or a lower-case t between date and time; a validator that asserts "
            "format: date-time does not)."
        ),
        extra_json_schema={"pattern": DATE_TIME_PATTERN},
    ),
]
#: An identifier or entity key: never empty.  An empty ``event_id`` deduplicated unrelated events
#: into one; an empty customer or wallet grouped every event missing it as one entity.  A blank one
#: (" ") is taken, by the decoder and the schema alike: refusing it costs too much.  Decoding
#: 200,000 simulated events took 0.20 s; with ``pattern=r"\S"`` here 0.61 s (a regex call per
#: id), with an ``Event.__post_init__`` checking only the envelope's ids 0.30 s.
Id = Annotated[str, msgspec.Meta(min_length=1)]
#: A client's IP address, as ``ipaddress`` spells it (IPv6 compressed, lower-case; an IPv4-mapped
#: one as IPv4).  Connectors leave out what is no address; the ingest API refuses it.  (Checked
#: there, not on every decode: parsing an address costs more than the rest of a login's decode.)
IpAddress = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        description="An IPv4 or IPv6 address (IPv6 compressed, lower-case)",
        extra_json_schema={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
]
#: An amount, price or quantity: never negative.  A refund or reversal is not a negative payment,
#: and a negative amount lowered every sum a rule keeps (a withdrawal velocity sum could be
#: talked under its threshold).  JSON numbers decode finite (msgspec refuses 1e999); the schema
#: says so with bounds (vigil.events.schema).
Amount = Annotated[float, msgspec.Meta(ge=0)]
#: The integers state stores hold.  State is MessagePack, whose integers stop at 64 bits
#: (``msgspec.msgpack.encode(2**70)`` raises OverflowError, at the checkpoint and again after every
#: restart), and JSON's have no bound: a severity of 2**70 was taken at the edge.  Detection turns
#: what it keeps past 64 bits into floats (vigil.detect.fields.kept); bounded here, no stage has to.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: An integer of a source's own (a severity, a version): 64-bit signed.
Int = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
#: A count, block number, index or decimals: never negative, and 64-bit.
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
#: An on-chain integer: a token's raw amount in base units or an NFT's id, an EVM ``uint256``
#: (an unlimited approval is 2**256 - 1).  Kept whole, so not bounded to 64 bits: detection keeps
#: one past 64 bits as a float (vigil.detect.fields.kept).
ChainInt = Annotated[int, msgspec.Meta(ge=0)]


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
    ip: IpAddress | None = None
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
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = 1

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
