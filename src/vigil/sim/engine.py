"""The simulation: a population, benign life, and injected labelled episodes, merged in event time."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import random
from collections.abc import Iterator
from datetime import timedelta
from operator import attrgetter

from vigil.errors import ConfigError
from vigil.events.base import Event
from vigil.events.records import EpisodeLabel
from vigil.hub.raw import RawRecord
from vigil.sim.benign import BenignTraffic
from vigil.sim.config import SimConfig
from vigil.sim.intel import IntelLists, load_intel
from vigil.sim.market import MarketPath
from vigil.sim.population import Population, build_population
from vigil.sim.scenarios import LOOKALIKES, SCENARIOS, Episode, Scenario, World

_BY_TIME = attrgetter("occurred_at")
log = logging.getLogger(__name__)


def resolve_scenarios(names: list[str] | None) -> list[type[Scenario]]:
    if names is None:
        return list(SCENARIOS.values())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        msg = f"unknown scenario(s) {', '.join(map(repr, unknown))}; known: {', '.join(SCENARIOS)}"
        raise ConfigError(msg)
    # In the registry's order, whatever order they were named in: the scenarios pick their
    # victims in turn, and `--scenario a --scenario b` made another stream than `b` then `a`.
    chosen = set(names)
    return [cls for name, cls in SCENARIOS.items() if name in chosen]


class Simulation:
    """A deterministic simulated exchange.

    ``canonical()`` yields every event (benign and attack) sorted by ``occurred_at``; it can
    be iterated again and yields the same stream.  ``labels`` (attacks) and ``lookalikes``
    (benign look-alikes, scenario ``benign:<name>``) are known from construction on.
    """

    def __init__(self, config: SimConfig, intel: IntelLists | None = None) -> None:
        self.config = config
        self.intel = intel or load_intel(config.intel_dir)
        self.population: Population = build_population(config.seed, config.customers, self.intel)
        self.start = config.start.timestamp()
        self.span = config.span.total_seconds()
        self.market = MarketPath(config.seed, self.start, self.span)
        self.labels: list[EpisodeLabel] = []
        self.lookalikes: list[EpisodeLabel] = []
        self._episode_events: list[Event] = []
        #: What the run could not give as asked (the events a volume too small for the attacks
        #: injects anyway), also logged as warnings: for a command to show.
        self.notes: list[str] = []
        self._build_episodes()
        injected = len(self._episode_events)
        if config.total_events < injected:
            note = (
                f"asked for {config.total_events:,} events, but the attack episodes and look-alikes alone "
                f"are {injected:,}: the stream holds those {injected:,} and no benign traffic. Ask for "
                f"at least {injected:,} events (many more, for benign traffic to score against), or a "
                "lower --attack-rate / no look-alikes"
            )
            self.notes.append(note)
            log.warning("%s", note)

    # ------------------------------------------------------------------ episodes

    def _count(self, scenario: Scenario, rate: float) -> int:
        """Episodes of ``scenario``: its daily number over the span, times ``rate``.

        At the default rate and above every scenario appears at least once (a short demo run
        still shows each); below it the expected number is rounded up or down at random, by the
        seed, so that a rate of 0.01 gives rare attacks rather than one of each."""
        if rate <= 0 or scenario.amount("per_day") <= 0:
            return 0
        expected = scenario.amount("per_day") * self.span / 86400 * rate
        if rate >= 1.0:
            return max(1, round(expected))
        draw = random.Random(f"vigil-sim:{self.config.seed}:{scenario.name}:count").random()
        return math.floor(expected) + (draw < expected - math.floor(expected))

    def _build_episodes(self) -> None:
        cfg = self.config
        unknown = sorted(set(cfg.scenario_params) - set(SCENARIOS) - set(LOOKALIKES))
        for name, given in cfg.scenario_params.items():
            if name in SCENARIOS or name in LOOKALIKES:
                # Checked even when the scenario is not selected: a typo must not pass unseen.
                (SCENARIOS.get(name) or LOOKALIKES[name]).resolve(given)
        if unknown:
            names = ", ".join(map(repr, unknown))
            msg = f"parameters for unknown scenario(s) {names}; known: {', '.join([*SCENARIOS, *LOOKALIKES])}"
            raise ConfigError(msg)
        world = World(self.population, cfg.seed, self.start, self.start + self.span, self.market)
        plan: list[tuple[type[Scenario], bool]] = [(cls, False) for cls in resolve_scenarios(cfg.scenarios)]
        if cfg.lookalikes:
            plan += [(cls, True) for cls in LOOKALIKES.values()]
        events: list[Event] = []
        runs: list[tuple[Scenario, bool, int]] = []
        for cls, benign in plan:
            scenario = cls(**cfg.scenario_params.get(cls.name, {}))
            count = self._count(scenario, 1.0 if benign else cfg.attack_rate)
            runs.append((scenario, benign, count))
        self._check_span([(s.name, s.amount("length")) for s, _, n in runs if n])
        for scenario, benign, count in runs:
            place = random.Random(f"vigil-sim:{cfg.seed}:{scenario.name}:placement")
            length = scenario.amount("length")
            for index in range(count):
                room = max(0.0, self.span - length)
                t0 = self.start + self.span * 0.01 + place.random() * room * 0.95
                ep = Episode(world, scenario.name, index, t0)
                labels = scenario.build(ep)
                (self.lookalikes if benign else self.labels).extend(labels)
                events.extend(ep.events)
        events.sort(key=_BY_TIME)
        self._episode_events = events

    def _check_span(self, lengths: list[tuple[str, float]]) -> None:
        """Refuse a span shorter than a scenario to run: its episodes would all start at one
        instant and run past the end."""
        if not lengths:
            return
        name, longest = max(lengths, key=lambda nl: (nl[1], nl[0]))
        if longest <= self.span:
            return
        need = timedelta(seconds=math.ceil(longest))
        msg = (
            f"the simulated span ({timedelta(seconds=self.span)}) is shorter than scenario {name!r}, the "
            f"longest selected ({need}): ask for a --duration of at least {need}, or select shorter "
            "scenarios (--scenario NAME, --no-lookalikes) or a shorter length (--param NAME.length=SECONDS)"
        )
        raise ConfigError(msg)

    @property
    def episode_events(self) -> list[Event]:
        """Every attack and look-alike event, sorted by time."""
        return list(self._episode_events)

    # ------------------------------------------------------------------ streams

    def canonical(self) -> Iterator[Event]:
        """All events, benign and injected, in event-time order."""
        return itertools.chain.from_iterable(self.batches())

    def batches(self) -> Iterator[list[Event]]:
        """The canonical stream in consecutive time-ordered runs (one per benign time slice).

        For consumers that pay per item: a loop over each list costs less than a generator
        step per event.  Each list is the caller's: nothing else holds it, so it may be emptied
        as it is consumed (the publisher does, to free events while they are in the cache)."""
        injected = self._episode_events
        target = max(0, self.config.total_events - len(injected))
        benign = BenignTraffic(self.population, self.config.seed, self.start, self.span, target, self.market)
        j = 0
        n = len(injected)
        for _lo, hi, events in benign.slices():
            k = j
            while k < n and injected[k].occurred_at.timestamp() < hi:
                k += 1
            # A few injected events into thousands of sorted benign ones: binary insertion
            # (after equal times, as a stable sort of benign + injected would place them).
            for event in injected[j:k]:
                bisect.insort_right(events, event, key=_BY_TIME)
            j = k
            if events:
                yield events
        if j < n:
            yield injected[j:]

    def native(self) -> Iterator[tuple[str, RawRecord]]:
        """The same stream in each source's native shape: ``(raw topic, record)``."""
        from vigil.sim.native import NativeEncoder

        encoder = NativeEncoder(self.population, self.config.seed)
        for event in self.canonical():
            yield from encoder.encode(event)
        yield from encoder.flush()
