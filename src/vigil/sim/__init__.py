"""The traffic simulator: an exchange in a box, with injected, labelled attacks.

    from vigil.sim import SimConfig, Simulation, SCENARIOS
    sim = Simulation(SimConfig(seed=7, customers=2000, events=200_000))
    for event in sim.canonical():      # canonical events, benign + attacks, by occurred_at
        ...
    sim.labels, sim.lookalikes, sim.population
    for topic, raw in sim.native():    # the same stream in each source's native shape
        ...

The simulator knows only :mod:`vigil.events` and :mod:`vigil.hub`.
"""

from vigil.sim.config import SimConfig
from vigil.sim.engine import Simulation
from vigil.sim.scenarios import LOOKALIKES, SCENARIOS

__all__ = ["LOOKALIKES", "SCENARIOS", "SimConfig", "Simulation"]
