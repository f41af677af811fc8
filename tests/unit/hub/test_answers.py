"""``wait_answered`` asks for metadata while an admin request goes unanswered (so librdkafka
learns a controller it had found missing), and only then; it gives up at its timeout."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from vigil.hub import answers
from vigil.hub.answers import wait_answered


class Admin:
    """Counts metadata requests; ``learns`` answers the pending request at the first (the
    controller learnt); ``fails`` raises as a client whose broker is out of reach."""

    def __init__(self, pending: Future[Any] | None = None, fails: bool = False) -> None:
        self.pending, self.fails = pending, fails
        self.lookups: list[float] = []

    def list_topics(self, timeout: float) -> object:
        self.lookups.append(timeout)
        if self.fails:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        if self.pending is not None and not self.pending.done():
            self.pending.set_result("answered")
        return object()


def test_answered_requests_cost_no_lookup() -> None:
    done: Future[Any] = Future()
    done.set_result("answered")
    admin = Admin()
    assert wait_answered(admin, [done], 5.0)  # type: ignore[arg-type]
    assert admin.lookups == []


def test_a_request_waiting_for_a_controller_goes_once_it_is_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(answers, "LOOK_UP_AFTER_S", 0.05)
    pending: Future[Any] = Future()
    admin = Admin(pending)
    assert wait_answered(admin, [pending], 30.0)  # type: ignore[arg-type]
    assert pending.result() == "answered"
    assert len(admin.lookups) == 1


def test_unanswered_it_gives_up_at_its_timeout_lookups_failing_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(answers, "LOOK_UP_AFTER_S", 0.05)
    never: Future[Any] = Future()
    admin = Admin(fails=True)
    assert not wait_answered(admin, [never], 0.3)  # type: ignore[arg-type]
    assert len(admin.lookups) >= 2  # (asked again and again, the failures not raised)
    assert all(0 < t <= 0.05 for t in admin.lookups)  # (no lookup past the slice or the timeout)
    assert not never.done()
