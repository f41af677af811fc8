"""Who lives in the simulated exchange: customers, employees, vendors, wallets, counterparties.

Everything is drawn from one seeded generator, so a seed always yields the same people.
Per-customer ``Entities`` and ``Geo`` objects are built once here and shared by every
event about that customer (they are frozen), which keeps generation cheap.
"""

from __future__ import annotations

import base64
import itertools
import random
import string
from dataclasses import dataclass, field

from vigil.events.base import Entities
from vigil.events.types import Geo
from vigil.sim.intel import IntelLists

_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Place:
    country: str
    city: str
    lat: float
    lon: float
    tz: int
    #: First octets of consumer ISP ranges there (plausible, not authoritative).
    prefixes: tuple[int, ...]

    def geo(self) -> Geo:
        return Geo(country=self.country, city=self.city, lat=self.lat, lon=self.lon)


HOME_PLACES: tuple[Place, ...] = (
    Place("US", "New York", 40.71, -74.01, -5, (73, 98, 24)),
    Place("GB", "London", 51.51, -0.13, 0, (81, 86)),
    Place("DE", "Berlin", 52.52, 13.40, 1, (84, 91)),
    Place("PT", "Lisbon", 38.72, -9.14, 0, (85, 89)),
    Place("FR", "Paris", 48.86, 2.35, 1, (90, 92)),
    Place("ES", "Madrid", 40.42, -3.70, 1, (83, 88)),
    Place("BR", "Sao Paulo", -23.55, -46.63, -3, (177, 187)),
    Place("SG", "Singapore", 1.35, 103.82, 8, (116, 175)),
    Place("JP", "Tokyo", 35.68, 139.69, 9, (126, 153)),
    Place("IN", "Mumbai", 19.08, 72.88, 5, (49, 117)),
    Place("CA", "Toronto", 43.65, -79.38, -5, (99, 142)),
    Place("AU", "Sydney", -33.87, 151.21, 10, (101, 110)),
)
HOME_WEIGHTS = (20, 12, 10, 6, 8, 6, 8, 5, 5, 8, 6, 6)

#: Where attackers operate from: hosting and VPN ranges far from the victims.
ATTACKER_PLACES: tuple[Place, ...] = (
    Place("RU", "Moscow", 55.76, 37.62, 3, (45, 185, 193)),
    Place("VN", "Hanoi", 21.03, 105.85, 7, (14, 113)),
    Place("RO", "Bucharest", 44.43, 26.10, 2, (5, 89)),
    Place("NL", "Amsterdam", 52.37, 4.90, 1, (185, 194)),
    Place("NG", "Lagos", 6.52, 3.38, 1, (102, 105)),
)

#: Where benign travellers go.
TRAVEL_PLACES: tuple[Place, ...] = (
    Place("TH", "Bangkok", 13.76, 100.50, 7, (171, 182)),
    Place("MX", "Cancun", 21.16, -86.85, -5, (187, 189)),
    Place("IT", "Rome", 41.90, 12.50, 1, (79, 93)),
    Place("AE", "Dubai", 25.20, 55.27, 4, (94, 5)),
)

#: Where commercial VPNs' exit nodes sit (the "prefixes" are hosting ranges).  Crypto users
#: use VPNs far more than the general public; the exits cluster in a few data-centre cities.
VPN_PLACES: tuple[Place, ...] = (
    Place("NL", "Amsterdam", 52.37, 4.90, 1, (185, 146)),
    Place("CH", "Zurich", 47.38, 8.54, 1, (185, 194)),
    Place("SE", "Stockholm", 59.33, 18.07, 1, (45, 193)),
    Place("US", "Los Angeles", 34.05, -118.24, -8, (104, 192)),
)

#: First octets of cloud providers' ranges (AWS, GCP, Hetzner, DigitalOcean): where customers'
#: trading bots and portfolio tools run and call the API from.
CLOUD_PREFIXES: tuple[int, ...] = (3, 18, 34, 52, 54, 65, 95, 159, 167)

#: Activity weights are Pareto(1.3) capped here: a retail customer's day tops out at a few
#: hundred events (about 6x the mean at the default 60 events per customer-day), where the
#: uncapped tail gave one customer ~9,000 events and ~1,300 logins in a day.  High-frequency
#: flow on real exchanges is API bots and market makers, which this population does not model.
ACTIVITY_CAP = 12.0
#: Share of customers sharing their home IP with another customer (a partner or flatmate on
#: the same exchange behind one router), and of those also sharing a device (a family laptop).
HOUSEHOLD_SHARE = 0.06
SHARED_DEVICE_SHARE = 0.15
#: Mobile subscribers per carrier-grade-NAT egress IP, as the pools are sized: CGNAT puts
#: hundreds to thousands of subscribers behind one public IPv4 address, so mobile-app logins
#: from unrelated customers share IPs routinely.
CGNAT_CUSTOMERS_PER_IP = 40

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
    "ExchangeApp/5.12.0 (iOS 18.1)",
    "ExchangeApp/5.12.0 (Android 15)",
)

#: Well-known DeFi spenders customers legitimately approve (public mainnet contracts).
DEFI_SPENDERS: dict[str, str] = {
    "uniswap_v2_router": "0x7a250d5630b4cf539739df2c5dacb4c659f2488d",
    "uniswap_universal_router": "0x3fc91a3afd70395cd496c647d5a6cc9d4b2b7fad",
    "oneinch_v5_router": "0x1111111254eeb25477b68fb85ed929f73a960582",
    "permit2": "0x000000000022d473030f116ddee9f6b43ac78ba3",
}

#: ERC-20 tokens the simulation moves: symbol -> (contract, decimals).
TOKENS: dict[str, tuple[str, int]] = {
    "USDT": ("0xdac17f958d2ee523a2206206994597c13d831ec7", 6),
    "USDC": ("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 6),
    "WETH": ("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", 18),
}

#: Reference USD prices at the start of the simulation.
PRICES: dict[str, float] = {
    "BTC": 92_000.0,
    "ETH": 3_100.0,
    "SOL": 140.0,
    "USDT": 1.0,
    "USDC": 1.0,
    "WETH": 3_100.0,
}
#: Symbols traded on the exchange; the last one is a thin market (pump-and-dump target).
SYMBOLS: tuple[str, ...] = ("BTC-USD", "ETH-USD", "SOL-USD", "ETH-BTC", "NKN-USD")
SYMBOL_PRICES: dict[str, float] = {
    "BTC-USD": 92_000.0,
    "ETH-USD": 3_100.0,
    "SOL-USD": 140.0,
    "ETH-BTC": 0.0337,
    "NKN-USD": 0.0412,
}
THIN_SYMBOL = "NKN-USD"

FIRST = (
    "ana",
    "joao",
    "maria",
    "li",
    "wei",
    "sam",
    "alex",
    "noah",
    "emma",
    "lucas",
    "mia",
    "omar",
    "yuki",
    "ravi",
)
LAST = (
    "silva",
    "smith",
    "chen",
    "mueller",
    "garcia",
    "kim",
    "sato",
    "patel",
    "dubois",
    "costa",
    "novak",
    "okafor",
)
MAIL = ("gmail.com", "outlook.com", "proton.me", "yahoo.com", "icloud.com")

EXCHANGE_DOMAIN = "vigil-exchange.com"


# RFC 4648 base32 letters -> the bech32 alphabet (same size, 32 symbols).
_TO_BECH32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "qpzry9x8gf2tvdw0s3jn54khce6mua7l")


def evm_address(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


def btc_address(rng: random.Random) -> str:
    """A native-segwit-looking address (bech32 alphabet; the checksum is not computed)."""
    body = base64.b32encode(rng.getrandbits(240).to_bytes(30, "big")).decode()[:38]
    return "bc1q" + body.translate(_TO_BECH32)


def hex_id(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def ip_in(rng: random.Random, place: Place) -> str:
    first = rng.choice(place.prefixes)
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def lookalike(rng: random.Random, address: str, head: int = 5, tail: int = 5) -> str:
    """An EVM address sharing the first ``head`` and last ``tail`` hex digits, different in between."""
    body = address[2:]
    middle = body[head : 40 - tail]
    while True:
        new_middle = "".join(rng.choices(_HEX, k=len(middle)))
        if new_middle != middle:
            return "0x" + body[:head] + new_middle + body[40 - tail :]


@dataclass(slots=True)
class Customer:
    index: int
    id: str
    account: str
    email: str
    kyc_tier: int
    place: Place
    geo: Geo
    devices: tuple[str, ...]
    ips: tuple[str, ...]
    user_agent: str
    #: UTC hours this customer is usually active in.
    login_hours: frozenset[int]
    balances: dict[str, float]
    #: Usual external counterparties (EVM); the first is the customer's own self-custody wallet.
    address_book: tuple[str, ...]
    btc_address_book: tuple[str, ...]
    deposit_wallet: str
    btc_deposit_wallet: str
    cards: tuple[str, ...]
    loyalty_points: int
    activity: float
    entities: Entities = field(default_factory=Entities)
    money_entities: Entities = field(default_factory=Entities)

    @property
    def own_wallet(self) -> str:
        return self.address_book[0]

    @property
    def country(self) -> str:
        return self.place.country

    @property
    def usual_hours(self) -> list[int]:
        return sorted(self.login_hours)


@dataclass(slots=True)
class Employee:
    id: str
    email: str
    role: str
    ip: str
    work_hours: frozenset[int]
    crm: str


@dataclass(slots=True)
class Vendor:
    id: str
    kind: str
    platform: str
    #: Customers whose records this vendor holds.
    customer_ids: tuple[str, ...]
    api_tokens: tuple[str, ...]
    integration_ips: tuple[str, ...]


@dataclass(slots=True)
class Counterparties:
    benign_eth: tuple[str, ...]
    benign_btc: tuple[str, ...]
    mixers: tuple[str, ...]
    ofac_eth: tuple[str, ...]
    ofac_btc: tuple[str, ...]
    drainers: tuple[str, ...]
    phishing_domains: dict[str, tuple[str, ...]]
    defi_spenders: dict[str, str]


@dataclass(slots=True)
class Population:
    customers: list[Customer]
    employees: list[Employee]
    vendors: dict[str, Vendor]
    hot_wallets: dict[str, str]
    cold_wallets: dict[str, str]
    counterparties: Counterparties
    by_id: dict[str, Customer] = field(default_factory=dict)
    #: Mobile carriers' CGNAT egress IPs by country (home and travel places): shared by many
    #: customers, and none of them any one customer's own.
    carrier_ips: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def customer(self, customer_id: str) -> Customer:
        return self.by_id[customer_id]

    def known_entities(self) -> dict[str, set[str]]:
        """Every entity id the population defines, by kind (what events may reference)."""
        c = self.customers
        cp = self.counterparties
        wallets = {*self.hot_wallets.values(), *self.cold_wallets.values()}
        for cu in c:
            wallets.update(cu.address_book, cu.btc_address_book, (cu.deposit_wallet, cu.btc_deposit_wallet))
        return {
            "customer": {x.id for x in c},
            "account": {x.account for x in c},
            "device": {d for x in c for d in x.devices},
            "employee": {e.id for e in self.employees},
            "vendor": set(self.vendors),
            "wallet": wallets,
            "counterparty": {
                *cp.benign_eth,
                *cp.benign_btc,
                *cp.mixers,
                *cp.ofac_eth,
                *cp.ofac_btc,
                *cp.drainers,
            },
        }


def _hours(start_local: int, length: int, tz: int) -> frozenset[int]:
    return frozenset((start_local - tz + h) % 24 for h in range(length))


def build_population(seed: int, customers: int, intel: IntelLists) -> Population:
    rng = random.Random(f"vigil-sim:{seed}:population")
    benign_eth = tuple(evm_address(rng) for _ in range(max(50, customers // 20)))
    benign_btc = tuple(btc_address(rng) for _ in range(max(20, customers // 50)))
    people: list[Customer] = []
    home_cum = list(itertools.accumulate(HOME_WEIGHTS))
    for i in range(customers):
        place = rng.choices(HOME_PLACES, cum_weights=home_cum)[0]
        cid = f"cust-{i:06d}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        devices = tuple(f"dev-{hex_id(rng, 10)}" for _ in range(rng.choice((1, 1, 2, 2, 3))))
        ips = tuple(ip_in(rng, place) for _ in range(rng.choice((1, 2, 2, 3))))
        book = (evm_address(rng), *rng.sample(benign_eth, rng.randrange(1, 4)))
        scale = rng.lognormvariate(0, 1.6)
        balances = {
            "BTC": round(0.05 * scale, 6),
            "ETH": round(1.2 * scale, 6),
            "USDT": round(2500 * scale, 2),
            "USD": round(1500 * scale, 2),
        }
        c = Customer(
            index=i,
            id=cid,
            account=f"acct-{i:06d}",
            email=f"{first}.{last}{rng.randrange(100)}@{rng.choice(MAIL)}",
            kyc_tier=rng.choices((1, 2, 3), weights=(5, 4, 1))[0],
            place=place,
            geo=place.geo(),
            devices=devices,
            ips=ips,
            user_agent=rng.choice(USER_AGENTS),
            login_hours=_hours(rng.randrange(6, 11), rng.randrange(11, 17), place.tz),
            balances=balances,
            address_book=book,
            btc_address_book=(rng.choice(benign_btc), btc_address(rng)),
            deposit_wallet=evm_address(rng),
            btc_deposit_wallet=btc_address(rng),
            cards=tuple(f"fp-{hex_id(rng, 12)}" for _ in range(rng.choice((1, 1, 2)))),
            loyalty_points=int(rng.paretovariate(1.5) * 2000),
            # Heavy tail: a few customers produce much of the traffic (capped: ACTIVITY_CAP).
            activity=min(rng.paretovariate(1.3), ACTIVITY_CAP),
        )
        c.entities = Entities(customer=cid, account=c.account, device=devices[0], ip=ips[0], email=c.email)
        c.money_entities = Entities(customer=cid, account=c.account)
        people.append(c)

    office = HOME_PLACES[3]
    employees = []
    roles = (
        "support",
        "support",
        "support",
        "crm",
        "crm",
        "compliance",
        "finance",
        "marketing",
        "engineering",
    )
    for i in range(max(12, min(80, customers // 100))):
        role = roles[i % len(roles)]
        employees.append(
            Employee(
                id=f"emp-{i:03d}",
                email=f"emp{i:03d}@{EXCHANGE_DOMAIN}",
                role=role,
                ip=f"85.240.10.{10 + i}",
                work_hours=_hours(8, 10, office.tz),
                # Staff work in Salesforce; HubSpot is the marketing CRM that integrations sync.
                crm="salesforce",
            )
        )

    ids = [c.id for c in people]
    vendors = {
        "hubspot": Vendor(
            "hubspot",
            "crm",
            "hubspot",
            tuple(rng.sample(ids, int(len(ids) * 0.7))),
            (f"pat-na1-{hex_id(rng, 8)}",),
            ("34.226.18.5", "52.7.122.90"),
        ),
        "salesforce": Vendor(
            "salesforce",
            "crm",
            "salesforce",
            tuple(rng.sample(ids, int(len(ids) * 0.4))),
            (f"00D{hex_id(rng, 12)}",),
            ("13.108.0.14",),
        ),
        "mailchimp": Vendor(
            "mailchimp",
            "email",
            "mailchimp",
            tuple(rng.sample(ids, int(len(ids) * 0.8))),
            (f"mc-{hex_id(rng, 16)}-us21",),
            ("205.201.131.40",),
        ),
        "stripe": Vendor(
            "stripe", "payments", "stripe", tuple(ids), (f"rk_live_{hex_id(rng, 12)}",), ("54.187.174.169",)
        ),
    }
    pop = Population(
        customers=people,
        employees=employees,
        vendors=vendors,
        hot_wallets={"ethereum": evm_address(rng), "bitcoin": btc_address(rng)},
        cold_wallets={"ethereum": evm_address(rng), "bitcoin": btc_address(rng)},
        counterparties=Counterparties(
            benign_eth=benign_eth,
            benign_btc=benign_btc,
            mixers=tuple(evm_address(rng) for _ in range(6)),
            ofac_eth=intel.ofac_eth,
            ofac_btc=intel.ofac_btc,
            drainers=intel.drainers,
            phishing_domains=intel.phishing_domains,
            defi_spenders=dict(DEFI_SPENDERS),
        ),
    )
    pop.by_id = {c.id: c for c in people}
    # Drawn from a generator of their own, so that the customers above stay what a seed gave.
    _households(random.Random(f"vigil-sim:{seed}:households"), people)
    pop.carrier_ips = _carrier_ips(random.Random(f"vigil-sim:{seed}:carriers"), people)
    return pop


def _households(rng: random.Random, people: list[Customer]) -> None:
    """Pairs of customers in the same city share a home IP (and a few, a device too): one of
    them takes the other's home IP as their own first IP."""
    by_place: dict[str, list[Customer]] = {}
    for c in people:
        by_place.setdefault(c.place.city, []).append(c)
    for group in by_place.values():
        pairs = int(len(group) * HOUSEHOLD_SHARE / 2 + rng.random())
        for a, b in zip(*[iter(rng.sample(group, min(len(group), 2 * pairs)))] * 2, strict=False):
            b.ips = (a.ips[0], *b.ips[1:])
            if rng.random() < SHARED_DEVICE_SHARE:
                b.devices = (*b.devices, a.devices[0])
            b.entities = Entities(
                customer=b.id, account=b.account, device=b.devices[0], ip=b.ips[0], email=b.email
            )


def _carrier_ips(rng: random.Random, people: list[Customer]) -> dict[str, tuple[str, ...]]:
    """CGNAT egress IPs per country: one per CGNAT_CUSTOMERS_PER_IP customers there (at least
    three), from the country's consumer ranges; travel places get a few (roaming, eSIMs)."""
    count: dict[str, int] = {}
    for c in people:
        count[c.country] = count.get(c.country, 0) + 1
    pools: dict[str, tuple[str, ...]] = {}
    for place in (*HOME_PLACES, *TRAVEL_PLACES):
        n = max(3, count.get(place.country, 0) // CGNAT_CUSTOMERS_PER_IP)
        pools[place.country] = tuple(ip_in(rng, place) for _ in range(n))
    return pools


def phishing_domain(rng: random.Random) -> str:
    """A look-alike of the exchange's domain, as phishing kits register them."""
    stem = rng.choice(("vigil-exchange", "vigilexchange", "vigil-exchanqe", "vigii-exchange"))
    word = rng.choice(("verify", "secure", "login", "support", "wallet", "kyc"))
    tld = rng.choice(("com", "io", "net", "app", "co"))
    return f"{stem}-{word}.{tld}" if rng.random() < 0.7 else f"{word}-{stem}.{tld}"


def token_id(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=24))


__all__ = [
    "ATTACKER_PLACES",
    "HOME_PLACES",
    "TRAVEL_PLACES",
    "VPN_PLACES",
    "Counterparties",
    "Customer",
    "Employee",
    "Place",
    "Population",
    "Vendor",
    "btc_address",
    "build_population",
    "evm_address",
    "ip_in",
    "lookalike",
]
