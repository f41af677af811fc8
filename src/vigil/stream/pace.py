"""Pacing background work over wall time.

A checkpoint of an at-least-once application hands the loop tens of thousands of state keys
to encode for the changelog and, once Kafka has them, to write to RocksDB.  Done between
batches in chunks sized by the batch, that work arrives in a burst right after each
checkpoint, and under steady load the burst is a backlog that sets tail latency.  A
:class:`Pace` hands the same work out at a steady rate over a span of wall time instead, so
every loop iteration carries a small, even share of it.
"""

from __future__ import annotations


class Pace:
    """Hands out a backlog of items evenly over a span of wall time (see the module docstring)::

    pace = Pace()
    pace.spread(50_000, 2.5, time.monotonic())   # 20,000 items per second from now
    ...
    step(pace.take(time.monotonic()))            # each iteration: what is due since the last
    """

    __slots__ = ("credit", "last", "rate")

    def __init__(self) -> None:
        self.rate = 0.0
        self.credit = 0.0
        self.last = 0.0

    def spread(self, items: int, span_s: float, now: float) -> None:
        """``items`` are waiting in all (those not handed out yet included): hand them out over
        ``span_s`` seconds from ``now``."""
        if span_s <= 0:
            msg = f"a pace needs a span of time > 0 seconds; got {span_s}"
            raise ValueError(msg)
        self.rate = max(0, items) / span_s
        self.last = now

    def take(self, now: float) -> int:
        """How many items are due since the last call; at least one, so a backlog always moves.

        Fractions carry over to the next call, so many short iterations hand out the same total
        as a few long ones, but for the one each is given when less than one is due: calls
        more often than the rate hands out items take one each (1,000 calls in a second at 20
        items a second hand out 1,000), which only finishes a backlog sooner."""
        if now > self.last:
            self.credit += self.rate * (now - self.last)
            self.last = now
        due = int(self.credit)
        self.credit -= due
        return max(1, due)
