"""Benign life: daily rhythm, weekends, bursts around market moves, heavy-tailed customers.

Time is cut into slices.  Each slice gets a share of the benign volume by the hour's
activity (the customers whose usual hours cover it, weighted by their heavy-tailed
activity), a weekend dip, and bursts in "market move" slices where trading spikes.
Within a slice, action times are drawn uniformly and sorted; each action picks a kind
from the mix and a customer by that hour's weights.  Actions have consequences later
(a logout after a login, a cancel after an order, a withdrawal sent after its request);
those that fall past the slice wait in the bucket of the slice they fall in, so the
stream stays sorted by event time.

Customers are not all alike every session: at the base rates below (a real exchange's, each
something a rule looks for in attacks) they log in from new devices, from carriers' shared
CGNAT IPs, abroad or through VPNs; change e-mail and second factor; add withdrawal addresses
and use them; run bots on API keys from cloud servers; send round amounts.  Orders and
withdrawal requests carry the device and IP of the customer's latest login (or the bot's API
key and server IP), as the attacks' do.  Without these a false-positive rate measured on the
benign stream means little.

Speed (the simulator is to feed Kafka 200k events/s from one core): the slice's draws are
numpy arrays, and the four kinds that make three actions in four (sessions, orders,
trades, venue trades) are generated a slice at a time, so that per event Python only
builds the event.  A seed still gives one stream; the draws differ from a per-action
``random.Random`` but follow the same distributions.
"""

from __future__ import annotations

import bisect
import itertools
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
    CLOUD_PREFIXES,
    EXCHANGE_DOMAIN,
    HOME_PLACES,
    PRICES,
    SYMBOL_PRICES,
    SYMBOLS,
    THIN_SYMBOL,
    TRAVEL_PLACES,
    USER_AGENTS,
    VPN_PLACES,
    Customer,
    Employee,
    Place,
    Population,
    evm_address,
    ip_in,
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
    # Forgotten passwords: under one customer in a hundred a day (it was one in six).
    "password_reset": (0.01, 2.0),
    "api_key": (0.05, 1.0),
    # Contact e-mail and second-factor changes: rare, a few a day among 2,000 heavy users (the
    # simulated customers average 60 events a day); most MFA changes are a new phone enrolled.
    "email_change": (0.004, 1.0),
    "mfa_change": (0.008, 1.0),
}

# ---------------------------------------------------------------------- base rates
# What a real exchange sees of a benign customer base; each is something a rule looks for in
# attacks, so the false-positive rate is measured against it rather than against a stream
# that never shows it.

#: A login from a device the account has not used (a new phone, a new or wiped browser, an
#: incognito window): about one session in a hundred here, a floor (web platforms see a few per
#: cent, counting browsers that clear their cookies; an exchange's app keeps its device id).  The
#: new device is kept and used again for a share of the customer's later sessions.
NEW_DEVICE_RATE = 0.008
NEW_DEVICE_REUSE = 0.25
#: New devices are challenged: most pass a second factor; customers without one enrolled are
#: confirmed by an e-mail link, which is no MFA factor (``mfa_used`` false).
NEW_DEVICE_MFA = 0.9
#: Mobile-app sessions on cellular data (the rest on Wi-Fi at home): their IP is the carrier's
#: CGNAT egress, shared with other subscribers and not the customer's own.
CELLULAR_SHARE = 0.3
#: Customers abroad on a given day (holidays, business trips; crypto users travel and hold
#: accounts across borders more than most), and the share of their sessions on hotel or cafe
#: Wi-Fi there (the rest roam on their home carrier, whose IPs geolocate at home).
TRAVELLER_SHARE = 0.015
ABROAD_SESSIONS = 0.7
#: Customers who use a commercial VPN, and the share of their sessions through it (exit in
#: another country): a floor, as VPN use among crypto holders is common (one always on it looks
#: settled at its exit; toggling it moves the login across borders within minutes).
VPN_SHARE = 0.02
VPN_SESSIONS = 0.4
#: Second-factor push results: mostly approved; timeouts (phone elsewhere) and the occasional
#: deny by a fat finger or a prompt the customer did not expect, usually retried at once.
MFA_TIMEOUT = 0.03
MFA_DENIED = 0.01
#: Failed logins by reason (shares): wrong password dominates; wrong or expired TOTP codes,
#: CAPTCHA failures, mistyped e-mails (no such user) and lockouts after repeated failures.
FAILED_LOGIN_REASONS: dict[str, float] = {
    "bad_password": 0.72,
    "mfa_failed": 0.12,
    "captcha": 0.08,
    "unknown_user": 0.06,
    "locked": 0.02,
}
#: Card declines by reason (shares, issuer response codes as card processors report them):
#: insufficient funds is the largest single reason, generic "do not honor" next.
DECLINE_REASONS: dict[str, float] = {
    "insufficient_funds": 0.40,
    "do_not_honor": 0.25,
    "incorrect_cvc": 0.10,
    "expired_card": 0.08,
    "card_not_supported": 0.06,
    "processing_error": 0.05,
    "card_velocity_exceeded": 0.05,
    "stolen_card": 0.01,
}
#: Order types: retail flow on an exchange's app is limit orders mostly, market orders a
#: quarter or so, stop orders a few per cent.
MARKET_ORDER_SHARE = 0.22
STOP_ORDER_SHARE = 0.05
#: Orders and withdrawals placed through the API rather than the app (customers' bots and
#: tools): no device, the API key and the server's IP.
API_KEY_PERMISSIONS: tuple[tuple[float, tuple[str, ...]], ...] = (
    # (cumulative share, permissions): trading bots, read-only portfolio trackers, and a few
    # keys allowed to withdraw (rebalancers, treasury sweeps to the customer's own wallet).
    (0.70, ("read", "trade")),
    (0.92, ("read",)),
    (1.00, ("read", "trade", "withdraw")),
)
#: Of new withdraw-capable keys, the share used to withdraw from the server within the day.
API_WITHDRAW_USE = 0.6
#: Withdrawal address added: a new address (another exchange's deposit address, a new wallet,
#: a friend's) most of the time, else one the customer has used before being whitelisted.
NEW_ADDRESS_SHARE = 0.7
#: Of newly added addresses, the share withdrawn to shortly after (minutes to hours); the rest
#: are used on a later withdrawal, if any.
SAME_SESSION_WITHDRAWAL = 0.3
#: Crypto withdrawals to an address the customer just added (earlier today) and to one never
#: added at all (exchanges that do not require a whitelist: paying someone, another venue).
RECENT_ADDRESS_WITHDRAWAL = 0.25
UNLISTED_ADDRESS_WITHDRAWAL = 0.03
#: ETH deposits of a round amount (people send exactly 1 ETH): about one in twelve, of which
#: the amounts below by share.
ROUND_ETH_DEPOSIT = 0.08
_ROUND_ETH = (0.1, 0.1, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 5.0, 10.0)
#: ETH deposits from another exchange's hot wallet or a counterparty not in the address book.
FOREIGN_DEPOSIT_SHARE = 0.15
#: Loyalty redemptions by size (points): most small, a few large (up to 10,000).
_LOYALTY_TIERS = (500, 500, 1000, 1000, 1000, 1500, 2000, 2000, 2500, 3000, 5000, 7500, 10_000)
#: Of the orders that are not market orders: the shares cancelled and filled, so that half of
#: all orders are cancelled and four in ten filled, as before there were market orders.
_CANCEL = 0.5 / (1 - MARKET_ORDER_SHARE)
_FILL = (0.4 - MARKET_ORDER_SHARE) / (1 - MARKET_ORDER_SHARE)
_FAILED_CUM = tuple(itertools.accumulate(FAILED_LOGIN_REASONS.values()))
_FAILED_NAMES = tuple(FAILED_LOGIN_REASONS)
_DECLINE_CUM = tuple(itertools.accumulate(DECLINE_REASONS.values()))
_DECLINE_NAMES = tuple(DECLINE_REASONS)
_PERM_CUM = tuple(x[0] for x in API_KEY_PERMISSIONS)
_MOBILE_UAS = frozenset(ua for ua in USER_AGENTS if "iPhone" in ua or "Android" in ua or "ExchangeApp" in ua)
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


def _draw(u: float, cum: tuple[float, ...], names: Sequence[T]) -> T:
    """The name a uniform ``u`` in [0, 1) falls on, by cumulative shares ``cum``."""
    return names[min(len(names) - 1, bisect.bisect_right(cum, u * cum[-1]))]


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
        # What customers do beyond the steady mix (see the base rates above), all drawn from
        # generators of their own so that a seed gives one stream.
        plans = random.Random(f"vigil-sim:{seed}:benign:plans")
        #: Where each customer's orders and app withdrawals come from: the device and IP of
        #: their latest login (as the attacks' do), or their bot's API key and server.
        self._order_ents = _objects([c.entities for c in custs])
        #: The device and IP of each customer's latest login (account changes come from it).
        self._session_ents = _objects([c.entities for c in custs])
        self._api_trader = np.zeros(len(custs), dtype=bool)
        self._api_ents: dict[int, Entities] = {}
        #: A device a customer started using today (not one of theirs in the population).
        self._new_device: dict[int, str] = {}
        #: Customers away (abroad, or on a VPN): their place, IP there, and share of sessions.
        self._away: dict[int, tuple[Geo, str, float]] = {}
        abroad = (*TRAVEL_PLACES, *HOME_PLACES)
        for c in custs:
            r = plans.random()
            if r < TRAVELLER_SHARE:
                place = plans.choice([p for p in abroad if p.country != c.country])
                self._away[c.index] = (place.geo(), ip_in(plans, place), ABROAD_SESSIONS)
            elif r < TRAVELLER_SHARE + VPN_SHARE:
                place = plans.choice([p for p in VPN_PLACES if p.country != c.country])
                self._away[c.index] = (place.geo(), ip_in(plans, place), VPN_SESSIONS)
        self._plans = plans
        #: Addresses customers added today that are not in their address book.
        self._fresh_addresses: dict[int, list[str]] = {}
        #: API keys allowed to withdraw.
        self._withdraw_keys: set[str] = set()
        #: Each customer's mobile carrier's CGNAT IPs (those of their home country).
        self._carriers = [pop.carrier_ips[c.place.country] for c in custs]
        #: Each customer's home place as their carrier's IPs are located (see _cellular_geo).
        self._cell_geos: dict[int, Geo] = {}
        self._cloud = Place("US", "Ashburn", 39.04, -77.49, -5, CLOUD_PREFIXES)
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

    def _where(self, c: Customer) -> tuple[Entities, Geo, bool]:
        """The device, IP and place a login of ``c`` comes from, and whether the device is new.

        Usually one of the customer's devices on one of their IPs at home; sometimes a new
        device (kept for later sessions), the mobile carrier's shared CGNAT IP, a hotel's
        Wi-Fi abroad or a VPN exit (see the base rates at the top)."""
        u = self.u
        i = c.index
        devices, ips = c.devices, c.ips
        new = False
        r = u()
        if r < NEW_DEVICE_RATE:
            device = "dev-" + self.make.mint()[:10]
            self._new_device[i] = device
            new = True
        elif r < NEW_DEVICE_REUSE and i in self._new_device:
            device = self._new_device[i]
        elif len(devices) == 1 or r < 0.6:
            device = devices[0]
        else:
            device = devices[int(u() * len(devices))]
        geo = c.geo
        away = self._away.get(i)
        r = u()
        if away is not None and r < away[2]:
            geo, ip = away[0], away[1]
        elif r > 1 - CELLULAR_SHARE and (away is not None or c.user_agent in _MOBILE_UAS):
            # On cellular data (abroad: roaming, which egresses through the home carrier, so
            # the IP is located at home; IP intelligence knows it for a cellular one).
            ip = pick(u(), self._carriers[i])
            geo = self._cellular_geo(c)
        elif len(ips) == 1 or r < 0.6:
            ip = ips[0]
        else:
            ip = ips[int(u() * len(ips))]
        if not new and device == devices[0] and ip == ips[0]:
            return c.entities, geo, False
        key = (i, device, ip)
        ents = self._ents_seen.get(key)
        if ents is None:
            ents = self._ents_seen[key] = Entities(
                customer=c.id, account=c.account, device=device, ip=ip, email=c.email
            )
        return ents, geo, new

    def _cellular_geo(self, c: Customer) -> Geo:
        """Where a login over ``c``'s carrier is located: at home, a cellular connection."""
        geo = self._cell_geos.get(c.index)
        if geo is None:
            home = c.geo
            geo = self._cell_geos[c.index] = Geo(
                country=home.country, city=home.city, lat=home.lat, lon=home.lon, connection="cellular"
            )
        return geo

    def _session(self, c: Customer) -> Entities:
        """The device and IP of ``c``'s latest login: where account changes are made from."""
        ents: Entities = self._session_ents[c.index]
        return ents

    def _failed_login(self, ts: float, c: Customer) -> None:
        u = self.u
        ents, geo, _ = self._where(c)
        reason = _draw(u(), _FAILED_CUM, _FAILED_NAMES)
        username = c.email
        tried = ents
        if reason == "unknown_user":
            # A typo in the e-mail: no such user, so no customer on the attempt.
            local, _, domain = c.email.partition("@")
            username = f"{local[:-1]}@{domain}" if len(local) > 1 else f"{local}x@{domain}"
            tried = Entities(device=ents.device, ip=ents.ip)
        self.make.failed_login(ts, tried, username, geo, c.user_agent, reason)
        # Then the customer gets in: at once, or after the lockout (about a quarter hour).
        wait = 900 + u() * 900 if reason == "locked" else 8 + u() * 30
        self.make.login(ts + wait, ents, geo, c.user_agent)

    def _mfa_challenge(self, ts: float, c: Customer) -> None:
        u = self.u
        r = u()
        ents = self._session(c)
        result = "denied" if r < MFA_DENIED else "timeout" if r < MFA_DENIED + MFA_TIMEOUT else "approved"
        self.make.mfa_challenge(ts, ents, result)
        if result != "approved" and u() < 0.8:
            # A deny by mistake, or a prompt that timed out: the customer asks again and approves.
            self.make.mfa_challenge(ts + 10 + u() * 50, ents, "approved")

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
        where = [self._where(c) for c in custs]
        ents = [w[0] for w in where]
        mfa = [
            (self.u() < NEW_DEVICE_MFA) if w[2] else (c.kyc_tier > 1 or m)
            for c, w, m in zip(custs, where, (u[0] < 0.5).tolist(), strict=True)
        ]
        self.make.logins(
            stamps(times),
            ents,
            [w[1] for w in where],
            [c.user_agent for c in custs],
            mfa,
        )
        for k, w in enumerate(where):
            if w[2] and mfa[k]:
                # The new device's login passed a push to the customer's phone.
                self.make.mfa_challenge(float(times[k]) + 5 + self.u() * 20, w[0], "approved")
        # Their orders and account changes now come from this login's device and IP (API
        # traders' orders stay with their bot).
        ents_array = _objects(ents)
        self._session_ents[who] = ents_array
        app = ~self._api_trader[who]
        self._order_ents[who[app]] = ents_array[app]
        # The logouts in the order they happen: the slice's sort then merges sorted runs.
        order = np.argsort(ends, kind="stable")
        self.make.logouts(
            stamps(ends[order]),
            _rows(order.tolist())(ents),
            _LOGOUT_REASON_ARRAY[by_user[order].view(np.int8)].tolist(),
        )

    def _orders(self, times: np.ndarray[Any, Any], who: np.ndarray[Any, Any]) -> None:
        n = len(times)
        u = self._vec_gen.random((7, n))
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
        ents = self._order_ents[who].tolist()
        placed = stamps(times)
        # Order types: market orders fill at once, stop orders rest (or are cancelled) like
        # limit ones.  Each type is one batch; the orders are put back in their rows.
        kind = np.searchsorted(
            (MARKET_ORDER_SHARE, MARKET_ORDER_SHARE + STOP_ORDER_SHARE), u[6], side="right"
        )
        market = kind == 0
        order_ids: list[str] = [""] * n
        for code, order_type in ((0, "market"), (1, "stop"), (2, "limit")):
            ks = np.flatnonzero(kind == code).tolist()
            if not ks:
                continue
            rows = _rows(ks)
            for k, o in zip(
                ks,
                m.orders(
                    rows(placed),
                    rows(ents),
                    rows(symbols),
                    rows(sides),
                    rows(prices),
                    rows(quantities),
                    order_type=order_type,
                ),
                strict=True,
            ):
                order_ids[k] = o.payload.order_id
        # Of all orders half are cancelled and four in ten fill against another customer (every
        # market order, and enough of the others), the rest rest.  Each follow-up kind is emitted in time
        # order: sorted runs, cheap for the slice's sort.
        cancelled = np.flatnonzero((u[3] < _CANCEL) & ~market)
        cancel_at = times[cancelled] - 300 * np.log1p(-u[4][cancelled])
        by_time = np.argsort(cancel_at, kind="stable")
        rows = _rows(cancelled[by_time].tolist())
        m.cancels(
            stamps(cancel_at[by_time]),
            rows(ents),
            list(rows(order_ids)),
            rows(symbols),
            rows(sides),
            rows(prices),
            rows(quantities),
            rows(placed),
        )
        filled = np.flatnonzero(((u[3] >= _CANCEL) & (u[3] < _CANCEL + _FILL)) | market)
        fill_at = times[filled] - np.where(market[filled], 0.5, 60.0) * np.log1p(-u[4][filled])
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
            if asset != "ETH":
                amt = round(math.exp(6.5 + 1.3 * z()), 2)
            elif u() < ROUND_ETH_DEPOSIT:
                amt = pick(u(), _ROUND_ETH)
            else:
                amt = round(math.exp(-0.5 + 1.2 * z()), 6)
            # From the customer's own wallets mostly; sometimes from another exchange or a payer.
            book = self.pop.counterparties.benign_eth if u() < FOREIGN_DEPOSIT_SHARE else c.address_book
            self.make.deposit(ts, c, asset, amt, "ethereum", pick(u(), book), confirm_after=60 + u() * 600)

    def _fiat_deposit(self, ts: float, c: Customer) -> None:
        self.make.fiat_deposit(ts, c, round(math.exp(6 + 1.2 * self.z()), 2))

    def _withdrawal(self, ts: float, c: Customer) -> None:
        u, z = self.u, self.z
        hot = self.pop.hot_wallets
        r = u()
        delay = 30 - 240 * math.log(1 - u())
        if r < 0.2:
            self.make.withdrawal(
                ts,
                c,
                "USD",
                round(math.exp(6 + z()), 2),
                None,
                None,
                delay=3600 + delay,
                ents=self._session(c),
            )
        elif r < 0.4:
            amt = round(math.exp(-3.5 + z()), 8)
            self.make.withdrawal(
                ts,
                c,
                "BTC",
                amt,
                "bitcoin",
                c.btc_address_book[0],
                delay=delay,
                hot_wallet=hot["bitcoin"],
                ents=self._session(c),
            )
        else:
            asset = "ETH" if r < 0.7 else "USDT"
            amt = (
                round(math.exp(-0.7 + 1.1 * z()), 6) if asset == "ETH" else round(math.exp(6 + 1.2 * z()), 2)
            )
            fresh = self._fresh_addresses.get(c.index)
            r = u()
            if fresh and r < RECENT_ADDRESS_WITHDRAWAL:
                to = pick(u(), fresh)
            elif r > 1 - UNLISTED_ADDRESS_WITHDRAWAL:
                to = evm_address(self._plans)
            else:
                to = pick(u(), c.address_book)
            self._withdraw(ts, c, asset, amt, to, delay)

    def _withdraw(self, ts: float, c: Customer, asset: str, amount: float, to: str, delay: float) -> None:
        """An ETH or USDT withdrawal to ``to``, requested from the app (the latest login's device
        and IP, as attacks' requests carry them) or by the customer's bot through the API."""
        api = self._api_ents.get(c.index)
        via_api = api is not None and api.api_key in self._withdraw_keys
        self.make.withdrawal(
            ts,
            c,
            asset,
            amount,
            "ethereum",
            to,
            delay=delay,
            hot_wallet=self.pop.hot_wallets["ethereum"],
            channel="api" if via_api else "app" if c.user_agent in _MOBILE_UAS else "web",
            ents=api if via_api else self._session(c),
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
            decline_reason=_draw(u(), _DECLINE_CUM, _DECLINE_NAMES) if declined else None,
        )

    def _loyalty(self, ts: float, c: Customer) -> None:
        u = self.u
        pts = min(c.loyalty_points, pick(u(), _LOYALTY_TIERS))
        self.make.loyalty(ts, self._session(c), pts, pick(u(), ("fee-discount", "gift-card", "merch")))

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
        u = self.u
        ents = self._session(c)
        if u() >= NEW_ADDRESS_SHARE:
            self.make.withdrawal_address_added(ts, c, pick(u(), c.address_book), "ETH", "ethereum", ents)
            return
        address = evm_address(self._plans)
        self.make.withdrawal_address_added(ts, c, address, "ETH", "ethereum", ents)
        if u() < SAME_SESSION_WITHDRAWAL:
            # Added to be used: a first withdrawal minutes to hours later (often a small test).
            asset = "USDT" if u() < 0.5 else "ETH"
            amt = (
                round(math.exp(5 + 1.5 * self.z()), 2)
                if asset == "USDT"
                else round(math.exp(-1.5 + self.z()), 6)
            )
            self._withdraw(
                ts + 60 - 1800 * math.log(1 - u()), c, asset, amt, address, 30 - 240 * math.log(1 - u())
            )
        else:
            self._fresh_addresses.setdefault(c.index, []).append(address)

    def _password_reset(self, ts: float, c: Customer) -> None:
        ents, _, _ = self._where(c)
        self.make.password_reset(ts, ents, "email", "requested")
        self.make.password_reset(ts + 60 + self.u() * 600, ents, "email", "completed")

    def _api_key(self, ts: float, c: Customer) -> None:
        """A key created in the app (the latest login's device and IP); the customer's bot then
        uses it from a cloud server: trading keys place the customer's orders from there, and
        most withdraw-capable ones sweep funds to the customer's own wallet within hours."""
        u = self.u
        key = "key-" + self.make.mint()[:12]
        perms = list(_draw(u(), _PERM_CUM, [p for _, p in API_KEY_PERMISSIONS]))
        made = self._session(c)
        self.make.api_key_created(
            ts,
            Entities(customer=c.id, api_key=key, ip=made.ip, device=made.device),
            key,
            perms,
            "trading-bot",
        )
        if perms == ["read"]:
            return
        server = Entities(customer=c.id, account=c.account, api_key=key, ip=ip_in(self._plans, self._cloud))
        self._api_ents[c.index] = server
        if "trade" in perms:
            self._api_trader[c.index] = True
            self._order_ents[c.index] = server
        if "withdraw" in perms:
            self._withdraw_keys.add(key)
            if u() < API_WITHDRAW_USE:
                asset = "USDT" if u() < 0.6 else "ETH"
                amt = (
                    round(math.exp(7 + self.z()), 2)
                    if asset == "USDT"
                    else round(math.exp(-0.5 + self.z()), 6)
                )
                later = ts + 1800 + u() * 6 * 3600
                self._withdraw(later, c, asset, amt, c.own_wallet, 30 - 240 * math.log(1 - u()))

    def _email_change(self, ts: float, c: Customer) -> None:
        """A new contact address (a new provider, a work or private address)."""
        u = self.u
        local = c.email.split("@")[0]
        new = f"{local}{int(u() * 100)}@{pick(u(), ('gmail.com', 'proton.me', 'outlook.com', 'icloud.com'))}"
        self.make.email_change(ts, self._session(c), c.email, new)

    def _mfa_change(self, ts: float, c: Customer) -> None:
        """Mostly a new phone enrolled; 2FA turned on; a reset through support after a lost phone;
        rarely turned off or an old device removed."""
        u = self.u
        r = u()
        ents = self._session(c)
        if r < 0.5:
            self.make.mfa_change(ts, ents, "device_added", "push")
        elif r < 0.7:
            self.make.mfa_change(ts, ents, "enabled", "totp")
        elif r < 0.85:
            self.make.mfa_change(ts, ents, "reset", "totp", via_support=u() < 0.6)
        elif r < 0.95:
            self.make.mfa_change(ts, ents, "device_removed", "push")
        else:
            self.make.mfa_change(ts, ents, "disabled", "totp")
