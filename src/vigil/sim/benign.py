"""Benign life: daily rhythm, weekends, bursts around market moves, heavy-tailed customers.

Time is cut into slices.  Each slice gets a share of the benign volume by the hour's
activity (the customers whose usual hours cover it, weighted by their heavy-tailed
activity), a weekend dip, and bursts in "market move" slices where trading spikes.
Within a slice, action times are drawn uniformly and sorted; each action picks a kind
from the mix and a customer by that hour's weights.  Actions have consequences later
(a logout after a login, a cancel after an order, a withdrawal sent after its request);
those that fall past the slice wait in the bucket of the slice they fall in, so the
stream stays sorted by event time.

Speed (the simulator is to feed Kafka 200k events/s from one core): the slice's draws are
numpy arrays, and the four kinds that make three actions in four (sessions, orders,
trades, venue trades) are generated a slice at a time, so that per event Python only
builds the event.  A seed still gives one stream; the draws differ from a per-action
``random.Random`` but follow the same distributions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

import numpy as np

from vigil.events.base import Entities, Event
from vigil.events.types import Geo
from vigil.sim.draws import generator, normals, pick, uniforms
from vigil.sim.factory import UNLIMITED, Make, Trades, stamps
from vigil.sim.market import MarketPath
from vigil.sim.population import (
    EXCHANGE_DOMAIN,
    PRICES,
    SYMBOL_PRICES,
    SYMBOLS,
    THIN_SYMBOL,
    Customer,
    Employee,
    Population,
)

MAX_SESSION = 4 * 3600.0
#: Customers a day's newsletter goes to (a segment of those Mailchimp holds).
NEWSLETTER_SIZE = 2_000
#: Where the exchange's staff work, and where the CRM vendors' integration hosts run.
HOME_GEO = Geo(country="PT", city="Lisbon", lat=38.72, lon=-9.14)
INTEGRATION_GEO = Geo(country="US", city="Ashburn", lat=39.04, lon=-77.49)
_EMPTY = Entities()
_BY_TIME = attrgetter("occurred_at")
T = TypeVar("T")

#: kind -> (weight, mean events per action); the weights are the benign mix.
MIX: dict[str, tuple[float, float]] = {
    "session": (14.0, 2.0),
    "failed_login": (1.5, 2.0),
    "mfa_challenge": (2.0, 1.0),
    "order": (24.0, 1.9),
    "trade": (10.0, 1.0),
    "venue_trade": (10.0, 1.0),
    "deposit": (3.0, 2.0),
    "fiat_deposit": (1.0, 1.0),
    "withdrawal": (2.0, 2.8),
    "payment": (4.0, 1.0),
    "loyalty": (0.4, 1.0),
    "crm_login": (0.6, 1.0),
    "crm_token": (0.6, 1.0),
    "crm_export": (0.1, 1.0),
    "click": (1.0, 1.0),
    "security": (1.0, 1.0),
    "defi_approval": (0.3, 1.0),
    "address_added": (0.3, 1.0),
    "password_reset": (0.2, 2.0),
    "api_key": (0.05, 1.0),
}
_LIQUID = SYMBOLS[:4]
#: Where orders go: the liquid markets by index 0-3, the thin one at 4.
_ORDER_SYMBOLS = (*_LIQUID, THIN_SYMBOL)
#: What customers and the venues trade, and its Binance spelling.
_TRADED = SYMBOLS[:3]
_TRADED_USDT = tuple(s.replace("-USD", "USDT") for s in _TRADED)
#: Base units per order: about 200 USD of the base asset (heavy-tailed around it).
_ORDER_USD = {s: 200 / PRICES.get(s.split("-")[0], SYMBOL_PRICES[s]) for s in SYMBOLS}
_ORDER_USD_ARRAY = np.array([_ORDER_USD[s] for s in _ORDER_SYMBOLS])
#: Object arrays, so that indexing with drawn indices hands back the shared str objects.
_ORDER_SYMBOL_ARRAY = np.array(_ORDER_SYMBOLS, dtype=object)
_SIDE_ARRAY = np.array(["sell", "buy"], dtype=object)
_TRADED_ARRAY = np.array(_TRADED, dtype=object)
_TRADED_USDT_ARRAY = np.array(_TRADED_USDT, dtype=object)
_VENUE_ARRAY = np.array(["binance", "coinbase"], dtype=object)
_LOGOUT_REASON_ARRAY = np.array(["timeout", "user"], dtype=object)
#: What staff do in AWS on a normal day: (eventName, resource).
_STAFF_CALLS = (
    ("ConsoleLogin", None),
    ("AssumeRole", "arn:aws:iam::210987654321:role/ReadOnly"),
    ("GetObject", "arn:aws:s3:::reports/daily-volume.csv"),
    ("DescribeInstances", None),
)
MERCHANTS = ("amazon", "uber", "spotify", "steam", "airbnb", "starbucks", "netflix", "apple")


def _objects(values: list[Any]) -> np.ndarray[Any, Any]:
    """An object array holding ``values`` themselves (no conversion of any element)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _search(cum: np.ndarray[Any, Any], draws: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``np.searchsorted(cum, draws, side="right")``, the draws looked up in increasing order:
    then the search walks the customers' weights once, where random draws (and a slice's
    events evicting the array in between) made nearly every step a cache miss."""
    order = np.argsort(draws)
    found = np.empty(len(draws), dtype=np.intp)
    found[order] = np.searchsorted(cum, draws[order], side="right")
    return found


def _not_self(others: np.ndarray[Any, Any], who: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    """Counterparties drawn at random, moved to the next customer where one drew the taker itself
    (the exchange prevents self-trades; with one customer there is nobody else to trade with)."""
    if n < 2:
        return others
    return np.where(others == who, (others + 1) % n, others)


def _rows(ks: list[int]) -> Callable[[Sequence[T]], Sequence[T]]:
    """``seq -> [seq[k] for k in ks]``, picking the rows in C (``itemgetter``) for every column
    of a batch that follows up some of another's rows (the cancelled orders, the filled ones)."""
    if len(ks) > 1:
        return itemgetter(*ks)
    return lambda seq: [seq[k] for k in ks]


class BenignTraffic:
    """Generates the benign stream slice by slice.  Deterministic for a given seed and population.

    The per-event draws come from numpy blocks (:mod:`vigil.sim.draws`): ``self.u()`` a
    uniform, ``self.z()`` a standard normal; rare, structured draws (``sample``) use
    ``self.rng``.  Slice-level draws (times, kinds, customers) are vectorised.
    """

    def __init__(
        self,
        pop: Population,
        seed: int,
        start: float,
        span: float,
        events: int,
        market: MarketPath | None = None,
    ) -> None:
        self.pop = pop
        #: The prices everyone quotes (the episodes' too), and the slices and bursts they move in.
        self.market = market or MarketPath(seed, start, span)
        self.rng = random.Random(f"vigil-sim:{seed}:benign")
        self.u = uniforms(generator(seed, "benign", "uniform"))
        self.z = normals(generator(seed, "benign", "normal"))
        self._slice_gen = generator(seed, "benign", "slices")
        self.start = start
        self.end = start + span
        self.out: list[Event] = []
        self.make = Make(seed, "benign", start, self.out)
        #: Events placed past their slice, by the index of the slice they fall in.
        self.later: dict[int, list[Event]] = {}
        self.prices: dict[str, float] = self.market.prices(0)
        self._venue_trade_ids = {"coinbase": 880_000_000, "binance": 3_100_000_000}
        self._campaign: str | None = None
        #: The current newsletter's recipients (see _newsletter).
        self._by_id = {c.id: c for c in pop.customers}
        self._readers: list[Customer] = []
        self._reader_ids: set[str] = set()
        kinds = list(MIX)
        self._kind_cum = np.cumsum([MIX[k][0] for k in kinds])
        self._order_kind = kinds.index("order")
        mean_events = sum(MIX[k][0] * MIX[k][1] for k in kinds) / float(self._kind_cum[-1])
        self._vec_gen = generator(seed, "benign", "vectorised")
        # By kind index: the kinds handled a slice at a time, and the rest, one action at a time.
        # Batched handlers take the action times and the customers' indices.
        self._batched: dict[int, Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any]], None]] = {
            kinds.index("session"): self._sessions,
            kinds.index("order"): self._orders,
            kinds.index("trade"): self._trades,
            kinds.index("venue_trade"): self._venue_trades,
        }
        self._batched_kinds = np.array(list(self._batched))
        self._single: dict[int, Callable[[float, Customer], None]] = {
            i: getattr(self, f"_{k}") for i, k in enumerate(kinds) if i not in self._batched
        }
        self._custs = pop.customers
        # Indexing an object array with the drawn indices hands back the customers in one C loop;
        # the trading handlers index their accounts and entities the same way, without reading
        # the customers (a cache miss each, for one of 20k customers drawn at random).
        self._cust_array = _objects(pop.customers)
        self._account_array = _objects([c.account for c in pop.customers])
        self._money_ents_array = _objects([c.money_entities for c in pop.customers])
        # Per UTC hour: customers' cumulative weights (heavy-tailed activity, usual hours).
        custs = pop.customers
        activity = np.array([c.activity for c in custs])
        # Customer by UTC hour: is it one of their usual hours.  Customers share a few hundred
        # sets of hours, so a row per set, picked per customer (a membership test per customer
        # and hour was a tenth of a 300k-event run).
        sets: dict[frozenset[int], int] = {}
        which = [sets.setdefault(c.login_hours, len(sets)) for c in custs]
        rows = np.zeros((len(sets), 24), dtype=bool)
        for hours, row in sets.items():
            rows[row, sorted(hours)] = True
        usual = rows[which]
        self._hour_cum: list[np.ndarray] = []
        hour_weight: list[float] = []
        for h in range(24):
            weights = activity * np.where(usual[:, h], 1.0, 0.08)
            cum = np.cumsum(weights)
            self._hour_cum.append(cum)
            hour_weight.append(float(cum[-1]))
        # Staff at work per UTC hour, with their entities: looked up, not rebuilt, per event.
        emps = pop.employees
        emp_ents = [Entities(employee=e.id, vendor=e.crm, ip=e.ip, email=e.email) for e in emps]
        self._working: list[list[tuple[Employee, Entities]]] = []
        for h in range(24):
            idx = [i for i, e in enumerate(emps) if h in e.work_hours] or list(range(len(emps)))
            self._working.append([(emps[i], emp_ents[i]) for i in idx])
        self._spenders = list(pop.counterparties.defi_spenders.values())
        self._ents_seen: dict[tuple[int, str, str], Entities] = {}
        self.slice_len = self.market.slice_len
        n_slices = self.market.n_slices
        self.bursts = self.market.bursts
        slice_w = []
        for i in range(n_slices):
            lo = start + i * self.slice_len
            d = datetime.fromtimestamp(lo, UTC)
            w = hour_weight[d.hour] * (0.75 if d.weekday() >= 5 else 1.0) * (2.5 if i in self.bursts else 1.0)
            w *= min(self.slice_len, self.end - lo) / self.slice_len
            slice_w.append(w)
        actions = events / mean_events
        total_w = sum(slice_w) or 1.0
        # Largest-remainder rounding: the slice counts add up exactly, with no randomness.
        raw = [actions * w / total_w for w in slice_w]
        counts = [int(x) for x in raw]
        short = round(actions) - sum(counts)
        for i in sorted(range(n_slices), key=lambda i: raw[i] - counts[i], reverse=True)[: max(0, short)]:
            counts[i] += 1
        self.counts = counts

    # ------------------------------------------------------------------ driving

    def slices(self) -> Iterator[tuple[float, float, list[Event]]]:
        """Yields ``(lo, hi, events)`` per slice, events sorted by time and all within ``[lo, hi)``."""
        n = len(self.counts)
        for i, count in enumerate(self.counts):
            lo = self.start + i * self.slice_len
            hi = self.end if i == n - 1 else lo + self.slice_len
            yield lo, hi, self._slice(i, lo, hi, count)
        # Consequences that fall after the end (a logout an hour later) still happen.
        rest = sorted((e for i in sorted(self.later) for e in self.later[i]), key=_BY_TIME)
        self.later.clear()
        if rest:
            yield self.end, math.inf, rest

    def _slice(self, i: int, lo: float, hi: float, count: int) -> list[Event]:
        g = self._slice_gen
        width = hi - lo
        burst = i in self.bursts
        self.prices = self.market.prices(i)
        hour = datetime.fromtimestamp(lo, UTC).hour
        times = np.sort(lo + g.random(count) * width)
        kinds = np.searchsorted(self._kind_cum, g.random(count) * self._kind_cum[-1], side="right")
        if burst:
            # Market moves: a share of the actions turn into trading.
            kinds = np.where(g.random(count) < 0.5, kinds, self._order_kind)
        cum = self._hour_cum[hour]
        who = _search(cum, g.random(count) * cum[-1])
        self.out.clear()
        day = f"cmp-{int(lo // 86400)}"
        if self._campaign != day:
            self._newsletter(lo, day)
        for kind, handle_all in self._batched.items():
            mine = kinds == kind
            if mine.any():
                handle_all(times[mine], who[mine])
        rest = ~np.isin(kinds, self._batched_kinds)
        single = self._single
        custs = self._cust_array[who[rest]].tolist()
        for ts, kind, c in zip(times[rest].tolist(), kinds[rest].tolist(), custs, strict=True):
            single[kind](ts, c)
        events = self.out
        later = self.later
        events.extend(later.pop(i, ()))
        events.sort(key=_BY_TIME)
        # Anything a handler placed past the slice (a logout, a transfer waiting for its block)
        # waits in the bucket of its slice: a list append, where a heap cost a push and a pop.
        start, slice_len = self.start, self.slice_len
        while events and (ts := events[-1].occurred_at.timestamp()) >= hi:
            j = max(i + 1, int((ts - start) // slice_len))
            later.setdefault(j, []).append(events.pop())
        out = list(events)
        events.clear()
        return out

    def _newsletter(self, lo: float, cid: str) -> None:
        """The day's market update, to a segment of the customers Mailchimp holds (a different
        one each day); the day's benign clicks come from its recipients."""
        self._campaign = cid
        held = self.pop.vendors["mailchimp"].customer_ids
        k = min(NEWSLETTER_SIZE, len(held))
        first = int(lo // 86400) * k % max(1, len(held))
        recipients = (list(held[first:]) + list(held[:first]))[:k]
        by_id = self._by_id
        self._readers = [by_id[r] for r in recipients if r in by_id]
        self._reader_ids = set(recipients)
        self.make.campaign(
            lo,
            "mailchimp",
            cid,
            "Your weekly market update",
            EXCHANGE_DOMAIN,
            recipients,
            [EXCHANGE_DOMAIN],
        )

    # ------------------------------------------------------------------ handlers (one per kind)
    # The hot ones index sequences with ``int(u() * len(seq))`` rather than call pick(), and
    # round to cents as ``round(x * 100) / 100`` (a third of ``round(x, 2)``'s cost; the
    # value differs only on exact-half ties): at 200k events/s every 0.1 us is 2% of a core.

    def _ents(self, c: Customer) -> Entities:
        devices, ips = c.devices, c.ips
        if len(devices) == 1 and len(ips) == 1:
            return c.entities
        u = self.u
        if u() < 0.6:
            return c.entities
        key = (c.index, devices[int(u() * len(devices))], ips[int(u() * len(ips))])
        ents = self._ents_seen.get(key)
        if ents is None:
            ents = self._ents_seen[key] = Entities(
                customer=c.id, account=c.account, device=key[1], ip=key[2], email=c.email
            )
        return ents

    def _failed_login(self, ts: float, c: Customer) -> None:
        ents = self._ents(c)
        self.make.failed_login(ts, ents, c.email, c.geo, c.user_agent, "bad_password")
        self.make.login(ts + 8 + self.u() * 30, ents, c.geo, c.user_agent)

    def _mfa_challenge(self, ts: float, c: Customer) -> None:
        self.make.mfa_challenge(ts, c.entities, "approved" if self.u() < 0.97 else "timeout")

    # ------------------------------------------------------------------ the bulk, vectorised
    # Sessions, orders and trades are three actions in four.  Their draws and arithmetic run
    # in numpy over all of a slice's actions of the kind at once; the Python loop is left
    # with building the events.  (Same distributions as a per-action draw would give.)

    def _sessions(self, times: np.ndarray[Any, Any], who: np.ndarray[Any, Any]) -> None:
        custs: list[Customer] = self._cust_array[who].tolist()
        n = len(times)
        u = self._vec_gen.random((3, n))
        # Sessions last minutes to hours; the idle timeout ends the longest at MAX_SESSION.
        length = np.minimum(60.0 - 1500.0 * np.log1p(-u[1]), MAX_SESSION)
        ends = length + times
        by_user = (length < MAX_SESSION) & (u[2] < 0.6)
        ents = [self._ents(c) for c in custs]
        mfa = (u[0] < 0.5).tolist()
        self.make.logins(
            stamps(times),
            ents,
            [c.geo for c in custs],
            [c.user_agent for c in custs],
            [c.kyc_tier > 1 or m for c, m in zip(custs, mfa, strict=True)],
        )
        # The logouts in the order they happen: the slice's sort then merges sorted runs.
        order = np.argsort(ends, kind="stable")
        self.make.logouts(
            stamps(ends[order]),
            _rows(order.tolist())(ents),
            _LOGOUT_REASON_ARRAY[by_user[order].view(np.int8)].tolist(),
        )

    def _orders(self, times: np.ndarray[Any, Any], who: np.ndarray[Any, Any]) -> None:
        n = len(times)
        u = self._vec_gen.random((6, n))
        z = self._vec_gen.standard_normal(n)
        # Most orders go to the liquid markets; a few to the thin one.
        sym = np.where(u[0] < 0.97, (u[0] * 4).astype(np.intp), 4)
        price = np.array([self.prices[s] for s in _ORDER_SYMBOLS])[sym]
        scale = np.where(price < 1, 1e6, 100.0)
        px = np.rint(price * (0.998 + u[2] * 0.004) * scale) / scale
        qty = np.rint(np.exp(1.2 * z) * _ORDER_USD_ARRAY[sym] * 1e6) / 1e6
        qty[qty == 0] = 0.0001
        symbols = _ORDER_SYMBOL_ARRAY[sym].tolist()
        sides = _SIDE_ARRAY[(u[1] < 0.5).view(np.int8)].tolist()
        prices, quantities = px.tolist(), qty.tolist()
        m = self.make
        ents = self._money_ents_array[who].tolist()
        placed = stamps(times)
        orders = m.orders(placed, ents, symbols, sides, prices, quantities)
        # Half are cancelled, four in ten fill against another customer, the rest rest.  Each
        # follow-up kind is emitted in time order: sorted runs, cheap for the slice's sort.
        cancelled = np.flatnonzero(u[3] < 0.5)
        cancel_at = times[cancelled] - 300 * np.log1p(-u[4][cancelled])
        by_time = np.argsort(cancel_at, kind="stable")
        rows = _rows(cancelled[by_time].tolist())
        m.cancels(
            stamps(cancel_at[by_time]),
            rows(ents),
            [o.payload.order_id for o in rows(orders)],
            rows(symbols),
            rows(sides),
            rows(prices),
            rows(quantities),
            rows(placed),
        )
        filled = np.flatnonzero((u[3] >= 0.5) & (u[3] < 0.9))
        fill_at = times[filled] - 60 * np.log1p(-u[4][filled])
        by_time = np.argsort(fill_at, kind="stable")
        others = (u[5][filled][by_time] * len(self._custs)).astype(np.intp)
        filled = filled[by_time]
        others = _not_self(others, who[filled], len(self._custs))
        rows = _rows(filled.tolist())
        m.trades(
            Trades(
                stamps(fill_at[by_time]),
                rows(ents),
                rows(symbols),
                rows(prices),
                rows(quantities),
                rows(sides),
                self._account_array[others].tolist(),
                self._account_array[who[filled]].tolist(),
            )
        )

    def _trades(self, times: np.ndarray[Any, Any], who: np.ndarray[Any, Any]) -> None:
        n = len(times)
        u = self._vec_gen.random((3, n))
        z = self._vec_gen.standard_normal(n)
        sym = (u[0] * 3).astype(np.intp)
        price = np.array([self.prices[s] for s in _TRADED])[sym]
        qty = np.rint(np.exp(z) * 300e6 / price) / 1e6
        qty[qty == 0] = 0.0001
        others = _not_self((u[1] * len(self._custs)).astype(np.intp), who, len(self._custs))
        self.make.trades(
            Trades(
                stamps(times),
                self._money_ents_array[who].tolist(),
                _TRADED_ARRAY[sym].tolist(),
                price.tolist(),
                qty.tolist(),
                _SIDE_ARRAY[(u[2] < 0.5).view(np.int8)].tolist(),
                self._account_array[others].tolist(),
                self._account_array[who].tolist(),
            )
        )

    def _venue_trades(self, times: np.ndarray[Any, Any], who: np.ndarray[Any, Any]) -> None:
        n = len(times)
        u = self._vec_gen.random((4, n))
        z = self._vec_gen.standard_normal(n)
        sym = (u[0] * 3).astype(np.intp)
        on_coinbase = u[1] < 0.6
        price = np.array([self.prices[s] for s in _TRADED])[sym]
        px = np.rint(price * (1 + (u[2] - 0.5) * 0.0006) * 100) / 100
        qty = np.rint(np.exp(1.5 * z) * 500e8 / price) / 1e8
        qty[qty == 0] = 0.00001
        # Each venue numbers its trades consecutively, in time order.
        ids = self._venue_trade_ids
        numbers = np.where(
            on_coinbase, ids["coinbase"] + np.cumsum(on_coinbase), ids["binance"] + np.cumsum(~on_coinbase)
        )
        n_coinbase = int(on_coinbase.sum())
        ids["coinbase"] += n_coinbase
        ids["binance"] += n - n_coinbase
        venues = _VENUE_ARRAY[on_coinbase.view(np.int8)].tolist()
        self.make.trades(
            Trades(
                stamps(times),
                [_EMPTY] * n,
                np.where(on_coinbase, _TRADED_ARRAY[sym], _TRADED_USDT_ARRAY[sym]).tolist(),
                px.tolist(),
                qty.tolist(),
                _SIDE_ARRAY[(u[3] < 0.5).view(np.int8)].tolist(),
                [None] * n,
                [None] * n,
            ),
            venues=venues,
            sources=venues,
            trade_ids=list(map(str, numbers.tolist())),
        )

    # ------------------------------------------------------------------ the rest, one by one

    def _deposit(self, ts: float, c: Customer) -> None:
        u, z = self.u, self.z
        r = u()
        if r < 0.25:
            amt = round(math.exp(-3.5 + 1.2 * z()), 8)
            self.make.deposit(ts, c, "BTC", amt, "bitcoin", pick(u(), c.btc_address_book))
        else:
            asset = "ETH" if r < 0.6 else "USDT"
            amt = (
                round(math.exp(-0.5 + 1.2 * z()), 6)
                if asset == "ETH"
                else round(math.exp(6.5 + 1.3 * z()), 2)
            )
            self.make.deposit(
                ts, c, asset, amt, "ethereum", pick(u(), c.address_book), confirm_after=60 + u() * 600
            )

    def _fiat_deposit(self, ts: float, c: Customer) -> None:
        self.make.fiat_deposit(ts, c, round(math.exp(6 + 1.2 * self.z()), 2))

    def _withdrawal(self, ts: float, c: Customer) -> None:
        u, z = self.u, self.z
        hot = self.pop.hot_wallets
        r = u()
        delay = 30 - 240 * math.log(1 - u())
        if r < 0.2:
            self.make.withdrawal(ts, c, "USD", round(math.exp(6 + z()), 2), None, None, delay=3600 + delay)
        elif r < 0.4:
            amt = round(math.exp(-3.5 + z()), 8)
            self.make.withdrawal(
                ts, c, "BTC", amt, "bitcoin", c.btc_address_book[0], delay=delay, hot_wallet=hot["bitcoin"]
            )
        else:
            asset = "ETH" if r < 0.7 else "USDT"
            amt = (
                round(math.exp(-0.7 + 1.1 * z()), 6) if asset == "ETH" else round(math.exp(6 + 1.2 * z()), 2)
            )
            self.make.withdrawal(
                ts,
                c,
                asset,
                amt,
                "ethereum",
                pick(u(), c.address_book),
                delay=delay,
                hot_wallet=hot["ethereum"],
            )

    def _payment(self, ts: float, c: Customer) -> None:
        u = self.u
        declined = u() < 0.04
        self.make.payment(
            ts,
            c.entities,
            round(math.exp(3 + self.z()), 2),
            MERCHANTS[int(u() * len(MERCHANTS))],
            pick(u(), c.cards),
            status="declined" if declined else "approved",
            decline_reason="insufficient_funds" if declined else None,
        )

    def _loyalty(self, ts: float, c: Customer) -> None:
        u = self.u
        pts = min(c.loyalty_points, 500 * (1 + int(u() * 5)))
        self.make.loyalty(ts, c.entities, pts, pick(u(), ("fee-discount", "gift-card", "merch")))

    def _employee(self, ts: float) -> tuple[Employee, Entities]:
        """Someone on staff whose working hours cover ``ts`` (anyone, if nobody's do)."""
        working = self._working[int(ts // 3600) % 24]
        return pick(self.u(), working)

    def _crm_login(self, ts: float, c: Customer) -> None:
        e, ents = self._employee(ts)
        self.make.crm_login(ts, ents, e.crm, e.email, HOME_GEO, "Mozilla/5.0 (Windows NT 10.0; Win64; x64)")

    def _crm_token(self, ts: float, c: Customer) -> None:
        u = self.u
        v = self.pop.vendors[pick(u(), ("hubspot", "salesforce"))]
        ip = pick(u(), v.integration_ips)
        self.make.crm_token(
            ts,
            Entities(vendor=v.id, ip=ip, api_key=v.api_tokens[0]),
            v.platform,
            v.api_tokens[0],
            "crm.objects.contacts.read" if v.platform == "hubspot" else "query",
            1 + int(u() * 119),
            INTEGRATION_GEO,
            "exchange-sync/2.3",
        )

    def _crm_export(self, ts: float, c: Customer) -> None:
        e, ents = self._employee(ts)
        vendor = self.pop.vendors[e.crm]
        k = 5 + int(self.u() * 55)
        ids = sorted(self.rng.sample(vendor.customer_ids, min(k, len(vendor.customer_ids))))
        self.make.crm_export(
            ts, ents, e.crm, ids, e.email, HOME_GEO, "tickets" if e.role == "support" else "contacts"
        )

    def _click(self, ts: float, c: Customer) -> None:
        cid = self._campaign or "cmp-0"
        if c.id not in self._reader_ids and self._readers:
            # Only those the newsletter reached can click its link.
            c = self._readers[int(self.u() * len(self._readers))]
        self.make.click(
            ts,
            c,
            "mailchimp",
            cid,
            f"https://{EXCHANGE_DOMAIN}/markets?utm_campaign={cid}",
            EXCHANGE_DOMAIN,
            c.ips[0],
        )

    def _security(self, ts: float, c: Customer) -> None:
        e, _ = self._employee(ts)
        name, resource = pick(self.u(), _STAFF_CALLS)
        self.make.cloudtrail(
            ts, e.id, e.ip, name, resource=resource, mfa=True if name == "ConsoleLogin" else None
        )

    def _defi_approval(self, ts: float, c: Customer) -> None:
        u = self.u
        spender = pick(u(), self._spenders)
        asset = pick(u(), ("USDT", "USDC", "WETH"))
        amount = UNLIMITED if u() < 0.7 else round(math.exp(6 + self.z())) * 10**6
        self.make.token_approval(ts, c.own_wallet, spender, asset, amount, self.make.fresh_tx_hash())

    def _address_added(self, ts: float, c: Customer) -> None:
        self.make.withdrawal_address_added(
            ts, c, pick(self.u(), c.address_book), "ETH", "ethereum", self._ents(c)
        )

    def _password_reset(self, ts: float, c: Customer) -> None:
        ents = self._ents(c)
        self.make.password_reset(ts, ents, "email", "requested")
        self.make.password_reset(ts + 60 + self.u() * 600, ents, "email", "completed")

    def _api_key(self, ts: float, c: Customer) -> None:
        key = "key-" + self.make.mint()[:12]
        perms = ["read", "trade"] if self.u() < 0.8 else ["read"]
        self.make.api_key_created(
            ts, Entities(customer=c.id, api_key=key, ip=c.ips[0]), key, perms, "trading-bot"
        )
