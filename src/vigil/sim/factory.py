"""Building canonical events cheaply and deterministically.

Event ids come from :func:`vigil.events.ids.stable_id` of the seed and a namespace (the
benign stream, or one scenario episode), extended per event with a counter through a
copied BLAKE2b state: the same seed gives the same ids, ids reveal nothing about which
stream they came from, and one id costs a fraction of a microsecond.

Times are float epoch seconds until an event is built (cheap arithmetic, exact order).
"""

from __future__ import annotations

import hashlib
import math
import struct
from datetime import UTC, datetime
from typing import TypeVar

from vigil.events import types as t
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.sim.population import PRICES, TOKENS, Customer

E = TypeVar("E", bound=Event)

AWS_ACCOUNT = "210987654321"
AWS_REGION = "eu-west-1"
#: CloudTrail eventName -> the canonical action (the names the CloudTrail normaliser uses).
CLOUDTRAIL_ACTIONS = {
    "ConsoleLogin": "console_login",
    "GetObject": "s3_object_read",
    "GetSecretValue": "secret_read",
    "AssumeRole": "role_assumed",
}
CLOUDTRAIL_SOURCES = {
    "ConsoleLogin": "signin.amazonaws.com",
    "GetObject": "s3.amazonaws.com",
    "GetSecretValue": "secretsmanager.amazonaws.com",
    "AssumeRole": "sts.amazonaws.com",
    "Decrypt": "kms.amazonaws.com",
    "Sign": "kms.amazonaws.com",
    "DescribeInstances": "ec2.amazonaws.com",
}

UNLIMITED = 2**256 - 1
ETH_BLOCK_SECONDS = 12.0
BTC_BLOCK_SECONDS = 600.0
ETH_BASE_BLOCK = 23_700_000
BTC_BASE_BLOCK = 922_000


_fromts = datetime.fromtimestamp
_PACK = struct.Struct(">Q").pack


def at(ts: float) -> datetime:
    return _fromts(ts, UTC)


class IdMint:
    """Deterministic ids for one namespace: ``mint()`` returns the next one."""

    __slots__ = ("_base", "_copy", "_n")

    def __init__(self, seed: int, namespace: str) -> None:
        self._base = hashlib.blake2b(stable_id("vigil-sim", seed, namespace).encode(), digest_size=16)
        self._copy = self._base.copy
        self._n = 0

    def mint(self) -> str:
        n = self._n
        self._n = n + 1
        h = self._copy()
        h.update(_PACK(n))
        return h.hexdigest()

    def derived(self, *parts: object) -> str:
        """A 64-hex digest derived from this namespace (transaction hashes)."""
        h = self._base.copy()
        h.update(repr(parts).encode())
        return hashlib.blake2b(h.digest(), digest_size=32).hexdigest()


def usd(asset: str, amount: float) -> float:
    return round(amount * PRICES.get(asset, 1.0), 2)


def decimals_of(asset: str) -> int:
    if asset in TOKENS:
        return TOKENS[asset][1]
    return 8 if asset == "BTC" else 18


class Make:
    """Event constructors that mint ids and append to ``out``.

    ``start`` is the simulation start (epoch seconds) for block-number arithmetic.
    """

    def __init__(self, seed: int, namespace: str, start: float, out: list[Event] | None = None) -> None:
        self.ids = IdMint(seed, namespace)
        self.start = start
        self.out: list[Event] = out if out is not None else []
        self._append = self.out.append
        self.mint = self.ids.mint

    def _add(self, event: E) -> E:
        self._append(event)
        return event

    def tx_hash(self, *parts: object) -> str:
        return "0x" + self.ids.derived(*parts)

    def block(self, ts: float, chain: str) -> tuple[int, float]:
        """The block that includes something sent at ``ts``: the next block boundary, and its time.

        On-chain events happen at their block's time (what a node reports), never before
        what caused them; deposits are credited after confirmations, not before.
        """
        seconds = BTC_BLOCK_SECONDS if chain == "bitcoin" else ETH_BLOCK_SECONDS
        n = math.ceil((ts - self.start) / seconds)
        base = BTC_BASE_BLOCK if chain == "bitcoin" else ETH_BASE_BLOCK
        return base + n, self.start + n * seconds

    # ------------------------------------------------------------------ identity

    def login(
        self,
        ts: float,
        ents: Entities,
        geo: t.Geo | None,
        ua: str | None,
        *,
        mfa: bool = True,
        method: str = "password",
    ) -> Event:
        return self._add(
            t.Login(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.LoginPayload(method=method, mfa_used=mfa, user_agent=ua, geo=geo),  # type: ignore[arg-type]
            )
        )

    def failed_login(
        self, ts: float, ents: Entities, username: str, geo: t.Geo | None, ua: str | None, reason: str
    ) -> Event:
        return self._add(
            t.FailedLogin(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.FailedLoginPayload(reason=reason, username=username, user_agent=ua, geo=geo),  # type: ignore[arg-type]
            )
        )

    def logout(self, ts: float, ents: Entities, reason: str = "user") -> Event:
        return self._add(
            t.Logout(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.LogoutPayload(reason=reason),  # type: ignore[arg-type]
            )
        )

    def password_reset(
        self, ts: float, ents: Entities, channel: str = "email", stage: str = "completed"
    ) -> Event:
        return self._add(
            t.PasswordReset(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.PasswordResetPayload(stage=stage, channel=channel),  # type: ignore[arg-type]
            )
        )

    def mfa_change(
        self, ts: float, ents: Entities, action: str, method: str = "totp", *, via_support: bool = False
    ) -> Event:
        return self._add(
            t.MfaChange(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.MfaChangePayload(action=action, method=method, via_support=via_support),  # type: ignore[arg-type]
            )
        )

    def mfa_challenge(self, ts: float, ents: Entities, result: str, method: str = "push") -> Event:
        return self._add(
            t.MfaChallenge(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.MfaChallengePayload(result=result, method=method),  # type: ignore[arg-type]
            )
        )

    def email_change(self, ts: float, ents: Entities, old: str, new: str) -> Event:
        return self._add(
            t.EmailChange(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.EmailChangePayload(old_email=old, new_email=new),
            )
        )

    def api_key_created(
        self, ts: float, ents: Entities, key_id: str, permissions: list[str], label: str | None = None
    ) -> Event:
        return self._add(
            t.ApiKeyCreated(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.ApiKeyCreatedPayload(key_id=key_id, permissions=permissions, label=label),  # type: ignore[arg-type]
            )
        )

    def withdrawal_address_added(
        self, ts: float, c: Customer, address: str, asset: str, chain: str, ents: Entities | None = None
    ) -> Event:
        e = ents or c.entities
        return self._add(
            t.WithdrawalAddressAdded(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=Entities(
                    customer=c.id, account=c.account, wallet=address, device=e.device, ip=e.ip, email=c.email
                ),
                payload=t.WithdrawalAddressAddedPayload(address=address, asset=asset, chain=chain),
            )
        )

    # ------------------------------------------------------------------ payments and their chain legs

    def chain_transfer(
        self,
        ts: float,
        chain: str,
        sender: str,
        receiver: str,
        asset: str,
        amount: float,
        tx_hash: str,
        log_index: int | None = None,
    ) -> Event:
        dec = decimals_of(asset)
        raw = round(amount * 10**dec)
        token = TOKENS.get(asset)
        number, mined = self.block(ts, chain)
        return self._add(
            t.ChainTransfer(
                event_id=self.mint(),
                source=chain,
                occurred_at=at(mined),
                entities=Entities(wallet=sender, counterparty=receiver),
                payload=t.ChainTransferPayload(
                    chain=chain,  # type: ignore[arg-type]
                    tx_hash=tx_hash,
                    log_index=(log_index or 0) if token else None,
                    block_number=number,
                    from_address=sender,
                    to_address=receiver,
                    asset=asset,
                    token_contract=token[0] if token else None,
                    value_raw=raw,
                    decimals=dec,
                    amount=raw / 10**dec,
                    amount_usd=usd(asset, amount),
                ),
            )
        )

    def token_approval(
        self,
        ts: float,
        owner: str,
        spender: str,
        asset: str,
        amount_raw: int,
        tx_hash: str,
        kind: str = "approve",
    ) -> Event:
        token = TOKENS[asset]
        number, mined = self.block(ts, "ethereum")
        return self._add(
            t.TokenApproval(
                event_id=self.mint(),
                source="ethereum",
                occurred_at=at(mined),
                entities=Entities(wallet=owner, counterparty=spender),
                payload=t.TokenApprovalPayload(
                    tx_hash=tx_hash,
                    log_index=0,
                    block_number=number,
                    owner=owner,
                    spender=spender,
                    token_contract=token[0],
                    asset=asset,
                    amount_raw=amount_raw,
                    unlimited=amount_raw >= 2**255,
                    kind=kind,  # type: ignore[arg-type]
                ),
            )
        )

    def deposit(
        self,
        ts: float,
        c: Customer,
        asset: str,
        amount: float,
        chain: str,
        from_address: str,
        *,
        confirm_after: float = 300.0,
    ) -> tuple[Event, Event]:
        """The on-chain transfer into the customer's deposit wallet, then the credited deposit."""
        to = c.btc_deposit_wallet if chain == "bitcoin" else c.deposit_wallet
        if chain == "bitcoin":
            # Credited after confirmations: never before the block that carries it.
            confirm_after = max(confirm_after, 3 * BTC_BLOCK_SECONDS)
        tx = self.tx_hash("dep", ts, c.id, amount)
        if chain == "bitcoin":
            tx = tx[2:]
        leg = self.chain_transfer(ts, chain, from_address, to, asset, amount, tx)
        dep = self._add(
            t.Deposit(
                event_id=self.mint(),
                source="backend",
                occurred_at=at(ts + confirm_after),
                entities=Entities(customer=c.id, account=c.account, wallet=to, counterparty=from_address),
                payload=t.DepositPayload(
                    deposit_id="dep-" + tx[-16:],
                    asset=asset,
                    amount=amount,
                    amount_usd=usd(asset, amount),
                    chain=chain,
                    tx_hash=tx,
                    from_address=from_address,
                ),
            )
        )
        return leg, dep

    def fiat_deposit(self, ts: float, c: Customer, amount: float) -> Event:
        return self._add(
            t.Deposit(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=c.money_entities,
                payload=t.DepositPayload(
                    deposit_id="dep-" + self.ids.derived("fiat", ts, c.id)[:16],
                    asset="USD",
                    amount=amount,
                    amount_usd=amount,
                    method="bank",
                ),
            )
        )

    def withdrawal(
        self,
        ts: float,
        c: Customer,
        asset: str,
        amount: float,
        chain: str | None,
        to_address: str | None,
        *,
        delay: float,
        hot_wallet: str | None = None,
        channel: str = "web",
        ents: Entities | None = None,
    ) -> tuple[Event, Event, Event | None]:
        """Request at ``ts``; sent ``delay`` seconds later; the on-chain leg from the hot wallet with it."""
        base = ents or c.money_entities
        wid = "wd-" + self.ids.derived("wd", ts, c.id)[:16]
        who = Entities(
            customer=c.id,
            account=c.account,
            wallet=to_address,
            device=base.device,
            ip=base.ip,
            api_key=base.api_key,
        )
        value = usd(asset, amount)
        req = self._add(
            t.WithdrawalRequest(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=who,
                payload=t.WithdrawalRequestPayload(
                    withdrawal_id=wid,
                    asset=asset,
                    amount=amount,
                    amount_usd=value,
                    method="crypto" if chain else "bank",
                    chain=chain,
                    to_address=to_address,
                    channel=channel,  # type: ignore[arg-type]
                ),
            )
        )
        tx = self.tx_hash("wd", wid) if chain else None
        if tx and chain == "bitcoin":
            tx = tx[2:]
        sent = self._add(
            t.WithdrawalSent(
                event_id=self.mint(),
                source="backend",
                occurred_at=at(ts + delay),
                entities=Entities(customer=c.id, account=c.account, wallet=to_address),
                payload=t.WithdrawalSentPayload(
                    withdrawal_id=wid,
                    asset=asset,
                    amount=amount,
                    amount_usd=value,
                    chain=chain,
                    to_address=to_address,
                    tx_hash=tx,
                ),
            )
        )
        leg = None
        if chain and to_address and hot_wallet and tx:
            leg = self.chain_transfer(ts + delay + 15.0, chain, hot_wallet, to_address, asset, amount, tx)
        return req, sent, leg

    def payment(
        self,
        ts: float,
        ents: Entities,
        amount: float,
        merchant: str,
        card: str,
        *,
        status: str = "approved",
        decline_reason: str | None = None,
        currency: str = "USD",
    ) -> Event:
        return self._add(
            t.Payment(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.PaymentPayload(
                    payment_id="pay-" + self.ids.derived("pay", ts, card)[:16],
                    amount=amount,
                    currency=currency,
                    amount_usd=amount,
                    merchant=merchant,
                    card_fingerprint=card,
                    status=status,  # type: ignore[arg-type]
                    decline_reason=decline_reason,
                ),
            )
        )

    def loyalty(self, ts: float, ents: Entities, points: int, reward: str) -> Event:
        return self._add(
            t.LoyaltyRedemption(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.LoyaltyRedemptionPayload(
                    redemption_id="r-" + self.ids.derived("loy", ts, ents.customer)[:16],
                    points=points,
                    reward=reward,
                    value_usd=round(points / 100, 2),
                ),
            )
        )

    # ------------------------------------------------------------------ market

    def order(
        self,
        ts: float,
        ents: Entities,
        order_id: str | None,
        symbol: str,
        side: str,
        price: float,
        qty: float,
        order_type: str = "limit",
    ) -> t.Order:
        eid = self.mint()
        return self._add(
            t.Order(
                event_id=eid,
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.OrderPayload(
                    order_id=order_id or "o-" + eid[:16],
                    symbol=symbol,
                    side=side,  # type: ignore[arg-type]
                    order_type=order_type,  # type: ignore[arg-type]
                    price=price,
                    quantity=qty,
                    notional_usd=round(price * qty, 2) if symbol.endswith("USD") else None,
                ),
            )
        )

    def cancel(
        self,
        ts: float,
        ents: Entities,
        order_id: str,
        symbol: str,
        side: str,
        price: float,
        qty: float,
        placed: float,
    ) -> Event:
        return self._add(
            t.OrderCancel(
                event_id=self.mint(),
                source="backend",
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.OrderCancelPayload(
                    order_id=order_id,
                    symbol=symbol,
                    side=side,  # type: ignore[arg-type]
                    price=price,
                    remaining_quantity=qty,
                    placed_at=at(placed),
                ),
            )
        )

    def trade(
        self,
        ts: float,
        ents: Entities,
        symbol: str,
        price: float,
        qty: float,
        taker_side: str,
        maker_account: str | None,
        taker_account: str | None,
        *,
        venue: str = "internal",
        source: str = "backend",
        trade_id: str | None = None,
    ) -> Event:
        eid = self.mint()
        return self._add(
            t.Trade(
                event_id=eid,
                source=source,
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.TradePayload(
                    trade_id=trade_id or "t-" + eid[:16],
                    symbol=symbol,
                    price=price,
                    quantity=qty,
                    taker_side=taker_side,  # type: ignore[arg-type]
                    maker_account=maker_account,
                    taker_account=taker_account,
                    venue=venue,
                    notional_usd=round(price * qty, 2) if symbol.endswith(("USD", "USDT")) else None,
                ),
            )
        )

    # ------------------------------------------------------------------ SaaS

    def crm_login(
        self, ts: float, ents: Entities, platform: str, user: str, geo: t.Geo | None, ua: str | None
    ) -> Event:
        return self._add(
            t.CrmLogin(
                event_id=self.mint(),
                source=platform,
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.CrmLoginPayload(platform=platform, user=user, user_agent=ua, geo=geo),  # type: ignore[arg-type]
            )
        )

    def crm_export(
        self,
        ts: float,
        ents: Entities,
        platform: str,
        customer_ids: list[str],
        actor: str | None,
        geo: t.Geo | None,
        object_type: str = "contacts",
    ) -> Event:
        eid = self.mint()
        return self._add(
            t.CrmRecordExport(
                event_id=eid,
                source=platform,
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.CrmRecordExportPayload(
                    platform=platform,  # type: ignore[arg-type]
                    object_type=object_type,
                    record_count=len(customer_ids),
                    export_id="exp-" + eid[:12],
                    actor=actor,
                    customer_ids=customer_ids,
                    geo=geo,
                ),
            )
        )

    def crm_token(
        self,
        ts: float,
        ents: Entities,
        platform: str,
        token: str,
        operation: str,
        records: int,
        geo: t.Geo | None,
        ua: str | None,
    ) -> Event:
        return self._add(
            t.CrmApiTokenUsed(
                event_id=self.mint(),
                source=platform,
                occurred_at=_fromts(ts, UTC),
                entities=ents,
                payload=t.CrmApiTokenUsedPayload(
                    platform=platform,  # type: ignore[arg-type]
                    token_id=token,
                    operation=operation,
                    records_accessed=records,
                    geo=geo,
                    user_agent=ua,
                ),
            )
        )

    def campaign(
        self,
        ts: float,
        vendor: str,
        campaign_id: str,
        subject: str,
        sender_domain: str,
        recipients: list[str],
        link_domains: list[str],
    ) -> Event:
        return self._add(
            t.EmailCampaignSent(
                event_id=self.mint(),
                source=vendor,
                occurred_at=_fromts(ts, UTC),
                entities=Entities(vendor=vendor, domain=sender_domain),
                payload=t.EmailCampaignSentPayload(
                    platform=vendor,  # type: ignore[arg-type]
                    campaign_id=campaign_id,
                    subject=subject,
                    sender_domain=sender_domain,
                    recipient_count=len(recipients),
                    link_domains=link_domains,
                    recipient_customer_ids=recipients,
                ),
            )
        )

    def click(
        self, ts: float, c: Customer, vendor: str, campaign_id: str, url: str, domain: str, ip: str
    ) -> Event:
        return self._add(
            t.EmailLinkClicked(
                event_id=self.mint(),
                source=vendor,
                occurred_at=_fromts(ts, UTC),
                entities=Entities(customer=c.id, email=c.email, vendor=vendor, domain=domain, ip=ip),
                payload=t.EmailLinkClickedPayload(
                    platform=vendor,  # type: ignore[arg-type]
                    campaign_id=campaign_id,
                    url=url,
                    url_domain=domain,
                ),
            )
        )

    def cloudtrail(
        self,
        ts: float,
        employee: str,
        ip: str,
        event_name: str,
        *,
        resource: str | None = None,
        outcome: str = "success",
        user_agent: str = "console.amazonaws.com",
        mfa: bool | None = None,
    ) -> Event:
        """An AWS API call by an employee's IAM user, as the CloudTrail normaliser reads it back.

        CloudTrail records carry whole seconds and no geography (enrichment adds that).
        """
        attributes = {
            "event_name": event_name,
            "event_source": CLOUDTRAIL_SOURCES.get(event_name, "iam.amazonaws.com"),
            "region": AWS_REGION,
            "account": AWS_ACCOUNT,
            "user_agent": user_agent,
            "identity_type": "IAMUser",
            "arn": f"arn:aws:iam::{AWS_ACCOUNT}:user/{employee}",
        }
        if mfa is not None:
            attributes["mfa_used"] = "true" if mfa else "false"
        if outcome == "failure":
            attributes["error_code"] = "AccessDenied"
        return self._add(
            t.SecurityEvent(
                event_id=self.mint(),
                source="cloudtrail",
                occurred_at=_fromts(math.floor(ts), UTC),
                entities=Entities(employee=employee, ip=ip),
                payload=t.SecurityEventPayload(
                    provider="aws",
                    action=CLOUDTRAIL_ACTIONS.get(event_name, event_name),
                    outcome=outcome,  # type: ignore[arg-type]
                    principal=employee,
                    resource=resource,
                    attributes=attributes,
                ),
            )
        )
