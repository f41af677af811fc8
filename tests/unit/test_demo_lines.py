"""`vigil demo` prints each decision under its alert, whichever the watcher reads first.

The order records come in is the broker's (a batch holds one partition's records after
another's), so batches are handed to the watcher here as they can come; the watcher's reading
from a real broker is tested in tests/integration/test_cli_untrusted_text.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.hostile_outputs import drainer_alert_and_hold

from vigil.cli import demo
from vigil.cli._common import console
from vigil.config import Settings
from vigil.detect.eval import EvalResult, ScenarioScore
from vigil.events.codec import encode
from vigil.events.types import Alert, Decision

NOW = datetime(2026, 12, 7, tzinfo=UTC)


class Record:
    """A consumed record as the watcher reads it."""

    def __init__(self, event: Alert | Decision) -> None:
        self._value = encode(event)

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "t"

    def offset(self) -> int:
        return 0


class Batches:
    """A consumer handing out the batches queued, then nothing."""

    def __init__(self) -> None:
        self.batches: list[list[Record]] = []
        #: Set once every batch queued has been handed out.
        self.drained = threading.Event()

    def subscribe(self, topics: list[str]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        batch = self.batches.pop(0) if self.batches else []
        if not self.batches:
            self.drained.set()
        return batch

    def close(self) -> None:
        pass


def made(name: str) -> tuple[Alert, Decision]:
    return drainer_alert_and_hold(NOW, entity_id=f"0x{name}", alert_id=f"al-{name}", decision_id=f"de-{name}")


@pytest.fixture
def watcher(monkeypatch: pytest.MonkeyPatch) -> demo._AlertWatcher:
    monkeypatch.setattr(demo, "make_consumer", lambda *_a, **_k: Batches())
    monkeypatch.setattr(console, "width", 400)
    return demo._AlertWatcher(Settings(), "alerts", "decisions", quiet=False)


def _order(out: str) -> list[str]:
    """What each printed line is about: ``alert 0xa``, ``hold 0xa`` (explanations left out)."""
    said = []
    for line in out.splitlines():
        words = line.split()
        if "drainer-approval" in words:
            said.append("alert " + words[4].removeprefix("wallet:"))
        elif words and words[0] == "hold_withdrawal":
            said.append("hold " + words[1].removeprefix("wallet:"))
    return said


def test_alerts_then_their_holds_in_one_batch(watcher: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Detection sends an alert before its hold; a batch of the alerts' partition, then the
    # decisions', printed every alert and then every hold (found in review).
    (a, da), (b, db) = made("a"), made("b")
    watcher._take([Record(a), Record(b), Record(da), Record(db)])
    assert _order(capsys.readouterr().out) == ["alert 0xa", "hold 0xa", "alert 0xb", "hold 0xb"]


def test_a_hold_read_before_its_alert_waits_for_it(watcher: Any, capsys: pytest.CaptureFixture[str]) -> None:
    (a, da), (b, db) = made("a"), made("b")
    watcher._take([Record(da)])
    assert _order(capsys.readouterr().out) == []
    watcher._take([Record(b), Record(a)])
    watcher._take([Record(db)])  # its alert printed already: at once
    assert _order(capsys.readouterr().out) == ["alert 0xb", "alert 0xa", "hold 0xa", "hold 0xb"]
    # Read again (at-least-once), nothing printed twice.
    watcher._take([Record(a), Record(da)])
    assert _order(capsys.readouterr().out) == []


def test_a_hold_whose_alert_never_comes_is_printed_alone(
    watcher: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, orphan = made("orphan")
    watcher._take([Record(orphan)])
    assert _order(capsys.readouterr().out) == []
    monkeypatch.setattr(demo, "DECISION_WAITS_S", 0.0)
    watcher._take([])
    assert _order(capsys.readouterr().out) == ["hold 0xorphan"]


def test_the_holds_still_waiting_are_printed_when_it_stops(
    watcher: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, orphan = made("orphan")
    watcher._consumer.batches.append([Record(orphan)])
    watcher.start()
    assert watcher._consumer.drained.wait(10)
    watcher.stop()  # (the batch handed out is taken before the thread ends)
    assert _order(capsys.readouterr().out) == ["hold 0xorphan"]


def test_the_score_table_says_why_its_alerts_column_can_add_to_more_than_the_total() -> None:
    # A false alarm of a rule answering for two scenarios is charged to both: the column read
    # 70 against 68 alerts in the demo, with nothing to say why.
    result = EvalResult(
        scenarios={
            "account_takeover": ScenarioScore(episodes=1, alerts=2, recall=1.0, precision=0.5),
            "api_key_abuse": ScenarioScore(episodes=1, alerts=2, recall=1.0, precision=0.5),
        },
        benign_events=1000,
        false_positives=1,
        events=1002,
        alerts=3,
        decisions=0,
        seconds=1.0,
    )
    with console.capture() as captured:
        demo._summary(result, decisions=0)
    said = " ".join(captured.get().split())
    assert "3 alerts, 0 decisions" in said
    assert "an alert can count under two, so the column may add to more than the total" in said
