"""Connector and normaliser interfaces.

A **source** talks to one technology in its own protocol and publishes what it
receives, unchanged, to ``raw.<name>`` through a :class:`RawSink`.  It never calls
detection code.  A **normaliser** turns one raw record into canonical events; it is
run by the normalise stream application, which dead-letters what it rejects.

Resumable sources (a block height, a cursor) hand their cursor to the sink with the
records it covers; the Kafka sink writes both in one transaction, so a restart resumes
exactly after the last published record: no gap, no duplicate.  The cursor is the
position of the *next* item to fetch, not of the last one fetched (the classic
off-by-one: resuming from "last seen" re-publishes it).
"""

from __future__ import annotations

import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from vigil.errors import ContractError, SourceError, VigilError
from vigil.events.base import Event
from vigil.hub.raw import RawRecord


@functools.cache
def connector_metrics() -> CollectorRegistry:
    """The registry connectors count on, served with ``--metrics-port`` by ``vigil source`` and
    ``vigil run`` (on prometheus-client's global registry, which no Vigil command serves, the
    websocket feeds' sequence gaps and reconnects were counted for nobody)."""
    return CollectorRegistry()


class RawSink(Protocol):
    """Where sources publish.  ``publish`` returns once the records (and the cursor, if
    given) are durably in Kafka; it raises if they are not.  ``timeout``: at most this many
    seconds for the whole publish, as a connector draining its buffer on the way out has (the
    sink's own timeouts when None); a publish out of time raises like any other failure."""

    def publish(
        self,
        records: Sequence[RawRecord],
        cursor: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None: ...

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        """The cursor last published with records for ``source_id``, or None on first run."""
        ...


class Source(ABC):
    """A connector.  ``run`` blocks until ``stop`` is called (from another thread or a signal)."""

    #: Technology name; the default topic is ``raw.<name>``.
    name: str

    def __init__(self, source_id: str | None = None) -> None:
        #: Identity of this connector instance (its checkpoint key); defaults to the name.
        self.source_id = source_id or self.name
        self._stop = threading.Event()

    @property
    def default_topic(self) -> str:
        return f"raw.{self.name}"

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` unless stopped; True if stopped."""
        return self._stop.wait(seconds)

    @abstractmethod
    def run(self, sink: RawSink) -> None: ...

    def listening(self, timeout: float) -> str | None:
        """Where a receiver listens (``http://127.0.0.1:8080``), once it does, waiting up to
        ``timeout`` seconds for it; None for a source that does not listen (a poller, a feed),
        or one not listening yet.  The command line says it: a port of 0 (any free port) was
        otherwise known to no one."""
        return None


def check_options(
    source: str,
    options: Mapping[str, str],
    known: Collection[str],
    error: type[VigilError] = SourceError,
) -> None:
    """Refuse options ``source`` does not take, naming them: a mistyped one was dropped without
    a word (``skip_bad_file`` for ``skip_bad_files``, and the source stopped at the first bad
    file it was told to skip).  ``error``: the chain sources raise ConfigError for every option."""
    unknown = set(options) - set(known)
    if unknown:
        msg = f"{source}: unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
        raise error(msg)


def seconds_option(source: str, options: Mapping[str, str], name: str, default: float) -> float:
    """Option ``name`` as a number of seconds above 0 (``default`` when not given), or a
    SourceError naming it: a poll interval of 0 or less polled in a busy loop."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        msg = f"{source}: option {name} must be a number of seconds above 0; got {text[:40]!r}"
        raise SourceError(msg)
    return value


class PartlyRefused(ContractError):
    """A record some of whose entries a normaliser cannot take, the others good (a STIX bundle
    with one malformed indicator among a thousand): ``taken`` go on, and the record is
    dead-lettered with the reason naming what was left out.  Logged alone, the left-out entries
    were lost once the raw topic's retention passed (and a revocation left out left its address
    listed for good); redriving the letter sends the taken ones again under the same ids."""

    def __init__(self, reason: str, taken: list[Event]) -> None:
        super().__init__(reason)
        self.taken = taken


class Normalizer(ABC):
    """Raw record -> canonical events.  Raises :class:`~vigil.errors.ContractError` (or
    ``DecodeError``) with a reason naming what was wrong and where; never returns partial junk.
    A record of many entries, some unusable, raises :class:`PartlyRefused` with the others.

    A record may yield zero events (a heartbeat) or many (a block's transfers).  Event ids
    must be stable: the same raw record always yields the same ids.

    ``max_ahead``: how far an event's time may be ahead of when its record was received (its
    ``received_at``, set by our connector, not by the sender).  The normalise stage refuses a
    record with an event further ahead: a wrong clock, or a time forged in a payload, would
    move its partition's watermark that far ahead, and every later event of the partition
    would be late to every window and join until real time caught up (one event dated 2099
    would blind detection for that partition's customers for good).
    """

    source: str
    max_ahead: timedelta = timedelta(minutes=5)

    @abstractmethod
    def normalize(self, record: RawRecord) -> list[Event]: ...
