"""A chain source whose ``run`` records its waits instead of sleeping them."""

from __future__ import annotations

from typing import Any

from vigil.sources.base import RawSink


class PacedRun:
    """Mixed in before a :class:`~vigil.sources.chain.ChainFollower` (``class P(PacedRun,
    EthereumSource)``): ``run`` with its waits recorded in ``waits`` instead of slept, stopped
    before its ``polls``-th poll (so a loop that never waits ends as well)."""

    def __init__(self, *args: Any, polls: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.polls = polls
        self.waits: list[float] = []

    def poll(self, sink: RawSink) -> bool:
        self.polls -= 1
        if self.polls == 0:
            self.stop()  # type: ignore[attr-defined]
        return super().poll(sink)  # type: ignore[misc,no-any-return]

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return not self.running  # type: ignore[attr-defined,no-any-return]
