"""The scenario interface: a named, parameterised generator of one labelled episode.

A scenario is given an :class:`Episode` (its own seeded generator, id namespace, start
time and the shared population) and builds the episode's events through
``ep.make``; it returns the ground-truth labels (usually one; a supply-chain
compromise also labels the account takeovers it leads to).  Scenarios never pick
entities that do not exist: victims, employees, vendors and wallets come from the
population, and what attackers bring (their IPs, devices, fresh addresses) is named in
the label's ``related`` list.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from vigil.errors import ConfigError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.records import EpisodeLabel
from vigil.events.types import EntityRef, Geo
from vigil.sim.benign import DECLINE_REASONS, FAILED_LOGIN_REASONS
from vigil.sim.factory import Make, at
from vigil.sim.market import MarketPath
from vigil.sim.population import (
    ATTACKER_PLACES,
    USER_AGENTS,
    Customer,
    Employee,
    Place,
    Population,
    evm_address,
    hex_id,
    ip_in,
)


@dataclass
class World:
    """What every episode shares: the population, the time frame, and who is already a victim."""

    pop: Population
    seed: int
    start: float
    end: float
    #: The prices benign traffic quotes: episodes trade at them (and may move them).
    market: MarketPath
    used: set[str] = field(default_factory=set)

    def pick_customer(self, rng: random.Random, ok: Callable[[Customer], bool] | None = None) -> Customer:
        """A customer no other episode uses (so labels do not overlap), satisfying ``ok``."""
        custs = self.pop.customers
        for _ in range(200):
            c = custs[rng.randrange(len(custs))]
            if c.id not in self.used and (ok is None or ok(c)):
                self.used.add(c.id)
                return c
        # Small populations: allow reuse rather than fail.
        return custs[rng.randrange(len(custs))]

    def pick_employee(self, rng: random.Random, ok: Callable[[Employee], bool] | None = None) -> Employee:
        """A member of staff satisfying ``ok`` whom no other episode uses, if one is left (else
        any who satisfies it: staff are few)."""
        staff = [e for e in self.pop.employees if ok is None or ok(e)] or list(self.pop.employees)
        free = [e for e in staff if e.id not in self.used]
        e = rng.choice(free or staff)
        self.used.add(e.id)
        return e


#: The reasons attacks give, by their own shares: a failed login in credential stuffing (other
#: than an unknown user's) or a takeover, and a declined card in card testing.
ATTACK_FAILED_LOGIN_REASONS: Mapping[str, float] = {
    "bad_password": 0.85,
    "captcha": 0.08,
    "locked": 0.04,
    "mfa_failed": 0.03,
}
#: (Only values common in benign traffic too: one benign declines rarely, such as "stolen_card",
#: would be nearly as telling as one of the attacks' own.)
ATTACK_DECLINE_REASONS: Mapping[str, float] = {
    "do_not_honor": 0.35,
    "incorrect_cvc": 0.20,
    "insufficient_funds": 0.20,
    "expired_card": 0.10,
    "card_velocity_exceeded": 0.10,
    "card_not_supported": 0.05,
}
#: The reason values benign traffic always gives (the fallbacks below).
BAD_PASSWORD = "bad_password"  # noqa: S105 (a failed-login reason, no secret)
INSUFFICIENT_FUNDS = "insufficient_funds"


#: The reasons benign traffic gives (an attack draws only from these).
BENIGN_FAILED_LOGIN_REASONS = frozenset(FAILED_LOGIN_REASONS)
BENIGN_DECLINE_REASONS = frozenset(DECLINE_REASONS)


def draw_reason(rng: random.Random, table: Mapping[str, float], benign: frozenset[str], fallback: str) -> str:
    """A reason from ``table`` by its shares, among those benign traffic also gives (``benign``):
    a value only attacks gave would label them on its own.  ``fallback`` when none is.  One draw
    of ``rng`` whatever the tables."""
    names = sorted(n for n in table if n in benign)
    x = rng.random()
    if not names:
        return fallback
    total = sum(table[n] for n in names)
    acc = 0.0
    for n in names:
        acc += table[n] / total
        if x < acc:
            return n
    return names[-1]


def campaign_id(ts: float) -> str:
    """The id benign traffic gives the e-mail campaign of the day ``ts`` falls in (``cmp-<day>``,
    days since the epoch): phishing clicks and campaigns carry one like it, so the id does not
    tell an attack (the link's domain does)."""
    return f"cmp-{int(ts // 86400)}"


@dataclass
class Attacker:
    place: Place
    ip: str
    device: str
    user_agent: str

    @property
    def geo(self) -> Geo:
        return self.place.geo()


class Episode:
    """One episode under construction."""

    def __init__(self, world: World, scenario: str, index: int, t0: float) -> None:
        self.world = world
        self.pop = world.pop
        self.scenario = scenario
        self.index = index
        self.rng = random.Random(f"vigil-sim:{world.seed}:{scenario}:{index}")
        self.t0 = t0
        self.make = Make(world.seed, f"{scenario}:{index}", world.start)
        self.id = stable_id("vigil-sim-episode", world.seed, scenario, index)

    @property
    def events(self) -> list[Event]:
        return self.make.out

    @property
    def room(self) -> float:
        """Seconds left between the episode start and the end of the simulation."""
        return max(60.0, self.world.end - self.t0)

    def attacker(self) -> Attacker:
        rng = self.rng
        place = rng.choice(ATTACKER_PLACES)
        return Attacker(place, ip_in(rng, place), f"dev-{hex_id(rng, 10)}", rng.choice(USER_AGENTS[:4]))

    def fresh_address(self) -> str:
        return evm_address(self.rng)

    def hour_of(self, ts: float) -> int:
        return datetime.fromtimestamp(ts, UTC).hour

    def within(self, hours: frozenset[int], ts: float, *, inside: bool = True, length: float = 0.0) -> float:
        """A start for an episode of ``length`` seconds inside (or outside) ``hours`` (UTC hours).

        ``ts`` when it is one; otherwise a random time in the first stretch of such hours after
        it (or, when none is left before the run ends, the last one before it).  The episode
        stays inside the run: ``[start, end - length]``.  (With no such hours in the run at
        all, ``ts`` kept inside the run.)
        """
        lo = self.world.start
        hi = max(lo, self.world.end - length)
        ts = min(max(ts, lo), hi)
        if (self.hour_of(ts) in hours) == inside:
            return ts
        stretches: list[tuple[float, float]] = []
        h = lo - lo % 3600
        while h < hi:
            a, b = max(h, lo), min(h + 3600, hi)
            if (self.hour_of(h) in hours) == inside and b > a:
                if stretches and stretches[-1][1] >= a:
                    stretches[-1] = (stretches[-1][0], b)
                else:
                    stretches.append((a, b))
            h += 3600
        after = [s for s in stretches if s[0] >= ts]
        before = [s for s in stretches if s[1] <= ts]
        if not after and not before:
            return ts
        a, b = after[0] if after else before[-1]
        return a + self.rng.random() * (b - a)

    def label(
        self,
        entity: EntityRef,
        *,
        related: list[EntityRef] | None = None,
        events: list[Event] | None = None,
        funds_leave_at: float | None = None,
        params: dict[str, str] | None = None,
        scenario: str | None = None,
        suffix: str = "",
        until: float | None = None,
    ) -> EpisodeLabel:
        """The label of ``events`` (the episode's, by default), from the first to the last of
        them or to ``until`` if later (an episode whose consequences are others' labels)."""
        evs = events if events is not None else self.events
        times = [e.occurred_at for e in evs]
        if until is not None:
            times.append(max(max(times), at(until)))
        leave = None
        if funds_leave_at is not None:
            # The time of the event that moves the money out (chain events sit at block time).
            moves = [
                e.occurred_at
                for e in evs
                if e.type in ("withdrawal_sent", "chain_transfer")
                and e.occurred_at.timestamp() >= funds_leave_at - 1e-3
            ]
            leave = min(moves) if moves else at(funds_leave_at)
        return EpisodeLabel(
            episode_id=self.id + suffix,
            scenario=scenario or self.scenario,
            entity=entity,
            related=related or [],
            event_ids=[e.event_id for e in evs],
            start=min(times),
            end=max(times),
            funds_leave_at=leave,
            params=params or {},
        )


def ref(kind: str, id_: str) -> EntityRef:
    return EntityRef(kind=kind, id=id_)


def victim_entities(c: Customer, a: Attacker) -> Entities:
    """The victim's account as seen from the attacker's device and IP."""
    return Entities(customer=c.id, account=c.account, device=a.device, ip=a.ip, email=c.email)


#: A scenario parameter's value: a count (int) or an amount, share or rate (float).
Param = int | float


class Scenario(ABC):
    """A named attack (or benign look-alike) generator, parameterised.

    Every scenario has ``per_day`` and ``length``; ``defaults`` declares its own knobs (sizes,
    amounts, thresholds), each with the default that sets its type.  A run overrides any of
    them by name (``SimConfig.scenario_params``, ``vigil simulate --param NAME.KEY=VALUE``);
    ``build`` reads the values in force from ``self.params``.  ``min_<x>`` and ``max_<x>``
    pairs bound a draw, both ends included.
    """

    #: Stable snake_case name (``benign:<name>`` for look-alikes).
    name: ClassVar[str]
    #: Kind of the entity the detection should alert on.
    entity_kind: ClassVar[str]
    #: Episodes per simulated day at attack rate 1.
    per_day: ClassVar[float] = 2.0
    #: Typical length in seconds (used to place episodes inside the simulated span).
    length: ClassVar[float] = 3600.0
    #: The scenario's own parameters and their defaults.
    defaults: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Param | str) -> None:
        self.params = self.resolve(params)

    @classmethod
    def parameters(cls) -> dict[str, Param]:
        """Every parameter with its default."""
        return {"per_day": cls.per_day, "length": cls.length, **cls.defaults}

    @classmethod
    def resolve(cls, given: Mapping[str, Param | str]) -> dict[str, Param]:
        """The defaults with ``given`` applied; raises ConfigError naming a bad name or value."""
        known = cls.parameters()
        values = dict(known)
        for key, raw in given.items():
            if key not in known:
                msg = f"scenario {cls.name!r} has no parameter {key!r}; it has {', '.join(sorted(known))}"
                raise ConfigError(msg)
            values[key] = _parse(cls.name, key, raw, type(known[key]))
        for key in values:
            high = f"max_{key[4:]}"
            if key.startswith(("min_", "max_")) and isinstance(values[key], int) and values[key] < 1:
                msg = f"scenario {cls.name!r}: {key} must be at least 1; got {values[key]}"
                raise ConfigError(msg)
            if key.startswith("min_") and high in values and values[key] > values[high]:
                msg = f"scenario {cls.name!r}: {key} ({values[key]:g}) is above {high} ({values[high]:g})"
                raise ConfigError(msg)
        if values["length"] <= 0:
            msg = f"scenario {cls.name!r}: length must be positive seconds; got {values['length']:g}"
            raise ConfigError(msg)
        cls.check(values)
        return values

    @classmethod
    def check(cls, values: Mapping[str, Param]) -> None:
        """A scenario's own checks of its parameters together (raise ConfigError); none by default."""
        return

    def count(self, key: str) -> int:
        """A whole-number parameter."""
        return int(self.params[key])

    def amount(self, key: str) -> float:
        """A parameter as a float (amounts, shares, rates)."""
        return float(self.params[key])

    def draw(self, rng: random.Random, key: str) -> int:
        """A count between ``min_<key>`` and ``max_<key>``, both included."""
        return rng.randint(self.count(f"min_{key}"), self.count(f"max_{key}"))

    @abstractmethod
    def build(self, ep: Episode) -> list[EpisodeLabel]:
        """Build the episode's events through ``ep.make`` and return its labels."""


def _parse(scenario: str, key: str, raw: Param | str, kind: type) -> Param:
    where = f"scenario {scenario!r} parameter {key!r}"
    try:
        value: Param = int(raw) if kind is int and not isinstance(raw, float) else float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if kind is int and isinstance(value, float):
        msg = f"{where}: expected a whole number, got {raw!r}"
        raise ConfigError(msg)
    if not math.isfinite(value) or value < 0:
        msg = f"{where}: expected a number >= 0, got {raw!r}"
        raise ConfigError(msg)
    return value
