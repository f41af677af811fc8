"""A transactional call that does not keep its timeout (librdkafka's commit, its request on its
way when the broker went, waits until the broker is back): made on the committer thread, the
loop says what it waits for and, stopping, gives it up (with stand-ins for the clients; a real
outage: tests/integration/stream/test_outage.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from tests.unit.stream.offline import Nothing, offline_app
from tests.unit.stream.test_app_checkpoint_retry import OFFSETS, Group, Transactional, in_transaction

import vigil.stream.app as app_module
from vigil.config import load_settings
from vigil.errors import PipelineError
from vigil.stream.app import Application, _Committing
from vigil.stream.calls import CallThread
from vigil.stream.instance import InstanceSlot

OVERDUE = "waiting for the broker"


class Held(Transactional):
    """A transactional producer whose commit waits until ``released``, whatever its timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.holding = threading.Event()
        self.thread: str | None = None

    def commit_transaction(self, timeout: float) -> None:
        self.thread = threading.current_thread().name
        self.holding.set()
        self.released.wait(30)  # (bounded: a failing test must not hang the run)
        super().commit_transaction(timeout)


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "_TIMEOUT", 0.2)  # (what each call is given)
    monkeypatch.setattr(app_module, "_OVERDUE_MARGIN_S", 0.1)
    monkeypatch.setattr(app_module, "_CALL_SLICE_S", 0.02)
    monkeypatch.setattr(app_module, "_STOPPING_CALL_S", 0.5)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Application, Held]]:
    producer = Held()
    app = in_transaction(tmp_path, producer)
    app._committer = CallThread("a-commit")
    yield app, producer
    producer.released.set()
    app._committer.close()


def in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())  # type: ignore[operator]
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_commit_past_its_timeout_is_said_and_waited_for_until_it_returns(
    held: tuple[Application, Held], caplog: pytest.LogCaptureFixture
) -> None:
    app, producer = held
    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        thread, out = in_thread(lambda: app._commit_txn(OFFSETS, Group()))  # type: ignore[arg-type]
        assert producer.holding.wait(10)
        deadline = time.monotonic() + 10
        while not said(caplog, OVERDUE) and time.monotonic() < deadline:
            time.sleep(0.02)  # poll interval; the log line is what is waited for
        assert thread.is_alive()  # (still waiting for the call: an outage is ridden out)
        producer.released.set()
        thread.join(10)
    assert out == [True]
    assert producer.thread == "a-commit"  # (made on the committer thread, not the loop's)
    assert producer.calls == ["send_offsets", "commit"]
    (line,) = said(caplog, OVERDUE)  # (once a minute at most)
    assert "commit_transaction has not returned in" in line
    assert "past its 0.2 s timeout" in line
    assert not app._in_txn


def test_stopping_while_a_commit_waits_past_its_timeout_gives_it_up(
    held: tuple[Application, Held], caplog: pytest.LogCaptureFixture
) -> None:
    # Made on the loop's thread, the commit held a stop until the broker was back (found in CI:
    # an exactly-once stage silent for the whole outage and not stopped 30 s after it was asked).
    app, producer = held
    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        thread, out = in_thread(lambda: app._commit_txn(OFFSETS, Group()))  # type: ignore[arg-type]
        assert producer.holding.wait(10)
        app.stop()
        thread.join(10)
        assert not thread.is_alive()
    assert out == [False]  # given up, not raised: the next start processes it again
    assert (app._lost, app._in_txn, app._abandoned) == (True, False, True)
    # The abort was not queued behind the commit given up (still held): it failed at once, said.
    assert producer.calls == ["send_offsets"]
    assert said(caplog, "stopping with the last checkpoint not committed")
    assert said(caplog, "an earlier call given up still waits for the broker")
    # The commit returns once the broker answers; the thread is free for the next call.
    producer.released.set()
    assert app._given_up is not None
    app._given_up.result(10)
    app._txn_call("abort_transaction", producer.abort_transaction)
    assert producer.calls == ["send_offsets", "commit", "abort"]


@pytest.mark.parametrize("why", ["stopped", "failed"])
def test_at_least_once_a_seal_commit_on_its_way_is_given_up_when_stopping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, why: str
) -> None:
    # Failed (not stopped), it waited for the broker on the way out (found in review).
    app = offline_app(tmp_path, "at_least_once", stateful=True)
    release = threading.Event()
    committer = CallThread("a-commit")
    app._committer = committer
    try:

        def held() -> None:
            release.wait(30)  # (bounded: a failing test must not hang the run)

        future = committer.submit(held)
        app._committing = _Committing(future, OFFSETS, [], time.time())
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="vigil.stream.app"):
            if why == "stopped":
                app.stop()
                app._settle_quietly()
            else:
                app._fail()  # (as run() does after an error)
        assert time.monotonic() - began < 5
        assert app._committing is None
        assert said(caplog, "the checkpoint being committed failed too")
    finally:
        release.set()
        committer.close()


def test_the_call_thread_gives_each_call_its_outcome_in_order() -> None:
    calls = CallThread("t")
    seen: list[int] = []
    try:
        first = calls.submit(lambda: seen.append(1))

        def fail() -> None:
            raise KafkaException("refused")

        second = calls.submit(fail)
        third = calls.submit(lambda: seen.append(3))
        assert first.result(10) is None
        with pytest.raises(KafkaException, match="refused"):
            second.result(10)
        assert third.result(10) is None
        assert seen == [1, 3]
    finally:
        calls.close()
    closed: Future[None] = calls.submit(lambda: None)  # (after close: never made)
    calls._thread.join(10)
    assert not calls._thread.is_alive()
    assert not closed.done()


def test_at_least_once_a_seal_commit_past_its_time_is_said_while_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The loop does not wait for a seal's commit (it goes on processing); one the client holds
    # past its time was silent for the whole outage.
    app = offline_app(tmp_path, "at_least_once", stateful=True)
    pending: Future[None] = Future()
    app._committing = _Committing(pending, OFFSETS, [], time.time())
    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        app._complete_epochs()
        assert not said(caplog, OVERDUE)  # (just submitted)
        app._committing.asked_at -= app_module._COMMIT_S + 1.0
        app._complete_epochs()
        app._complete_epochs()
    (line,) = said(caplog, OVERDUE)  # (once a minute at most)
    assert "the checkpoint's commit has not returned in" in line
    assert app._committing is not None  # (still on its way: settled once it returns)


class Unacknowledged:
    """A producer whose records the broker never acknowledges."""

    def __init__(self) -> None:
        self.flushes: list[float] = []

    def flush(self, timeout: float) -> int:
        self.flushes.append(timeout)
        time.sleep(timeout)  # (as the client waits for the broker)
        return 7


@pytest.mark.parametrize("stopping", [False, True])
def test_a_flush_the_broker_does_not_answer_is_waited_in_slices(tmp_path: Path, stopping: bool) -> None:
    # In one call, a stop during an outage waited for the whole flush (30 s; found in review).
    app = offline_app(tmp_path, "at_least_once", stateful=True)
    if stopping:
        app.stop()
    producer = Unacknowledged()
    began = time.monotonic()
    remaining, waited = app._flushed(producer, 1.5)  # type: ignore[arg-type]
    took = time.monotonic() - began
    assert remaining == 7
    limit = 0.5 if stopping else 1.5  # (_STOPPING_CALL_S as patched, or the flush's own)
    assert limit <= waited <= took < limit + 1.0
    assert max(producer.flushes) <= 0.02 + 1e-9  # (slices of _CALL_SLICE_S as patched)


def test_a_checkpoint_given_up_when_stopping_tries_its_abort_briefly(tmp_path: Path) -> None:
    # Given _STOPPING_CALL_S, the abort waited 10 s more for the broker that had just not
    # answered (found in review).
    timeouts: list[float] = []

    class Recording(Transactional):
        def abort_transaction(self, timeout: float) -> None:
            timeouts.append(timeout)
            super().abort_transaction(timeout)

    app = in_transaction(tmp_path, Recording())
    app.stop()
    assert app._abandoned_stopping("records not acknowledged")
    assert timeouts == [app_module._ABANDON_ABORT_S]


def test_a_start_the_broker_does_not_answer_fails_naming_where_it_looked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A raw KafkaException came out of run() (found in review).
    app = offline_app(tmp_path)  # (its broker: 127.0.0.1:1, where nothing listens)
    with pytest.raises(PipelineError, match=r"application 'a': starting: .*127\.0\.0\.1:1 up and reachable"):
        app.run()
    stopped = offline_app(tmp_path / "other")
    stopped.stop()  # (as a SIGTERM while it waits for the broker)
    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        stopped.run()
    assert said(caplog, "stopped while starting")


class Silent:
    """A listener that takes connections and never answers: a frozen broker (``kill -STOP``),
    as a client sees it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        self._taking = threading.Thread(target=self._take, daemon=True)
        self._taking.start()

    def _take(self) -> None:
        with contextlib.suppress(OSError):  # (shut down: close)
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                self.connected.set()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # (wakes the accept)
        self._taking.join(10)
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_stop_while_the_start_waits_for_a_frozen_broker_is_taken_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Each of the start's calls (the topics, then each producer's init_transactions) held a
    # stop up to its 30 s, one after the other, with the broker frozen (found in review).  The
    # first, the topics, here; the others as the next test makes them.
    monkeypatch.setattr(app_module, "_TIMEOUT", 30.0)
    silent = Silent()
    try:
        app = Application(
            load_settings(kafka_bootstrap=f"127.0.0.1:{silent.port}", home=tmp_path),
            name="a",
            inputs=["in"],
            operators=[Nothing()],
        )
        with caplog.at_level("WARNING", logger="vigil.stream.app"):
            thread, out = in_thread(app.run)
            assert silent.connected.wait(10)  # (it asks the broker)
            stopped_at = time.monotonic()
            app.stop()
            thread.join(10)
            took = time.monotonic() - stopped_at
        assert not thread.is_alive()
        assert out == [None]
        assert took < 5  # (the call's own timeout is 30 s)
        assert said(caplog, "stopped while starting: list_topics has not returned")
    finally:
        silent.close()


def test_a_call_of_the_start_is_made_aside_said_when_overdue_and_given_up_when_stopping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = offline_app(tmp_path)
    released, threads = threading.Event(), []

    def init_transactions() -> str:
        threads.append(threading.current_thread().name)
        released.wait(30)  # (bounded: a failing test must not hang the run)
        return "ready"

    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        thread, out = in_thread(lambda: app._asked("init_transactions", init_transactions))
        deadline = time.monotonic() + 10
        while not said(caplog, OVERDUE) and time.monotonic() < deadline:
            thread.join(0.05)
        released.set()
        thread.join(10)
    assert out == ["ready"]  # (the call's outcome, once it returned)
    assert threads == ["a-ask"]  # (not the caller's thread)
    assert said(caplog, "starting: init_transactions has not returned in")

    released.clear()
    thread, out = in_thread(lambda: app._asked("init_transactions", init_transactions))
    while len(threads) < 2:  # (the call made)
        thread.join(0.01)
    app.stop()
    thread.join(10)
    released.set()
    assert len(out) == 1
    assert isinstance(out[0], KafkaException)
    err = out[0].args[0]
    assert err.retriable()
    assert "init_transactions has not returned in" in err.str()
    assert "given up, stopping" in err.str()
    with pytest.raises(KafkaException, match="not asked, stopping"):
        app._asked("list_topics", lambda: None)  # (stopped: not made at all)


def test_a_producer_start_given_up_keeps_its_slot_until_it_returns(tmp_path: Path) -> None:
    # Released at once, the slot's transactional id could go to the next producer while the one
    # given up still asked for it, and its answer fenced the new one (found in review).
    app = offline_app(tmp_path)
    slot = app._slot
    assert slot is not None
    assert slot.acquire() == 0
    released, started = threading.Event(), threading.Event()

    def init_transactions() -> None:
        started.set()
        released.wait(30)  # (bounded: a failing test must not hang the run)

    thread, out = in_thread(lambda: app._asked("init_transactions", init_transactions, holds_id=True))
    assert started.wait(10)
    app.stop()
    thread.join(10)
    assert len(out) == 1
    assert isinstance(out[0], KafkaException)
    app._release_slot(slot)
    other = InstanceSlot(slot.directory, slot.name)
    try:
        assert other.acquire() == 1  # (slot 0 still held: its id may still be asked for)
        assert app._slot is not slot  # (a restart of this application takes another)
        released.set()
        deadline = time.monotonic() + 10
        while True:  # (freed by the call's callback, on its thread, once it returned)
            probe = InstanceSlot(slot.directory, slot.name)
            number = probe.acquire()
            probe.release()
            if number == 0:
                break
            assert time.monotonic() < deadline, "slot 0 not freed once the call returned"
            released.wait(0.01)
    finally:
        released.set()
        other.release()


def test_a_slot_with_no_start_given_up_is_freed_at_once(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    slot = app._slot
    assert slot is not None
    assert slot.acquire() == 0
    app._release_slot(slot)
    probe = InstanceSlot(slot.directory, slot.name)
    assert probe.acquire() == 0
    probe.release()
    assert app._slot is slot


class Unanswered(Unacknowledged):
    """Outputs the broker never acknowledges, from a producer that records what it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []

    def poll(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return 7

    def list_topics(self, timeout: float) -> object:
        self.asked.append(timeout)
        time.sleep(timeout)  # (as the client waits for the broker)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


def test_a_stop_during_an_outage_does_not_ask_which_outputs_are_missing(tmp_path: Path) -> None:
    # At-least-once, a seal's outputs not acknowledged when stopping: the checkpoint is given
    # up whatever the answer, and the question cost the stop 5 s more (found in review).
    app = offline_app(tmp_path, "at_least_once", stateful=True)
    producer = Unanswered()
    app._producer = producer  # type: ignore[assignment]
    app._consumer = object()  # type: ignore[assignment]
    app._sealed.append((time.monotonic() - 100, [], []))
    app.stop()
    app._complete_epochs(True)
    assert producer.flushes  # (waited for them, in slices)
    assert producer.asked == []
    assert app._abandoned
