"""Scenarios named in any order make the same stream."""

from __future__ import annotations

from vigil.events.codec import encode
from vigil.sim import SimConfig, Simulation


def test_the_order_scenarios_are_named_in_changes_nothing() -> None:
    # Built in the order given, the scenarios picked their victims in another order: another
    # stream, other victims.
    def run(names: list[str]) -> tuple[list[bytes], list[tuple[str, str]]]:
        sim = Simulation(SimConfig(seed=7, customers=40, events=5_000, attack_rate=3.0, scenarios=names))
        return [encode(e) for e in sim.canonical()], sorted((lb.scenario, lb.entity.id) for lb in sim.labels)

    assert run(["account_takeover", "loyalty_theft", "api_key_abuse"]) == run(
        ["api_key_abuse", "loyalty_theft", "account_takeover"]
    )
