"""What a simulation is asked to produce: seed, size, span, scenarios and intel location."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vigil.config import shared_data_dir
from vigil.errors import ConfigError

#: Benign events per customer per simulated day when only a duration is given.
EVENTS_PER_CUSTOMER_DAY = 60
DEFAULT_SPAN = timedelta(days=1)
DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)


def default_data_dir() -> Path:
    """The shared data directory (see :func:`vigil.config.shared_data_dir`)."""
    return shared_data_dir()


@dataclass(frozen=True)
class SimConfig:
    """A simulation request.

    ``events`` is the total number of events (benign and attack); ``duration`` the simulated
    span.  Given only ``events`` the span is one day; given only ``duration`` the volume is
    :data:`EVENTS_PER_CUSTOMER_DAY` per customer per day.  ``scenarios`` of ``None`` means
    every registered scenario; ``attack_rate`` multiplies each scenario's default number of
    episodes (0 disables attacks; at 1 and above each scenario appears at least once, below 1
    the expected number is rounded at random by the seed).  ``scenario_params`` overrides
    scenarios' parameters by scenario name, then parameter name (see ``Scenario.defaults``).
    ``data_dir`` holds ``intel/ofac`` and ``intel/scamsniffer``.
    """

    seed: int = 7
    customers: int = 2000
    events: int | None = 100_000
    duration: timedelta | None = None
    start: datetime = DEFAULT_START
    scenarios: list[str] | None = None
    attack_rate: float = 1.0
    lookalikes: bool = True
    data_dir: Path | None = None
    scenario_params: Mapping[str, Mapping[str, int | float | str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            msg = f"SimConfig.start must be a UTC-aware datetime; got {self.start!r}"
            raise ConfigError(msg)
        if self.customers < 10:
            msg = f"SimConfig.customers must be at least 10 (scenarios need victims); got {self.customers}"
            raise ConfigError(msg)
        if self.events is not None and self.events < 0:
            msg = f"SimConfig.events must be >= 0; got {self.events}"
            raise ConfigError(msg)
        if self.duration is not None and self.duration <= timedelta(0):
            msg = f"SimConfig.duration must be positive; got {self.duration}"
            raise ConfigError(msg)
        if self.attack_rate < 0:
            msg = f"SimConfig.attack_rate must be >= 0; got {self.attack_rate}"
            raise ConfigError(msg)

    @property
    def span(self) -> timedelta:
        return self.duration if self.duration is not None else DEFAULT_SPAN

    @property
    def total_events(self) -> int:
        if self.events is not None:
            return self.events
        return int(self.customers * EVENTS_PER_CUSTOMER_DAY * self.span / timedelta(days=1))

    @property
    def intel_dir(self) -> Path:
        return (self.data_dir or default_data_dir()) / "intel"
