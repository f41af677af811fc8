"""Following a blockchain head, reorg-safe, with a resumable cursor.

:class:`ChainFollower` is the polling loop the Ethereum and Bitcoin connectors share; a
subclass only says how to read the head height, the canonical hash at a height, and a
block with the raw records to publish for it.

Positions and the off-by-one trap: the cursor names the **next** height to fetch
(``next_block`` / ``next_height``), never the last one published, so a restart neither
re-publishes nor skips.  It is written with the records it covers, in one Kafka
transaction, by the sink.

Reorg safety has two layers:

1. a confirmation depth: only blocks at ``head - confirmations`` or lower are published;
2. the cursor keeps the hashes of the last ``window`` published blocks.  When a new
   block's parent hash differs from the hash remembered for the height below it, the
   chain under us changed: the follower walks back to the highest height whose
   canonical hash still equals the remembered one (the fork point) and re-publishes the
   canonical blocks above it, each record marked ``meta["reorg"] = True``, before going
   on.  A reorg deeper than the window cannot be repaired safely and stops the
   connector with a :class:`~vigil.errors.SourceError` saying so.

Behind a provider's load balancer one call may reach a node that lags the node that answered
the one before: a confirmed height it has no block for, or a block hash it does not know yet
(:class:`NodeLagging`).  Both are waited out like an unavailable node, after publishing the
blocks fetched before.  So are the other answers about one block that a later poll may see
otherwise (:class:`BlockUnavailable`: a block that disagrees with the hashes below it, a block
gone while a reorg is repaired); but whatever the kind, a block that stays unavailable for
``max_lag_attempts`` polls in a row stops the connector with an error naming the block, the node's
answer and what was expected (retried every 30 s, a node that never serves it held the connector
for ever, in one warning a poll).

Network: a follower is built for one network (an Ethereum chain id, a Bitcoin network) and
checks, at its first poll, that the node serves it: anvil's chain 31337 was published as
``ethereum`` and a testnet node as ``bitcoin``.  The cursor keeps the network too, so a
position saved for one network is refused by a follower configured for another.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil.errors import ConfigError, Retry, SourceError
from vigil.events.codec import inert
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source

log = logging.getLogger(__name__)

#: Longest wait between attempts while a node keeps failing transiently.
MAX_BACKOFF_S = 30.0
#: Shortest wait after a failed poll, whatever the node asked: a ``Retry-After: 0`` (or a poll
#: interval of milliseconds) made every failure a retry at once, thousands of requests a second.
MIN_BACKOFF_S = 1.0
#: Longest wait a node (or any proxy in front of it) can ask for with ``Retry-After``: taken
#: unbounded, ``86400000`` stalled the connector for 1,000 days after one log line, and larger
#: values stopped it with OverflowError (in ``timedelta`` or in the wait itself).
MAX_RETRY_AFTER_S = 300.0
#: Polls in a row a block may stay unavailable (a node lagging for it, see :class:`NodeLagging`,
#: or any other :class:`BlockUnavailable`) before the connector stops, naming the block and the
#: node; with the backoff, some minutes.
MAX_LAG_ATTEMPTS = 12
#: The largest ``poll_interval`` option, in seconds: an hour between polls leaves a follower an
#: hour behind its chain; larger values (``1e300``, ``inf``) raised OverflowError in ``timedelta``.
MAX_POLL_INTERVAL_S = 3600.0
#: The deepest ``confirmations`` option: far past any chain's finality (a day of Ethereum blocks).
MAX_CONFIRMATIONS = 10_000
#: The highest ``start_*`` height option (the largest integer a JSON cursor holds exactly in any
#: reader is 2**53; no chain is near it).
MAX_HEIGHT = 2**53


class BlockUnavailable(Retry):
    """The node answered for a block, but not with the block as expected: none at a height
    under its head, a block whose parent disagrees with the hash the node gives for the height
    below (nodes behind a load balancer out of step), a block gone while a reorg is repaired.
    Usually a later poll sees it right, so it is waited out; the follower counts the polls in a
    row it stays so and, after ``max_lag_attempts``, stops with :meth:`final`, naming the block,
    the node's answer and what was expected."""

    def __init__(
        self, after: timedelta, reason: str, *, height: int, where: str, answer: str, expected: str
    ) -> None:
        self.height = height
        #: The node (``<method> at <node URL without secrets>``), what it answered, what was expected.
        self.where = where
        self.answer = answer
        self.expected = expected
        super().__init__(after, reason)

    def final(self, source: str, attempts: int) -> str:
        """The message of the error that stops ``source`` after ``attempts`` polls in a row."""
        return (
            f"{source}: block {self.height} is still unavailable after {attempts} polls in a row: "
            f"{self.where} answered {self.answer}; expected {self.expected}"
        )


class NodeLagging(BlockUnavailable):
    """A node cannot serve a block by its hash although the chain still names that hash at the
    block's height: behind a load balancer, the node that answered lags the one that named the
    block (``eth_getLogs`` "unknown block", ``eth_getBlockReceipts`` null, Bitcoin Core's
    ``getblock`` -5 "Block not found").  Raised by :meth:`ChainFollower.fetch`; the follower
    publishes what it fetched before the block, waits it out like an unavailable node, and
    after ``max_lag_attempts`` polls in a row for the same block stops with a
    :class:`~vigil.errors.SourceError` naming the block and the node."""

    def __init__(self, after: timedelta, *, height: int, block_hash: str, where: str, answer: str) -> None:
        self.block_hash = block_hash
        reason = f"node lagging: {where} has no block {height} ({block_hash}) yet: {answer}"
        super().__init__(
            after,
            reason,
            height=height,
            where=where,
            answer=answer,
            expected=f"the block {block_hash} the chain names at that height",
        )

    def final(self, source: str, attempts: int) -> str:
        return (
            f"{source}: {self.where} still has no block {self.height} ({self.block_hash}) after "
            f"{attempts} polls in a row, although the chain names that block at that height: the node "
            f"lags too far behind or cannot serve it ({self.answer})"
        )


@dataclass(frozen=True)
class Block:
    """A fetched block: its position, its link to the parent and the records to publish."""

    height: int
    hash: str
    parent_hash: str
    records: Sequence[RawRecord]


@dataclass
class FollowState:
    """Where the follower is: the next height and the hashes of recent published blocks."""

    next_height: int
    recent: dict[int, str]


def number_option(
    source: str,
    options: Mapping[str, str],
    name: str,
    default: str | None,
    kind: type[int] | type[float],
    *,
    high: float,
    low: float | None = None,
) -> Any:
    """A numeric connector option, finite, at most ``high`` and at least ``low`` (when given: the
    connectors check the lower bounds of theirs, naming what the value is), None if absent
    without a default; else ConfigError naming it and the range.  (``int("x")`` was a
    traceback; ``inf`` and ``1e300`` as a poll interval raised OverflowError in ``timedelta``,
    which nothing caught.)"""
    text = options.get(name, default)
    if text is None:
        return None
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        msg = f"{source} source: option {name} must be {what}; got {text[:40]!r}"
        raise ConfigError(msg) from None
    # (NaN fails every comparison; -inf and inf fail isfinite.)
    finite = isinstance(value, int) or math.isfinite(value)  # (isfinite(10**400) overflows)
    if not (finite and value <= high and (low is None or value >= low)):
        within = f"at most {_number(high)}" if low is None else f"from {_number(low)} to {_number(high)}"
        msg = f"{source} source: option {name} must be {what} {within}; got {text[:40]!r}"
        raise ConfigError(msg)
    return value


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def backoff_s(asked_s: float, failures: int, floor_s: float = MIN_BACKOFF_S) -> float:
    """How long to wait after ``failures`` failed polls in a row: what the node asked but at least
    ``floor_s``, doubling per failure up to MAX_BACKOFF_S, never less than asked up to
    MAX_RETRY_AFTER_S: what was asked is capped there.  (Doubling what was asked alone kept a
    ``Retry-After: 0`` at zero for ever.  The exponent is capped: 2 ** 1024 as a float raised
    OverflowError after some eight hours of outage, stopping the connector.  An uncapped ask
    stalled it for years, or raised OverflowError in the wait.)"""
    if not asked_s <= MAX_RETRY_AFTER_S:  # (NaN too)
        asked_s = MAX_RETRY_AFTER_S
    base = max(asked_s, floor_s)
    backoff = min(base * float(1 << min(max(failures - 1, 0), 30)), MAX_BACKOFF_S)
    return max(base, backoff)


class ChainFollower(Source):
    """Polls a chain and publishes each confirmed block once, replacing reorged ones.

    ``run`` blocks until :meth:`stop`; transient node errors (:class:`Retry`) are waited
    out, anything else is raised (the caller sees the connector die, loudly).
    """

    #: Name of the height field in the cursor (``next_block`` for Ethereum, ...).
    cursor_field: str = "next_height"
    #: Name of the option that sets ``start`` (for messages: ``start_block`` for Ethereum, ...).
    start_option: str = "start"
    #: Shortest wait after a failed poll (see :func:`backoff_s`; tests lower it).
    min_backoff_s: float = MIN_BACKOFF_S
    #: Polls in a row a block may stay unavailable before the connector stops (:class:`BlockUnavailable`).
    max_lag_attempts: int = MAX_LAG_ATTEMPTS
    #: Name of the option (and of the cursor field) that says which network the follower serves.
    network_option: str = "network"
    #: The network, in :meth:`network`'s terms, this follower is built for (set by the subclass).
    expected_network: int | str

    def __init__(
        self,
        *,
        source_id: str | None = None,
        confirmations: int = 0,
        start: int | None = None,
        poll_interval: timedelta = timedelta(seconds=2),
        window: int = 64,
        batch_blocks: int = 20,
    ) -> None:
        super().__init__(source_id)
        if confirmations < 0 or window < 1 or batch_blocks < 1:
            msg = (
                f"{self.name} source: confirmations must be >= 0, window and batch_blocks >= 1; "
                f"got confirmations={confirmations}, window={window}, batch_blocks={batch_blocks}"
            )
            raise ValueError(msg)
        if start is not None and start < 0:
            msg = f"{self.name} source: option {self.start_option} must be a height >= 0; got {start}"
            raise ConfigError(msg)
        if poll_interval <= timedelta(0):
            # Zero or less polled the node in a busy loop once caught up.
            msg = (
                f"{self.name} source: option poll_interval must be more than 0 seconds; "
                f"got {poll_interval.total_seconds():g}"
            )
            raise ConfigError(msg)
        self.confirmations = confirmations
        self.start = start
        self.poll_interval = poll_interval
        self.window = window
        self.batch_blocks = batch_blocks
        self.state: FollowState | None = None
        #: Blocks published / re-published because of a reorg, since start (for status and tests).
        self.published = 0
        self.replaced = 0
        #: The height of the block that stayed unavailable, and in how many polls in a row.
        self._lag: int | None = None
        self._lag_attempts = 0
        #: Whether the node was found to serve ``expected_network`` (asked at the first poll).
        self._network_checked = False

    # ------------------------------------------------------------------ what a chain provides

    @abstractmethod
    def network(self) -> int | str:
        """The network the node serves (compared with ``expected_network``)."""

    @abstractmethod
    def where(self) -> str:
        """The node, for messages (its URL without secrets)."""

    @abstractmethod
    def head(self) -> int:
        """The height of the node's current best block."""

    @abstractmethod
    def hash_at(self, height: int) -> str | None:
        """The canonical block hash at ``height``, or None if the node has no block there."""

    @abstractmethod
    def fetch(self, height: int, *, reorg: bool) -> Block | None:
        """The canonical block at ``height`` with its raw records (marked ``reorg`` when it
        replaces a block published before), or None if the node has no block there.  Raises
        :class:`NodeLagging` when the node names the block but cannot serve it by hash yet."""

    def close(self) -> None:
        """Release connections; called when ``run`` returns."""

    # ------------------------------------------------------------------ the cursor

    def cursor(self, state: FollowState) -> dict[str, Any]:
        recent = sorted(state.recent.items())[-self.window :]
        hash_below = state.recent.get(state.next_height - 1)
        return {
            self.cursor_field: state.next_height,
            "hash": hash_below,
            "recent": [[height, block_hash] for height, block_hash in recent],
            self.network_option: self.expected_network,
        }

    def restore(self, cursor: dict[str, Any]) -> FollowState:
        """The state saved in ``cursor``; a malformed cursor stops the connector by name, and one
        saved for another network (heights and hashes of another chain) by both networks.  A
        cursor without a network (saved before it was kept) is taken as this one's."""
        saved = cursor.get(self.network_option, self.expected_network)
        if saved != self.expected_network:
            msg = (
                f"{self.name} source {self.source_id!r}: the stored cursor is for {self.network_option} "
                f"{saved!r}, but the source is configured for {self.network_option} "
                f"{self.expected_network!r}: its heights and hashes are another chain's; give a source "
                "of another network a source_id of its own"
            )
            raise ConfigError(msg)
        try:
            next_height = cursor[self.cursor_field]
            recent = {int(h): str(x) for h, x in cursor.get("recent", [])}
            if not isinstance(next_height, int) or next_height < 0:
                raise TypeError(next_height)
        except (KeyError, TypeError, ValueError) as exc:
            msg = (
                f"{self.name} source {self.source_id!r}: stored cursor is malformed "
                f"(expected {{{self.cursor_field!r}: int >= 0, 'recent': [[height, hash], ...]}}): {exc!r}"
            )
            raise SourceError(msg) from None
        return FollowState(next_height=next_height, recent=recent)

    # ------------------------------------------------------------------ the loop

    def run(self, sink: RawSink) -> None:
        try:
            saved = sink.last_cursor(self.source_id)
            if saved is not None:
                self.state = self.restore(saved)
                log.info("%s: resuming at %s=%d", self.source_id, self.cursor_field, self.state.next_height)
            failures = 0
            while self.running:
                try:
                    caught_up = self.poll(sink)
                except Retry as retry:
                    # Back off while the node stays unavailable (from what it asked for, capped at
                    # MAX_RETRY_AFTER_S, but at least min_backoff_s, doubling per consecutive
                    # failure up to MAX_BACKOFF_S) so a long outage is neither a busy loop nor a
                    # log flood, and no Retry-After stalls the connector for days.
                    failures += 1
                    delay = backoff_s(retry.after.total_seconds(), failures, self.min_backoff_s)
                    # (Its reason alone: "retry after 1s: ..., next in 4.0s" said two delays. It
                    # quotes the node: one line, no terminal control.)
                    reason = inert(retry.reason or str(retry))
                    log.warning("%s: %s (attempt %d, next in %.1fs)", self.source_id, reason, failures, delay)
                    self.wait(delay)
                    continue
                failures = 0
                if caught_up:
                    self.wait(self.poll_interval.total_seconds())
        finally:
            self.close()

    def poll(self, sink: RawSink) -> bool:
        """Publish every confirmed block not yet published; True when caught up with the head.

        ``self.state`` only ever moves to a position the sink has made durable: blocks are
        fetched into a working copy, and if anything fails before their publish returns
        (a :class:`Retry` from the node, a broker error) the next poll starts again from
        the last published block, so nothing fetched-but-unpublished is skipped.
        """
        if not self._network_checked:
            self._check_network()
        head = self.head()
        target = head - self.confirmations
        if self.state is None:
            first = self.start if self.start is not None else max(target, 0)
            self.state = FollowState(next_height=first, recent={})
        work = self._copy(self.state)
        pending: list[RawRecord] = []
        blocks_pending = 0
        while work.next_height <= target and self.running:
            try:
                block = self.fetch(work.next_height, reorg=False)
            except BlockUnavailable as unavailable:
                # As for a block missing by number (below): publish what was fetched before it,
                # then wait; re-raising the node's "unknown block" stopped the connector.
                self._flush(sink, pending, blocks_pending, work)
                raise self._unavailable(unavailable) from None
            if block is None:
                # A confirmed height the node does not have: behind a load balancer, a node that
                # lags the one that answered the head.  Waited out like any unavailable node;
                # breaking off here polled again at once, thousands of calls a second, unlogged.
                self._flush(sink, pending, blocks_pending, work)
                missing = BlockUnavailable(
                    self.poll_interval,
                    f"node has no block {work.next_height} although its head is {head}",
                    height=work.next_height,
                    where=self.where(),
                    answer=f"no block at that height, with its head at {head}",
                    expected=f"a block at every height up to the confirmed head {target}",
                )
                raise self._unavailable(missing)
            remembered = work.recent.get(block.height - 1)
            if remembered is not None and remembered != block.parent_hash:
                # Publish what precedes the fork first: the walk-back starts from durable state.
                self._flush(sink, pending, blocks_pending, work)
                pending, blocks_pending = [], 0
                self._repair(sink)
                work = self._copy(self.state)
                continue
            self._lag = None  # (taken: a node that lagged for it caught up)
            pending.extend(block.records)
            self._advance(work, block)
            blocks_pending += 1
            if blocks_pending >= self.batch_blocks:
                self._flush(sink, pending, blocks_pending, work)
                pending, blocks_pending = [], 0
        self._flush(sink, pending, blocks_pending, work)
        return self.state.next_height > target

    def _check_network(self) -> None:
        """ConfigError unless the node serves ``expected_network`` (once, at the first poll)."""
        found = self.network()
        if found != self.expected_network:
            msg = (
                f"{self.name} source {self.source_id!r}: the node at {self.where()} serves "
                f"{self.network_option} {found!r}, expected {self.expected_network!r} (option "
                f"{self.network_option}): point url at a node of that network, or set "
                f"{self.network_option} to the node's"
            )
            raise ConfigError(msg)
        self._network_checked = True

    def _unavailable(self, unavailable: BlockUnavailable) -> Retry | SourceError:
        """``unavailable`` to wait out, or, after ``max_lag_attempts`` polls in a row with the block
        at the same height unavailable, an error naming it and the node (a node that never
        catches up, that answers "unknown block" for blocks it has, or that keeps disagreeing
        with itself, is not waited for for ever)."""
        self._lag_attempts = self._lag_attempts + 1 if self._lag == unavailable.height else 1
        self._lag = unavailable.height
        if self._lag_attempts < self.max_lag_attempts:
            return unavailable
        msg = unavailable.final(f"{self.name} source {self.source_id!r}", self._lag_attempts)
        self._lag, self._lag_attempts = None, 0
        return SourceError(msg)

    @staticmethod
    def _copy(state: FollowState) -> FollowState:
        return FollowState(next_height=state.next_height, recent=dict(state.recent))

    def _advance(self, state: FollowState, block: Block) -> None:
        state.recent[block.height] = block.hash
        for old in [h for h in state.recent if h <= block.height - self.window]:
            del state.recent[old]
        state.next_height = block.height + 1

    def _flush(self, sink: RawSink, records: list[RawRecord], blocks: int, work: FollowState) -> None:
        if blocks:
            sink.publish(records, self.cursor(work))
            self.published += blocks
        self.state = self._copy(work)

    def _repair(self, sink: RawSink) -> None:
        """Find the fork point below the next height and re-publish the canonical blocks above it."""
        state = self.state
        if state is None:
            msg = f"{self.name} source {self.source_id!r}: reorg repair needs a position; poll() sets one"
            raise SourceError(msg)
        height = state.next_height - 1
        while height in state.recent:
            canonical = self.hash_at(height)
            if canonical is None:
                # A lagging node (see poll), not a fork: walking on would blame every remembered
                # block and stop the connector as a reorg deeper than the window.
                missing = BlockUnavailable(
                    self.poll_interval,
                    f"node has no block {height} during reorg repair",
                    height=height,
                    where=self.where(),
                    answer="no block at that height",
                    expected=f"the block published there ({state.recent[height]}) or its replacement",
                )
                raise self._unavailable(missing)
            if canonical == state.recent[height]:
                break
            height -= 1
        if height not in state.recent:
            lowest = min(state.recent)
            msg = (
                f"{self.name} source {self.source_id!r}: reorg below height {state.next_height} is deeper "
                f"than the {self.window} remembered blocks ({lowest}..{state.next_height - 1}); "
                "cannot tell which published blocks were replaced - restart from an earlier cursor"
            )
            raise SourceError(msg)
        fork = height
        if fork == state.next_height - 1:
            # Nothing published differs from the node's chain: the block that disagreed came from
            # a node behind a load balancer other than the one that answered the hashes.  Wait
            # for them to agree; fetching again at once spun without pause.
            # Counted: a node whose block keeps naming a parent the chain does not have is broken,
            # not out of step, and was retried for ever.
            reason = f"the node's block {fork + 1} and its hash of block {fork} disagree (nodes out of step)"
            out_of_step = BlockUnavailable(
                self.poll_interval,
                reason,
                height=fork + 1,
                where=self.where(),
                answer=f"a block {fork + 1} whose parent is not its block {fork} ({state.recent[fork]})",
                expected=f"block {fork + 1} to name block {fork}'s hash as its parent",
            )
            raise self._unavailable(out_of_step)
        log.warning(
            "%s: reorg detected; re-publishing heights %d..%d",
            self.source_id,
            fork + 1,
            state.next_height - 1,
        )
        for replaced in range(fork + 1, state.next_height):
            try:
                block = self.fetch(replaced, reorg=True)
            except BlockUnavailable as unavailable:
                raise self._unavailable(unavailable) from None
            if block is None or block.parent_hash != state.recent.get(replaced - 1, block.parent_hash):
                # The chain moved again (or shrank) while we walked: start over on the next poll.
                changed = BlockUnavailable(
                    self.poll_interval,
                    f"chain changed again at height {replaced} during reorg repair",
                    height=replaced,
                    where=self.where(),
                    answer="no block" if block is None else f"a block whose parent is {block.parent_hash}",
                    expected=f"the block following {state.recent.get(replaced - 1)} at that height",
                )
                raise self._unavailable(changed)
            self._lag = None
            work = self._copy(state)
            work.recent[replaced] = block.hash
            # The cursor keeps next_height: these heights were published before, this is a replacement.
            sink.publish(block.records, self.cursor(work))
            self.state = state = work
            self.replaced += 1
