"""Event-time alignment: which input partitions to pause so none runs far ahead of the others.

Windows and sequences assume each key's events arrive roughly in event-time order.  With
live traffic they do; when an application replays a backlog, the consumer drains some
partitions (and topics) far ahead of others, so a customer's withdrawal can be processed
long before the login that preceded it.  Like Flink's watermark alignment and Kafka
Streams' choice of the record with the lowest timestamp, an application with
``max_event_time_skew_s`` keeps its assigned partitions within that much event time of
each other: a partition whose latest event time is more than the skew ahead of the
slowest partition that still *holds* the others back is paused, and resumed once that
slowest one has caught up.  Consumed records wait in the application until the floor
(the slowest holding partition's latest event time) has reached them, so records of
different partitions reach the operators in event-time order (Kafka Streams' rule); the
skew says how far ahead in event time a partition may read before it *may* be paused; it is
paused only once it also buffers ``max_buffered`` records (and resumed when its buffer has
drained to half, or, no longer ahead, to half of the cap below).  Pausing exists to bound
memory, and each pause costs a refetch (the consumer drops what it prefetched): bounding by
records, not by event time alone, keeps a fast replay (event time racing ahead of the wall
clock) from pausing and resuming partitions every few milliseconds.  A partition within the
skew buffers what it reads past the floor too: a dense topic replayed beside a slow one
buffered its whole skew's worth of events (60 s of them, at detection's skew).  So a partition
is also paused, ahead or not, once it buffers ``BUFFER_CAP_FACTOR`` times ``max_buffered``
records, and resumed once it has drained to half of that: what waits is bounded by records.
(The partition that sets the floor is never one of them, its records all at or before the
floor, and released; unless the other processes of the application hold them back,
``peer_skew_s``: then it is paused at that cap too, see :meth:`Alignment.plan`, and paused so
it holds back a backlog's records of the other partitions, not live ones: see
:attr:`Alignment.live_floor`.)

A partition holds the others back while it is owned, has records left to read (its consumed
position is below its high watermark), or none known (the broker did not answer), and has
delivered a record, or been assigned, paused or resumed, within ``idle_s``.  (Records an
application skips undecoded, ``Application.skip_types``, deliver nothing: no event time.)  So a
partition that has reached its end, or an empty or slow one, never stalls live traffic for
longer than ``idle_s`` (one with another producer's transaction open on it holds the others
until it commits, at most that long: see :mod:`vigil.stream.app`).  But on a replay, one with
records left to read (or none known) holds the others up to ``BACKLOG_IDLE_FACTOR`` times
``idle_s``: the consumer fetches some partitions while others wait their turn, well over a
second (1.3-1.9 s measured, 120 partitions), and a partition waiting its turn stopped holding
the others; the floor passed its backlog, whose records then came out of event-time order
(25,000-179,000 of 954,104, up to two hours behind).  A replay, here: the partition's latest
event time is more than ``REPLAY_BEHIND_S`` behind the wall clock; for one that has delivered
nothing yet, that of the partitions that delivered (those with records left to read, if its own
are not known: ``Alignment._replaying_unread``; none delivered yet: a start).  Live (its latest
event recent, or taken over while the others are live), it stops holding after ``idle_s`` as
before: a producer that crashed with a transaction open on it would otherwise hold every live
record ten times as long.  Idle time counts from the first record
any partition delivered, not from the assignment: until then the consumer delivers nothing at
all (librdkafka waits for every committed offset to be stable, and another producer's
transaction open on one holds them all, 30 s or more), so nobody waits its turn for a fetch.
A partition that has delivered nothing yet holds the others back as if it were at the
beginning of time (until it delivers or goes idle): on a replay the first fetch decides
where every partition stands.  So does one with records to read whose stores are being
restored, assigned when the application had no partition running yet (its start, a restart),
until it runs, however long that takes (live traffic waits meanwhile): the partitions restored
first released their whole backlog meanwhile, and a ``GroupBy`` re-keyed their later records
before the others' earlier ones (found in review: a join after a restart lost up to a third of
its pairs).  One with nothing to read holds nobody back, nor does one taken over while others
run: the partitions a member has go on while it restores (see :mod:`vigil.stream.app`), so
what they merge with its backlog may be out of order.

This module only decides; :class:`~vigil.stream.app.Application` pauses and resumes its
consumer, buffers and releases the records, and feeds back what it consumed.  Neither
pausing nor buffering touches committed offsets: only released records' offsets are
committed, so buffered ones are simply read again after a restart or rebalance, and both
guarantees are unaffected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

TP = tuple[str, int]
#: A partition buffering this many times ``max_buffered`` is paused even within the skew (and
#: resumed once it has drained to half of that): see the module docstring.
BUFFER_CAP_FACTOR = 4
#: On a replay, a partition that delivered nothing for ``idle_s`` but has records left to read
#: (or none known) still holds the others back, for up to this many times ``idle_s`` in all; a
#: replay: its latest event time is more than ``REPLAY_BEHIND_S`` behind the wall clock (or, if
#: it delivered nothing yet, that of any partition with records left; or none delivered yet).
#: See the module docstring.
BACKLOG_IDLE_FACTOR = 10
REPLAY_BEHIND_S = 300.0


@dataclass
class Lane:
    """What alignment knows about one input partition."""

    #: Latest (largest) event time delivered, in epoch seconds; ``None`` before the first record.
    event_time: float | None
    #: Monotonic time of the last record, assignment, pause or resume (or, for a partition that
    #: has delivered nothing, of the first record any partition delivered: see ``observe``).
    active_at: float
    paused: bool = False
    #: Assigned when the application had no partition running yet, and its stores still being
    #: restored (or waited for): it holds the others, however long (see :meth:`Alignment.holds`).
    restoring: bool = False
    #: Paused while the other processes' cap held its records back (``peer_skew_s``): it holds
    #: back a backlog's records, not live ones (see :attr:`Alignment.live_floor`).
    peer_held: bool = False


def _past(lane: Lane, release: float) -> bool:
    """Whether ``lane`` has read past ``release`` (a release held back by slow operators may
    leave the floor's own partition a whole fetch at or before the floor, all of it to go next)."""
    return lane.event_time is not None and lane.event_time > release


class Alignment:
    """Bookkeeping and the pause/resume decision for a set of input partitions."""

    def __init__(self, skew_s: float, idle_s: float, max_buffered: int = 1) -> None:
        if not (skew_s >= 0 and math.isfinite(skew_s)) or not idle_s > 0 or max_buffered < 1:
            msg = (
                "event-time alignment: skew_s >= 0 and idle_s > 0 (and max_buffered >= 1) expected; "
                f"got {skew_s}, {idle_s}, {max_buffered}"
            )
            raise ValueError(msg)
        self.skew_s = skew_s
        self.idle_s = idle_s
        self.max_buffered = max_buffered
        #: The wall clock (epoch seconds), to tell a replay from live traffic (see ``holds``).
        self.clock: Callable[[], float] = time.time
        self.lanes: dict[TP, Lane] = {}
        #: The floor without the partitions paused while the other processes' cap held their
        #: records (``peer_skew_s``; see :meth:`floor`): what live records wait for.  Such a
        #: partition's time may be far below the floor, and what it waits for is the other
        #: processes' to move: holding every record back, it made this process's live records
        #: wait for a slower process (found in review), where live records never wait for the
        #: others; holding none, a backlog's records of another partition came out ahead of its
        #: own earlier ones once the cap moved on (found in review too).
        self.live_floor: float | None = None
        #: Times a partition was paused (for metrics and tests).
        self.pauses = 0
        #: As of the last :meth:`floor`: the oldest latest event time of the partitions that
        #: delivered, and of those with records left to read, and whether none has delivered yet
        #: (see _replaying_unread).
        self._oldest_delivered: float | None = None
        self._oldest_backlog: float | None = None
        self._started_none = True
        #: The partitions that held the others back as of the last :meth:`floor`.
        self.holding: set[TP] = set()

    def add(self, tps: Iterable[TP], now: float, *, restoring: bool = False) -> None:
        for tp in tps:
            self.lanes[tp] = Lane(None, now, restoring=restoring)

    def remove(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.lanes.pop(tp, None)

    def observe(self, tp: TP, event_time: float, now: float) -> None:
        """Records of ``tp`` up to ``event_time`` (their largest) were consumed at ``now``."""
        lane = self.lanes.get(tp)
        if lane is None:
            return
        if lane.event_time is None:
            if all(other.event_time is None for other in self.lanes.values()):
                # The first record any partition delivered: the others' idle time counts from
                # here.  Until now the consumer delivered nothing at all (librdkafka waits for
                # every committed offset to be stable: another producer's transaction open on
                # one, up to that transaction's timeout, 30 s or more), nobody was waiting its
                # turn for a fetch, and counted from their assignment every partition had gone
                # idle by then: the replay came out of order (found in review).
                for other in self.lanes.values():
                    other.active_at = max(other.active_at, now)
            lane.event_time = event_time
        elif event_time > lane.event_time:
            lane.event_time = event_time
        lane.active_at = now

    def holds(self, tp: TP, lane: Lane, now: float, lag: Callable[[TP], int | None]) -> bool:
        """Whether ``tp`` holds the others back (see the module docstring)."""
        if lane.restoring:
            # (Until it runs, with records to read: one with none held live traffic for the
            # whole restore of its store.)
            left = lag(tp)
            return left is None or left > 0
        if lane.paused:
            # Paused for being ahead, or for its buffer: either way it has records past the floor
            # waiting, and its time (above the floor) counts.  (One paused while the other
            # processes' cap held its records holds back a backlog's records only: see
            # live_floor.)
            return True
        idle = now - lane.active_at
        if idle >= self.idle_s:
            # (Live: a partition with nothing to give, or another producer's transaction open on
            # it.  On a replay, idle up to ten times idle_s, it holds as below: a backlog waiting
            # its turn for a fetch.)
            if idle >= BACKLOG_IDLE_FACTOR * self.idle_s:
                return False
            if lane.event_time is not None and not self._replaying(lane):
                return False
        # Records left, or not known (a question the broker did not answer: on a replay, taken
        # for no records left, the backlogs of partitions never asked held nobody, and nearly a
        # whole topic came out of order, found in review).
        left = lag(tp)
        if left is not None and left <= 0:
            return False
        # (Idle, having delivered nothing: it holds on a replay only, see _replaying_unread.)
        return idle < self.idle_s or lane.event_time is not None or self._replaying_unread(left)

    def _replaying(self, lane: Lane) -> bool:
        return lane.event_time is not None and lane.event_time < self.clock() - REPLAY_BEHIND_S

    def _replaying_unread(self, left: int | None) -> bool:
        """Whether a partition that delivered nothing yet, with ``left`` records left (``None``:
        not known), is on a replay.  At a start (nothing delivered anywhere), yes.  With records
        left, as the oldest partition that delivered: beside partitions far behind, caught up or
        not (a restart's first partitions buffer their backlog, and have none left to read), a
        replay.  Not known (its committed offset in another producer's open transaction, say),
        as the partitions with records left: taken over while the others are live or caught up
        (a member's failover), live.  (Each taken for a replay, one whose records left were
        unknown held live traffic ten times idle_s, 30 s at idle_s 3; taken for live as soon as
        one partition was, a replay beside a live topic let its backlogs out of order; judged by
        the partitions with records left alone, a restart's last partition stopped holding
        after idle_s: all found in review.)"""
        if self._started_none:
            return True
        at = self._oldest_delivered if left is not None else self._oldest_backlog
        return at is not None and at < self.clock() - REPLAY_BEHIND_S

    def floor(self, now: float, lag: Callable[[TP], int | None]) -> float | None:
        """Event time of the slowest partition that holds the others back; ``None``: none does."""
        oldest: float | None = None
        backlog: float | None = None
        for tp, lane in self.lanes.items():
            at = lane.event_time
            if at is None:
                continue
            if oldest is None or at < oldest:
                oldest = at
            if backlog is None or at < backlog:
                left = lag(tp)
                if left is not None and left > 0:
                    backlog = at
        self._oldest_delivered = oldest
        self._oldest_backlog = backlog
        self._started_none = oldest is None
        holding = self.holding
        holding.clear()
        times: list[float] = []
        live: list[float] = []
        for tp, lane in self.lanes.items():
            if self.holds(tp, lane, now, lag):
                holding.add(tp)
                at = -math.inf if lane.event_time is None else lane.event_time
                times.append(at)
                if not (lane.paused and lane.peer_held):
                    live.append(at)
        self.live_floor = min(live) if live else None
        return min(times) if times else None

    def limit(self, now: float, lag: Callable[[TP], int | None]) -> float:
        """The event time up to which consumed records may be released to the operators: the
        floor (``inf``: all).  ``lag(tp)``: records left to read in ``tp`` (``None`` when
        unknown)."""
        floor = self.floor(now, lag)
        return math.inf if floor is None else floor

    def live_limit(self) -> float:
        """What :meth:`limit` last found for live records (see :attr:`live_floor`)."""
        return math.inf if self.live_floor is None else self.live_floor

    def plan(
        self, release: float, buffered: Callable[[TP], int] | None = None, held: Collection[TP] = ()
    ) -> tuple[list[TP], list[TP]]:
        """Partitions to pause and to resume now, once the records up to ``release`` (from
        :meth:`limit`) have been released: ``buffered(tp)``, its records still waiting then
        (``None``: every partition ahead counts as full).  Counted before the release, a partition
        whose buffer was mostly at or before the floor was paused, and resumed on the next pass:
        a refetch for nothing.  ``held``: partitions whose records the other processes' cap held
        back in that release (``peer_skew_s``, :mod:`vigil.stream.peers`), paused once they buffer
        the cap as if past the floor: the partition that sets the floor never is, and held by the
        others it read its whole backlog into memory (found in review).  The caller applies the
        plan and reports it with :meth:`paused`/:meth:`resumed`."""
        limit = release + self.skew_s
        pause: list[TP] = []
        resume: list[TP] = []
        full = self.max_buffered
        cap = BUFFER_CAP_FACTOR * full
        for tp, lane in self.lanes.items():
            ahead = lane.event_time is not None and lane.event_time > limit
            if buffered is None:
                if lane.paused and not ahead:
                    resume.append(tp)
                elif not lane.paused and ahead:
                    pause.append(tp)
                continue
            waiting = buffered(tp)
            if lane.paused:
                if waiting * 2 <= full or (not ahead and waiting * 2 <= cap):
                    resume.append(tp)
            elif (ahead and waiting >= full) or (waiting >= cap and (_past(lane, release) or tp in held)):
                pause.append(tp)
        return pause, resume

    def paused(self, tps: Iterable[TP], now: float, held: Collection[TP] = ()) -> None:
        """``tps`` paused at ``now``; ``held``: partitions the other processes' cap held back
        (as given to :meth:`plan`)."""
        for tp in tps:
            lane = self.lanes[tp]
            lane.paused = True
            lane.peer_held = tp in held
            lane.active_at = now
            self.pauses += 1

    def resumed(self, tps: Iterable[TP], now: float) -> None:
        for tp in tps:
            lane = self.lanes[tp]
            lane.paused = lane.peer_held = False
            lane.active_at = now

    def last(self, tps: Iterable[TP]) -> None:
        """Consider ``tps`` after the others from now on (the order partitions are asked their
        records left in, while the floor is looked for)."""
        for tp in tps:
            lane = self.lanes.pop(tp, None)
            if lane is not None:
                self.lanes[tp] = lane

    @property
    def paused_count(self) -> int:
        return sum(1 for lane in self.lanes.values() if lane.paused)
