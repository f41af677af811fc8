"""Records that travel beside events: ground-truth labels and dead letters."""

from __future__ import annotations

import msgspec

from vigil.events.base import Struct, UtcDateTime
from vigil.events.types import EntityRef


class EpisodeLabel(Struct, kw_only=True, frozen=True):
    """Ground truth for one injected attack episode (the simulator writes these to ``labels``)."""

    episode_id: str
    scenario: str
    entity: EntityRef
    related: list[EntityRef] = msgspec.field(default_factory=list)
    event_ids: list[str] = msgspec.field(default_factory=list)
    start: UtcDateTime
    end: UtcDateTime
    #: When the funds leave in this episode (the withdrawal_sent / draining transfer), if they do.
    funds_leave_at: UtcDateTime | None = None
    params: dict[str, str] = msgspec.field(default_factory=dict)


class DeadLetter(Struct, kw_only=True, frozen=True):
    """A record a stage could not process, with why and where it came from; ``raw`` is kept byte for byte."""

    stage: str
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    raw: bytes
    failed_at: UtcDateTime
    error_type: str = "DecodeError"
    #: The record's headers (None: not recorded, letters of versions before): with ``raw`` and
    #: ``key`` they are the record whole, which a redrive sends again once the topic it came
    #: from no longer holds it (raw topics keep 3 days, dead-letter topics 30).
    headers: list[tuple[str, bytes | None]] | None = None
