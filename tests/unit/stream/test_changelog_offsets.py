"""Restore asks for every changelog partition's end offsets, asks again for those whose
just-created topic is still electing its leader, and fails with the partition named on anything
else; it asks from its steps, not when stores are added (inside the assignment callback), and
asks again while the broker does not answer.

The broker's transient answer can't be produced on demand, so a stand-in consumer injects it
(the real one is used by every integration test that reads a topic to its end)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import ConfigResource

from vigil.config import Settings
from vigil.errors import BrokerError, BrokerUnanswered, PipelineError
from vigil.hub import client
from vigil.hub.client import partition_offsets
from vigil.stream import changelog
from vigil.stream.base import StoreSpec
from vigil.stream.changelog import Restorer, RestoreTask
from vigil.stream.state import RocksState

#: A changelog partition: topic and number.
TP = tuple[str, int]


class Answers:
    """A consumer whose get_watermark_offsets fails a partition with the errors queued for it,
    then answers (low 3, high 42 + the partition number)."""

    def __init__(self, errors: dict[int, list[int]]) -> None:
        self.errors = errors
        self.requests: list[int] = []
        self.closed = False
        self.config: dict[str, Any] = {}

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        assert timeout > 0
        self.requests.append(tp.partition)
        queued = self.errors.get(tp.partition, [])
        if queued:
            raise KafkaException(KafkaError(queued.pop(0)))
        return 3, 42 + tp.partition

    def close(self) -> None:
        self.closed = True


class Consumers:
    """What ``make_consumer`` hands out: the stand-ins queued first, then what ``fresh`` makes
    (by default, one that answers)."""

    def __init__(self) -> None:
        self.queued: list[Answers] = []
        self.made: list[Answers] = []
        self.fresh: Callable[[], Answers] = lambda: Answers({})

    def make(self, settings: Settings, group_id: str, **overrides: Any) -> Answers:
        stand_in = self.queued.pop(0) if self.queued else self.fresh()
        stand_in.config = {"group.id": group_id, **overrides}
        self.made.append(stand_in)
        return stand_in


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> Consumers:
    out = Consumers()
    monkeypatch.setattr(client, "make_consumer", out.make)
    return out


def test_each_partition_once_and_those_without_a_leader_again(consumers: Consumers) -> None:
    consumers.queued.append(
        Answers({2: [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]})
    )
    parts = [("app.changelog.s", p) for p in range(4)]
    got = partition_offsets(Settings(), parts, time.monotonic() + 30)
    assert got == {tp: (3, 42 + tp[1]) for tp in parts}
    (consumer,) = consumers.made
    assert consumer.requests == [0, 1, 2, 2, 2, 3]
    # The high watermark (read_uncommitted), by a consumer that is closed after.
    assert consumer.config["isolation.level"] == "read_uncommitted"
    assert consumer.closed


def test_other_errors_and_the_deadline_fail_naming_the_partition(consumers: Consumers) -> None:
    consumers.queued.append(Answers({1: [KafkaError.TOPIC_AUTHORIZATION_FAILED]}))
    with pytest.raises(BrokerError, match=r"app\.changelog\.s\[1\].*[Aa]uthoriz") as refused:
        partition_offsets(Settings(), [("app.changelog.s", 0), ("app.changelog.s", 1)], time.monotonic() + 30)
    assert not isinstance(refused.value, BrokerUnanswered)  # (a refusal: not asked again)
    never = Answers({0: [KafkaError.NOT_LEADER_FOR_PARTITION] * 100})
    consumers.queued.append(never)
    with pytest.raises(BrokerUnanswered, match=r"app\.changelog\.s\[0\]"):
        partition_offsets(Settings(), [("app.changelog.s", 0)], time.monotonic() + 2.0)
    assert 2 < len(never.requests) < 100
    assert all(c.closed for c in consumers.made)


class Silent:
    """A consumer whose metadata requests wait out their timeout (a frozen broker), or answer."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.asked: list[tuple[str, float]] = []

    def list_topics(self, topic: str, timeout: float) -> object:
        self.asked.append((topic, timeout))
        if self.answers:
            return object()
        time.sleep(timeout)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


@pytest.mark.parametrize("answers", [True, False])
def test_the_leaders_are_asked_in_one_short_budget(answers: bool) -> None:
    # Asked inside the assignment callback, 10 s a topic: a frozen broker held `consume` past
    # the session's timeout and the partitions were lost (found in review).  Asked on the loop's
    # thread now, for no longer than the 500 ms it saves (2 s before: a frozen broker held the
    # loop that long).
    restorer = changelog.Restorer(Settings(), "a")
    consumer = Silent(answers)
    restorer._consumer = consumer  # type: ignore[assignment]
    began = time.monotonic()
    restorer._know_leaders(["t1", "t2", "t3"])
    assert time.monotonic() - began < 1.0
    if answers:
        assert [topic for topic, _ in consumer.asked] == ["t1", "t2", "t3"]
    else:
        assert [topic for topic, _ in consumer.asked] == ["t1"]  # (none asked after no answer)
    assert all(0 < timeout <= 0.5 for _, timeout in consumer.asked)


class Unanswered:
    """An admin client whose requests are never answered (a frozen broker)."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def _never(self, names: list[str], request_timeout: float) -> dict[object, Future[object]]:
        self.timeouts.append(request_timeout)
        return {name: Future() for name in names}

    def describe_topics(
        self, topics: TopicCollection, request_timeout: float
    ) -> dict[object, Future[object]]:
        return self._never(list(topics.topic_names), request_timeout)

    def describe_configs(
        self, resources: list[ConfigResource], request_timeout: float
    ) -> dict[object, Future[object]]:
        futures = self._never([r.name for r in resources], request_timeout)
        return {r: futures[r.name] for r in resources}


def test_the_topics_ids_and_retention_are_asked_in_one_short_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Asked inside the assignment callback, 30 s each: a frozen broker held `consume` past the
    # session's timeout (found in review).  Unanswered, each has its fallback.
    monkeypatch.setattr(changelog, "_DESCRIBE_ASK_S", 0.4)
    admin = Unanswered()
    began = time.monotonic()
    deadline = began + changelog._DESCRIBE_ASK_S
    with caplog.at_level("WARNING", logger="vigil.stream.changelog"):
        horizons = changelog._horizons(admin, ["t1", "t2"], deadline)  # type: ignore[arg-type]
        ids = changelog._topic_ids(admin, ["t1", "t2"], deadline)  # type: ignore[arg-type]
    assert time.monotonic() - began < 1.0
    assert ids == {}  # (judged by offsets alone)
    default = changelog._horizon(changelog.DEFAULT_DELETE_RETENTION_S)
    assert horizons == {"t1": default, "t2": default}  # (Kafka's default)
    assert all(0 < timeout <= 0.4 for timeout in admin.timeouts)
    said = [r.getMessage() for r in caplog.records]
    assert any("could not read delete.retention.ms (no answer in time)" in m for m in said)
    assert any("could not read the topics' ids (no answer in time)" in m for m in said)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksState]:
    state = RocksState(tmp_path / "store", StoreSpec("s", 1))
    yield state
    state.close()


def test_stores_added_are_asked_for_by_the_steps_and_again_while_unanswered(
    consumers: Consumers,
    store: RocksState,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Asked inside the assignment callback, the end offsets held `consume` 30 s with the broker
    # frozen (the partitions lost), then failed the stage.  Asked on the loop's thread in tries
    # of 2 s, they held the loop (found in review): now on a thread of their own.
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 0.3)
    monkeypatch.setattr(changelog, "_OFFSETS_RETRY_S", 0.2)
    consumers.fresh = lambda: Answers({0: [KafkaError._TIMED_OUT] * 1000})
    restorer = Restorer(Settings(), "a", stall_s=1.5)
    task = RestoreTask(store, "a.changelog.s", 0)
    assert restorer.add([task]) == [task]
    assert consumers.made == []  # (nothing asked when added)
    assert restorer.busy
    assert restorer.restoring() == [task]
    longest = 0.0
    began = time.monotonic()
    with caplog.at_level("WARNING", logger="vigil.stream.changelog"):
        failed: PipelineError | None = None
        while failed is None:
            step_began = time.monotonic()
            try:
                assert restorer.step(100, 0.0) == []
            except PipelineError as exc:
                failed = exc
            longest = max(longest, time.monotonic() - step_began)
            time.sleep(0.01)  # (the loop's other work between steps)
    waited = time.monotonic() - began
    assert longest < 0.1  # (no step waits for the broker: each round's 0.3 s is its thread's)
    assert len(consumers.made) >= 3  # (asked again, a round at a time)
    assert 1.5 < waited < 6.0  # (failed past stall_s after the first round with no answer)
    text = str(failed)
    assert "a.changelog.s" in text
    assert "end offsets" in text
    assert "is the broker reachable?" in text
    said = [r.getMessage() for r in caplog.records if "no answer yet" in r.getMessage()]
    assert len(said) == 1  # (said once)
    assert "a.changelog.s" in said[0]
    restorer.close()


def _stalled_with_a_second_store(
    consumers: Consumers,
    first: RocksState,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    revoke_first: bool,
) -> tuple[PipelineError, float]:
    """Two partitions that never answer: the first's store added at once, the second's half-way
    through the first's 2 s stall (the first's revoked then, if ``revoke_first``); the restore's
    failure, and when the second was added (monotonic)."""
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 0.1)
    monkeypatch.setattr(changelog, "_OFFSETS_RETRY_S", 0.05)
    consumers.fresh = lambda: Answers({0: [KafkaError._TIMED_OUT] * 1000, 1: [KafkaError._TIMED_OUT] * 1000})
    later = RocksState(tmp_path / "later", StoreSpec("s", 1))
    restorer = Restorer(Settings(), "a", stall_s=2.0)
    try:
        restorer.add([RestoreTask(first, "a.changelog.s", 0)])
        added_at: float | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            since = restorer._unanswered_since
            if added_at is None and since is not None and time.monotonic() - since > 1.0:  # half-way
                restorer.add([RestoreTask(later, "a.changelog.s", 1)])
                added_at = time.monotonic()
                if revoke_first:
                    restorer.remove([first])  # (its round may still be on its way)
            try:
                restorer.step(100, 0.0)
            except PipelineError as exc:
                failed: PipelineError = exc
                break
            time.sleep(0.01)  # (the loop's other work between steps)
        else:
            raise AssertionError("the restore did not fail in 20 s")
        assert added_at is not None, f"failed before the second store was added: {failed}"
        return failed, added_at
    finally:
        restorer.close()
        later.close()


def test_a_stalled_restore_names_the_partitions_unanswered_all_that_time(
    consumers: Consumers, store: RocksState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It named the last round's partitions: a store assigned a moment before the failure was
    # said to have gone unanswered for the whole stall too.
    failed, _ = _stalled_with_a_second_store(consumers, store, tmp_path, monkeypatch, revoke_first=False)
    assert str(failed).startswith("restoring [('a.changelog.s', 0)] (and 1 asked since): no answer")


def test_a_store_left_after_the_others_were_revoked_has_a_stall_of_its_own(
    consumers: Consumers, store: RocksState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Timed from the first store's first round without an answer, the one left failed before
    # its own stall, named as if it had waited it all (found in review).
    failed, added_at = _stalled_with_a_second_store(
        consumers, store, tmp_path, monkeypatch, revoke_first=True
    )
    assert time.monotonic() - added_at > 2.0  # (its own stall, not what was left of the first's)
    assert str(failed).startswith("restoring [('a.changelog.s', 1)]: no answer")


def _stepped_until(restorer: Restorer, done: Callable[[list[RestoreTask]], bool]) -> list[RestoreTask]:
    """Step ``restorer`` (waiting up to 0.05 s a step, as the loop's restore step may) until
    ``done`` says yes to what the steps returned in all; returns that."""
    finished: list[RestoreTask] = []
    deadline = time.monotonic() + 20
    while not done(finished):
        assert time.monotonic() < deadline, f"not done in 20 s: {finished}"
        finished += restorer.step(100, 0.05)
    return finished


def test_a_refusal_fails_the_restore_at_once(consumers: Consumers, store: RocksState) -> None:
    consumers.queued.append(Answers({0: [KafkaError.TOPIC_AUTHORIZATION_FAILED]}))
    restorer = Restorer(Settings(), "a")
    restorer.add([RestoreTask(store, "a.changelog.s", 0)])
    with pytest.raises(PipelineError, match=r"end offsets.*a\.changelog\.s\[0\].*[Aa]uthoriz"):
        _stepped_until(restorer, lambda _: False)
    restorer.close()


def test_a_store_removed_before_its_start_is_forgotten(
    consumers: Consumers, store: RocksState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 0.1)
    consumers.fresh = lambda: Answers({0: [KafkaError._TIMED_OUT] * 1000, 1: [KafkaError._TIMED_OUT] * 1000})
    other = RocksState(tmp_path / "other", StoreSpec("s", 1))
    try:
        restorer = Restorer(Settings(), "a")
        kept = RestoreTask(other, "a.changelog.s", 1)
        restorer.add([RestoreTask(store, "a.changelog.s", 0), kept])
        assert restorer.step(100, 0.0) == []  # (a round under way)
        restorer.remove([store])
        assert restorer.restoring() == [kept]
        restorer.remove([other])
        assert not restorer.busy
        assert restorer.step(100, 0.0) == []
        restorer.close()
    finally:
        other.close()


def test_a_partition_left_unanswered_does_not_keep_the_others_from_being_asked(
    consumers: Consumers,
    store: RocksState,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each try stopped at the first partition unanswered, which took the whole budget: the ones
    # after it were never asked, and the error named them as unanswered (found in review).
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 0.3)
    monkeypatch.setattr(changelog, "_OFFSETS_RETRY_S", 0.05)
    monkeypatch.setattr(changelog, "_DESCRIBE_ASK_S", 0.2)  # (the topics' ids: no broker here)
    consumers.fresh = lambda: Answers({0: [KafkaError._TIMED_OUT] * 1000})
    started: list[dict[TP, tuple[int, int]]] = []

    def start(
        self: Restorer, tasks: list[RestoreTask], offsets: dict[TP, tuple[int, int]], *_: object
    ) -> list[RestoreTask]:
        # (Reading the changelogs is the real broker's tests'.)  Nothing to read: all restored.
        assert [(t.topic, t.partition) for t in tasks] == list(offsets)
        started.append(dict(offsets))
        return []

    monkeypatch.setattr(Restorer, "_start", start)
    restorer = Restorer(Settings(), "a", stall_s=30)
    tasks = [RestoreTask(store, "a.changelog.s", p) for p in range(3)]
    restorer.add(tasks)

    def warned(_: list[RestoreTask]) -> bool:
        return any("no answer yet" in r.getMessage() for r in caplog.records)

    with caplog.at_level("WARNING", logger="vigil.stream.changelog"):
        finished = _stepped_until(restorer, lambda got: len(got) == 2)
        assert finished == tasks[1:]  # asked, answered and started while partition 0 is not
        _stepped_until(restorer, warned)
    assert started == [{("a.changelog.s", 1): (3, 43), ("a.changelog.s", 2): (3, 44)}]
    assert restorer.restoring() == [tasks[0]]
    said = [r.getMessage() for r in caplog.records if "no answer yet" in r.getMessage()]
    assert len(said) == 1
    assert "('a.changelog.s', 0)" in said[0]
    assert "('a.changelog.s', 1)" not in said[0]  # (answered: not named)
    restorer.close()


class Frozen(Answers):
    """A consumer whose broker is frozen for the partitions of ``together``: each of their asks
    waits for all of them to be asked (a frozen broker's wait is a timeout's; the barrier only
    tells asks made together from asks made one after another), then times out."""

    def __init__(self, together: int) -> None:
        super().__init__({})
        self.barrier = threading.Barrier(together)
        self.together: list[bool] = []
        self.daemons: list[bool] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.requests.append(tp.partition)
        self.daemons.append(threading.current_thread().daemon)
        try:
            self.barrier.wait(timeout)
            self.together.append(True)
        except threading.BrokenBarrierError:
            self.together.append(False)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))


def test_a_round_asks_its_partitions_together(consumers: Consumers, monkeypatch: pytest.MonkeyPatch) -> None:
    # One after another, each waited its 5 s with the broker frozen: a round of n partitions took
    # 5n s, and the restore failed that long past its stall_s.
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 2.0)
    frozen = Frozen(8)
    consumers.queued.append(frozen)
    tps = [("a.changelog.s", p) for p in range(8)]
    answered, unanswered, ids, horizons = changelog._ask(Settings(), tps, [])
    assert (answered, ids, horizons) == ({}, {}, {})
    assert sorted(unanswered) == tps
    assert frozen.together[:8] == [True] * 8  # (the first try of each: all eight asked at once)
    # (A pool's workers held the process's exit until every partition had been asked: a stop
    # during an outage waited 5 s for every 16 partitions, found in review.)
    assert all(frozen.daemons)
    assert frozen.closed


class RefusedFirst(Answers):
    """Partition 0 refused at once; every other one waits its whole budget with no answer."""

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.requests.append(tp.partition)
        if tp.partition == 0:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
        threading.Event().wait(timeout)  # (a frozen broker's wait, its timeout's length)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))


def test_a_refusal_fails_the_round_without_asking_the_partitions_left(
    consumers: Consumers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool asked every partition queued behind the refusal, each waiting its budget.
    monkeypatch.setattr(changelog, "_OFFSETS_ASK_S", 0.3)
    refusing = RefusedFirst({})
    consumers.queued.append(refusing)
    tps = [("a.changelog.s", p) for p in range(40)]
    with pytest.raises(BrokerError, match=r"a\.changelog\.s\[0\].*[Aa]uthoriz"):
        changelog._ask(Settings(), tps, [])
    assert 0 in refusing.requests
    assert max(refusing.requests) < changelog._OFFSETS_ASKED_AT_ONCE  # (only those asked with it)
    assert refusing.closed
