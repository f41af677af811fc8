"""Attacks through the exchange's SaaS: a compromised CRM/e-mail vendor, and an insider's bulk export."""

from __future__ import annotations

from vigil.events.base import Entities
from vigil.events.records import EpisodeLabel
from vigil.sim.population import phishing_domain
from vigil.sim.scenarios.base import Episode, Scenario, campaign_id, ref
from vigil.sim.scenarios.identity import takeover


class SupplyChainCompromise(Scenario):
    """A vendor API token abused: bulk export, phishing to exactly those customers, takeovers.

    The token is used from an unusual place, the export takes a share of the customers the
    vendor holds, the phishing wave reaches exactly them, and a few lose their funds.

    The breach's label holds the vendor-side events (token use, export, the phishing wave and
    the clicks of recipients who lost nothing) and names the vendor, the attacker's IP and the
    token; its window runs to the last takeover.  Each takeover is an ``account_takeover``
    episode of its own (``params.parent_episode`` names the breach): an alert on a victim
    detects the breach only if its evidence holds the breach's own events (the export).
    """

    name = "supply_chain_compromise"
    entity_kind = "vendor"
    per_day = 0.7
    length = 8 * 3600.0
    defaults = {"min_export_share": 0.2, "max_export_share": 0.5, "min_victims": 2, "max_victims": 3}

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        vendor = ep.pop.vendors[rng.choice(("hubspot", "salesforce"))]
        a = ep.attacker()
        token = vendor.api_tokens[0]
        ents = Entities(vendor=vendor.id, ip=a.ip, api_key=token)
        t = ep.t0
        holders = [c for c in vendor.customer_ids if c not in ep.world.used]
        low, high = self.amount("min_export_share"), self.amount("max_export_share")
        size = min(len(holders), max(20, int(len(holders) * (low + rng.random() * (high - low)))))
        stolen = sorted(rng.sample(holders, size))
        op = "crm.objects.contacts.read" if vendor.platform == "hubspot" else "query"
        for _ in range(rng.randrange(2, 5)):
            m.crm_token(
                t, ents, vendor.platform, token, op, rng.randrange(100, 1000), a.geo, "python-requests/2.32"
            )
            t += 5 + rng.random() * 30
        m.crm_export(t, ents, vendor.platform, stolen, f"api:{token[:8]}", a.geo)
        # The phishing wave: sent hours later through the e-mail platform to exactly those customers.
        t += min(ep.room * 0.3, 3600 + rng.random() * 3 * 3600)
        domain = phishing_domain(rng)
        campaign = campaign_id(t)
        m.campaign(t, "mailchimp", campaign, "Action required: verify your account", domain, stolen, [domain])
        # Takeovers among the recipients; each is also an account_takeover episode of its own.
        labels: list[EpisodeLabel] = []
        vendor_side = list(ep.events)
        victims = rng.sample(stolen, min(len(stolen), self.draw(rng, "victims")))
        last_end = t
        for n, cid in enumerate(victims):
            c = ep.pop.customer(cid)
            ep.world.used.add(cid)
            before = len(ep.events)
            end, leave, att, dest = takeover(ep, c, t + 300 + rng.random() * 1800, domain, campaign)
            last_end = max(last_end, end)
            labels.append(
                ep.label(
                    ref("customer", c.id),
                    # As a direct takeover's label (the vendor is the parent episode's, named in
                    # params): an alert on the victim's account or the attacker's device counts.
                    related=[
                        ref("account", c.account),
                        ref("device", att.device),
                        ref("ip", att.ip),
                        ref("wallet", dest),
                    ],
                    events=ep.events[before:],
                    funds_leave_at=leave,
                    params={"parent_episode": ep.id, "phishing_domain": domain},
                    scenario="account_takeover",
                    suffix=f"-ato{n}",
                )
            )
        # Clicks by other recipients who did not lose money (they still clicked).
        after_takeovers = len(ep.events)
        for cid in rng.sample(stolen, min(len(stolen), rng.randrange(3, 10))):
            if cid in victims:
                continue
            c = ep.pop.customer(cid)
            m.click(
                t + 120 + rng.random() * 3600,
                c,
                "mailchimp",
                campaign,
                f"https://{domain}/verify",
                domain,
                c.ips[0],
            )
        vendor_side += ep.events[after_takeovers:]
        main = ep.label(
            ref("vendor", vendor.id),
            related=[ref("ip", a.ip), ref("api_key", token)],
            events=vendor_side,
            until=last_end,
            params={
                "exported": str(len(stolen)),
                "phishing_domain": domain,
                "campaign": campaign,
                "victims": ",".join(victims),
            },
        )
        return [main, *labels]


class InsiderExport(Scenario):
    """An employee logs in to the CRM at night and exports most customer records."""

    name = "insider_export"
    entity_kind = "employee"
    per_day = 1.0
    length = 1800.0

    def build(self, ep: Episode) -> list[EpisodeLabel]:
        rng, m = ep.rng, ep.make
        e = ep.world.pick_employee(rng)
        # At night: outside the working hours and the hour after them (the exports take up to
        # some 25 minutes).
        t = ep.within(e.work_hours | {(h + 1) % 24 for h in e.work_hours}, ep.t0, inside=False, length=1500)
        ip = f"{rng.choice((89, 94, 176))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        ents = Entities(employee=e.id, vendor=e.crm, ip=ip, email=e.email)
        m.crm_login(t, ents, e.crm, e.email, None, "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0")
        vendor = ep.pop.vendors[e.crm]
        ids = list(vendor.customer_ids)
        total = 0
        for _ in range(rng.randrange(2, 5)):
            t += 60 + rng.random() * 300
            chunk = sorted(rng.sample(ids, min(len(ids), max(200, int(len(ids) * 0.3)))))
            total += len(chunk)
            m.crm_export(t, ents, e.crm, chunk, e.email, None)
        t += 30
        m.cloudtrail(t, e.id, ip, "GetObject", resource="arn:aws:s3:::crm-exports/contacts.csv")
        return [
            ep.label(
                ref("employee", e.id),
                related=[ref("vendor", e.crm), ref("ip", ip)],
                params={
                    "records": str(total),
                    "hour_utc": str(ep.hour_of(ep.events[0].occurred_at.timestamp())),
                },
            )
        ]
