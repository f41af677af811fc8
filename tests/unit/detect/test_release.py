"""Releasing an alert's decisions (vigil.detect.release): what is released, what is not, and why."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from vigil.detect.release import MIN_ID_PREFIX, Finder, Request, checked, plan, release_id
from vigil.errors import ConfigError
from vigil.events.base import Entities
from vigil.events.ids import stable_id
from vigil.events.types import Decision, DecisionAction, DecisionPayload, EntityRef, Release

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
    """A decision as detection makes it (alerts.make_decision): one per alert."""
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


def found(alert: str, decisions: Sequence[Decision], releases: Iterable[Release] = ()) -> Finder:
    out = Finder(alert)
    for d in decisions:
        out.decision(d)
    for d in decisions:  # (the second reading, as vigil release makes it)
        out.other(d)
    for r in releases:
        out.release(r)
    return out


def ask(alert: str = ALERT, by: str = "alice", reason: str = "called the customer") -> Request:
    return checked(alert, by, reason)


def test_the_alerts_decision_is_released_naming_it_who_and_why() -> None:
    hold = decided("hold_withdrawal")
    elsewhere = decided("hold_withdrawal", OTHER, withdrawal="w2", customer="c2")
    got = plan(found(ALERT, [hold, elsewhere, hold]), checked(ALERT, " alice ", " called "), NOW)
    assert got.alert_id == ALERT
    (release,) = got.releases  # (the hold read twice, a replay's copy: one release)
    assert release.event_id == release_id(hold)
    assert release.source == "vigil.release"
    assert release.occurred_at == NOW
    assert release.entities == hold.entities
    assert release.key() == hold.key()
    p = release.payload
    assert (p.decision_id, p.action, p.entity, p.rule_id, p.alert_id, p.withdrawal_id) == (
        hold.event_id,
        "hold_withdrawal",
        hold.payload.entity,
        "sanctioned-exposure",
        ALERT,
        "w1",
    )
    assert (p.released_by, p.reason) == ("alice", "called")
    assert got.released == []
    assert got.expired == []
    assert got.still_held == []


def test_the_start_of_an_alert_id_as_lines_show_it_is_enough_when_it_names_one() -> None:
    hold = decided("hold_withdrawal")
    got = plan(found(ALERT[:MIN_ID_PREFIX], [hold]), ask(ALERT[:MIN_ID_PREFIX]), NOW)
    assert [r.payload.alert_id for r in got.releases] == [ALERT]
    twin = ALERT[:MIN_ID_PREFIX] + "f" * (len(ALERT) - MIN_ID_PREFIX)
    with pytest.raises(ConfigError, match=f"starts 2 alert ids .*{twin}.*: give more of it"):
        plan(found(ALERT[:MIN_ID_PREFIX], [hold, decided("block", twin)]), ask(ALERT[:MIN_ID_PREFIX]), NOW)


def test_an_alert_no_decision_names_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=f"no decision names alert '{OTHER}'"):
        plan(found(OTHER, [decided("hold_withdrawal")]), ask(OTHER), NOW)


def test_a_decision_released_before_is_said_with_its_first_release_and_not_released_again() -> None:
    hold = decided("hold_withdrawal")
    (first,) = plan(found(ALERT, [hold]), ask(by="alice", reason="first"), NOW).releases
    (second,) = plan(found(ALERT, [hold]), ask(by="bob", reason="second"), NOW).releases
    assert second.event_id == first.event_id  # (one release downstream, whoever sent it)
    # Two analysts at once: both sent, the same id; downstream keeps the first, and so is it said.
    got = plan(found(ALERT, [hold], [first, second]), ask(by="carol"), NOW + timedelta(hours=1))
    assert got.released == [(hold, first)]
    assert got.releases == []


def test_a_lapsed_decision_is_said_and_not_released() -> None:
    lapsed = decided("hold_withdrawal", expires=NOW - timedelta(seconds=1))
    got = plan(found(ALERT, [lapsed]), ask(), NOW)
    assert got.expired == [lapsed]
    assert got.releases == []
    standing = decided("hold_withdrawal", expires=NOW + timedelta(seconds=1))
    (release,) = plan(found(ALERT, [standing]), ask(), NOW).releases
    assert release.payload.decision_id == standing.event_id


def test_another_alerts_standing_hold_on_the_withdrawal_is_said_to_stand() -> None:
    hold = decided("hold_withdrawal")
    also = decided("hold_withdrawal", OTHER)  # the same withdrawal w1, another alert
    lapsed = decided("hold_withdrawal", stable_id("x", prefix="alert-"), expires=NOW - timedelta(hours=1))
    unrelated = decided("hold_withdrawal", stable_id("y", prefix="alert-"), withdrawal="w9")
    got = plan(found(ALERT, [hold, also, lapsed, unrelated]), ask(), NOW)
    assert len(got.releases) == 1
    assert got.still_held == [also]
    (released_also,) = plan(found(OTHER, [also]), ask(OTHER), NOW).releases
    assert plan(found(ALERT, [hold, also], [released_also]), ask(), NOW).still_held == []


def test_another_alerts_block_of_the_customer_stands_too_and_a_step_up_stops_nothing() -> None:
    hold = decided("hold_withdrawal")
    block = decided("block", stable_id("b", prefix="alert-"), withdrawal=None)
    step_up = decided("require_step_up", stable_id("s", prefix="alert-"), withdrawal=None)
    elsewhere = decided("block", stable_id("e", prefix="alert-"), withdrawal=None, customer="c2")
    got = plan(found(ALERT, [hold, block, step_up, elsewhere]), ask(), NOW)
    assert got.still_held == [block]


def test_holds_of_every_withdrawal_of_the_customer_stand_too() -> None:
    # A hold naming no withdrawal (a sanctions hold on a deposit) stops every withdrawal of its
    # entity, as a block does: said whichever of them is released (found in review: missed).
    hold = decided("hold_withdrawal")
    whole = decided("hold_withdrawal", stable_id("w", prefix="alert-"), withdrawal=None)
    assert plan(found(ALERT, [hold, whole]), ask(), NOW).still_held == [whole]
    block = decided("block", withdrawal=None)
    other_block = decided("block", stable_id("b", prefix="alert-"), withdrawal=None)
    assert plan(found(ALERT, [block, other_block]), ask(), NOW).still_held == [other_block]
    own_whole = decided("hold_withdrawal", withdrawal=None)
    other_one = decided("hold_withdrawal", stable_id("o", prefix="alert-"), withdrawal="w7")
    assert plan(found(ALERT, [own_whole, other_one]), ask(), NOW).still_held == [other_one]
    # A step-up stops nothing, nor is anything said to stand when only one is released.
    step_up = decided("require_step_up", withdrawal=None)
    assert plan(found(ALERT, [step_up, other_block]), ask(), NOW).still_held == []


def test_a_release_decision_of_earlier_versions_is_no_decision_to_release() -> None:
    # (The `release` action of a decision, written by nothing today: not a hold to let go.)
    earlier = decided("release")
    with pytest.raises(ConfigError, match="no decision names alert"):
        plan(found(ALERT, [earlier]), ask(), NOW)


@pytest.mark.parametrize(
    ("alert", "by", "reason", "said"),
    [
        (ALERT[: MIN_ID_PREFIX - 1], "alice", "ok", "too short: give the whole id, or at least its first 18"),
        (ALERT, "", "ok", "a release needs --by: who releases it"),
        (ALERT, "  ", "ok", "a release needs --by"),
        (ALERT, "alice", " ", "a release needs --reason: why"),
        (ALERT, "a" * 101, "ok", "--by is 101 characters long; at most 100"),
        (ALERT, "alice", "r" * 1001, "--reason is 1,001 characters long; at most 1,000"),
        (ALERT, "alice\nreleased by mallory", "ok", r"--by holds a control character \('\\n' at 5\)"),
        (ALERT, "alice", "ok\x1b[2J", r"--reason holds a control character \('\\x1b' at 2\)"),
    ],
)
def test_a_request_is_checked_before_anything_is_read(alert: str, by: str, reason: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        checked(alert, by, reason)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC-aware"):
        plan(found(ALERT, [decided("hold_withdrawal")]), ask(), datetime(2026, 3, 2))  # noqa: DTZ001
