"""Kafka clients configured from the one settings model.

Producers are idempotent (``enable.idempotence``): a retried send is written once and
in order per partition.  Keys are the event's entity key, so everything about one
customer / wallet / vendor stays ordered in one partition.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import operator
import re
import time
import uuid
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from vigil.config import Settings, classic_group_refusal
from vigil.errors import BrokerError, BrokerUnanswered, ConfigError, ContractError, chained, message_of
from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.hub.aside import call_aside
from vigil.hub.topics import TOPICS, TopicRegistry

#: For a consumer that reads a backlog to its end as fast as it can take it (restoring a
#: changelog, loading a table, reading a topic or a dead-letter queue through).  Once librdkafka's
#: local queue is past its thresholds, it waits ``fetch.queue.backoff.ms`` before fetching again:
#: at the 1 s default, a reader that empties the queue sooner sits idle for the rest of that
#: second.  1M records from a local broker, for the same CPU (2026-12-03): read through
#: (:func:`read_committed`) in 4.0-4.1 s with the default and 1.8-2.0 s with 10 ms; restored
#: into state stores in 4.4 s and 2.9-3.3 s.  The stream runtime's consumers take it too
#: (vigil.stream.app.FETCH_DEFAULTS).
BACKLOG_READER: dict[str, Any] = {"fetch.queue.backoff.ms": 10}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf = settings.kafka_client_config()
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.size": 256 * 1024,
            "queue.buffering.max.messages": 500_000,
        }
    )
    conf.update(overrides)
    return _with_options(settings, conf)


#: How often a consumer refreshes its topics' metadata (see consumer_config).
METADATA_REFRESH_MS = 10_000


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf = settings.kafka_client_config()
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # (librdkafka's default, 5 min: a consumer whose first look at its topics came while
            # the broker was recovering (partitions without a leader) put off joining its group
            # until the next refresh: seen once, a stage out of its group for over 3 minutes
            # after its broker was thawed, its last line "postponing join until up-to-date
            # metadata is available".)
            "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        }
    )
    if settings.kafka_group_protocol == "consumer":
        # The broker's assignors are all incremental and sticky; session and heartbeat are its
        # settings too.  Refused here by name: librdkafka's own refusal came at the consumer's
        # making, a stage's first start, without saying what to do.
        for key in overrides:
            why = classic_group_refusal(key)
            if why is not None:
                msg = f"consumer of group {group_id!r}: {key!r} is {why}"
                raise ConfigError(msg)
        conf["group.protocol"] = "consumer"
    else:
        conf["partition.assignment.strategy"] = "cooperative-sticky"
    conf.update(overrides)
    return _with_options(settings, conf)


#: librdkafka's names for one setting (an alias and the name it stands for): given either way
#: in ``kafka_client_options``, it replaces what Vigil set the other way, under that name too.
#: (Left beside it, Vigil's won: librdkafka applies the name an alias stands for last, and an
#: operator's ``queue.buffering.max.ms`` of 100 ran at 5.  Taken out instead, what reads the
#: setting by Vigil's name found none: ``vigil simulate`` stopped on a KeyError given
#: ``compression.codec``, found in review.)  Aliases of settings Vigil depends on are refused
#: when the settings load.
_SAME_SETTING: tuple[frozenset[str], ...] = (
    frozenset({"linger.ms", "queue.buffering.max.ms"}),
    frozenset({"compression.type", "compression.codec"}),
    frozenset({"max.in.flight.requests.per.connection", "max.in.flight"}),
    frozenset({"retries", "message.send.max.retries"}),
    frozenset({"max.partition.fetch.bytes", "fetch.message.max.bytes"}),
)


def _with_options(settings: Settings, conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with the operator's ``kafka_client_options`` on top: they know their cluster (a
    longer ``linger.ms`` across a WAN, a larger fetch).  Those Vigil depends on are refused when
    the settings load (config.GUARANTEE_CLIENT_OPTIONS), so none of these undoes a guarantee."""
    if settings.kafka_client_options:
        options = settings.kafka_client_options.get_secret_value()
        for key, value in options.items():
            for names in _SAME_SETTING:
                if key.lower() in names:
                    for other in names - {key.lower()}:
                        if other in conf:
                            conf[other] = value
        conf.update(options)
    return conf


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return new_producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    return new_consumer(consumer_config(settings, group_id, **overrides))


class _LibrdkafkaLines(logging.Filter):
    """What of librdkafka's own log lines reaches Vigil's log (``vigil.kafka``): those of
    producers and consumers, which are polled (an admin client's are printed by librdkafka).

    Printed by librdkafka itself to stderr, they came outside the command's format and its inert
    text, and a broker down gave 12-27 ``FAIL`` lines in 35 s.  Here the same line (its numbers
    aside) is let through once a minute; a ``CONFWARN`` that an option does not apply to a
    client of this kind is dropped: ``kafka_client_options`` go to every client, so a consumer's
    ``fetch.wait.max.ms`` warned once per producer."""

    REPEAT_AFTER_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 3):
            return True
        facility, text = str(args[0]), str(args[2])
        if facility == "CONFWARN" and "will be ignored by this" in text:
            return False
        # The broker a line is of kept whole: with its digits blanked too, kafka-2's and
        # kafka-3's failures passed for repeats of kafka-1's, and one broker seemed down where
        # three were (found in review).
        broker = _BROKER.match(text)
        at = broker.end() if broker is not None else 0
        key = facility + text[:at] + _DIGITS.sub("#", text[at:])
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.REPEAT_AFTER_S:
            return False
        if len(self._last) >= 1000:  # (bounded: lines that differ in more than numbers)
            self._last.clear()
        self._last[key] = now
        return True


_DIGITS = re.compile(r"\d+")
#: The broker librdkafka's line is of, where it begins one: ``[proto://]host:port/<id|bootstrap>``.
_BROKER = re.compile(r"(?:[A-Za-z_]+://)?[^\s/]+:\d+/(?:\d+|bootstrap)(?=:)")
_LIBRDKAFKA_LINES = _LibrdkafkaLines()


def _logged(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with librdkafka's log lines sent to the ``vigil.kafka`` logger (formatted and made
    inert as Vigil's own lines are; see :class:`_LibrdkafkaLines`), unless it names a logger."""
    if "logger" in conf:
        return conf
    log = logging.getLogger("vigil.kafka")
    log.addFilter(_LIBRDKAFKA_LINES)  # (once: the same object)
    return {**conf, "logger": log}


def new_producer(conf: dict[str, Any]) -> Producer:
    """A producer of ``conf``; one librdkafka refuses to make is a :class:`ConfigError`."""
    try:
        return Producer(_logged(conf))
    except KafkaException as exc:
        raise client_refused(exc, "a producer") from None


def new_consumer(conf: dict[str, Any]) -> Consumer:
    """A consumer of ``conf``; one librdkafka refuses to make is a :class:`ConfigError`."""
    try:
        return Consumer(_logged(conf))
    except KafkaException as exc:
        raise client_refused(exc, "a consumer") from None


def client_refused(exc: KafkaException, what: str) -> ConfigError:
    """librdkafka's refusal to make a client (a value, or two values together, it does not
    take), its quoted values hidden (the options may hold secrets).  Making a client asks no
    broker, so this is the configuration's: ``max.poll.interval.ms`` below the runtime's session
    timeout, given in ``kafka_client_options``, ended ``vigil normalize`` with a traceback."""
    msg = (
        f"the Kafka client settings were refused making {what}: {_hidden(exc)} (Vigil's own for it, the "
        "connection's TLS and SASL settings, and kafka_client_options, VIGIL_KAFKA_CLIENT_OPTIONS, on top)"
    )
    return ConfigError(msg)


def make_admin(settings: Settings) -> AdminClient:
    """An admin client; one librdkafka refuses to make is a :class:`ConfigError` (its raw error
    quoted the value refused, found in review)."""
    # No logger: a client given one holds its lines until it is polled, and admin clients are
    # not (their lines were lost); librdkafka prints an admin client's lines itself.
    try:
        return AdminClient(settings.kafka_client_config())
    except KafkaException as exc:
        raise client_refused(exc, "an admin client") from None


#: Where a reachability check's client logs: nowhere.  librdkafka printed its own ``%3|...|FAIL|``
#: lines to stderr before Vigil's message, and only they held the cause; the check collects the
#: errors instead and puts the cause in its message.
_QUIET = logging.getLogger("vigil.hub.reachability")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


#: librdkafka's refusal of a configuration value quotes it: hidden in what Vigil says, up to the
#: last ``" for configuration property`` (a value holding a quote showed what followed it).
_INVALID_VALUE = re.compile(r'Invalid value ".*" (?=for configuration property)', re.DOTALL)
#: Its other wording, of a number out of range (found in review): ``Configuration property "x"
#: value 123 is outside allowed range 10..300000``.
_OUT_OF_RANGE = re.compile(
    r'(Configuration property "[^"]*" value ).*?(?= is outside allowed range)', re.DOTALL
)


def _hidden(exc: KafkaException) -> str:
    """librdkafka's refusal of a client's settings, the values it quotes hidden."""
    refused = kafka_error(exc)
    text = refused.str() if refused is not None else str(exc)
    text = _INVALID_VALUE.sub("Invalid value <hidden> ", text)
    return _OUT_OF_RANGE.sub(r"\1<hidden>", text).strip()


def listed_topic(settings: Settings, client: Any, topic: str, hint: str = "") -> Any:
    """``topic``'s metadata as ``client`` (a consumer or an admin client) lists it; a
    :class:`ConfigError` naming it, where and the broker's reason when it is missing or not the
    credential's to see (``hint``: what to do, after it)."""
    found = client.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None:
        where = settings.kafka_client_config()["bootstrap.servers"]
        why = f" ({found.error.str()})" if found is not None else ""
        msg = f"no topic {topic!r} on {where}{why}{hint}"
        raise ConfigError(msg)
    return found


def check_reachable(settings: Settings, timeout: float = 10.0) -> int:
    """Ask the cluster for metadata; returns the broker count or raises BrokerError saying where
    and why (``Connection refused``, ``Failed to resolve``, an authentication failure).

    Given up before ``timeout`` once no waiting can help: while every broker has failed the
    connection (refused, not resolved) since ``_REFUSED_GRACE_S`` ago (a broker starting up
    gets that long), and at an authentication or TLS failure (with several brokers named, once
    every broker has failed after it: another may take the client).  A command run with no
    broker waited the whole 10 s to say "Connection refused" (an operator's-view review)."""
    errors: list[tuple[float, KafkaError]] = []
    config = settings.kafka_client_config()

    def said(err: KafkaError) -> None:
        errors.append((time.monotonic(), err))

    try:
        admin = AdminClient({**config, "error_cb": said, "logger": _QUIET})
    except KafkaException as exc:
        # A property librdkafka does not know, or a value it refuses, in kafka_client_options:
        # it was a traceback, quoting the value (the options may hold secrets).
        msg = (
            "the Kafka client settings (kafka_client_options, VIGIL_KAFKA_CLIENT_OPTIONS) were "
            f"refused: {_hidden(exc)}"
        )
        raise ConfigError(msg) from None
    bootstrap = config["bootstrap.servers"]
    # The request waits on a thread of its own, this one polling the client for its errors
    # meanwhile (they reach error_cb only when it is polled).  Left running when given up: the
    # command is about to stop, and a client cannot be closed under a call.
    answer = call_aside(lambda: admin.list_topics(timeout=timeout), "vigil-reachable")
    began = time.monotonic()
    failure: KafkaException | None = None
    while True:
        try:
            meta = answer.result(timeout=_REACH_POLL_S)
        except FutureTimeout:
            pass
        except KafkaException as exc:
            failure = exc
            break
        else:
            return len(meta.brokers)
        admin.poll(0)
        if _hopeless(errors, time.monotonic(), several=_several(bootstrap)):
            break
    admin.poll(0)
    hint = "" if settings.uses_external_cluster else " (start it with `vigil broker start`)"
    first = kafka_error(failure) if failure is not None else None
    cause = next((e.str() for _, e in reversed(errors) if e.code() != KafkaError._ALL_BROKERS_DOWN), None)
    why = cause or (first.str() if first is not None else str(failure or "no answer"))
    waited = f"given up after {time.monotonic() - began:.1f}s"
    if failure is not None:
        when = f"within {timeout:g}s"
    elif any(e.code() in _HOPELESS for _, e in errors):
        when = f"({waited}: waiting would not help)"
    else:
        when = f"(every broker refused the connection or could not be found: {waited})"
    msg = f"Kafka at {bootstrap} did not answer a metadata request {when}{hint}: {why}"
    raise BrokerError(msg) from None


def _hopeless(errors: list[tuple[float, KafkaError]], now: float, *, several: bool) -> bool:
    """Whether the client's ``errors`` so far (when each was said, and what) leave nothing to
    wait for (see :func:`check_reachable`).  librdkafka says "all brokers are down" again and
    again while they are, and has nothing to say when one comes back: every broker is down now
    if it said so a moment ago, and has been since the grace if it said so then too.  (Judged by
    its first saying alone, a broker up 0.3 s after a refusal was given up at 2 s: found in
    review.)"""
    down = [at for at, err in errors if err.code() == KafkaError._ALL_BROKERS_DOWN]
    fatal = [at for at, err in errors if err.code() in _HOPELESS]
    if fatal and (not several or any(at >= fatal[0] for at in down)):
        return True
    return bool(down) and down[-1] >= now - _STILL_DOWN_S and down[0] <= now - _REFUSED_GRACE_S


def _several(bootstrap: str) -> bool:
    """Whether a bootstrap list names more than one broker."""
    return len([b for b in bootstrap.split(",") if b.strip()]) > 1


#: How often check_reachable polls the client for errors while its request waits.
_REACH_POLL_S = 0.1
#: How long check_reachable waits on once every broker failed the connection (see there), and
#: how recent librdkafka's last "all brokers are down" must be for them to be down still.
_REFUSED_GRACE_S = 2.0
_STILL_DOWN_S = 0.5
#: Errors no waiting cures (one broker's: with several named, see _hopeless).
_HOPELESS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})


#: Errors a just-created (or just-moved) partition answers offset requests with until its leader
#: is elected.  librdkafka does not flag all of them retriable (NOT_LEADER_FOR_PARTITION from a
#: watermark query is not), yet asking again a moment later is all they need.
TRANSIENT_OFFSET_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        # A broker restarting as a stage starts: the restore's offsets stopped it at once.
        KafkaError._ALL_BROKERS_DOWN,
    }
)


#: ``Message.headers`` called from C.  Called from Python, a warm call site is specialised
#: (CPython 3.11) into a form that does not check a C method's result for an error set: after
#: some readable records, one whose headers cannot be read raised nothing, handed back the list
#: holding a NULL and left the error pending, to surface at some unrelated later call (found in
#: review: a stage stopped on ``msg.topic()``, or crashed).  From C, the result is checked.
_headers = operator.methodcaller("headers")


class UnreadableHeaders(ContractError):
    """A consumed record whose headers the client cannot read (see :func:`read_headers`)."""


def read_headers(message: Message) -> list[tuple[str, bytes | None]] | None:
    """``message``'s headers; raises :class:`UnreadableHeaders` when the client cannot read them.

    Ask once per message, and never again after it raised: confluent-kafka (2.12) reads a header
    name as strict UTF-8 and, on one that is not, raises ``SystemError``; asked again, it hands
    back a list holding a NULL, and the process dies on it (a segmentation fault).  Any producer
    but the Python client (Java's, librdkafka's own) may write any bytes as a header name, so one
    record stopped a stage at every restart, or crashed it."""
    try:
        headers: list[tuple[str, bytes | None]] | None = _headers(message)
    except (SystemError, UnicodeDecodeError) as exc:
        msg = "its headers cannot be read: a header name is not UTF-8 (expected UTF-8 header names)"
        raise UnreadableHeaders(msg) from exc
    return headers


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (None: it carries something else)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def error_text(exc: KafkaException) -> str:
    """A client error's own text, not the KafkaError's repr around it."""
    err = kafka_error(exc)
    return err.str() if err is not None else message_of(exc)


def is_transient(exc: KafkaException) -> bool:
    """Whether an offsets request failed only for now (see ``TRANSIENT_OFFSET_ERRORS``)."""
    err = kafka_error(exc)
    return err is not None and (err.code() in TRANSIENT_OFFSET_ERRORS or err.retriable())


#: The longest one watermarks request waits for its answer, and the least it is given.
_WATERMARKS_ASK_S = 5.0
_LEAST_WATERMARKS_ASK_S = 0.1
#: What a client says of a partition its metadata does not list.
_UNLISTED = frozenset({KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC})


def watermarks(
    consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0, *, new: bool = False
) -> tuple[int, int]:
    """(low, high) offsets of a partition, retrying while a just-created topic has no leader.

    ``new``: the partition was just created, so one the client's metadata does not list yet is
    asked again, after the client asks the cluster for the topic's metadata once more.  Each
    broker of a cluster learns of a new partition on its own: the one a client asked may not
    know it yet (a 3-node cluster's test, once).  Otherwise a partition not listed is an error
    at once: it does not exist.

    Raises :class:`BrokerUnanswered` when ``timeout_s`` passes with no answer but "not now"
    (asked again later, it may be answered), :class:`BrokerError` on any other answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # (Each request within what is left: a caller's short budget held 5 s a request.)
            left = min(_WATERMARKS_ASK_S, max(deadline - time.monotonic(), _LEAST_WATERMARKS_ASK_S))
            low, high = consumer.get_watermark_offsets(tp, timeout=left)
            return int(low), int(high)
        except KafkaException as exc:
            err = kafka_error(exc)
            unlisted = err is not None and err.code() in _UNLISTED
            if unlisted:
                # (The metadata asked here is refreshed for the next try.)  Unlisted by a client
                # that has not reached the cluster (a broker restarting as a stage starts) is no
                # answer: a restore stopped the stage at once with "Unknown partition".  Unlisted
                # by a cluster that answers, it does not exist, unless it was just created.
                unlisted = _may_be_listed(consumer, tp, deadline) or new
            reason = err.str() if err is not None else str(exc)
            msg = f"offsets of {tp.topic}[{tp.partition}]: {reason}"
            if not (unlisted or is_transient(exc)):
                raise BrokerError(msg) from None
            if time.monotonic() > deadline:
                raise BrokerUnanswered(msg) from None
            time.sleep(0.1)  # leader election in progress; the loop asks again


def _may_be_listed(consumer: Consumer, tp: TopicPartition, deadline: float) -> bool:
    """Whether ``tp`` may yet be listed: the cluster does not answer a metadata request for its
    topic, or answers listing it (the answer refreshes the client's metadata, so it is found
    when asked again).  False: the cluster answers without it."""
    try:
        meta = consumer.list_topics(tp.topic, timeout=max(0.1, min(5.0, deadline - time.monotonic())))
    except KafkaException:
        return True
    topic = meta.topics.get(tp.topic)
    return topic is not None and topic.error is None and tp.partition in topic.partitions


def offsets_consumer(settings: Settings, *, committed: bool = False) -> Consumer:
    """A consumer to ask partitions' offsets with (see :func:`partition_offsets`), which never
    joins its group: the high watermark it is told, or with ``committed`` the last stable offset."""
    return make_consumer(
        settings,
        group_id=f"vigil.offsets.{uuid.uuid4().hex[:8]}",  # granted as vigil.hub.acls.OFFSETS_GROUP_PREFIX
        **{"isolation.level": "read_committed" if committed else "read_uncommitted"},
    )


def partition_offsets(
    settings: Settings,
    partitions: Sequence[tuple[str, int]],
    deadline: float,
    *,
    committed: bool = False,
    new: bool = False,
) -> dict[tuple[str, int], tuple[int, int]]:
    """Low and high watermark of each partition.

    High is the high watermark: past every record and transaction marker written, committed or
    not.  Not the last stable offset a ``read_committed`` consumer is told is the end: Kafka
    writes a transaction's commit markers after the commit has returned, so for a moment the
    last stable offset leaves out what was just committed (a reader stopping there misses a
    finished run's last checkpoint), and a transaction left open by a process that died holds
    it back until Kafka aborts it.  A reader that must see everything committed reads,
    ``read_committed``, until its position reaches the high watermark.  (Only a consumer without
    ``enable.partition.eof``: with it, librdkafka reports the end at an open transaction and puts
    the position at the high watermark at once, before the transaction's records come; such a
    reader judges by records and end-of-partition offsets instead, see vigil.stream.changelog.)
    (``committed``: the last stable offset instead, to tell a reader held back by an open
    transaction.)

    Asked by a consumer of its own, which never joins its group, with the isolation level that
    gives the end wanted, one partition after another, not by the admin client's
    ``list_offsets`` (all at once): that call crashed the process twice in the parallel tests
    (a segfault in confluent-kafka 2.12.2, from inside the call), where the consumer's query,
    made in the caller's thread, has not.

    Partitions the broker answers with a transient error (a just-created topic electing its
    leader) are asked again (see :func:`watermarks`) until ``deadline`` (monotonic); anything
    else raises :class:`BrokerError` naming the partition.  ``new``: the partitions were just
    created (see :func:`watermarks`)."""
    consumer = offsets_consumer(settings, committed=committed)
    try:
        return {
            (topic, partition): watermarks(
                consumer, TopicPartition(topic, partition), max(0.0, deadline - time.monotonic()), new=new
            )
            for topic, partition in dict.fromkeys(partitions)
        }
    finally:
        consumer.close()


def drop_frame_locals(exc: BaseException) -> None:
    """Forget the locals of the finished frames ``exc`` (and its cause and context) went
    through: Kafka clients made there (an admin client, a producer) would otherwise live as long
    as the error, dialling a broker that is gone, and a caller may keep an error for long (a
    retry loop's last failure, a log handler).  Line numbers stay for the traceback.  Frames
    still running, and those of generators and coroutines (which may only be suspended:
    clearing one would close it), are left as they are."""
    for err in chained(exc):
        tb = err.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if not frame.f_code.co_flags & _SUSPENDABLE:
                with contextlib.suppress(RuntimeError):  # running: its locals are still needed
                    frame.clear()
            tb = tb.tb_next


#: Code flags of frames that may be suspended rather than finished.
_SUSPENDABLE = (
    inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
)


def read_committed(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every committed record of ``topic`` as it is now, partition by partition in offset order
    (see :func:`iter_committed`, which gives them as read, without holding them)."""
    return sorted(iter_committed(settings, topic, timeout_s), key=lambda m: (m.partition(), m.offset()))


def iter_committed(settings: Settings, topic: str, timeout_s: float = 30.0) -> Generator[Message, None, None]:
    """Every committed record of ``topic`` as it is now, as read (each partition's in offset order).

    Read under ``read_committed`` up to each partition's high watermark at the time of the call
    (see :func:`partition_offsets`): what a finished run wrote, its last commit included,
    without guessing when it is done by waiting for silence.  Transaction markers take offsets
    and are never delivered, so the end is judged by the consumer's position, never by
    counting messages.  A transaction still open holds the reader back until it ends.
    ``timeout_s`` counts the caller's time between records too (a generator reads on as it is
    asked for more).  A caller that stops early closes the generator (``close()``, or leaving a
    ``for`` loop that held the last reference), which closes its consumer."""
    # All partitions at once (one at a time, each new assignment waited out a fetch round), and
    # short fetch waits: the reader stops at known ends, so an idle partition need not be held.
    consumer = make_consumer(
        settings,
        group_id=f"vigil.reader.{uuid.uuid4().hex[:8]}",
        **BACKLOG_READER,
        **{"fetch.wait.max.ms": 20},
    )
    try:
        try:
            found = consumer.list_topics(topic, timeout=max(1.0, min(timeout_s, 30.0))).topics.get(topic)
        except KafkaException as exc:
            # (Raw, it named no topic, and took 10 s whatever the timeout: found in review.)
            msg = f"reading {topic!r}: {error_text(exc)}"
            raise BrokerError(msg) from None
        error = found.error if found is not None else None
        if error is not None and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            # Not the credential's to see, say: read as empty, a cursor or a redrive's ledger
            # would start over (found in review).  A topic not there holds nothing.
            msg = f"reading {topic!r}: {error.str()}"
            raise BrokerError(msg)
        partitions = sorted(found.partitions) if found is not None and error is None else []
        # (The ends asked with the broker's usual patience: ``timeout_s`` is for reading to them.)
        marks = partition_offsets(
            settings, [(topic, p) for p in partitions], time.monotonic() + max(timeout_s, 30.0)
        )
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in partitions:
            low, high = marks[topic, p]
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if starts:
            consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        #: The last error the consumer reported, named if the read fails.
        last_error: KafkaError | None = None
        while ends:
            if time.monotonic() > deadline:
                now_at = consumer.position([TopicPartition(topic, p) for p in ends])
                at = {tp.partition: tp.offset for tp in now_at}
                behind = ", ".join(
                    f"{topic}[{p}] (at {at.get(p, -1)}, end {end})" for p, end in sorted(ends.items())
                )
                why = (
                    f"the consumer's last error: {last_error.str()}"
                    if last_error is not None
                    else "a transaction still open there holds committed readers back until it ends, "
                    "or the records were taken slower than that"
                )
                msg = f"reading did not reach the end of {behind} within {timeout_s:g}s ({why})"
                raise BrokerError(msg)
            for message in consumer.consume(1000, 0.2):
                err = message.error()
                if err is None:
                    yield message
                elif err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal() or err.code() in READ_FATAL:
                        msg = f"reading {topic!r} failed: {err.str()}"
                        raise BrokerError(msg)
                    last_error = err
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    except BaseException as exc:
        drop_frame_locals(exc)  # the admin client asked for the ends (see drop_frame_locals)
        raise
    finally:
        consumer.close()


#: Consumer errors that reading again will not get past.
READ_FATAL = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)


class DeliveryFailed(BrokerError):
    pass


class EventProducer:
    """Produces canonical events to their declared topics, keyed by entity.

    ``flush()`` returns only when every event produced so far is acknowledged by the
    cluster, and raises :class:`DeliveryFailed` if any was not.
    """

    def __init__(self, settings: Settings, registry: TopicRegistry = TOPICS, **overrides: Any) -> None:
        self._producer = make_producer(settings, **overrides)
        self._registry = registry
        self._topic_of: dict[type[Event], str] = {}
        self._errors: list[str] = []
        self.delivered = 0
        #: Records produced, and those whose delivery was reported (delivered or refused): what
        #: the flush says is on its way is their difference (librdkafka's count after a flush is
        #: of its queue, requests and events too: "2 records" of one, seen in CI).
        self._produced = 0
        self._reported = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._reported += 1
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")
        else:
            self.delivered += 1

    def topic_for(self, event: Event) -> str:
        cls = type(event)
        topic = self._topic_of.get(cls)
        if topic is None:
            topic = self._topic_of[cls] = self._registry.for_event(cls).name
        return topic

    def produce(self, event: Event, topic: str | None = None) -> None:
        self.produce_raw(topic or self.topic_for(event), event.key(), encode(event))

    def produce_raw(self, topic: str, key: str | bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                self._produced += 1
                break
            except BufferError:
                # Local queue full: serve delivery callbacks until there is room.
                self._producer.poll(0.05)
        self._producer.poll(0)

    def produce_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.produce(event)

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout)
        remaining = self._produced - self._reported
        if remaining:
            # (Still on their way, not refused: "not delivered" invited a rerun that could write
            # them twice, found in review.)
            failed = f"; {len(self._errors)} refused, first: {self._errors[0]}" if self._errors else ""
            msg = (
                f"{remaining} records not acknowledged within {timeout:g}s: whether they were written "
                f"is not known{failed}"
            )
            raise DeliveryFailed(msg)
        if self._errors:
            errors, self._errors = self._errors, []
            msg = f"{len(errors)} deliveries failed; first: {errors[0]}"
            raise DeliveryFailed(msg)
