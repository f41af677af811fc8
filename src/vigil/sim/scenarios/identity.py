"""Account-level attacks: takeover after phishing, credential stuffing, API-key abuse, loyalty theft."""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.population import EXCHANGE_DOMAIN, Customer, ip_in, phishing_domain
from vigil.sim.scenarios.base import (
    ATTACK_FAILED_LOGIN_REASONS,
    BAD_PASSWORD,
    BENIGN_FAILED_LOGIN_REASONS,
    Attacker,
    Episode,
    Scenario,
    campaign_id,
    draw_reason,
    ref,
    victim_entities,
)

#: How the attacker gets in.  ``phished_login``: the phished password typed from the
#: attacker's own device abroad.  ``stolen_cookie``: the session cookie (an infostealer's or an
#: adversary-in-the-middle phishing proxy's) replayed from the attacker's IP abroad: the
#: victim's own device id and user agent, no password typed, no second factor asked.
#: ``stolen_cookie_local_proxy``: the same through a residential proxy in the victim's own
#: city, so only the IP is new.  ``reset_from_mailbox``: the phished password was the
#: customer's mailbox's: the attacker resets the exchange password there first, then logs in
#: with it from their own device abroad.  Episode i takes variant i (mod 4).
TAKEOVER_VARIANTS = ("phished_login", "stolen_cookie", "stolen_cookie_local_proxy", "reset_from_mailbox")


def takeover(
    ep: Episode,
    c: Customer,
    t: float,
    domain: str,
    campaign: str,
    vendor: str = "mailchimp",
    variant: str = "phished_login",
) -> tuple[float, float, Attacker, str]:
    """Phishing click -> login from the attacker's IP (new device, or the victim's own through a
    stolen session: ``variant``, one of :data:`TAKEOVER_VARIANTS`) -> credential change -> new
    address -> withdrawal (``reset_from_mailbox``: the credential change before the login).

    Returns (end time, funds-leave time, the attacker, the attacker's address).  The request
    precedes the send by 1-20 minutes so a hold decision can come first.
    """
    rng, m = ep.rng, ep.make
    a = ep.attacker()
    m.click(t, c, vendor, campaign, f"https://{domain}/account/verify?c={c.index}", domain, c.ips[0])
    t += 120 + rng.random() * 1500
    if variant == "phished_login":
        ents = victim_entities(c, a)
        for _ in range(rng.randrange(0, 3)):
            m.failed_login(t, ents, c.email, a.geo, a.user_agent, BAD_PASSWORD)
            t += 5 + rng.random() * 20
        fatigue = rng.random() < 0.3
        if fatigue:
            # MFA fatigue: push prompts denied until the tired victim approves one.
            for _ in range(rng.randrange(3, 9)):
                m.mfa_challenge(t, ents, "denied", "push")
                t += 10 + rng.random() * 40
            m.mfa_challenge(t, ents, "approved", "push")
            t += 3
        m.login(t, ents, a.geo, a.user_agent, mfa=fatigue)
    elif variant == "reset_from_mailbox":
        # The reset link goes to the mailbox the attacker now reads; no second factor is set
        # on the account (one would be asked at the login that follows).
        ents = victim_entities(c, a)
        m.password_reset(t, ents, "email", "requested")
        t += 40 + rng.random() * 200
        m.password_reset(t, ents, "email", "completed")
        t += 10 + rng.random() * 60
        m.login(t, ents, a.geo, a.user_agent, mfa=False)
    else:
        if variant == "stolen_cookie_local_proxy":
            a = Attacker(c.place, ip_in(rng, c.place), c.devices[0], c.user_agent)
        elif variant == "stolen_cookie":
            a = Attacker(a.place, a.ip, c.devices[0], c.user_agent)
        else:
            msg = f"unknown takeover variant {variant!r}; one of {', '.join(TAKEOVER_VARIANTS)}"
            raise ValueError(msg)
        # The replayed session: no failed password, no MFA prompt; the device id is the victim's.
        ents = victim_entities(c, a)
        m.login(t, ents, a.geo, a.user_agent, mfa=False)
    t += 30 + rng.random() * 150
    if variant != "reset_from_mailbox":  # that one changed the password before the login
        if rng.random() < 0.5:
            m.password_reset(t, ents, "email", "completed")
        else:
            m.mfa_change(t, ents, "reset", "totp", via_support=rng.random() < 0.3)
        if rng.random() < 0.3:
            t += 20 + rng.random() * 60
            m.email_change(t, ents, c.email, f"{c.email.split('@')[0]}.{rng.randrange(1000)}@proton.me")
    t += 60 + rng.random() * 240
    dest = ep.fresh_address()
    asset = "USDT" if rng.random() < 0.6 else "ETH"
    m.withdrawal_address_added(t, c, dest, asset, "ethereum", ents)
    t += 60 + rng.random() * 540
    amount = round(max(c.balances[asset], 500.0 if asset == "USDT" else 0.2) * (0.8 + rng.random() * 0.2), 6)
    delay = 60 + rng.random() * 1140
    m.withdrawal(
        t,
        c,
        asset,
        amount,
        "ethereum",
        dest,
        delay=delay,
        hot_wallet=ep.pop.hot_wallets["ethereum"],
        ents=ents,
    )
    return t + delay + 15, t + delay, a, dest


class AccountTakeover(Scenario):
    """Phishing click, a login from the attacker's IP (a new device, or the victim's own through a
    stolen session cookie), credential change, new address, withdrawal."""

    name = "account_takeover"
    entity_kind = "customer"
    per_day = 4.0  # one of each variant a day at the default rate
    length = 3 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        c = ep.world.pick_customer(ep.rng, lambda c: c.balances["USDT"] > 300)
        domain = phishing_domain(ep.rng)
        variant = TAKEOVER_VARIANTS[ep.index % len(TAKEOVER_VARIANTS)]
        _, leave, a, dest = takeover(ep, c, ep.t0, domain, campaign_id(ep.t0), variant=variant)
        return [
            ep.label(
                ref("customer", c.id),
                related=[
                    ref("account", c.account),
                    ref("device", a.device),
                    ref("ip", a.ip),
                    ref("wallet", dest),
                ],
                funds_leave_at=leave,
                params={
                    "phishing_domain": domain,
                    "attacker_country": a.place.country,
                    "variant": variant,
                },
            )
        ]


class CredentialStuffing(Scenario):
    """Many accounts tried from a few IPs, mostly failing, a few logins succeeding."""

    name = "credential_stuffing"
    entity_kind = "ip"
    per_day = 1.5
    length = 1800.0
    defaults = {"min_ips": 2, "max_ips": 4, "min_attempts": 150, "max_attempts": 399, "success_rate": 0.015}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        attackers = [ep.attacker() for _ in range(self.draw(rng, "ips"))]
        attempts = self.draw(rng, "attempts")
        success = self.amount("success_rate")
        t = ep.t0
        custs = ep.pop.customers
        hits: list[str] = []
        # Reasons as benign failures give them too: a reason only attacks gave would label them.
        benign = BENIGN_FAILED_LOGIN_REASONS
        unknown = "unknown_user" if "unknown_user" in benign else BAD_PASSWORD
        for i in range(attempts):
            a = attackers[i % len(attackers)]
            t += rng.expovariate(1 / 4.0)
            reason = draw_reason(rng, ATTACK_FAILED_LOGIN_REASONS, benign, BAD_PASSWORD)
            if rng.random() < 0.25:
                user = f"{rng.choice(('admin', 'test', 'crypto', 'trader'))}{rng.randrange(10**4)}@gmail.com"
                m.failed_login(t, Entities(device=a.device, ip=a.ip), user, a.geo, a.user_agent, unknown)
                continue
            c = custs[rng.randrange(len(custs))]
            ents = Entities(customer=c.id, account=c.account, device=a.device, ip=a.ip, email=c.email)
            if rng.random() < success:
                m.login(t, ents, a.geo, a.user_agent, mfa=False)
                hits.append(c.id)
            else:
                m.failed_login(t, ents, c.email, a.geo, a.user_agent, reason)
        return [
            ep.label(
                ref("ip", attackers[0].ip),
                related=[ref("ip", a.ip) for a in attackers[1:]] + [ref("customer", h) for h in hits],
                params={"attempts": str(attempts), "ips": str(len(attackers)), "successes": str(len(hits))},
            )
        ]


#: Where the thief adds the withdrawal address: through the stolen key itself, from the IP it
#: withdraws from (``key_adds_address``), or in the hijacked web session that made the key
#: (``session_adds_address``).  Episode i takes variant i (mod 2).
API_KEY_VARIANTS = ("key_adds_address", "session_adds_address")


class ApiKeyAbuse(Scenario):
    """A new API key with withdrawal rights, used from a new IP to withdraw to a new address."""

    name = "api_key_abuse"
    entity_kind = "customer"
    per_day = 1.5
    length = 2 * 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng, lambda c: c.balances["USDT"] > 300)
        a = ep.attacker()
        variant = API_KEY_VARIANTS[ep.index % len(API_KEY_VARIANTS)]
        t = ep.t0
        # A hijacked session (stolen cookie) creates the key from the victim's usual device...
        m.login(t, c.entities, c.geo, c.user_agent, mfa=True)
        t += 60 + rng.random() * 600
        key = "key-" + ep.make.ids.derived("apikey")[:12]
        session = Entities(customer=c.id, account=c.account, ip=c.ips[0], device=c.devices[0])
        m.api_key_created(
            t,
            Entities(customer=c.id, api_key=key, ip=c.ips[0], device=c.devices[0]),
            key,
            ["read", "trade", "withdraw"],
        )
        api = Entities(customer=c.id, account=c.account, api_key=key, ip=a.ip)
        if variant == "session_adds_address":
            # ...which adds the withdrawal address there too, not through the key...
            t += 60 + rng.random() * 600
            dest = ep.fresh_address()
            m.withdrawal_address_added(t, c, dest, "USDT", "ethereum", session)
            # ...and the key withdraws to it from a new IP far away.
            t += 300 + rng.random() * 1800
        else:
            # ...and it is used from a new IP far away, adding the address itself.
            t += 300 + rng.random() * 1800
            dest = ep.fresh_address()
            m.withdrawal_address_added(t, c, dest, "USDT", "ethereum", api)
        t += 30 + rng.random() * 120
        amount = round(max(c.balances["USDT"], 800.0) * (0.7 + rng.random() * 0.3), 2)
        delay = 60 + rng.random() * 900
        m.withdrawal(
            t,
            c,
            "USDT",
            amount,
            "ethereum",
            dest,
            delay=delay,
            hot_wallet=ep.pop.hot_wallets["ethereum"],
            channel="api",
            ents=api,
        )
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("api_key", key), ref("ip", a.ip), ref("wallet", dest)],
                funds_leave_at=t + delay,
                params={"attacker_country": a.place.country, "variant": variant},
            )
        ]


class LoyaltyTheft(Scenario):
    """A takeover login from a new device, then the loyalty points redeemed as gift cards."""

    name = "loyalty_theft"
    entity_kind = "customer"
    per_day = 1.5
    length = 3600.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        c = ep.world.pick_customer(rng, lambda c: c.loyalty_points >= 3000)
        a = ep.attacker()
        ents = victim_entities(c, a)
        t = ep.t0
        m.login(t, ents, a.geo, a.user_agent, mfa=False)
        t += 60 + rng.random() * 300
        if rng.random() < 0.6:
            m.email_change(t, ents, c.email, f"x{rng.randrange(10**6)}@tutanota.com")
            t += 30 + rng.random() * 120
        left = max(c.loyalty_points, 3000)
        while left >= 1000:
            pts = min(left, rng.choice((5000, 10000, 2500)))
            m.loyalty(t, ents, pts, "gift-card")
            left -= pts
            t += 10 + rng.random() * 60
        return [
            ep.label(
                ref("customer", c.id),
                related=[ref("device", a.device), ref("ip", a.ip)],
                params={"points": str(max(c.loyalty_points, 3000)), "domain": EXCHANGE_DOMAIN},
            )
        ]
