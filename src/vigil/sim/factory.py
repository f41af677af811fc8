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
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, tzinfo
from typing import Any, NamedTuple, TypeVar

import numpy as np

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


class _Logouts(dict[str, t.LogoutPayload]):
    """Logout payloads by reason, each built once: structs are frozen, so events can share
    them, and a logout then costs one struct instead of two."""

    def __missing__(self, reason: str) -> t.LogoutPayload:
        payload = self[reason] = t.LogoutPayload(reason=reason)  # type: ignore[arg-type]
        return payload


_LOGOUTS = _Logouts()


def at(ts: float) -> datetime:
    return _fromts(ts, UTC)


# ---------------------------------------------------------------------- datetimes in bulk
# ``datetime.fromtimestamp(ts, UTC)`` is a fifth of an event's cost: it parses the float,
# calls gmtime, builds a naive datetime and converts it again.  :func:`stamps` does the same
# arithmetic in numpy and hands each datetime its pickled state (``datetime(state, tz)`` is
# a copy of ten bytes), so a datetime costs about half.

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: ``datetime(state, tz)``: the constructor unpickling uses, from the 10-byte state.
_from_state: Callable[[bytes, tzinfo], datetime] = datetime  # type: ignore[assignment]
#: A datetime's pickled state: the year, then month, day, hour, minute, second, microsecond
#: in 8 big-endian bytes (bits 56, 48, 40, 32, 24 and 0).
_STATE = np.dtype([("year", ">u2"), ("rest", ">u8")])
_SOD = np.arange(86400, dtype=np.uint64)
#: Second of the day -> its hour, minute and second, in place in the state's last 8 bytes.
_CLOCK = (_SOD // 3600) << 40 | (_SOD // 60 % 60) << 32 | (_SOD % 60) << 24


@functools.lru_cache(maxsize=64)
def _calendar(first: int, count: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Years, and months and days in place, of ``count`` days from epoch day ``first``
    (cached: a stream asks for the same day or two thousands of times; only ever indexed)."""
    days = [date.fromordinal(_EPOCH_ORDINAL + first + k) for k in range(count)]
    years = np.array([d.year for d in days], dtype=np.uint16)
    return years, np.array([d.month << 56 | d.day << 48 for d in days], dtype=np.uint64)


def stamps(times: Sequence[float] | np.ndarray[Any, Any]) -> list[datetime]:
    """``[at(ts) for ts in times]``, equal to the microsecond, for a few hundred at a time.

    As ``fromtimestamp``: whole seconds, and the fraction rounded half-even to microseconds
    (``np.rint`` of the same product), carrying into the next second."""
    ts = np.asarray(times, dtype=np.float64)
    if not len(ts):
        return []
    whole = np.floor(ts)
    micro = np.rint((ts - whole) * 1e6).astype(np.uint64)
    day, sod = np.divmod(whole.astype(np.int64) + (micro == 1_000_000), 86400)
    micro %= 1_000_000
    first = int(day.min())
    years, month_day = _calendar(first, int(day.max()) - first + 1)
    day -= first
    state = np.empty(len(ts), dtype=_STATE)
    state["year"] = years[day]
    state["rest"] = month_day[day] + _CLOCK[sod] + micro
    return list(map(_from_state, state.view("V10").tolist(), [UTC] * len(ts)))


def cents(prices: Sequence[float], quantities: Sequence[float]) -> list[float]:
    """``round(p * q * 100) / 100`` of each pair (the same float: both round half-even)."""
    values: list[float] = (np.rint(np.multiply(prices, quantities) * 100) / 100).tolist()
    return values


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

    __slots__ = ("_base", "_stream", "mint")

    def __init__(self, seed: int, namespace: str) -> None:
        key = stable_id("vigil-sim", seed, namespace).encode()
        self._base = hashlib.blake2b(key, digest_size=32)
        self._stream = _id_stream(key)
        #: The next 32-hex id.
        self.mint: Callable[[], str] = self._stream.__next__

    def take(self, n: int) -> list[str]:
        """The next ``n`` ids (the ones ``n`` calls of ``mint()`` would return)."""
        return list(itertools.islice(self._stream, n))

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


class Trades(NamedTuple):
    """Columns of trades to build at once (:meth:`Make.trades`): one row per trade."""

    times: Sequence[datetime]
    ents: Sequence[Entities]
    symbols: Sequence[str]
    prices: Sequence[float]
    qtys: Sequence[float]
    taker_sides: Sequence[str]
    maker_accounts: Sequence[str | None]
    taker_accounts: Sequence[str | None]


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
        return self.logins([at(ts)], [ents], [geo], [ua], [mfa], method=method)[0]

    def logins(
        self,
        times: Sequence[datetime],
        ents: Sequence[Entities],
        geos: Sequence[t.Geo | None],
        uas: Sequence[str | None],
        mfas: Sequence[bool],
        *,
        method: str = "password",
    ) -> list[t.Login]:
        """One login per row (the batched form of :meth:`login`: no call per event)."""
        login, payload = t.Login, t.LoginPayload
        events = [
            login(
                event_id=eid,
                source="backend",
                occurred_at=when,
                entities=e,
                payload=payload(method=method, mfa_used=mfa, user_agent=ua, geo=geo),  # type: ignore[arg-type]
            )
            for eid, when, e, geo, ua, mfa in zip(
                self.ids.take(len(times)), times, ents, geos, uas, mfas, strict=True
            )
        ]
        self.out.extend(events)
        return events

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
        return self.logouts([at(ts)], [ents], [reason])[0]

    def logouts(
        self, times: Sequence[datetime], ents: Sequence[Entities], reasons: Sequence[str]
    ) -> list[t.Logout]:
        """One logout per row (the batched form of :meth:`logout`)."""
        logout = t.Logout
        events = [
            logout(event_id=eid, source="backend", occurred_at=when, entities=e, payload=payload)
            for eid, when, e, payload in zip(
                self.ids.take(len(times)), times, ents, map(_LOGOUTS.__getitem__, reasons), strict=True
            )
        ]
        self.out.extend(events)
        return events

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
            # (The API key too, when a key added it: which key did is what tells a thief's.)
            entities=Entities(
                customer=c.id,
                account=c.account,
                wallet=address,
                device=e.device,
                ip=e.ip,
                email=c.email,
                api_key=e.api_key,
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
        return self.orders([at(ts)], [ents], [symbol], [side], [price], [qty], [order_id], order_type)[0]

    def orders(
        self,
        times: Sequence[datetime],
        ents: Sequence[Entities],
        symbols: Sequence[str],
        sides: Sequence[str],
        prices: Sequence[float],
        qtys: Sequence[float],
        order_ids: Sequence[str | None] | None = None,
        order_type: str = "limit",
    ) -> list[t.Order]:
        """One order per row (the batched form of :meth:`order`); ``order_ids`` of ``None``
        (or a ``None`` in it) names the order by its event id.  Notional only for USD quotes."""
        ids = self.ids.take(len(times))
        usd_quoted = {s for s in set(symbols) if s.endswith("USD")}
        order, payload = t.Order, t.OrderPayload
        events = [
            order(
                event_id=eid,
                source="backend",
                occurred_at=when,
                entities=e,
                payload=payload(
                    order_id=oid or "o-" + eid[:16],
                    symbol=symbol,
                    side=side,
                    order_type=order_type,  # type: ignore[arg-type]
                    price=price,
                    quantity=qty,
                    notional_usd=notional if symbol in usd_quoted else None,
                ),
            )
            for eid, when, e, symbol, side, price, qty, oid, notional in zip(
                ids,
                times,
                ents,
                symbols,
                sides,
                prices,
                qtys,
                order_ids or [None] * len(ids),
                cents(prices, qtys),
                strict=True,
            )
        ]
        self.out.extend(events)
        return events

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
        placed_at = placed if isinstance(placed, datetime) else at(placed)
        return self.cancels([at(ts)], [ents], [order_id], [symbol], [side], [price], [qty], [placed_at])[0]

    def cancels(
        self,
        times: Sequence[datetime],
        ents: Sequence[Entities],
        order_ids: Sequence[str],
        symbols: Sequence[str],
        sides: Sequence[str],
        prices: Sequence[float],
        qtys: Sequence[float],
        placed: Sequence[datetime],
    ) -> list[t.OrderCancel]:
        """One cancel per row (the batched form of :meth:`cancel`)."""
        cancel, payload = t.OrderCancel, t.OrderCancelPayload
        events = [
            cancel(
                event_id=eid,
                source="backend",
                occurred_at=when,
                entities=e,
                payload=payload(
                    order_id=oid,
                    symbol=symbol,
                    side=side,
                    price=price,
                    remaining_quantity=qty,
                    placed_at=placed_at,
                ),
            )
            for eid, when, e, oid, symbol, side, price, qty, placed_at in zip(
                self.ids.take(len(times)),
                times,
                ents,
                order_ids,
                symbols,
                sides,
                prices,
                qtys,
                placed,
                strict=True,
            )
        ]
        self.out.extend(events)
        return events

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
        row = Trades(
            [at(ts)], [ents], [symbol], [price], [qty], [taker_side], [maker_account], [taker_account]
        )
        return self.trades(row, venues=[venue], sources=[source], trade_ids=[trade_id])[0]

    def trades(
        self,
        rows: Trades,
        *,
        venues: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        trade_ids: Sequence[str | None] | None = None,
    ) -> list[t.Trade]:
        """One trade per row (the batched form of :meth:`trade`).  By default internal trades
        from the backend, each named by its event id.  Notional for USD and USDT quotes."""
        n = len(rows.times)
        ids = self.ids.take(n)
        usd_quoted = {s for s in set(rows.symbols) if s.endswith(("USD", "USDT"))}
        trade, payload = t.Trade, t.TradePayload
        events = [
            trade(
                event_id=eid,
                source=source,
                occurred_at=when,
                entities=e,
                payload=payload(
                    trade_id=tid or "t-" + eid[:16],
                    symbol=symbol,
                    price=price,
                    quantity=qty,
                    taker_side=side,
                    maker_account=maker,
                    taker_account=taker,
                    venue=venue,
                    notional_usd=notional if symbol in usd_quoted else None,
                ),
            )
            for eid, when, e, symbol, price, qty, side, maker, taker, notional, venue, source, tid in zip(
                ids,
                *rows,
                cents(rows.prices, rows.qtys),
                venues or ["internal"] * n,
                sources or ["backend"] * n,
                trade_ids or [None] * n,
                strict=True,
            )
        ]
        self.out.extend(events)
        return events

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
