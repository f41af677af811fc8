"""The market's prices over a run, known before any event is built.

Benign traffic and the injected episodes trade the same markets, so they must quote the
same prices: a wash trade or a spoof order priced at the run's opening price, hours after
benign trading has drifted 5% away, is the first thing an analyst would notice.  So the
price path is drawn once, up front, per time slice (bursts of market moves are slices where
prices move five times as much and trading spikes), and everyone reads it:
``price(symbol, ts)``.  Episodes that move a market themselves (a pump) say so with
:meth:`MarketPath.move`, before the benign traffic that quotes it is generated.
"""

from __future__ import annotations

import math
import random

from vigil.sim.draws import generator
from vigil.sim.population import SYMBOL_PRICES

SLICE_SECONDS = 600.0


def quoted(price: float) -> float:
    """A price to its quoting precision: cents, or six decimals below one unit."""
    return round(price, 6 if price < 1 else 2)


def slice_length(span: float) -> float:
    """Seconds per slice: ten minutes, or a tenth of a shorter run (at least a second)."""
    return min(SLICE_SECONDS, max(1.0, span / 10))


class MarketPath:
    """Prices per symbol and time slice: a random walk from ``SYMBOL_PRICES``, deterministic
    by seed.  Slice ``i`` covers ``[start + i * slice_len, start + (i + 1) * slice_len)``;
    its prices hold for the whole slice (they move at each slice's start)."""

    def __init__(self, seed: int, start: float, span: float) -> None:
        self.start = start
        self.end = start + span
        self.slice_len = slice_length(span)
        self.n_slices = max(1, math.ceil(span / self.slice_len))
        burst_rng = random.Random(f"vigil-sim:{seed}:bursts")
        #: Slices with a market move: prices jump and trading spikes.
        self.bursts = {i for i in range(self.n_slices) if burst_rng.random() < 0.03}
        symbols = list(SYMBOL_PRICES)
        z = generator(seed, "market", "walk").standard_normal((self.n_slices, len(symbols))).tolist()
        prices = dict(SYMBOL_PRICES)
        self._table: list[dict[str, float]] = []
        for i in range(self.n_slices):
            width = min(self.slice_len, self.end - (start + i * self.slice_len))
            vol = (0.02 if i in self.bursts else 0.004) * math.sqrt(max(width, 0.0) / 3600)
            for sym, step in zip(symbols, z[i], strict=True):
                prices[sym] = quoted(prices[sym] * math.exp(vol * step))
            self._table.append(dict(prices))

    def slice_of(self, ts: float) -> int:
        """The slice holding ``ts`` (times before or after the run count as its first or last)."""
        return min(self.n_slices - 1, max(0, int((ts - self.start) // self.slice_len)))

    def prices(self, i: int) -> dict[str, float]:
        """Every symbol's price during slice ``i`` (the caller must not change it)."""
        return self._table[i]

    def price(self, symbol: str, ts: float) -> float:
        """``symbol``'s price at ``ts``."""
        return self._table[self.slice_of(ts)][symbol]

    def move(self, symbol: str, since: float, until: float, factor: float) -> None:
        """Multiply ``symbol``'s price by ``factor`` in the slices overlapping ``[since, until]``
        (an episode that pushes a market: benign quotes then follow it)."""
        if factor <= 0 or not math.isfinite(factor):
            msg = f"MarketPath.move: factor must be a positive number; got {factor!r}"
            raise ValueError(msg)
        for i in range(self.slice_of(since), self.slice_of(until) + 1):
            row = self._table[i]
            row[symbol] = quoted(row[symbol] * factor)
