"""On Kafka the detect stages process records in the order they come (aligned: the route stage's
release order; the detect stage: the routed topic's log, one partition a key), not sorted a batch
at a time.  Sorted, a threshold's evidence, and the alert's id with it, hung on where batches were
cut: a restart or a replay sent the same attack again under another id, which downstream dedup
could not drop."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.detect.app import DetectionService
from vigil.detect.engine import ALERTS_TOPIC, DetectOperator, RuleSet
from vigil.detect.rules.validate import load_rules
from vigil.errors import TopicError
from vigil.events.base import Entities, Event
from vigil.events.types import FailedLogin, FailedLoginPayload
from vigil.testing import run_operators

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _routed_log() -> list[Event]:
    """Failed logins from three IPs as two route processes wrote them to one routed partition:
    each in event-time order, the two interleaved up to ten minutes apart (within the lateness
    rules take)."""
    rng = random.Random(11)
    writers: list[list[Event]] = [[], []]
    for n in range(360):
        ip = f"203.0.113.{n % 3}"
        at = T0 + timedelta(seconds=n * 7 + rng.randint(0, 6))
        event = FailedLogin(
            event_id=f"f{n:04d}",
            source="backend",
            occurred_at=at,
            entities=Entities(ip=ip),
            payload=FailedLoginPayload(username=f"user{rng.randint(0, 40)}", reason="bad_password"),
        )
        writers[rng.random() < 0.5].append(event)
    log: list[Event] = []
    while writers[0] or writers[1]:
        # The second writer runs up to ten minutes of event time behind the first.
        ahead = writers[0] and (
            not writers[1] or writers[0][0].occurred_at <= writers[1][0].occurred_at + timedelta(minutes=10)
        )
        log.append((writers[0] if ahead else writers[1]).pop(0))
    return log


def _alert_ids(order_batches: bool, batch_size: int) -> list[str]:
    rules = [r for r in load_rules([ROOT / "rules"]) if r.id == "credential-stuffing"]
    op = DetectOperator(RuleSet(rules), routed=False, order_batches=order_batches)
    result = run_operators([op], _routed_log(), batch_size=batch_size, checkpoints=False)
    return [a.event_id for a in result.emitted(ALERTS_TOPIC)]


def test_records_processed_as_they_come_make_the_same_alerts_however_batches_are_cut() -> None:
    cuts = {size: _alert_ids(False, size) for size in (500, 50, 7)}
    assert cuts[500]
    assert cuts[500] == cuts[50] == cuts[7]
    # Sorted a batch at a time, the same records gave alerts of other ids (the test's input is
    # disordered enough to tell).
    assert _alert_ids(True, 500) != _alert_ids(True, 50)


def test_only_an_unaligned_route_stage_sorts_its_batches(tmp_path: Path) -> None:
    # Built, not started: nothing to connect to.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    aligned = DetectionService(settings, [])
    assert (aligned.router.order_batches, aligned.local_detector.order_batches) == (False, False)
    assert aligned.detector.order_batches is False
    unaligned = DetectionService(settings, [], event_time_skew_s=None)
    assert (unaligned.router.order_batches, unaligned.local_detector.order_batches) == (True, True)
    assert unaligned.detector.order_batches is False  # the routed log's order, one partition a key


def test_a_stage_refusing_with_a_reason_of_its_own_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `vigil detect` before `vigil topics apply`: the missing topic was printed with a Python
    # traceback, then once more as the command's error.  An unexpected failure keeps its traceback.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    service = DetectionService(settings, [])
    caplog.set_level(logging.DEBUG, logger="vigil.detect.app")

    class Stage:
        """A stage whose run fails as ``error`` says (what _run is handed is the application)."""

        def __init__(self, name: str, error: BaseException) -> None:
            self.name, self.error = name, error

        def run(self) -> None:
            raise self.error

    service._run(Stage("detect-route", TopicError("topic 'events.identity' does not exist")))  # type: ignore[arg-type]
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [
        (logging.ERROR, False),
        (logging.DEBUG, True),
    ]
    assert "topic 'events.identity' does not exist" in caplog.records[0].getMessage()
    # A home that cannot be used (a path under a file) says so itself too: two tracebacks, one a
    # stage, were printed before the command's one line (found in review).
    caplog.clear()
    home = NotADirectoryError(20, "Not a directory", str(tmp_path / "a-file" / "home"))
    service._run(Stage("detect", home))  # type: ignore[arg-type]
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [
        (logging.ERROR, False),
        (logging.DEBUG, True),
    ]
    assert "Not a directory" in caplog.records[0].getMessage()
    service._run(Stage("detect", RuntimeError("a bug")))  # type: ignore[arg-type]
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].exc_info is not None
    assert [type(f) for f in service.failures] == [TopicError, NotADirectoryError, RuntimeError]
