"""The README's stream runtime example runs as printed: its operator through the testing
harness, and its application's arguments are the runtime's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vigil.events.base import Entities
from vigil.events.types import Alert, Payment, PaymentPayload
from vigil.hub.topics import TOPICS
from vigil.stream.app import Application
from vigil.testing import run_operators

README = Path(__file__).resolve().parents[3] / "README.md"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The stream runtime") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _payment(i: int, *, at: datetime, amount: float = 50.0) -> Payment:
    return Payment(
        event_id=f"{i:032x}",
        source="bank",
        occurred_at=at,
        entities=Entities(customer="c-1", account="a-1"),
        payload=PaymentPayload(payment_id=f"p-{i}", amount=amount, currency="USD"),
    )


def _operator_module() -> dict[str, Any]:
    operator, _ = _examples()
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(operator, f"{README}:stream runtime example", "exec"), namespace)  # noqa: S102
    return namespace


def test_the_readme_operator_alerts_from_the_tenth_payment_and_counts_a_late_one() -> None:
    velocity = _operator_module()["Velocity"]()
    # Twelve payments 20 s apart (all within 5 minutes), then one from before the watermark.
    events = [_payment(i, at=T0 + timedelta(seconds=20 * i)) for i in range(12)]
    events.append(_payment(99, at=T0))

    result = run_operators([velocity], events)

    alerts = result.emitted("alerts")
    assert [type(a) for a in alerts] == [Alert] * 3
    assert [a.payload.explanation for a in alerts] == [
        f"{n} payments totalling {50 * n:,.2f} within 5 minutes" for n in (10, 11, 12)
    ]
    assert [a.payload.evidence[0].event_id for a in alerts] == [e.event_id for e in events[9:12]]
    assert [rec.event.event_id for rec in result.late] == [events[-1].event_id]


def test_the_readme_operator_alerts_on_the_sum_and_gives_the_same_ids_again() -> None:
    velocity = _operator_module()["Velocity"]
    events = [_payment(1, at=T0, amount=6_000.0), _payment(2, at=T0 + timedelta(minutes=1), amount=4_000.0)]

    first = run_operators([velocity()], events).emitted("alerts")
    again = run_operators([velocity()], events).emitted("alerts")

    assert [a.payload.explanation for a in first] == ["2 payments totalling 10,000.00 within 5 minutes"]
    assert [a.event_id for a in again] == [a.event_id for a in first]


def test_the_readme_application_is_built_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Built from the README's own lines (but its last, which would run it), on a closed port.
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    _, application = _examples()
    lines = application.rstrip().splitlines()
    assert lines[-1].startswith("app.run()")
    namespace = _operator_module()
    exec(compile("\n".join(lines[:-1]), f"{README}:stream runtime application", "exec"), namespace)  # noqa: S102

    app = namespace["app"]
    assert isinstance(app, Application)
    assert (app.name, app.inputs, app.guarantee) == ("velocity", ["events.payments"], "exactly_once")
    # Its input and output are topics `vigil topics apply` makes: an undeclared name stops the
    # application at its start ("input topic ... does not exist").
    assert set(app.inputs) <= set(TOPICS.names())
    assert "alerts" in TOPICS.names()
    assert [op.id for op in app.operators] == ["velocity.v1"]
