"""One small simulation shared by the simulator's unit tests (built once: generation is the slow part)."""

from __future__ import annotations

import pytest

from vigil.events.base import Event
from vigil.sim import SimConfig, Simulation


@pytest.fixture(scope="package")
def sim() -> Simulation:
    return Simulation(SimConfig(seed=11, customers=400, events=30_000))


@pytest.fixture(scope="package")
def stream(sim: Simulation) -> list[Event]:
    return list(sim.canonical())
