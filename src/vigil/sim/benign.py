"""Benign life: daily rhythm, weekends, bursts around market moves, heavy-tailed customers.

Time is cut into slices.  Each slice gets a share of the benign volume by the hour's
activity (the customers whose usual hours cover it, weighted by their heavy-tailed
activity), a weekend dip, and bursts in "market move" slices where trading spikes.
Within a slice, action times are drawn uniformly and sorted; each action picks a kind
from the mix and a customer by that hour's weights.  Actions have consequences later
(a logout after a login, a cancel after an order, a withdrawal sent after its request);
those that fall past the slice wait on a time-ordered heap that later slices drain, so
the stream stays sorted by event time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from operator import attrgetter

from vigil.events.base import Entities, Event
from vigil.events.types import Geo
from vigil.sim.factory import UNLIMITED, Make
from vigil.sim.population import (
    EXCHANGE_DOMAIN,
    PRICES,
    SYMBOL_PRICES,
    SYMBOLS,
    THIN_SYMBOL,
    Customer,
    Population,
)

SLICE_SECONDS = 600.0
MAX_SESSION = 4 * 3600.0
#: Where the exchange's staff work, and where the CRM vendors' integration hosts run.
HOME_GEO = Geo(country="PT", city="Lisbon", lat=38.72, lon=-9.14)
INTEGRATION_GEO = Geo(country="US", city="Ashburn", lat=39.04, lon=-77.49)
_EMPTY = Entities()
_BY_TIME = attrgetter("occurred_at")

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
#: Base units per order: about 200 USD of the base asset (heavy-tailed around it).
_ORDER_USD = {s: 200 / PRICES.get(s.split("-")[0], SYMBOL_PRICES[s]) for s in SYMBOLS}
#: What staff do in AWS on a normal day: (eventName, resource).
_STAFF_CALLS = (
    ("ConsoleLogin", None),
    ("AssumeRole", "arn:aws:iam::210987654321:role/ReadOnly"),
    ("GetObject", "arn:aws:s3:::reports/daily-volume.csv"),
    ("DescribeInstances", None),
)
MERCHANTS = ("amazon", "uber", "spotify", "steam", "airbnb", "starbucks", "netflix", "apple")


class BenignTraffic:
    """Generates the benign stream slice by slice.  Deterministic for a given seed and population."""

    def __init__(self, pop: Population, seed: int, start: float, span: float, events: int) -> None:
        self.pop = pop
        self.rng = random.Random(f"vigil-sim:{seed}:benign")
        self.start = start
        self.end = start + span
        self.out: list[Event] = []
        self.make = Make(seed, "benign", start, self.out)
        self.pending: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self.prices = dict(SYMBOL_PRICES)
        self._venue_trade_ids = {"coinbase": 880_000_000, "binance": 3_100_000_000}
        self._campaign: str | None = None
        kinds = list(MIX)
        self._kinds = kinds
        self._kind_cum = list(itertools.accumulate(MIX[k][0] for k in kinds))
        mean_events = sum(MIX[k][0] * MIX[k][1] for k in kinds) / self._kind_cum[-1]
        self._handlers: dict[str, Callable[[float, Customer], None]] = {
            k: getattr(self, f"_{k}") for k in kinds
        }
        # Per UTC hour: customers' cumulative weights (heavy-tailed activity, usual hours).
        custs = pop.customers
        self._hour_cum: list[list[float]] = []
        hour_weight: list[float] = []
        for h in range(24):
            weights = [c.activity * (1.0 if h in c.login_hours else 0.08) for c in custs]
            self._hour_cum.append(list(itertools.accumulate(weights)))
            hour_weight.append(sum(weights))
        self.slice_len = min(SLICE_SECONDS, max(1.0, span / 10))
        n_slices = max(1, math.ceil(span / self.slice_len))
        burst_rng = random.Random(f"vigil-sim:{seed}:bursts")
        self.bursts = {i for i in range(n_slices) if burst_rng.random() < 0.03}
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
        rest = [e for _, _, e in sorted(self.pending)]
        self.pending.clear()
        if rest:
            yield self.end, math.inf, rest

    def _slice(self, i: int, lo: float, hi: float, count: int) -> list[Event]:
        rng = self.rng
        width = hi - lo
        burst = i in self.bursts
        self._move_prices(width, burst)
        hour = datetime.fromtimestamp(lo, UTC).hour
        times = sorted(lo + rng.random() * width for _ in range(count))
        kinds = rng.choices(self._kinds, cum_weights=self._kind_cum, k=count)
        if burst:
            # Market moves: a share of the actions turn into trading.
            kinds = [k if rng.random() < 0.5 else "order" for k in kinds]
        who = rng.choices(self.pop.customers, cum_weights=self._hour_cum[hour], k=count)
        self.out.clear()
        day = f"cmp-{int(lo // 86400)}"
        if self._campaign != day:
            self._newsletter(lo, day)
        handlers = self._handlers
        for ts, kind, c in zip(times, kinds, who, strict=True):
            handlers[kind](ts, c)
        events = self.out
        pend = self.pending
        while pend and pend[0][0] < hi:
            events.append(heapq.heappop(pend)[2])
        events.sort(key=_BY_TIME)
        # Anything a handler placed past the slice (a transfer waiting for its block) waits too.
        while events and events[-1].occurred_at.timestamp() >= hi:
            e = events.pop()
            heapq.heappush(pend, (e.occurred_at.timestamp(), next(self._seq), e))
        out = list(events)
        events.clear()
        return out

    def _move_prices(self, width: float, burst: bool) -> None:
        vol = (0.02 if burst else 0.004) * math.sqrt(width / 3600)
        for sym, p in self.prices.items():
            self.prices[sym] = round(p * math.exp(self.rng.gauss(0, vol)), 6 if p < 1 else 2)

    def _newsletter(self, lo: float, cid: str) -> None:
        self._campaign = cid
        recipients = list(self.pop.vendors["mailchimp"].customer_ids[:50])
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

    def _ents(self, c: Customer) -> Entities:
        rng = self.rng
        if len(c.devices) == 1 and len(c.ips) == 1:
            return c.entities
        if rng.random() < 0.6:
            return c.entities
        return Entities(
            customer=c.id,
            account=c.account,
            device=rng.choice(c.devices),
            ip=rng.choice(c.ips),
            email=c.email,
        )

    def _session(self, ts: float, c: Customer) -> None:
        ents = self._ents(c)
        m = self.make
        m.login(ts, ents, c.geo, c.user_agent, mfa=c.kyc_tier > 1 or self.rng.random() < 0.5)
        # Sessions last minutes to hours; the idle timeout ends the longest at MAX_SESSION.
        length = min(60 + self.rng.expovariate(1 / 1500), MAX_SESSION)
        m.logout(ts + length, ents, "user" if length < MAX_SESSION and self.rng.random() < 0.6 else "timeout")

    def _failed_login(self, ts: float, c: Customer) -> None:
        ents = self._ents(c)
        self.make.failed_login(ts, ents, c.email, c.geo, c.user_agent, "bad_password")
        self.make.login(ts + 8 + self.rng.random() * 30, ents, c.geo, c.user_agent)

    def _mfa_challenge(self, ts: float, c: Customer) -> None:
        self.make.mfa_challenge(ts, c.entities, "approved" if self.rng.random() < 0.97 else "timeout")

    def _order(self, ts: float, c: Customer) -> None:
        random = self.rng.random
        r0 = random()
        # Most orders go to the liquid markets; a few to the thin one.
        sym = _LIQUID[int(r0 * 4)] if r0 < 0.97 else THIN_SYMBOL
        price = self.prices[sym]
        side = "buy" if random() < 0.5 else "sell"
        px = round(price * (0.998 + random() * 0.004), 6 if price < 1 else 2)
        qty = round(math.exp(self.rng.gauss(0, 1.2)) * _ORDER_USD[sym], 6) or 0.0001
        m = self.make
        ents = c.money_entities
        o = m.order(ts, ents, None, sym, side, px, qty)
        r = random()
        if r < 0.5:
            m.cancel(ts - 300 * math.log(1 - random()), ents, o.payload.order_id, sym, side, px, qty, ts)
        elif r < 0.9:
            custs = self.pop.customers
            other = custs[int(random() * len(custs))]
            m.trade(ts - 60 * math.log(1 - random()), ents, sym, px, qty, side, other.account, c.account)

    def _trade(self, ts: float, c: Customer) -> None:
        rng = self.rng
        sym = SYMBOLS[int(rng.random() * 3)]
        custs = self.pop.customers
        other = custs[int(rng.random() * len(custs))]
        qty = round(rng.lognormvariate(0, 1.0) * 300 / self.prices[sym], 6) or 0.0001
        side = "buy" if rng.random() < 0.5 else "sell"
        self.make.trade(ts, c.money_entities, sym, self.prices[sym], qty, side, other.account, c.account)

    def _venue_trade(self, ts: float, c: Customer) -> None:
        rng = self.rng
        sym = rng.choice(SYMBOLS[:3])
        venue = "coinbase" if rng.random() < 0.6 else "binance"
        self._venue_trade_ids[venue] += 1
        px = round(self.prices[sym] * (1 + (rng.random() - 0.5) * 0.0006), 2)
        qty = round(rng.lognormvariate(0, 1.5) * 0.5 * 1000 / self.prices[sym], 8) or 0.00001
        symbol = sym if venue == "coinbase" else sym.replace("-USD", "USDT")
        self.make.trade(
            ts,
            _EMPTY,
            symbol,
            px,
            qty,
            "buy" if rng.random() < 0.5 else "sell",
            None,
            None,
            venue=venue,
            source=venue,
            trade_id=str(self._venue_trade_ids[venue]),
        )

    def _deposit(self, ts: float, c: Customer) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            amt = round(rng.lognormvariate(-3.5, 1.2), 8)
            self.make.deposit(ts, c, "BTC", amt, "bitcoin", rng.choice(c.btc_address_book))
        else:
            asset = "ETH" if r < 0.6 else "USDT"
            amt = (
                round(rng.lognormvariate(-0.5, 1.2), 6)
                if asset == "ETH"
                else round(rng.lognormvariate(6.5, 1.3), 2)
            )
            self.make.deposit(
                ts,
                c,
                asset,
                amt,
                "ethereum",
                rng.choice(c.address_book),
                confirm_after=60 + rng.random() * 600,
            )

    def _fiat_deposit(self, ts: float, c: Customer) -> None:
        self.make.fiat_deposit(ts, c, round(self.rng.lognormvariate(6, 1.2), 2))

    def _withdrawal(self, ts: float, c: Customer) -> None:
        rng = self.rng
        hot = self.pop.hot_wallets
        r = rng.random()
        delay = 30 + rng.expovariate(1 / 240)
        if r < 0.2:
            self.make.withdrawal(
                ts, c, "USD", round(rng.lognormvariate(6, 1), 2), None, None, delay=3600 + delay
            )
        elif r < 0.4:
            amt = round(rng.lognormvariate(-3.5, 1.0), 8)
            self.make.withdrawal(
                ts, c, "BTC", amt, "bitcoin", c.btc_address_book[0], delay=delay, hot_wallet=hot["bitcoin"]
            )
        else:
            asset = "ETH" if r < 0.7 else "USDT"
            amt = (
                round(rng.lognormvariate(-0.7, 1.1), 6)
                if asset == "ETH"
                else round(rng.lognormvariate(6, 1.2), 2)
            )
            self.make.withdrawal(
                ts,
                c,
                asset,
                amt,
                "ethereum",
                rng.choice(c.address_book),
                delay=delay,
                hot_wallet=hot["ethereum"],
            )

    def _payment(self, ts: float, c: Customer) -> None:
        rng = self.rng
        declined = rng.random() < 0.04
        self.make.payment(
            ts,
            c.entities,
            round(rng.lognormvariate(3, 1), 2),
            rng.choice(MERCHANTS),
            rng.choice(c.cards),
            status="declined" if declined else "approved",
            decline_reason="insufficient_funds" if declined else None,
        )

    def _loyalty(self, ts: float, c: Customer) -> None:
        pts = min(c.loyalty_points, 500 * self.rng.randrange(1, 6))
        self.make.loyalty(ts, c.entities, pts, self.rng.choice(("fee-discount", "gift-card", "merch")))

    def _employee(self, ts: float) -> tuple[int, Entities]:
        emps = self.pop.employees
        hour = datetime.fromtimestamp(ts, UTC).hour
        working = [e for e in emps if hour in e.work_hours] or emps
        e = self.rng.choice(working)
        return emps.index(e), Entities(employee=e.id, vendor=e.crm, ip=e.ip, email=e.email)

    def _crm_login(self, ts: float, c: Customer) -> None:
        i, ents = self._employee(ts)
        e = self.pop.employees[i]
        self.make.crm_login(ts, ents, e.crm, e.email, HOME_GEO, "Mozilla/5.0 (Windows NT 10.0; Win64; x64)")

    def _crm_token(self, ts: float, c: Customer) -> None:
        rng = self.rng
        v = self.pop.vendors[rng.choice(("hubspot", "salesforce"))]
        ip = rng.choice(v.integration_ips)
        self.make.crm_token(
            ts,
            Entities(vendor=v.id, ip=ip, api_key=v.api_tokens[0]),
            v.platform,
            v.api_tokens[0],
            "crm.objects.contacts.read" if v.platform == "hubspot" else "query",
            rng.randrange(1, 120),
            INTEGRATION_GEO,
            "exchange-sync/2.3",
        )

    def _crm_export(self, ts: float, c: Customer) -> None:
        i, ents = self._employee(ts)
        e = self.pop.employees[i]
        vendor = self.pop.vendors[e.crm]
        k = self.rng.randrange(5, 60)
        ids = sorted(self.rng.sample(vendor.customer_ids, min(k, len(vendor.customer_ids))))
        self.make.crm_export(
            ts, ents, e.crm, ids, e.email, HOME_GEO, "tickets" if e.role == "support" else "contacts"
        )

    def _click(self, ts: float, c: Customer) -> None:
        cid = self._campaign or "cmp-0"
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
        i, _ = self._employee(ts)
        e = self.pop.employees[i]
        name, resource = _STAFF_CALLS[int(self.rng.random() * len(_STAFF_CALLS))]
        self.make.cloudtrail(
            ts, e.id, e.ip, name, resource=resource, mfa=True if name == "ConsoleLogin" else None
        )

    def _defi_approval(self, ts: float, c: Customer) -> None:
        rng = self.rng
        spender = rng.choice(list(self.pop.counterparties.defi_spenders.values()))
        asset = rng.choice(("USDT", "USDC", "WETH"))
        amount = UNLIMITED if rng.random() < 0.7 else round(rng.lognormvariate(6, 1)) * 10**6
        self.make.token_approval(
            ts, c.own_wallet, spender, asset, amount, self.make.tx_hash("appr", ts, c.id)
        )

    def _address_added(self, ts: float, c: Customer) -> None:
        self.make.withdrawal_address_added(
            ts, c, self.rng.choice(c.address_book), "ETH", "ethereum", self._ents(c)
        )

    def _password_reset(self, ts: float, c: Customer) -> None:
        ents = self._ents(c)
        self.make.password_reset(ts, ents, "email", "requested")
        self.make.password_reset(ts + 60 + self.rng.random() * 600, ents, "email", "completed")

    def _api_key(self, ts: float, c: Customer) -> None:
        key = "key-" + self.make.ids.derived("key", ts, c.id)[:12]
        perms = ["read", "trade"] if self.rng.random() < 0.8 else ["read"]
        self.make.api_key_created(
            ts, Entities(customer=c.id, api_key=key, ip=c.ips[0]), key, perms, "trading-bot"
        )
