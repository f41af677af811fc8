"""The normalise stream application: ``raw.<source>`` -> canonical ``events.<domain>``.

One operator holds the registered normaliser of every source it reads.  Each raw record
is decoded from its headers (:func:`decode_raw`), handed to its source's normaliser, and
every canonical event it yields is emitted to the topic that declares its type
(:meth:`~vigil.hub.topics.TopicRegistry.for_event`), keyed by the event's entity.

Failures per record:

- headers that cannot be read (a ``vigil.received_at`` that is not RFC 3339, a
  ``vigil.meta`` that is not a JSON object) are a :class:`~vigil.errors.DecodeError`
  raised by :func:`decode_raw`; the runtime dead-letters the record;
- a record a normaliser rejects (:class:`~vigil.errors.VigilError`: a contract or decode
  error naming what was wrong, an unknown ``vigil.kind``) goes to ``dlq.normalize`` with
  ``<source>/<kind>: <reason>`` and the raw bytes *exactly as received*, and the flow goes on;
- a record with an event dated more than its normaliser's ``max_ahead`` after the record was
  received goes to ``dlq.normalize`` too, naming the event and both times (see
  :class:`~vigil.sources.base.Normalizer`: a time far ahead would make every later event of
  its partition late); nothing of that record is emitted;
- a record with an event the canonical contract refuses (a value past its range: a count of
  ``1e300`` is past the 64 bits every reader takes) or too large to send goes there too, so
  the readers of the canonical topics never see it and the raw record is at hand to redrive
  once its normaliser is fixed;
- anything else a normaliser raises (a bug, or input it did not foresee) dead-letters its
  record too, with ``unexpected <type>: <message>`` as the reason and a warning naming topic,
  partition and offset: stopped, the stage would stop again on the same record after every
  restart.  A normaliser broken by a deploy therefore shows as a run of such letters
  (``vigil dlq summary dlq.normalize`` groups them by reason), redriven once it is fixed;
- a failure of the stage itself (the broker, a dead letter too large for its topic) stops it
  loudly with a :class:`~vigil.errors.PipelineError`, and nothing of the failing checkpoint
  is committed.

Under ``exactly_once`` (the default) outputs, dead letters and input offsets are committed
in one Kafka transaction, so a restart neither loses nor duplicates output for
``read_committed`` readers.  Under ``at_least_once`` a restart may re-emit the records
since the last checkpoint; event ids are stable, so downstream deduplicates.

``topic_prefix`` renames every topic the application touches (``<prefix>raw.<source>``,
``<prefix>events.<domain>``, ``<prefix>dlq.normalize``): isolated runs on a shared
cluster (tests, benchmarks) without touching the real topics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from vigil.config import Settings
from vigil.errors import ConfigError, ContractError, DecodeError, VigilError
from vigil.events.base import Event
from vigil.events.codec import EventCodec, encode
from vigil.hub.raw import KIND, META, NO_RECEIVED_AT, RECEIVED_AT, RawRecord
from vigil.hub.topics import DOMAINS, TOPICS, TopicSpec
from vigil.sources.base import Normalizer, PartlyRefused
from vigil.sources.registry import NORMALIZERS, normalizer_for
from vigil.stream.base import Context, Guarantee, Operator, Record

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vigil.stream.app import Application

DLQ = "dlq.normalize"
RAW_PREFIX = "raw."


@functools.lru_cache(maxsize=256)
def source_of(topic: str) -> str:
    """The source a raw topic belongs to: ``raw.coinbase`` and ``<prefix>raw.coinbase`` -> ``coinbase``."""
    head, sep, source = topic.rpartition(RAW_PREFIX)
    if not sep or not source or (head and not head.endswith(".")):
        msg = f"topic {topic!r} is not a raw topic; expected '[<prefix>]raw.<source>'"
        raise ConfigError(msg)
    return source


def decode_raw(topic: str, value: bytes, key: bytes | None, headers: Any) -> RawRecord:
    """Raw topics carry bytes as received; what they are is in the headers.

    Raises :class:`~vigil.errors.DecodeError` naming the header when one cannot be read.
    """
    source = source_of(topic)
    try:
        record = RawRecord.from_headers(source, value, key, headers)
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors; so is a bad RFC 3339 time.
        # (RecursionError: a meta header nested 100,000 deep, which stopped the stage.)
        msg = f"unreadable raw-record headers {_shown(headers)}: {type(exc).__name__}: {exc}"
        raise DecodeError(msg, where=topic) from None
    # (Header names in backquotes: `vigil dlq summary` blanks quoted text, as a record's values
    # vary, and grouped these reasons as "header … is missing".)
    if type(record.meta) is not dict:
        msg = f"header `{META}` must be a JSON object; got {_shown(headers)}"
        raise DecodeError(msg, where=topic)
    if record.received_at.tzinfo is None:
        msg = f"header `{RECEIVED_AT}` must be an RFC 3339 time with a zone; got {_shown(headers)}"
        raise DecodeError(msg, where=topic)
    if record.received_at.utcoffset():
        # Canonical times are UTC: an offset went on into every event's ingested_at (and one of
        # seconds, "+05:00:30", was written as "+05:00", 30 s off).
        try:
            received_at = record.received_at.astimezone(UTC)
        except OverflowError:
            msg = f"header `{RECEIVED_AT}` is outside the years 1-9999 in UTC; got {_shown(headers)}"
            raise DecodeError(msg, where=topic) from None
        record = dataclasses.replace(record, received_at=received_at)
    seen: Counter[str] = Counter(name for name, _ in headers or [] if name in (KIND, RECEIVED_AT, META))
    repeated = sorted(n for n, times in seen.items() if times > 1)
    if repeated:
        # Only one copy is read (the last): which kind or time the record has would be a guess,
        # and an empty last copy of the time was 1970 ("forged time" for every event).
        named = ", ".join(f"`{n}`" for n in repeated)
        msg = f"header(s) {named} given more than once; got {_shown(headers)}"
        raise DecodeError(msg, where=topic)
    if record.received_at == NO_RECEIVED_AT:
        # Taken as 1970, every event of the record was dead-lettered as "forged time".
        msg = f"header `{RECEIVED_AT}` is missing; got {_shown(headers)}"
        raise DecodeError(msg, where=topic)
    return record


def _shown(headers: Any) -> str:
    return repr({str(name): bytes(v or b"")[:80] for name, v in headers or []})


class NormalizeOperator(Operator[Any]):
    """Raw records of several sources -> canonical events (see the module docstring)."""

    id = "normalize.v1"

    def __init__(self, normalizers: Mapping[str, Normalizer], topic_prefix: str = "") -> None:
        self._normalizers = dict(normalizers)
        self._prefix = topic_prefix
        self._topics: dict[type[Event], str] = {}
        self._codecs: dict[type[Event], EventCodec] = {}

    def topic_for(self, event: Event) -> str:
        """The (prefixed) canonical topic that carries ``event``'s type."""
        cls = type(event)
        topic = self._topics.get(cls)
        if topic is None:
            topic = self._topics[cls] = self._prefix + TOPICS.for_event(cls).name
        return topic

    def normalize(self, raw: RawRecord) -> list[Event]:
        """One raw record -> its events; raises :class:`VigilError` with the reason to dead-letter."""
        return self._normalizer(raw.source).normalize(raw)

    def _normalizer(self, source: str) -> Normalizer:
        normalizer = self._normalizers.get(source)
        if normalizer is None:
            msg = f"no normaliser for source {source!r}; this application has {sorted(self._normalizers)}"
            raise ConfigError(msg)
        return normalizer

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        normalizers, topics, emit = self._normalizers, self._topics, ctx.emit
        # The Kafka runtime's context encodes and size-checks an output before sending it: a
        # record's events are all checked first, so one too large sends none of them.
        prepare = getattr(ctx, "prepare_emit", None)
        for rec in batch:
            raw: RawRecord = rec.event
            sends = None
            partly = None
            try:
                normalizer = normalizers.get(raw.source) or self._normalizer(raw.source)
                try:
                    events = normalizer.normalize(raw)
                except PartlyRefused as part:
                    events, partly = part.taken, str(part)
                allowed = normalizer.max_ahead
                checked = []
                for event in events:
                    if event.occurred_at - raw.received_at > allowed:
                        raise ContractError(ahead_reason(event, raw.received_at, raw.source, allowed))
                    checked.append(
                        (topics.get(type(event)) or self.topic_for(event), event, self._checked(event))
                    )
                if prepare is not None:
                    sends = [prepare(topic, event, None, value) for topic, event, value in checked]
            except Exception as exc:  # any record the stage cannot take is dead-lettered
                # Input a normaliser did not foresee (a year 0001 timestamp, a JSON nested 100,000
                # deep, an event too large to send) fails its record, not the stage: stopped, it
                # would stop again on the same record after every restart.
                if isinstance(exc, VigilError):
                    reason = str(exc)
                else:
                    reason = f"unexpected {type(exc).__name__}: {exc}"
                    log.warning(
                        "normalise: %s[%d]@%d (%s/%s) dead-lettered: %s",
                        rec.topic,
                        rec.partition,
                        rec.offset,
                        raw.source,
                        raw.kind,
                        reason[:500],
                    )
                _dead_letter(rec, raw, reason, ctx)
                continue
            if sends is not None:
                for send in sends:
                    send()
            else:
                for topic, event, _ in checked:
                    emit(topic, event)
            if partly is not None:
                _dead_letter(rec, raw, partly, ctx)

    def _checked(self, event: Event) -> bytes:
        """``event`` encoded, once the canonical contract has read it back: a normaliser can build
        an event its topic's readers refuse (a count of 1e300, past the 64 bits every reader
        takes), which would otherwise be dead-lettered by each of them instead of here, at the
        edge, with the raw record a fixed normaliser can be redriven on."""
        value = encode(event)
        cls = type(event)
        codec = self._codecs.get(cls)
        if codec is None:
            codec = self._codecs[cls] = EventCodec([cls])
        try:
            codec.decode(value)
        except DecodeError as exc:
            msg = (
                f"built {cls.__name__} {event.event_id!r}, which the canonical contract refuses "
                f"({exc}); the normaliser must refuse such input or bound the value"
            )
            raise ContractError(msg) from None
        return value


def _dead_letter(rec: Record[Any], raw: RawRecord, reason: str, ctx: Context) -> None:
    # The dead letter keeps the bytes as received: msgspec.Raw encodes to itself.
    as_received: Record[Any] = msgspec.structs.replace(rec, event=msgspec.Raw(raw.value))
    # With its headers as read, the letter is the record whole (see DeadLetter.headers).
    given = raw.received_headers
    headers: list[tuple[str, bytes | None]] = list(raw.headers() if given is None else given)
    ctx.dead_letter(as_received, f"{raw.source}/{raw.kind}: {reason}", headers)


def ahead_reason(event: Event, received_at: datetime, source: str, allowed: timedelta) -> str:
    """Why ``event``, more than ``allowed`` ahead of when its record was received, is refused
    (also for events produced straight to a canonical topic: ``vigil produce``)."""
    ahead = event.occurred_at - received_at
    return (
        f"event {event.event_id!r} occurred_at {event.occurred_at.isoformat()} is "
        f"{ahead.total_seconds():,.0f}s after the record was received ({received_at.isoformat()}); "
        f"at most {allowed.total_seconds():,.0f}s ahead is accepted from {source!r} (a wrong clock, "
        "or a forged time that would make every later event of its partition late)"
    )


#: What normalisers emit to: the canonical event topics and the compacted indicator topic.
OUTPUTS: tuple[str, ...] = (*(f"events.{domain}" for domain in DOMAINS), "intel.indicators")


def output_specs(topic_prefix: str = "") -> list[TopicSpec]:
    """The declared topics normalise writes to (renamed with ``topic_prefix``)."""
    return [dataclasses.replace(TOPICS.get(name), name=topic_prefix + name) for name in OUTPUTS]


def build(
    settings: Settings,
    sources: Sequence[str] | None = None,
    *,
    guarantee: Guarantee = "exactly_once",
    name: str = "normalize",
    topic_prefix: str = "",
    normalizers: Mapping[str, Normalizer] | None = None,
    **options: Any,
) -> Application:
    """The normalise :class:`~vigil.stream.app.Application` over the given (default: all) sources.

    ``normalizers`` supplies normaliser instances by source name (configured ones, or
    sources not in the registry yet); the rest come from
    :data:`~vigil.sources.registry.NORMALIZERS`.  ``options`` go to the Application
    (``batch_size``, ``checkpoint_interval_s``, ``instance_id``, ...).  The raw input
    topics must exist and have equal partition counts (the runtime co-partitions inputs);
    the canonical output topics and the dead-letter topic are created when missing.
    """
    from vigil.stream.app import Application

    given = dict(normalizers or {})
    names = list(sources) if sources else sorted({*NORMALIZERS, *given})
    unknown = [n for n in names if n not in NORMALIZERS and n not in given]
    if unknown:
        known = ", ".join(sorted({*NORMALIZERS, *given}))
        msg = f"no normaliser for source(s) {unknown}; known: {known}"
        raise ConfigError(msg)
    if not names:
        msg = "normalise needs at least one source; none given and none registered"
        raise ConfigError(msg)
    chosen: dict[str, Normalizer] = {n: given[n] if n in given else normalizer_for(n) for n in names}
    operator = NormalizeOperator(chosen, topic_prefix)
    return Application(
        settings,
        name=name,
        inputs=[f"{topic_prefix}{RAW_PREFIX}{n}" for n in names],
        operators=[operator],
        guarantee=guarantee,
        dlq_topic=topic_prefix + DLQ,
        decode=decode_raw,
        output_topics=output_specs(topic_prefix),
        **options,
    )
