"""Labels that say what the attack was, placement that does not stack episodes, and no attack
told apart by a value only attacks give."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vigil.errors import ConfigError
from vigil.events.base import Event
from vigil.sim import SimConfig, Simulation
from vigil.sim import benign as benign_traffic
from vigil.sim.scenarios.base import ATTACK_DECLINE_REASONS, Episode, World

#: What benign traffic declares (empty while it gives insufficient_funds alone).
DECLINE_REASONS: dict[str, float] = dict(getattr(benign_traffic, "DECLINE_REASONS", {}) or {})


def test_the_supply_chain_breach_label_holds_the_vendor_side_and_each_takeover_its_own(
    sim: Simulation, stream: list[Event]
) -> None:
    by_id = {e.event_id: e for e in stream}
    breaches = [lb for lb in sim.labels if lb.scenario == "supply_chain_compromise"]
    assert breaches
    for breach in breaches:
        takeovers = [lb for lb in sim.labels if lb.params.get("parent_episode") == breach.episode_id]
        assert takeovers
        assert all(lb.scenario == "account_takeover" for lb in takeovers)
        assert sorted(lb.entity.id for lb in takeovers) == sorted(breach.params["victims"].split(","))
        # The breach names no victim, and holds none of their takeovers' events.
        assert not [r for r in breach.related if r.kind == "customer"]
        mine = set(breach.event_ids)
        for lb in takeovers:
            assert mine.isdisjoint(lb.event_ids)
            # Its window runs to the last consequence.
            assert lb.end <= breach.end
        kinds = {by_id[i].type for i in breach.event_ids}
        assert kinds <= {
            "crm_api_token_used",
            "crm_record_export",
            "email_campaign_sent",
            "email_link_clicked",
        }
        assert {"crm_api_token_used", "crm_record_export", "email_campaign_sent"} <= kinds
        victims = {lb.entity.id for lb in takeovers}
        clicks = [by_id[i] for i in breach.event_ids if by_id[i].type == "email_link_clicked"]
        assert not [e for e in clicks if e.entities.customer in victims]
        # Every event the episode made is in one of its labels.
        made = {e.event_id for e in sim.episode_events if e.event_id in mine}
        assert made == mine


def _values(sim: Simulation, stream: list[Event]) -> tuple[dict[str, set[Any]], dict[str, set[Any]]]:
    attack_ids = {i for lb in sim.labels for i in lb.event_ids}
    look_ids = {i for lb in sim.lookalikes for i in lb.event_ids}
    fields = {
        "failed_login": "reason",
        "payment": "decline_reason",
        "email_link_clicked": "campaign_id",
        "email_campaign_sent": "campaign_id",
    }
    attack: dict[str, set[Any]] = {k: set() for k in fields}
    benign: dict[str, set[Any]] = {k: set() for k in fields}
    for e in stream:
        name = fields.get(e.type)
        if name is None or e.event_id in look_ids:
            continue
        (attack if e.event_id in attack_ids else benign)[e.type].add(getattr(e.payload, name))
    return attack, benign


def test_no_reason_or_campaign_id_is_given_by_attacks_alone(sim: Simulation, stream: list[Event]) -> None:
    # Phishing clicks carried campaign ids "cmp-x<episode>" (benign ones "cmp-<day>"); failed
    # logins other than bad_password and declines other than insufficient_funds were attacks'.
    attack, benign = _values(sim, stream)
    for kind in attack:
        assert attack[kind], kind
        assert attack[kind] <= benign[kind], kind
    # And none that benign traffic gives only rarely.
    assert set(ATTACK_DECLINE_REASONS) - {"insufficient_funds"} <= set(DECLINE_REASONS) or not DECLINE_REASONS
    assert all(DECLINE_REASONS.get(r, 1.0) >= 0.05 for r in ATTACK_DECLINE_REASONS)
    assert all(re.fullmatch(r"cmp-\d+", c) for c in attack["email_link_clicked"])


def _world(sim: Simulation, hours: float = 24.0) -> World:
    start = sim.start
    return World(sim.population, 1, start, start + hours * 3600, sim.market)


def test_working_hours_placement_draws_a_time_inside_the_hours_and_the_run(sim: Simulation) -> None:
    world = _world(sim)
    work = frozenset(range(8, 18))
    starts = []
    for i in range(40):
        ep = Episode(world, "x", i, world.start + 2 * 3600 + i)  # 02:00, outside the hours
        t = ep.within(work, ep.t0, length=600)
        assert ep.hour_of(t) in work
        assert world.start <= t <= world.end - 600
        starts.append(t)
    # Not the top of the next hour plus a minute for all: spread over the working day.
    assert len(set(starts)) == len(starts)
    assert max(starts) - min(starts) > 4 * 3600
    assert len({int(t % 3600) for t in starts}) > 10
    # Late in the run with no working hours left: the last ones before, not past the end.
    ep = Episode(world, "x", 99, world.start + 22 * 3600)
    t = ep.within(work, ep.t0, length=600)
    assert ep.hour_of(t) in work
    assert t <= world.end - 600
    # At night: outside the hours, and inside the run.
    ep = Episode(world, "x", 100, world.start + 12 * 3600)
    t = ep.within(work, ep.t0, inside=False, length=1500)
    assert ep.hour_of(t) not in work
    assert world.start <= t <= world.end - 1500
    # Already inside: kept.
    ep = Episode(world, "x", 101, world.start + 10 * 3600)
    assert ep.within(work, ep.t0) == ep.t0


def test_staff_episodes_neither_stack_nor_share_an_employee_nor_outlast_the_run() -> None:
    for seed in (1, 2, 3):
        cfg = SimConfig(
            seed=seed, customers=2000, events=5_000, scenarios=["insider_export"], attack_rate=3.0
        )
        sim = Simulation(cfg)
        end = cfg.start + cfg.span
        staff = [
            lb
            for lb in sim.labels + sim.lookalikes
            if lb.scenario in ("insider_export", "benign:employee_report", "benign:cold_storage_sweep")
        ]
        assert len(staff) >= 5
        starts = [lb.start for lb in staff]
        assert len(set(starts)) == len(starts), seed
        assert all(cfg.start <= lb.start and lb.end <= end for lb in staff), seed
        exporters = [
            lb.entity.id for lb in staff if lb.scenario in ("insider_export", "benign:employee_report")
        ]
        assert len(set(exporters)) == len(exporters), seed
        assert all(lb.start.minute != 1 or lb.start.second != 0 for lb in staff)


def test_a_span_shorter_than_a_scenario_is_refused_naming_the_longest() -> None:
    with pytest.raises(ConfigError, match=r"shorter than scenario 'structuring'.*at least 12:00:00"):
        Simulation(SimConfig(customers=50, events=None, duration=timedelta(hours=2)))
    with pytest.raises(ConfigError, match=r"'benign:traveller'.*at least 1:00:00"):
        Simulation(
            SimConfig(customers=50, events=None, duration=timedelta(minutes=40), scenarios=["card_testing"])
        )
    # Long enough, or the long ones not selected: fine.
    Simulation(
        SimConfig(
            customers=50,
            events=None,
            duration=timedelta(hours=1),
            scenarios=["card_testing"],
            lookalikes=False,
        )
    )


def test_fewer_events_than_the_attacks_inject_is_said_with_the_minimum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = SimConfig(seed=2, customers=50, events=10, scenarios=["card_testing"], lookalikes=False)
    with caplog.at_level(logging.WARNING, logger="vigil.sim.engine"):
        sim = Simulation(cfg)
    injected = len(sim.episode_events)
    assert injected > 10
    assert len(sim.notes) == 1
    assert f"at least {injected:,} events" in sim.notes[0]
    assert sim.notes[0] in caplog.text
    ok = Simulation(
        SimConfig(seed=2, customers=50, events=5_000, scenarios=["card_testing"], lookalikes=False)
    )
    assert ok.notes == []


def test_placement_is_deterministic() -> None:
    def fingerprint() -> list[tuple[str, datetime, datetime]]:
        sim = Simulation(SimConfig(seed=4, customers=300, events=3_000, attack_rate=1.0))
        return [(lb.episode_id, lb.start, lb.end) for lb in sim.labels + sim.lookalikes]

    first = fingerprint()
    assert first == fingerprint()
    assert all(t.tzinfo == UTC for _, t, _ in first)
