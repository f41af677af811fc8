"""The back-end ingest API: the exchange's own services POST canonical events over HTTP.

``POST /v1/events`` takes one JSON object, a JSON array of objects (``application/json``)
or newline-delimited JSON (``application/x-ndjson``; also ``application/ndjson`` and
``application/jsonl``).  Each line (or array item) is validated against the canonical
contract with :mod:`vigil.events.codec`; valid ones are published unchanged (their exact
bytes) to ``raw.backend`` as kind ``canonical``, keyed by the event's entity key; invalid
ones are listed in the response by line (or item) number with the codec's message, and
dead-lettered to ``dlq.ingest`` with the same reason.

What one request may cost is bounded.  It carries at most :data:`MAX_REQUEST_ITEMS` (5,000)
items, valid or not (NDJSON lines that are not blank, array items; one object is one),
counted before any is validated: more is answered **413** naming the count and the limit, and
nothing of it is taken.  The first :data:`ERRORS_ITEMIZED` (100) refused items are listed in
the response and dead-lettered one letter each; the rest are counted (``errors_not_listed``)
and dead-lettered together, in as few letters as the record limit allows, each naming its
items' numbers, counting their reasons and holding their raw bytes as the request framed
them (NDJSON lines, or a JSON array): every refused item is in a letter, and posting a
letter's ``raw`` again sends its items again.  The body is validated, and its records built,
in a worker thread: the event loop, health checks included, goes on meanwhile.

Authentication: ``Authorization: Bearer <key>`` (the scheme in any case), one key per calling
service.  Only the SHA-256 of each key is configured (``service -> hex digest``); the presented
key is hashed and compared with every configured digest in constant time.  Keys are never logged, put
in records or echoed; a failed attempt gets 401, is counted per reason and logged.

Authorisation: each service may send only the event types of its scope (``backend_scopes``:
``service -> [type or domain, ...]``; without an entry, :data:`DEFAULT_SCOPE`: identity,
payments and market), and no event whose ``source`` names one of Vigil's own connectors
(``ethereum``, ``cloudtrail``, ``hubspot`` ...: those events come from the connector).  A line
outside them is refused as a contract error is: listed in the response and dead-lettered.

``GET /v1/health`` is unauthenticated (load balancers call it) and says only whether the
instance can take events; the broker's errors and the failed attempts are in the log.

Durability: a request is answered **200** only once Kafka has its records (the sink's
transaction committed).  Between the handlers and Kafka sits a bounded in-memory buffer
drained by one publisher thread that retries, in order, while the broker is unavailable.
If a batch is not durable within ``ack_timeout`` the answer is **202** (accepted, queued:
it will be written when the broker is back; its events keep their ``event_id`` so a client
that resends anyway is deduplicated downstream).  The buffer is bounded in records and in bytes
(``max_buffered_records``, ``max_buffered_bytes``); when either is reached the answer is
**503** with ``Retry-After`` and nothing of that request is accepted (a request that is
alone more than the whole buffer is **413**: it would never fit).  A Kafka transaction
carries at most 5,000 records and 64 MB (a batch over them would go in several); a request
within the item and body limits is within them, so its records are written whole or not at
all.  On shutdown the server stops accepting first, then drains the buffer (up to
``drain_timeout``).  The buffer is memory: a crash of this process while the broker is down
loses the 202 batches, which is what the 202 (rather than 200) tells the caller.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
import typing
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from vigil.config import Settings
from vigil.errors import ConfigError, ContractError, SourceError
from vigil.events.addresses import canonical_addresses
from vigil.events.base import Event
from vigil.events.codec import EventCodec, encode
from vigil.events.records import DeadLetter
from vigil.events.types import EVENT_CLASSES, types_in_domain
from vigil.hub.raw import RawRecord
from vigil.sources.addresses import client_ip
from vigil.sources.base import Normalizer, RawSink, Source, check_options
from vigil.sources.http_server import HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS, listen, serving
from vigil.sources.registry import NORMALIZERS, SOURCES
from vigil.sources.webhooks import BODY_TIMEOUT_S, RECORD_MAX_BYTES, Rejected, closing, read_body

log = logging.getLogger(__name__)

NAME = "backend"
KIND = "canonical"
KIND_REJECTED = "rejected"
DLQ_TOPIC = "dlq.ingest"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


def topic_for(record: RawRecord) -> str:
    """Where the ingest source's records go: accepted events to ``raw.backend``, rejected
    lines (already wrapped as dead letters) to ``dlq.ingest``.  Pass it as the sink's ``topic_for``."""
    return DLQ_TOPIC if record.kind == KIND_REJECTED else f"raw.{record.source}"


def hash_key(key: str) -> str:
    """The digest to configure for an API key (``vigil`` never stores the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()


# --------------------------------------------------------------------------- buffer


class BufferFull(SourceError):
    """The in-memory buffer has no room for this batch; the caller should retry later."""


class BatchTooLarge(SourceError):
    """The batch alone is more than the whole buffer holds: it will never fit, so retrying does
    not help (the API answers 413, not 503)."""


@dataclass
class _Batch:
    records: list[RawRecord]
    #: Each record's bytes as the broker counts them (:meth:`RawRecord.size`), and their sum.
    sizes: list[int]
    size: int
    done: Future[None] = field(default_factory=Future)
    #: How many of ``records`` are durable: a batch over the transaction bounds goes in parts.
    sent: int = 0


#: What the buffer may hold in bytes.  Bounded by count only, 10,000 records of up to 900 KB
#: were 8.8 GB of memory.
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
#: The most one Kafka transaction carries, in records and in bytes: 5,000 records of 900 KB
#: were 4.4 GB in the producer's queue at once, more than librdkafka's own 1 GB buffer.
BATCH_MAX_RECORDS = 5_000
BATCH_MAX_BYTES = 64 * 1024 * 1024


class IngestBuffer:
    """A FIFO of batches between the HTTP handlers and Kafka, bounded by ``max_records``
    and by ``max_bytes`` (records' sizes as the broker counts them).

    ``submit`` either takes the whole batch (and returns a future that completes when the
    batch is durable) or raises: :class:`BufferFull` when the batch does not fit beside what
    is waiting, :class:`BatchTooLarge` when it is more than the whole buffer holds.  It never
    takes part of a batch, nor more than the bounds (a batch larger than the whole buffer went
    in whenever the buffer was empty: 1,000,000 dead letters, 289 MB, in one transaction).
    One publisher thread writes batches in arrival order and retries the head transaction with
    backoff until the sink accepts it, so a broker outage delays records but loses none.
    It puts several batches in one transaction up to ``batch_max_records`` and
    ``batch_max_bytes``; a batch over them alone goes in several transactions, each within
    them (but a single record over ``batch_max_bytes`` goes alone), and its future completes
    once they have all committed.  Only such a batch can be partly in Kafka (the broker
    failing between its transactions, then the process ending).
    """

    def __init__(
        self,
        sink: RawSink,
        *,
        max_records: int = 10_000,
        max_bytes: int = MAX_BUFFERED_BYTES,
        batch_max_records: int = BATCH_MAX_RECORDS,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        max_backoff: float = 2.0,
    ) -> None:
        self._sink = sink
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self._max_backoff = max_backoff
        self._queue: deque[_Batch] = deque()
        self._size = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.published = 0

    @property
    def buffered(self) -> int:
        with self._cond:
            return self._size

    @property
    def buffered_bytes(self) -> int:
        with self._cond:
            return self._bytes

    @property
    def full(self) -> bool:
        """At either bound: the next request is answered 503 until the broker takes some."""
        with self._cond:
            return self._size >= self.max_records or self._bytes >= self.max_bytes

    def submit(self, records: list[RawRecord], sizes: list[int] | None = None) -> Future[None]:
        """``sizes``: each record's :meth:`RawRecord.size`, when already measured (off the event
        loop: 5,000 records take some 60 ms)."""
        sizes = [r.size() for r in records] if sizes is None else sizes
        size = sum(sizes)
        if len(records) > self.max_records or size > self.max_bytes:
            msg = (
                f"{len(records):,} records of {size:,} bytes are more than the ingest buffer holds "
                f"({self.max_records:,} records, {self.max_bytes:,} bytes)"
            )
            raise BatchTooLarge(msg)
        with self._cond:
            if self._closing:
                msg = "ingest buffer is shutting down"
                raise BufferFull(msg)
            if self._size + len(records) > self.max_records:
                msg = f"ingest buffer full ({self._size} of {self.max_records} records waiting for Kafka)"
                raise BufferFull(msg)
            if self._bytes + size > self.max_bytes:
                msg = (
                    f"ingest buffer full ({self._bytes:,} of {self.max_bytes:,} bytes waiting for Kafka; "
                    f"this request's records are {size:,})"
                )
                raise BufferFull(msg)
            batch = _Batch(list(records), sizes, size)
            self._queue.append(batch)
            self._size += len(records)
            self._bytes += size
            self._cond.notify()
            return batch.done

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="backend-ingest-publisher", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Stop taking batches, then wait up to ``timeout`` for the buffer to drain.  True if drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            drained = not self._queue
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return drained

    def _take(self) -> list[tuple[_Batch, int, int]] | None:
        """The next transaction: (batch, how many of its records from ``sent`` on, their bytes)."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait(timeout=0.5)
            head = self._queue[0]
            if head.sent or len(head.records) > self.batch_max_records or head.size > self.batch_max_bytes:
                # Over the bounds alone: its next part, records in order up to either bound.
                count = size = 0
                for record_size in head.sizes[head.sent :]:
                    if count and (
                        count == self.batch_max_records or size + record_size > self.batch_max_bytes
                    ):
                        break
                    count += 1
                    size += record_size
                return [(head, count, size)]
            # Several small batches go whole in one transaction: fewer commits under load, and a
            # request that fits one transaction is written whole or not at all.
            taken: list[tuple[_Batch, int, int]] = []
            count = size = 0
            for batch in self._queue:
                if taken and (
                    count + len(batch.records) > self.batch_max_records
                    or size + batch.size > self.batch_max_bytes
                ):
                    break
                taken.append((batch, len(batch.records), batch.size))
                count += len(batch.records)
                size += batch.size
            return taken

    def _loop(self) -> None:
        backoff = 0.05
        while True:
            taken = self._take()
            if taken is None:
                return
            records = [r for batch, count, _ in taken for r in batch.records[batch.sent : batch.sent + count]]
            try:
                self._sink.publish(records)
            except Exception as exc:  # any failure means "not durable yet": retry, in order
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ingest: publishing %d buffered records failed, retrying: %s", len(records), exc)
                with self._cond:
                    self._cond.wait(timeout=backoff)
                backoff = min(self._max_backoff, backoff * 2)
                continue
            backoff = 0.05
            self.last_error = None
            self.published += len(records)
            finished: list[_Batch] = []
            with self._cond:
                for batch, count, size in taken:
                    batch.sent += count
                    self._size -= count
                    self._bytes -= size
                    if batch.sent == len(batch.records):
                        self._queue.popleft()
                        finished.append(batch)
                self._cond.notify_all()
            for batch in finished:
                batch.done.set_result(None)


# --------------------------------------------------------------------------- parsing


#: The most items one request may carry, valid or not: NDJSON lines that are not blank, or
#: array items (one object is one).  Unbounded, a 2 MB body of 1,000,000 lines of ``1`` took
#: 60 s to answer, with 1,000,000 errors listed (55 MB) and dead-lettered (289 MB in one
#: transaction).  One transaction's records: a request's records are never more than its
#: items, so within the default bounds a request is written in one transaction, whole or not
#: at all.
MAX_REQUEST_ITEMS = BATCH_MAX_RECORDS
#: The refused items a response lists, and dead-letters one letter each, with their reasons;
#: the rest are counted (``errors_not_listed``) and dead-lettered together (:func:`dead_letters`),
#: so a request of bad lines cannot grow into many times its size in the answer and the topic.
ERRORS_ITEMIZED = 100
#: Request bodies validated at once (see create_app): what a burst of large ones may hold in memory.
PARSES_AT_ONCE = 2
#: The most raw bytes one letter of the rest holds: base64 in the letter (4/3 of it), with its
#: reason and envelope, within one record (``RECORD_MAX_BYTES``).
_REST_RAW_BYTES = 600_000
#: NDJSON is split a slice at a time: split whole, a 10 MB body of 3,400,000 two-character lines
#: was as many objects (190 MB) before anything could be counted.
_SLICE_BYTES = 256 * 1024


@dataclass
class ParsedBody:
    accepted: list[tuple[bytes, Event]] = field(default_factory=list)
    #: (position label, number, raw bytes, reason)
    errors: list[tuple[str, int, bytes, str]] = field(default_factory=list)


class UnsupportedMediaType(ContractError):
    """The request's Content-Type is not one the API reads (answered 415)."""


class TooManyItems(ContractError):
    """The body carries more items than one request may (answered 413); counted before any is
    validated."""

    def __init__(self, message: str, *, count: int, limit: int) -> None:
        super().__init__(message)
        self.count = count
        self.limit = limit


#: What the exchange's own services may send: business events.  Not alerts, decisions or intel
#: indicators: those are Vigil's own outputs and lists (an ingest key could otherwise release a
#: held withdrawal, or withdraw an OFAC listing under the same compacted key).
INGEST_DOMAINS = ("identity", "payments", "market", "saas", "chain", "security")
_codec = EventCodec([cls for domain in INGEST_DOMAINS for cls in types_in_domain(domain)])
_array = msgspec.json.Decoder(list[msgspec.Raw])


def _ndjson_lines(body: bytes, keep: int) -> tuple[list[tuple[int, bytes]], int]:
    """How many lines of ``body`` are not blank, and those lines with their numbers (blank
    ones counted) when there are at most ``keep`` of them (else none)."""
    kept: list[tuple[int, bytes]] = []
    count = 0
    first = 1  # the number of the slice's first line
    start = 0
    while start <= len(body):
        end = body.find(b"\n", start + _SLICE_BYTES)
        end = len(body) if end < 0 else end
        lines = body[start:end].split(b"\n")
        if count <= keep:
            found = list(itertools.compress(enumerate(lines, first), map(bytes.strip, lines)))
            kept += found
            count += len(found)
        else:
            count += sum(map(bool, map(bytes.strip, lines)))
        first += len(lines)
        start = end + 1
    return (kept if count <= keep else []), count


def _too_many(count: int, what: str, limit: int) -> TooManyItems:
    msg = (
        f"the body carries {count:,} {what}, valid or not; one request may carry at most {limit:,}: "
        "send them in several requests (nothing from this request was accepted)"
    )
    return TooManyItems(msg, count=count, limit=limit)


def parse_body(
    body: bytes,
    content_type: str,
    refuse: Callable[[Event], str | None] = lambda _: None,
    max_items: int = MAX_REQUEST_ITEMS,
) -> ParsedBody:
    """Split and validate a request body; ``refuse`` gives the reason a valid event may not be
    taken from this caller (None: taken), and such a line is an error like an invalid one.
    Raises ContractError if the body as a whole is unusable (unsupported content type, not
    JSON at all), :class:`TooManyItems` if it carries more than ``max_items`` (counted before
    any is validated)."""
    media = content_type.split(";", 1)[0].strip().lower()
    out = ParsedBody()

    def check(label: str, n: int, raw: bytes) -> None:
        try:
            event = _codec.decode(raw)
        except ContractError as exc:
            out.errors.append((label, n, raw, getattr(exc, "reason", str(exc))))
            return
        reason = refuse(event)
        if reason is None:
            out.accepted.append((raw, event))
        else:
            out.errors.append((label, n, raw, reason))

    if media in NDJSON_TYPES:
        lines, count = _ndjson_lines(body, max_items)
        if count > max_items:
            raise _too_many(count, "lines (not blank)", max_items)
        for n, line in lines:
            check("line", n, line.rstrip(b"\r"))
    elif media == "application/json":
        stripped = body.lstrip()
        if stripped.startswith(b"["):
            try:
                items = _array.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                # (RecursionError: an item nested 100,000 deep; uncaught, the request failed
                # with a 500, which a sender retries for ever.)
                msg = f"body is not a JSON array of objects: {exc}"
                raise ContractError(msg) from None
            if len(items) > max_items:
                raise _too_many(len(items), "array items", max_items)
            for n, item in enumerate(items, 1):
                check("item", n, bytes(item))
        else:
            check("item", 1, body.strip())
    else:
        msg = (
            f"unsupported Content-Type {media or '(none)'!r}; expected application/json or "
            "application/x-ndjson"
        )
        raise UnsupportedMediaType(msg)
    return out


def dead_letters(
    errors: Sequence[tuple[str, int, bytes, str]], service: str, now: datetime
) -> list[DeadLetter]:
    """The letters of a request's refused items (``ParsedBody.errors``): the first
    :data:`ERRORS_ITEMIZED` one letter each, with its reason; the rest together, in as few
    letters as the record limit allows, each naming its items' numbers and how many there are,
    counting their reasons, and holding their raw bytes as the request framed them (NDJSON
    lines, or a JSON array): every refused item is in a letter, and a letter's ``raw`` posted
    again with the request's Content-Type sends its items again."""

    def letter(reason: str, raw: bytes) -> DeadLetter:
        return DeadLetter(
            stage="ingest",
            reason=reason,
            topic="http:/v1/events",
            partition=-1,
            offset=-1,
            key=service.encode(),
            raw=raw,
            failed_at=now,
        )

    letters = [letter(f"{label} {n}: {reason}", raw) for label, n, raw, reason in errors[:ERRORS_ITEMIZED]]
    group: list[tuple[str, int, bytes, str]] = []
    size = 0
    for error in errors[ERRORS_ITEMIZED:]:
        if group and size + len(error[2]) > _REST_RAW_BYTES:
            letters.append(letter(_rest_reason(group), _rest_raw(group)))
            group, size = [], 0
        group.append(error)
        size += len(error[2]) + 1
    if group:
        letters.append(letter(_rest_reason(group), _rest_raw(group)))
    return letters


def _rest_raw(group: Sequence[tuple[str, int, bytes, str]]) -> bytes:
    raws = [raw for _, _, raw, _ in group]
    return b"\n".join(raws) if group[0][0] == "line" else b"[" + b",".join(raws) + b"]"


def _rest_reason(group: Sequence[tuple[str, int, bytes, str]]) -> str:
    label = group[0][0]
    framed = "NDJSON lines" if label == "line" else "a JSON array"
    reasons = Counter(reason for *_, reason in group)
    # (A reason may quote a field's path at length: each is cut, and only the commonest named.)
    why = "; ".join(f"{k:,} x {reason[:200]}" for reason, k in reasons.most_common(3))
    if len(reasons) > 3:
        why += f"; and {len(reasons) - 3:,} other reasons"
    return (
        f"{label}s {_ranges([n for _, n, _, _ in group])}: {len(group):,} refused {label}s past the first "
        f"{ERRORS_ITEMIZED} (those have a letter each), in raw as {framed}; reasons: {why}"
    )


def _ranges(numbers: Sequence[int]) -> str:
    """Ascending numbers as runs: ``101-180, 182, 190-5000``."""
    runs: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(runs)


# --------------------------------------------------------------------------- scopes


#: What a service may send when ``backend_scopes`` has no entry for it: the exchange's own
#: business (logins, 2FA, the address book, deposits and withdrawals, loyalty, its order book).
#: Chain, SaaS and security events stand for what Vigil observes outside the exchange; taken from
#: any key, one compromised service could fabricate on-chain exposure or CloudTrail activity (holds
#: on arbitrary customers) or a "normal history" that blinds the deviation rules.
DEFAULT_SCOPE = ("identity", "payments", "market")

#: Ingestible domain -> the event types (tags) in it.
_DOMAIN_TYPES: dict[str, frozenset[str]] = {
    domain: frozenset(str(cls.__struct_config__.tag) for cls in types_in_domain(domain))
    for domain in INGEST_DOMAINS
}
_INGEST_TYPES = frozenset(t for types in _DOMAIN_TYPES.values() for t in types)
#: Names that are event types or domains, but Vigil's own outputs and lists: never ingested.
_OWN_NAMES = frozenset(
    name
    for cls in EVENT_CLASSES
    if cls.domain not in INGEST_DOMAINS
    for name in (cls.domain, str(cls.__struct_config__.tag))
)

#: The ``source`` of events that Vigil's own connectors make (the registry's names), which an event
#: from a service may not claim: a ``source`` of ``cloudtrail`` or ``ethereum`` is read downstream as
#: "seen by that connector".  ``backend`` is the ingest API's own.
CONNECTOR_SOURCES = frozenset(SOURCES).union(NORMALIZERS) - {NAME}


def _types_of(names: Sequence[str]) -> frozenset[str]:
    return frozenset(t for name in names for t in _DOMAIN_TYPES.get(name, {name}))


class Scopes:
    """What each calling service may send: the event types and whole domains of its entry in
    ``backend_scopes``, or :data:`DEFAULT_SCOPE` without one.  An entry replaces the default
    (a service that sends chain and identity events lists both).

    Built at start: an unknown type or domain, an empty entry or an entry for a service with no
    key raises :class:`ConfigError` naming every such entry at once.
    """

    def __init__(self, scopes: Mapping[str, Sequence[str]], services: Collection[str]) -> None:
        problems: list[str] = []
        unknown_names = False
        for service, names in scopes.items():
            if service not in services:
                problems.append(
                    f"service {service!r} has no API key (services with keys: {', '.join(sorted(services))})"
                )
            if not names:
                problems.append(
                    f"service {service!r} has an empty scope; expected types or domains (a service "
                    f"without an entry may send {', '.join(DEFAULT_SCOPE)})"
                )
            for name in names:
                if name in _OWN_NAMES:
                    problems.append(
                        f"service {service!r}: {name!r} is Vigil's own output or list, never taken from "
                        "the ingest API"
                    )
                elif name not in _DOMAIN_TYPES and name not in _INGEST_TYPES:
                    problems.append(f"service {service!r}: {name!r} is no event type or domain")
                    unknown_names = True
        if problems:
            msg = "backend_scopes: " + "; ".join(problems)
            if unknown_names:
                msg += (
                    f"; expected domains ({', '.join(sorted(_DOMAIN_TYPES))}) or event types "
                    f"({', '.join(sorted(_INGEST_TYPES))})"
                )
            raise ConfigError(msg)
        self._names = {service: tuple(names) for service, names in scopes.items()}
        self._types = {service: _types_of(names) for service, names in scopes.items()}
        self._default = _types_of(DEFAULT_SCOPE)

    def of(self, service: str) -> tuple[str, ...]:
        """The scope's names as configured (the default's domains without an entry)."""
        return self._names.get(service, DEFAULT_SCOPE)

    def refusal(self, service: str, event: Event) -> str | None:
        """Why ``service`` may not send ``event`` (None: it may)."""
        if event.type in self._types.get(service, self._default):
            return None
        whose = "its scope in backend_scopes" if service in self._names else "the default scope"
        return (
            f"type {event.type!r} ({type(event).domain}) is outside the scope of service {service!r}: "
            f"{', '.join(self.of(service))} ({whose})"
        )


def ip_refusal(event: Event) -> str | None:
    """Why ``event``'s client IP is refused (None: it is an address, or absent).  Not an address
    (``unknown``, ``-``), it was one IP entity every such login shared: per-IP rules (credential
    stuffing) counted strangers together."""
    ip = event.entities.ip
    if ip is None or client_ip(ip) is not None:
        return None
    return f"entities.ip {ip[:64]!r} is not an IP address (leave it out when there is none)"


def connector_claim(event: Event) -> str | None:
    """Why ``event`` may not come from a service because of its ``source`` (None: it may)."""
    # Compared as a rule or an analyst reads it: " CloudTrail" is still CloudTrail.
    if event.source.strip().lower() in CONNECTOR_SOURCES:
        return (
            f"source {event.source!r} is a connector's: its events come from that connector, not the "
            "ingest API"
        )
    return None


# --------------------------------------------------------------------------- the app


class Authenticator:
    """Maps a presented bearer key to its service, comparing digests in constant time."""

    def __init__(self, keys: dict[str, str]) -> None:
        bad = [svc for svc, digest in keys.items() if len(digest) != 64 or not _is_hex(digest)]
        if bad:
            msg = f"backend ingest: keys of {bad} are not SHA-256 hex digests (64 hex digits)"
            raise SourceError(msg)
        self._keys = {svc: bytes.fromhex(digest) for svc, digest in keys.items()}
        self.failures: Counter[str] = Counter()

    def service(self, authorization: str | None, client: str | None = None) -> str | None:
        """The service whose key ``authorization`` carries; None (counted and logged, never the
        key) when it carries none or an unknown one.  ``client`` names the caller in the log."""
        # The scheme in any case: RFC 9110 (11.1) makes it case-insensitive, and a client sending
        # "bearer <key>" was refused as sending no key.
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            self.failures["missing"] += 1
            log.warning("backend ingest: request from %s without an API key", client or "an unknown client")
            return None
        presented = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for svc, digest in self._keys.items():
            # Compare against every key, whatever matched, so timing says nothing about which.
            if hmac.compare_digest(presented, digest):
                found = svc
        if found is None:
            self.failures["invalid"] += 1
            log.warning(
                "backend ingest: request from %s with an unknown API key", client or "an unknown client"
            )
        return found


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def create_app(
    buffer: IngestBuffer,
    auth: Authenticator,
    *,
    scopes: Scopes | None = None,
    ack_timeout: float = 5.0,
    retry_after: int = 5,
    max_body_bytes: int = 10 * 1024 * 1024,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> FastAPI:
    app = FastAPI(title="Vigil back-end ingest", docs_url=None, redoc_url=None, openapi_url=None)
    scopes = scopes if scopes is not None else Scopes({}, ())
    stats: Counter[str] = Counter()
    # Answers by kind, for a look from the process that runs the app: the health answer is public.
    app.state.responses = stats
    # Bodies validated at once: a JSON array is decoded whole before its items can be counted
    # (a 10 MB body of `[1,1,...]` is some 280 MB while it is), and asyncio's pool ran six side
    # by side on two cores (1.3 GB).  Others wait here, the event loop free.
    parsing = asyncio.Semaphore(PARSES_AT_ONCE)

    @app.post("/v1/events")
    async def ingest(request: Request) -> JSONResponse:
        client = request.client.host if request.client else None
        service = auth.service(request.headers.get("authorization"), client)
        if service is None:
            return JSONResponse(
                {"error": "missing or invalid API key (Authorization: Bearer <key>)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            # The webhook receiver's bounded read: a key holder could otherwise exhaust memory,
            # or hold a connection for ever by sending a byte now and then.
            body = await read_body(request, max_body_bytes, body_timeout_s)
        except Rejected as exc:
            error = f"body larger than {max_body_bytes} bytes" if exc.status == 413 else exc.detail
            return JSONResponse({"error": error}, status_code=exc.status, headers=closing(exc.status))
        refused: list[str] = []

        def refuse(event: Event) -> str | None:
            reason = scopes.refusal(service, event) or connector_claim(event)
            if reason is None:
                return ip_refusal(event)  # (a mistake in the event, as a contract error is)
            # (A source may be as long as a record: the log gets its start.)
            refused.append(f"{event.type} from source {event.source[:64]!r}")
            return reason

        content_type = request.headers.get("content-type", "")

        def prepare() -> tuple[ParsedBody, list[RawRecord], list[int]]:
            parsed = parse_body(body, content_type, refuse)
            now = datetime.now(UTC)
            records = [
                RawRecord(
                    source=NAME,
                    kind=KIND,
                    value=raw,
                    received_at=now,
                    # Keyed as the normaliser will key it (addresses in one spelling): one wallet in
                    # two spellings went to two raw partitions, its order lost.
                    key=(canonical_addresses(event).key() or event.event_id).encode(),
                    meta={"service": service},
                )
                for raw, event in parsed.accepted
            ]
            records += [
                RawRecord(
                    source=NAME,
                    kind=KIND_REJECTED,
                    value=encode(letter),
                    received_at=now,
                    key=service.encode(),
                    meta={"service": service},
                )
                for letter in dead_letters(parsed.errors, service, now)
            ]
            # As the broker measures a record (and the sink checks it): key and headers included.
            return parsed, records, [r.size() for r in records]

        try:
            # Off the event loop: validating a body and wrapping its records held every other
            # request, health checks included, for as long (60 s for 1,000,000 lines).
            async with parsing:
                parsed, records, sizes = await asyncio.to_thread(prepare)
        except TooManyItems as exc:
            return JSONResponse(
                {"error": str(exc), "items": exc.count, "max_items": exc.limit}, status_code=413
            )
        except UnsupportedMediaType as exc:
            return JSONResponse({"error": str(exc)}, status_code=415)
        except ContractError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if refused:
            # Valid events a key may not send: a misconfigured service, or a compromised one.
            log.warning(
                "backend ingest: service %r may not send %d of the events it sent (dead-lettered): %s",
                service,
                len(refused),
                ", ".join(sorted(set(refused))),
            )
        errors = [{label: n, "error": reason} for label, n, _, reason in parsed.errors[:ERRORS_ITEMIZED]]
        result: dict[str, Any] = {
            "accepted": len(parsed.accepted),
            "rejected": len(parsed.errors),
            "errors": errors,
            "errors_not_listed": len(parsed.errors) - len(errors),
        }
        if not records:
            return JSONResponse({**result, "error": "empty body: no events"}, status_code=400)
        largest = max(sizes)
        if largest > RECORD_MAX_BYTES:
            # Refused here, whole: buffered, a record Kafka refuses was retried for ever, in
            # order, and every request after it waited behind it.
            return JSONResponse(
                {
                    "error": f"an event (or the note of its rejection) is {largest:,} bytes; one record may "
                    f"be at most {RECORD_MAX_BYTES:,}; nothing from this request was accepted"
                },
                status_code=413,
            )
        try:
            done = buffer.submit(records, sizes)
        except BatchTooLarge as exc:
            # Never to fit, however long the client waits: not the 503 it would retry for ever.
            return JSONResponse(
                {"error": f"{exc}; nothing from this request was accepted, send fewer events per request"},
                status_code=413,
            )
        except BufferFull as exc:
            stats["buffer_full"] += 1
            return JSONResponse(
                {"error": f"{exc}; nothing from this request was accepted, retry later"},
                status_code=503,
                headers={"Retry-After": str(retry_after)},
            )
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), ack_timeout)
        except TimeoutError:
            stats["queued"] += 1
            return JSONResponse({**result, "queued": True}, status_code=202)
        stats["durable"] += 1
        status = 200 if parsed.accepted else 422
        return JSONResponse({**result, "queued": False}, status_code=status)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        # Unauthenticated, for load balancers: whether this instance takes events, nothing more.
        # The broker's exception text (its addresses, its TLS and SASL errors) and the count of
        # failed logins went to anyone who could reach the port; both are logged as they happen.
        reachable = buffer.last_error is None
        full = buffer.full
        return {
            "status": "ok" if reachable and not full else "degraded",
            "broker_reachable": reachable,
            "buffer_full": full,
        }

    return app


#: The options ``vigil source backend`` takes.
BACKEND_OPTIONS = frozenset(
    {
        "host",
        "port",
        "keys_file",
        "max_buffered_records",
        "max_buffered_bytes",
        "ack_timeout",
        "body_timeout_s",
        "max_connections",
        "keep_alive_s",
        "header_timeout_s",
        "source_id",
    }
)


class BackendIngestSource(Source):
    """Serves the ingest API on ``host:port`` (0 = a free port; see ``port`` once ``ready``).

    Build its sink with ``topic_for=source.topic_for`` so rejected lines reach ``dlq.ingest``;
    with the default routing they land in ``raw.backend`` as kind ``rejected``, which the
    normaliser refuses, so they still end in ``dlq.normalize`` with the reason (not lost).
    """

    name = NAME
    topic_for = staticmethod(topic_for)

    def __init__(
        self,
        *,
        keys: dict[str, str],
        scopes: Mapping[str, Sequence[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 8088,
        max_buffered_records: int = 10_000,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        ack_timeout: float = 5.0,
        retry_after: int = 5,
        drain_timeout: float = 30.0,
        max_body_bytes: int = 10 * 1024 * 1024,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        keep_alive_s: int = KEEP_ALIVE_S,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id)
        self.auth = Authenticator(keys)
        self.scopes = Scopes(scopes or {}, keys)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.keep_alive_s = keep_alive_s
        self.header_timeout_s = header_timeout_s
        self.host = host
        self.port = port
        self.max_buffered_records = max_buffered_records
        self.max_buffered_bytes = max_buffered_bytes
        self.ack_timeout = ack_timeout
        self.retry_after = retry_after
        self.drain_timeout = drain_timeout
        self.ready = threading.Event()
        self.buffer: IngestBuffer | None = None
        self.drained: bool | None = None

    def listening(self, timeout: float) -> str | None:
        # (Not while stopping: its start-up ends early then, and ``ready`` is set anyway.)
        ready = self.ready.wait(timeout) and self.running
        return f"http://{self.host}:{self.port}/v1/events" if ready else None

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> BackendIngestSource:
        """Options: ``host`` (127.0.0.1), ``port`` (8088), ``keys_file`` (a JSON object
        ``{service: sha256 hex of its key}``; default: the setting ``backend_keys``, the same
        JSON in ``VIGIL_BACKEND_KEYS`` or a ``[backend_keys]`` table in vigil.toml),
        ``max_buffered_records`` (10000), ``max_buffered_bytes`` (256 MiB), ``ack_timeout``
        (s, 5), ``body_timeout_s`` (30), ``max_connections`` (256), ``keep_alive_s`` (5),
        ``header_timeout_s`` (10), ``source_id`` (``backend``; each of several instances needs
        its own: their Kafka transactions are named after it, and fence each other).
        What each service may send is the setting ``backend_scopes`` (see :class:`Scopes`)."""
        check_options(NAME, options, BACKEND_OPTIONS)
        if "keys_file" in options:
            where = f"keys_file {options['keys_file']}"
            with open(options["keys_file"], encoding="utf-8") as fh:
                text = fh.read()
        else:
            where = "VIGIL_BACKEND_KEYS (or backend_keys in vigil.toml)"
            text = settings.backend_keys.get_secret_value() if settings.backend_keys is not None else ""
        try:
            keys = json.loads(text) if text.strip() else None
        except ValueError as exc:
            # Said, not taken for "no keys": a missing brace read as nothing configured.  The
            # position only: the text holds the keys' hashes.
            msg = (
                f"backend ingest: {where} is not JSON (line {getattr(exc, 'lineno', '?')}, column "
                f"{getattr(exc, 'colno', '?')}); expected an object "
                '{"service": "<sha256 hex of its key>"}'
            )
            raise SourceError(msg) from None
        if keys is not None and (
            not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values())
        ):
            # (Not "no API keys configured": a list of keys was given, in the wrong shape.)
            got = (
                type(keys).__name__
                if not isinstance(keys, dict)
                else "an object with values that are not text"
            )
            msg = (
                f"backend ingest: {where} is JSON of the wrong shape ({got}; the values not shown); expected "
                'an object {"service": "<sha256 hex of its key>"}'
            )
            raise SourceError(msg)
        if not keys:
            msg = (
                "backend ingest: no API keys configured; give keys_file=<path>, or set VIGIL_BACKEND_KEYS "
                '(or backend_keys in vigil.toml), a JSON object {"service": "<sha256 hex of its key>"}'
            )
            raise SourceError(msg)
        return cls(
            keys=keys,
            scopes=settings.backend_scopes,
            host=options.get("host", "127.0.0.1"),
            port=int(options.get("port", "8088")),
            max_buffered_records=int(options.get("max_buffered_records", "10000")),
            max_buffered_bytes=int(options.get("max_buffered_bytes", str(MAX_BUFFERED_BYTES))),
            ack_timeout=float(options.get("ack_timeout", "5")),
            body_timeout_s=float(options.get("body_timeout_s", str(BODY_TIMEOUT_S))),
            max_connections=int(options.get("max_connections", str(MAX_CONNECTIONS))),
            keep_alive_s=int(options.get("keep_alive_s", str(KEEP_ALIVE_S))),
            header_timeout_s=float(options.get("header_timeout_s", str(HEADER_TIMEOUT_S))),
            source_id=options.get("source_id"),
        )

    def run(self, sink: RawSink) -> None:
        buffer = self.buffer = IngestBuffer(
            sink, max_records=self.max_buffered_records, max_bytes=self.max_buffered_bytes
        )
        app = create_app(
            buffer,
            self.auth,
            scopes=self.scopes,
            ack_timeout=self.ack_timeout,
            retry_after=self.retry_after,
            max_body_bytes=self.max_body_bytes,
            body_timeout_s=self.body_timeout_s,
        )
        sock = listen(self.host, self.port, "backend ingest")
        self.port = sock.getsockname()[1]
        buffer.start()
        try:
            with serving(
                app,
                sock,
                label="backend ingest",
                host=self.host,
                wait=self.wait,
                max_connections=self.max_connections,
                keep_alive_s=self.keep_alive_s,
                header_timeout_s=self.header_timeout_s,
            ):
                self.ready.set()
                self._stop.wait()
        finally:
            # Leaving ``serving`` stopped taking requests; now drain what was accepted.
            self.drained = buffer.close(self.drain_timeout)
            if not self.drained:
                log.error(
                    "ingest: %d accepted records were still waiting for Kafka at shutdown: %s",
                    buffer.buffered,
                    buffer.last_error,
                )


# --------------------------------------------------------------------------- normaliser


@functools.cache
def _payload_times(cls: type) -> tuple[str, ...]:
    """The payload fields of events of ``cls`` that hold a time (``order_cancel.placed_at``)."""
    payload = typing.get_type_hints(cls).get("payload")
    if not (isinstance(payload, type) and issubclass(payload, msgspec.Struct)):
        return ()
    hints = typing.get_type_hints(payload)
    return tuple(name for name, tp in hints.items() if datetime in (tp, *typing.get_args(tp)))


def _utc(when: datetime, where: str, path: str) -> datetime:
    try:
        return when.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:30:00+01:00" decodes, but is before year 1 in UTC
        msg = f"{where}: $.{path} {when.isoformat()!r} is outside the years 1-9999 in UTC"
        raise ContractError(msg) from None


def _in_utc(event: Event, where: str) -> Event:
    """``event`` with its times in UTC, as every other normaliser gives them: a service's
    ``+05:00`` went on to the canonical topic as it was, a payload's (``placed_at``) too."""
    times: dict[str, datetime] = {}
    for name in ("occurred_at", "ingested_at"):
        when: datetime | None = getattr(event, name)
        if when is not None and when.utcoffset():
            times[name] = _utc(when, where, name)
    payload_times: dict[str, datetime] = {}
    for name in _payload_times(type(event)):
        when = getattr(event.payload, name)  # type: ignore[attr-defined]
        if when is not None and when.utcoffset():
            payload_times[name] = _utc(when, where, f"payload.{name}")
    if payload_times:
        times["payload"] = msgspec.structs.replace(event.payload, **payload_times)  # type: ignore[attr-defined]
    return msgspec.structs.replace(event, **times) if times else event


def canonical_event(event: Event, *, where: str) -> Event:
    """``event`` in the one spelling canonical topics hold, as the normalise stage passes a
    back-end event on (and ``vigil produce`` writes one straight to its topic): its times in UTC,
    its IP as :func:`~vigil.sources.addresses.client_ip` spells it (refused when it is none:
    ``"unknown"``), its addresses canonical.  ``vigil produce`` did only the addresses: an
    ``2001:DB8::7`` and a ``2001:db8::7`` counted as two IPs for credential stuffing."""
    event = _in_utc(event, where)
    ip = event.entities.ip
    if ip is not None:
        canonical = client_ip(ip)
        if canonical is None:
            msg = f"{where}: {ip_refusal(event)}"
            raise ContractError(msg)
        if canonical != ip:  # one address, one spelling: intel and per-IP history key on it
            entities = msgspec.structs.replace(event.entities, ip=canonical)
            event = msgspec.structs.replace(event, entities=entities)
    return canonical_addresses(event)


class BackendNormalizer(Normalizer):
    """``canonical`` records are already canonical: validate again (the topic is the contract's
    edge, and a record may have been produced by something else) and pass through, filling
    ``ingested_at`` with the time the API received it when the service did not set it."""

    source = NAME

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.kind != KIND:
            msg = f"raw.backend record of kind {record.kind!r}; expected {KIND!r}"
            raise ContractError(msg)
        event = _codec.decode(record.value, where="raw.backend")
        if event.ingested_at is None:
            event = msgspec.structs.replace(event, ingested_at=record.received_at)
        return [canonical_event(event, where="raw.backend")]
