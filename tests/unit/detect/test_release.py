"""Releasing an alert's decisions (vigil.detect.release): what is released, what is not, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vigil.detect.release import MIN_ID_PREFIX, plan, release_id
from vigil.errors import ConfigError
from vigil.events.base import Entities
from vigil.events.ids import stable_id
from vigil.events.types import Decision, DecisionAction, DecisionPayload, EntityRef

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
ALERT = stable_id("sanctioned-exposure", "c1", prefix="alert-")
OTHER = stable_id("poisoning-withdrawal", "c2", prefix="alert-")


def decided(
    action: DecisionAction,
    alert: str = ALERT,
    *,
    withdrawal: str | None = "w1",
    expires: datetime | None = None,
    customer: str = "c1",
) -> Decision:
    return Decision(
        event_id=stable_id(alert, action, withdrawal or "", prefix="decision-"),
        source="vigil.detect",
        occurred_at=NOW - timedelta(hours=1),
        entities=Entities(customer=customer),
        payload=DecisionPayload(
            action=action,
            entity=EntityRef(kind="customer", id=customer),
            rule_id="sanctioned-exposure",
            alert_id=alert,
            reason="Sanctioned exposure (sanctioned-exposure v1, severity critical)",
            withdrawal_id=withdrawal,
            expires_at=expires,
        ),
    )


def test_each_standing_decision_of_the_alert_is_released_once_saying_who_and_why() -> None:
    hold, step_up = decided("hold_withdrawal"), decided("require_step_up", withdrawal=None)
    elsewhere = decided("hold_withdrawal", OTHER, customer="c2")
    got = plan([hold, elsewhere, step_up, hold], ALERT, by=" alice ", reason=" called the customer ", now=NOW)
    assert got.alert_id == ALERT
    assert [r.event_id for r in got.releases] == [release_id(hold), release_id(step_up)]
    first = got.releases[0]
    assert first.occurred_at == NOW
    assert first.entities == hold.entities
    p = first.payload
    assert (p.action, p.entity, p.rule_id, p.alert_id, p.withdrawal_id, p.expires_at) == (
        "release",
        hold.payload.entity,
        "sanctioned-exposure",
        ALERT,
        "w1",
        None,
    )
    assert p.reason == "released by alice: called the customer"
    assert first.key() == hold.key()  # (the same partition: read after what it releases)
    assert got.released == []
    assert got.expired == []


def test_the_start_of_an_alert_id_as_lines_show_it_is_enough_when_it_names_one() -> None:
    hold = decided("hold_withdrawal")
    got = plan([hold], ALERT[:MIN_ID_PREFIX], by="alice", reason="ok", now=NOW)
    assert [r.payload.alert_id for r in got.releases] == [ALERT]
    with pytest.raises(ConfigError, match="too short: give the whole id, or at least its first 18"):
        plan([hold], ALERT[: MIN_ID_PREFIX - 1], by="alice", reason="ok", now=NOW)
    twin = ALERT[:MIN_ID_PREFIX] + "f" * (len(ALERT) - MIN_ID_PREFIX)
    with pytest.raises(ConfigError, match=f"starts 2 alert ids .*{twin}.*: give more of it"):
        plan([hold, decided("block", twin)], ALERT[:MIN_ID_PREFIX], by="alice", reason="ok", now=NOW)


def test_an_alert_no_decision_names_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=f"no decision names alert '{OTHER}'"):
        plan([decided("hold_withdrawal")], OTHER, by="alice", reason="ok", now=NOW)


def test_a_decision_released_before_is_said_and_not_released_again() -> None:
    hold, block = decided("hold_withdrawal"), decided("block", withdrawal=None)
    (earlier,) = plan([hold], ALERT, by="bob", reason="first", now=NOW).releases
    got = plan([hold, earlier, block], ALERT, by="alice", reason="again", now=NOW + timedelta(hours=1))
    assert got.released == [(hold, earlier)]
    assert [r.payload.withdrawal_id for r in got.releases] == [None]  # the block alone
    # Released before by its id, whoever sent it: the same release is one downstream.
    assert plan([hold], ALERT, by="carol", reason="x", now=NOW).releases[0].event_id == earlier.event_id


def test_a_lapsed_decision_is_said_and_not_released() -> None:
    lapsed = decided("hold_withdrawal", expires=NOW - timedelta(seconds=1))
    standing = decided("require_step_up", withdrawal=None, expires=NOW + timedelta(hours=1))
    got = plan([lapsed, standing], ALERT, by="alice", reason="ok", now=NOW)
    assert got.expired == [lapsed]
    assert [r.payload.alert_id for r in got.releases] == [ALERT]
    assert got.releases[0].event_id == release_id(standing)


def test_a_release_is_never_itself_released() -> None:
    hold = decided("hold_withdrawal")
    (release,) = plan([hold], ALERT, by="alice", reason="ok", now=NOW).releases
    # Only the release of the alert on the topic (its hold compacted or deleted): nothing to do.
    with pytest.raises(ConfigError, match="no decision names alert"):
        plan([release], ALERT, by="alice", reason="ok", now=NOW)


@pytest.mark.parametrize(
    ("by", "reason", "said"),
    [("", "ok", "who releases it"), ("  ", "ok", "who releases it"), ("alice", " ", "needs a reason")],
)
def test_who_and_why_are_required(by: str, reason: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        plan([decided("hold_withdrawal")], ALERT, by=by, reason=reason, now=NOW)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC-aware"):
        plan([decided("hold_withdrawal")], ALERT, by="alice", reason="ok", now=datetime(2026, 3, 2))  # noqa: DTZ001
