"""Building canonical events cheaply and deterministically.

Event ids come from :func:`vigil.events.ids.stable_id` of the seed and a namespace (the
benign stream, or one scenario episode): SHAKE-256 keyed by it and a block counter is read
out 512 ids at a time, so the same seed gives the same ids, ids reveal nothing about which
stream they came from, and taking one is a step of a C iterator (a BLAKE2b per id was a
tenth of the simulator's time).  Business ids (orders, payments, withdrawals) are cut from
their event's id, and the transaction hashes of benign flows are two fresh ids: unique,
with no hashing of ``repr()``s in the hot path.

Times are float epoch seconds until an event is built (cheap arithmetic, exact order).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import struct
from collections.abc import Callable, Iterator
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


#: Payloads that take a handful of values, built once: structs are frozen, so events can
#: share them, and a logout then costs one struct instead of two.
_LOGOUTS = {r: t.LogoutPayload(reason=r) for r in ("user", "timeout", "forced")}


def at(ts: float) -> datetime:
    return _fromts(ts, UTC)


#: Ids read out of one SHAKE-256 call: amortises the hashing, and a block is only 16 KiB.
_IDS_PER_BLOCK = 512


def _id_block(key: bytes, block: int) -> list[str]:
    # hex() with a separator every 16 bytes, then split(): the 512 strings are cut in C.
    return hashlib.shake_256(key + _PACK(block)).digest(16 * _IDS_PER_BLOCK).hex(" ", 16).split()


def _id_stream(key: bytes) -> Iterator[str]:
    """Every id of a namespace, in order.  Built from C iterators (``chain`` over ``map``), so
    taking the next id runs no Python frame; a generator's resume cost a tenth of a µs."""
    return itertools.chain.from_iterable(map(functools.partial(_id_block, key), itertools.count()))


class IdMint:
    """Deterministic ids for one namespace: ``mint()`` returns the next one."""

    __slots__ = ("_base", "mint")

    def __init__(self, seed: int, namespace: str) -> None:
        key = stable_id("vigil-sim", seed, namespace).encode()
        self._base = hashlib.blake2b(key, digest_size=32)
        #: The next 32-hex id.
        self.mint: Callable[[], str] = _id_stream(key).__next__

    def derived(self, *parts: object) -> str:
        """A 64-hex digest of this namespace and ``parts`` (transaction hashes named by content)."""
        h = self._base.copy()
        h.update(repr(parts).encode())
        return h.hexdigest()


def usd(asset: str, amount: float) -> float:
    # round(x * 100) / 100: cents at a third of round(x, 2)'s cost (this runs per event).
    return round(amount * PRICES.get(asset, 1.0) * 100) / 100


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
        """A transaction hash named by ``parts``: the same parts give the same hash."""
        return "0x" + self.ids.derived(*parts)

    def fresh_tx_hash(self) -> str:
        """A transaction hash never used before (benign flows: no content to name it by)."""
        mint = self.mint
        return "0x" + mint() + mint()

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
        ev = t.Login(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.LoginPayload(method=method, mfa_used=mfa, user_agent=ua, geo=geo),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

    def failed_login(
        self, ts: float, ents: Entities, username: str, geo: t.Geo | None, ua: str | None, reason: str
    ) -> Event:
        ev = t.FailedLogin(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.FailedLoginPayload(reason=reason, username=username, user_agent=ua, geo=geo),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

    def logout(self, ts: float, ents: Entities, reason: str = "user") -> Event:
        ev = t.Logout(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=_LOGOUTS.get(reason) or t.LogoutPayload(reason=reason),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

    def password_reset(
        self, ts: float, ents: Entities, channel: str = "email", stage: str = "completed"
    ) -> Event:
        ev = t.PasswordReset(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.PasswordResetPayload(stage=stage, channel=channel),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

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
        ev = t.MfaChallenge(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.MfaChallengePayload(result=result, method=method),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

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
        ev = t.WithdrawalAddressAdded(
            event_id=self.mint(),
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=Entities(
                customer=c.id, account=c.account, wallet=address, device=e.device, ip=e.ip, email=c.email
            ),
            payload=t.WithdrawalAddressAddedPayload(address=address, asset=asset, chain=chain),
        )
        self._append(ev)
        return ev

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
        ev = t.ChainTransfer(
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
        self._append(ev)
        return ev

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
        ev = t.TokenApproval(
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
        self._append(ev)
        return ev

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
        tx = self.fresh_tx_hash()
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
        eid = self.mint()
        ev = t.Deposit(
            event_id=eid,
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=c.money_entities,
            payload=t.DepositPayload(
                deposit_id="dep-" + eid[:16],
                asset="USD",
                amount=amount,
                amount_usd=amount,
                method="bank",
            ),
        )
        self._append(ev)
        return ev

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
        eid = self.mint()
        wid = "wd-" + eid[:16]
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
                event_id=eid,
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
        tx = self.fresh_tx_hash() if chain else None
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
        eid = self.mint()
        ev = t.Payment(
            event_id=eid,
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.PaymentPayload(
                payment_id="pay-" + eid[:16],
                amount=amount,
                currency=currency,
                amount_usd=amount,
                merchant=merchant,
                card_fingerprint=card,
                status=status,  # type: ignore[arg-type]
                decline_reason=decline_reason,
            ),
        )
        self._append(ev)
        return ev

    def loyalty(self, ts: float, ents: Entities, points: int, reward: str) -> Event:
        eid = self.mint()
        ev = t.LoyaltyRedemption(
            event_id=eid,
            source="backend",
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.LoyaltyRedemptionPayload(
                redemption_id="r-" + eid[:16],
                points=points,
                reward=reward,
                value_usd=round(points / 100, 2),
            ),
        )
        self._append(ev)
        return ev

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
        ev = t.Order(
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
                notional_usd=round(price * qty * 100) / 100 if symbol.endswith("USD") else None,
            ),
        )
        self._append(ev)
        return ev

    def cancel(
        self,
        ts: float,
        ents: Entities,
        order_id: str,
        symbol: str,
        side: str,
        price: float,
        qty: float,
        placed: float | datetime,
    ) -> Event:
        ev = t.OrderCancel(
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
                placed_at=placed if isinstance(placed, datetime) else _fromts(placed, UTC),
            ),
        )
        self._append(ev)
        return ev

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
        ev = t.Trade(
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
                notional_usd=round(price * qty * 100) / 100 if symbol.endswith(("USD", "USDT")) else None,
            ),
        )
        self._append(ev)
        return ev

    # ------------------------------------------------------------------ SaaS

    def crm_login(
        self, ts: float, ents: Entities, platform: str, user: str, geo: t.Geo | None, ua: str | None
    ) -> Event:
        ev = t.CrmLogin(
            event_id=self.mint(),
            source=platform,
            occurred_at=_fromts(ts, UTC),
            entities=ents,
            payload=t.CrmLoginPayload(platform=platform, user=user, user_agent=ua, geo=geo),  # type: ignore[arg-type]
        )
        self._append(ev)
        return ev

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
        ev = t.CrmApiTokenUsed(
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
        self._append(ev)
        return ev

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
        ev = t.EmailLinkClicked(
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
        self._append(ev)
        return ev

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
