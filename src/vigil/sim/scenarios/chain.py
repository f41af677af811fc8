"""On-chain attacks: address poisoning, sanctioned exposure, drainer approvals, mixers, hot-wallet drain."""

from __future__ import annotations

from collections.abc import Mapping

from vigil.errors import ConfigError
from vigil.events.records import EpisodeLabel
from vigil.events.types import EntityRef
from vigil.sim.factory import UNLIMITED
from vigil.sim.population import btc_address, lookalike
from vigil.sim.scenarios.base import Episode, Param, Scenario, campaign_id, ref

#: The default look-alike: the address's first and last characters after 0x that it copies.
POISON_HEAD = 5
POISON_TAIL = 5


class AddressPoisoning(Scenario):
    """A zero-value or dust transfer from a look-alike of a usual counterparty, then a withdrawal to it."""

    name = "address_poisoning"
    entity_kind = "customer"
    per_day = 2.0
    length = 4 * 3600.0
    defaults = {"head": POISON_HEAD, "tail": POISON_TAIL}

    @classmethod
    def check(cls, values: Mapping[str, Param]) -> None:
        # An address has 40 characters after 0x: the look-alike must differ somewhere between.
        if values["head"] + values["tail"] > 38:
            msg = f"scenario {cls.name!r}: head + tail must leave the address a middle to differ in (<= 38)"
            raise ConfigError(msg)

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng, lambda c: len(c.address_book) > 1)
        usual = rng.choice(c.address_book[1:] or c.address_book)
        head, tail = self.count("head"), self.count("tail")
        fake = lookalike(rng, usual, head, tail)
        t = ep.t0
        zero = rng.random() < 0.5
        # Zero-value USDT transferFrom (anyone can emit it) or a dust ETH send.
        asset, amount = ("USDT", 0.0) if zero else ("ETH", round(0.00001 + rng.random() * 0.0001, 8))
        m.chain_transfer(
            t, "ethereum", fake, c.deposit_wallet, asset, amount, m.tx_hash("dust", t), log_index=0
        )
        t += min(ep.room * 0.5, 900 + rng.random() * 3 * 3600)
        m.login(t, c.entities, c.geo, c.user_agent)
        t += 60 + rng.random() * 300
        m.withdrawal_address_added(t, c, fake, "USDT", "ethereum")
        t += 30 + rng.random() * 300
        amount = round(max(c.balances["USDT"], 400.0) * (0.3 + rng.random() * 0.6), 2)
        delay = 60 + rng.random() * 900
        m.withdrawal(
            t, c, "USDT", amount, "ethereum", fake, delay=delay, hot_wallet=ep.pop.hot_wallets["ethereum"]
        )
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("wallet", fake), ref("counterparty", usual)],
                funds_leave_at=t + delay,
                params={
                    "lookalike_of": usual,
                    "lookalike": fake,
                    "head": str(head),
                    "tail": str(tail),
                    "dust": "zero" if zero else "dust",
                },
            )
        ]


#: Episode i takes variant i (mod 7): the first four already cover direct, one and two hops, in and out.
SANCTION_VARIANTS = (
    "deposit_direct",
    "withdrawal_2hop",
    "deposit_1hop",
    "withdrawal_direct",
    "deposit_2hop",
    "withdrawal_1hop",
    "btc_deposit_direct",
)


class SanctionedExposure(Scenario):
    """Funds from or to a real OFAC-listed address, directly or through one or two hops."""

    name = "sanctioned_exposure"
    entity_kind = "customer"
    per_day = 4.0
    length = 2 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        cp = ep.pop.counterparties
        c = ep.world.pick_customer(rng)
        variant = SANCTION_VARIANTS[ep.index % len(SANCTION_VARIANTS)]
        hops = 0 if "direct" in variant else int(variant.split("_")[1][0])
        t = ep.t0
        leave: float | None = None
        related: list[EntityRef] = []
        if variant.startswith("btc"):
            sdn = rng.choice(cp.ofac_btc)
            m.deposit(t, c, "BTC", round(0.05 + rng.random() * 0.5, 8), "bitcoin", sdn, confirm_after=1800)
        elif variant.startswith("deposit"):
            sdn = rng.choice(cp.ofac_eth)
            amount = round(0.5 + rng.random() * 20, 4)
            path = [sdn] + [ep.fresh_address() for _ in range(hops)]
            for i in range(hops):
                m.chain_transfer(t, "ethereum", path[i], path[i + 1], "ETH", amount, m.tx_hash("hop", i, t))
                related.append(ref("wallet", path[i + 1]))
                t += 300 + rng.random() * 3000
                amount = round(amount * (0.97 + rng.random() * 0.02), 4)
            m.deposit(t, c, "ETH", amount, "ethereum", path[-1], confirm_after=180 + rng.random() * 300)
        else:
            sdn = rng.choice(cp.ofac_eth)
            path = [ep.fresh_address() for _ in range(hops)] + [sdn]
            amount = round(max(c.balances["ETH"], 0.5) * (0.5 + rng.random() * 0.5), 4)
            delay = 60 + rng.random() * 900
            m.withdrawal(
                t,
                c,
                "ETH",
                amount,
                "ethereum",
                path[0],
                delay=delay,
                hot_wallet=ep.pop.hot_wallets["ethereum"],
            )
            leave = t + delay
            t = leave + 15
            for i in range(hops):
                t += 300 + rng.random() * 3000
                amount = round(amount * 0.99, 4)
                m.chain_transfer(t, "ethereum", path[i], path[i + 1], "ETH", amount, m.tx_hash("hop", i, t))
                related.append(ref("wallet", path[i]))
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("counterparty", sdn), *related],
                funds_leave_at=leave,
                params={"variant": variant, "hops": str(hops), "sanctioned": sdn, "list": "ofac"},
            )
        ]


class DrainerApproval(Scenario):
    """A phishing click, an unlimited approve/permit to a scam-list spender, then transferFrom drains."""

    name = "drainer_approval"
    entity_kind = "wallet"
    per_day = 2.0
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        domains = ep.pop.counterparties.phishing_domains
        names = sorted(domains)
        domain = names[rng.randrange(len(names))]
        spender = rng.choice(domains[domain])
        c = ep.world.pick_customer(rng)
        wallet = c.own_wallet
        t = ep.t0
        m.click(t, c, "mailchimp", campaign_id(t), f"https://{domain}/claim", domain, c.ips[0])
        t += 60 + rng.random() * 600
        kind = "permit" if rng.random() < 0.3 else "approve"
        assets = ["USDT"] if rng.random() < 0.6 else ["USDT", "USDC"]
        for asset in assets:
            m.token_approval(t, wallet, spender, asset, UNLIMITED, m.tx_hash("approve", asset, t), kind)
            t += 15 + rng.random() * 60
        leave = t + 30 + rng.random() * 300
        t = leave
        for asset in assets:
            amount = round(max(c.balances["USDT"], 200.0) * (0.5 + rng.random()), 2)
            m.chain_transfer(
                t, "ethereum", wallet, spender, asset, amount, m.tx_hash("drain", asset, t), log_index=1
            )
            t += 12 + rng.random() * 24
        return [
            ep.label(
                ref("wallet", wallet),
                related=[ref("customer", c.id), ref("counterparty", spender)],
                funds_leave_at=leave,
                params={"phishing_domain": domain, "spender": spender, "kind": kind, "list": "scamsniffer"},
            )
        ]


#: Where the mixer's payouts come from: one mixer address (``one_address``), a fresh relayer
#: address for each (``relayers``: the relayer submits the withdrawal and pays it out), or the
#: pool contract of each denomination (``pool_per_size``: one listed mixer address per pool
#: size).  Episode i takes variant i (mod 3): a run with two episodes has the first two.
MIXER_VARIANTS = ("one_address", "relayers", "pool_per_size")


class MixerLaundering(Scenario):
    """Deposits in mixer denominations from a mixer (one address, or several), then a withdrawal
    into a peel chain."""

    name = "mixer_laundering"
    entity_kind = "customer"
    per_day = 1.5
    length = 4 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng)
        mixers = ep.pop.counterparties.mixers
        mixer = rng.choice(mixers)
        variant = MIXER_VARIANTS[ep.index % len(MIXER_VARIANTS)]
        # pool_per_size: each denomination's pool is its own listed address (in a fixed order).
        pools = {
            size: mixers[(mixers.index(mixer) + i) % len(mixers)] for i, size in enumerate((0.1, 1.0, 10.0))
        }
        senders: list[str] = []
        t = ep.t0
        total = 0.0
        for _ in range(rng.randrange(2, 6)):
            amount = rng.choice((1.0, 10.0, 1.0, 0.1))
            if variant == "relayers":
                sender = ep.fresh_address()
            elif variant == "pool_per_size":
                sender = pools[amount]
            else:
                sender = mixer
            if sender not in senders:
                senders.append(sender)
            m.deposit(t, c, "ETH", amount, "ethereum", sender, confirm_after=120 + rng.random() * 300)
            total += amount
            t += 600 + rng.random() * 1800
        t += 300
        first = ep.fresh_address()
        delay = 60 + rng.random() * 600
        amount = round(total * 0.98, 4)
        m.withdrawal(
            t, c, "ETH", amount, "ethereum", first, delay=delay, hot_wallet=ep.pop.hot_wallets["ethereum"]
        )
        leave = t + delay
        t = leave + 15
        # Peel chain: each hop keeps most of the value and peels a little off to a side address.
        hop = first
        chain = [first]
        for i in range(rng.randrange(3, 6)):
            t += 120 + rng.random() * 900
            nxt, side = ep.fresh_address(), ep.fresh_address()
            peel = round(amount * (0.03 + rng.random() * 0.07), 4)
            amount = round(amount - peel, 4)
            m.chain_transfer(t, "ethereum", hop, nxt, "ETH", amount, m.tx_hash("peel", i))
            m.chain_transfer(t, "ethereum", hop, side, "ETH", peel, m.tx_hash("side", i))
            hop = nxt
            chain.append(nxt)
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("counterparty", s) for s in senders] + [ref("wallet", w) for w in chain],
                funds_leave_at=leave,
                params={
                    "variant": variant,
                    "mixer": mixer,
                    "senders": ",".join(senders),
                    "deposited_eth": f"{total:g}",
                    "peel_hops": str(len(chain) - 1),
                },
            )
        ]


class HotWalletDrain(Scenario):
    """An exchange-level compromise: cloud credential abuse, then the hot wallet swept to fresh addresses."""

    name = "hot_wallet_drain"
    entity_kind = "wallet"
    per_day = 0.5
    length = 1800.0
    defaults = {"min_destinations": 3, "max_destinations": 8}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        eng = [e for e in ep.pop.employees if e.role == "engineering"] or ep.pop.employees
        e = rng.choice(eng)
        a = ep.attacker()
        hot = ep.pop.hot_wallets["ethereum"]
        t = ep.t0
        principal = f"arn:aws:iam::210987654321:user/{e.id}"
        calls = (
            ("ConsoleLogin", None),
            ("AssumeRole", "arn:aws:iam::210987654321:role/HotWalletSigner"),
            ("GetSecretValue", "hot-wallet-signer-key"),
            ("Decrypt", None),
        )
        for name, resource in calls:
            m.cloudtrail(
                t,
                e.id,
                a.ip,
                name,
                resource=resource,
                user_agent="aws-cli/2.15.30 Python/3.11.8 Linux/6.1",
                mfa=False if name == "ConsoleLogin" else None,
            )
            t += 20 + rng.random() * 120
        leave = t
        dests = [ep.fresh_address() for _ in range(self.draw(rng, "destinations"))]
        for i, d in enumerate(dests):
            asset = "ETH" if i % 2 == 0 else "USDT"
            amount = round(rng.uniform(200, 2000), 4) if asset == "ETH" else round(rng.uniform(5e5, 5e6), 2)
            m.chain_transfer(t, "ethereum", hot, d, asset, amount, m.tx_hash("drain", i))
            t += 12 + rng.random() * 36
        # If the BTC hot wallet goes too.
        if rng.random() < 0.5:
            m.chain_transfer(
                t,
                "bitcoin",
                ep.pop.hot_wallets["bitcoin"],
                btc_address(rng),
                "BTC",
                round(rng.uniform(20, 200), 8),
                m.tx_hash("btc")[2:],
            )
        return [
            ep.label(
                ref("wallet", hot),
                related=[ref("employee", e.id), ref("ip", a.ip)] + [ref("wallet", d) for d in dests],
                funds_leave_at=leave,
                params={"destinations": str(len(dests)), "compromised_principal": principal},
            )
        ]
