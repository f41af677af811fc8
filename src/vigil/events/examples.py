"""One realistic example of every event type.

Used by the round-trip tests (every declared topic carries its examples through a real
broker), by ``make demo`` before the simulator runs, and as documentation of the shapes.
A test fails when a type is added to the catalogue without an example here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from vigil.events import types as t
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id

_CUST = "cust-000042"
_ADDR = "0x4b0897b0513fdc7c541b6d9d7e929c4e5364d2db"
_USUAL = "0x8589427373d6d84e98730d7795d8f6f8731fda16"
_SPENDER = "0x000000000000000000000000000000000000dead"
_USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"


def example_events(at: datetime) -> list[Event]:
    """One event per type, at ``at`` (UTC-aware) and a few seconds after."""
    if at.tzinfo is None:
        msg = f"example_events needs a UTC-aware datetime; got naive {at!r}"
        raise ValueError(msg)

    def ts(i: int) -> datetime:
        return at + timedelta(seconds=i)

    def eid(kind: str) -> str:
        return stable_id("example", kind, at.isoformat())

    who = Entities(customer=_CUST, device="dev-9f1c", ip="203.0.113.7")
    geo = t.Geo(country="PT", city="Lisbon", lat=38.72, lon=-9.14, connection="fixed")
    out: list[Event] = [
        t.Login(
            event_id=eid("login"),
            source="backend",
            occurred_at=ts(0),
            entities=who,
            payload=t.LoginPayload(method="password", mfa_used=True, user_agent="Mozilla/5.0", geo=geo),
        ),
        t.FailedLogin(
            event_id=eid("failed_login"),
            source="backend",
            occurred_at=ts(1),
            entities=who,
            payload=t.FailedLoginPayload(reason="bad_password", username="alice@example.com"),
        ),
        t.Logout(event_id=eid("logout"), source="backend", occurred_at=ts(2), entities=who),
        t.PasswordReset(
            event_id=eid("password_reset"),
            source="backend",
            occurred_at=ts(3),
            entities=who,
            payload=t.PasswordResetPayload(stage="completed", channel="email"),
        ),
        t.MfaChange(
            event_id=eid("mfa_change"),
            source="backend",
            occurred_at=ts(4),
            entities=who,
            payload=t.MfaChangePayload(action="reset", method="totp", via_support=True),
        ),
        t.MfaChallenge(
            event_id=eid("mfa_challenge"),
            source="backend",
            occurred_at=ts(5),
            entities=who,
            payload=t.MfaChallengePayload(result="denied", method="push"),
        ),
        t.EmailChange(
            event_id=eid("email_change"),
            source="backend",
            occurred_at=ts(6),
            entities=who,
            payload=t.EmailChangePayload(old_email="alice@example.com", new_email="a1ice@example.net"),
        ),
        t.ApiKeyCreated(
            event_id=eid("api_key_created"),
            source="backend",
            occurred_at=ts(7),
            entities=Entities(customer=_CUST, api_key="key-7f3a", ip="203.0.113.7"),
            payload=t.ApiKeyCreatedPayload(key_id="key-7f3a", permissions=["read", "withdraw"]),
        ),
        t.WithdrawalAddressAdded(
            event_id=eid("withdrawal_address_added"),
            source="backend",
            occurred_at=ts(8),
            entities=Entities(customer=_CUST, wallet=_ADDR),
            payload=t.WithdrawalAddressAddedPayload(address=_ADDR, asset="USDT", chain="ethereum"),
        ),
        t.Deposit(
            event_id=eid("deposit"),
            source="backend",
            occurred_at=ts(9),
            entities=Entities(customer=_CUST, account="acct-42", wallet=_USUAL),
            payload=t.DepositPayload(
                deposit_id="dep-1",
                asset="ETH",
                amount=1.5,
                amount_usd=5400.0,
                chain="ethereum",
                from_address=_USUAL,
            ),
        ),
        t.WithdrawalRequest(
            event_id=eid("withdrawal_request"),
            source="backend",
            occurred_at=ts(10),
            entities=Entities(customer=_CUST, account="acct-42", wallet=_ADDR),
            payload=t.WithdrawalRequestPayload(
                withdrawal_id="wd-1",
                asset="USDT",
                amount=9800.0,
                amount_usd=9800.0,
                chain="ethereum",
                to_address=_ADDR,
            ),
        ),
        t.WithdrawalSent(
            event_id=eid("withdrawal_sent"),
            source="backend",
            occurred_at=ts(11),
            entities=Entities(customer=_CUST, account="acct-42", wallet=_ADDR),
            payload=t.WithdrawalSentPayload(
                withdrawal_id="wd-1",
                asset="USDT",
                amount=9800.0,
                chain="ethereum",
                to_address=_ADDR,
                tx_hash="0x" + "ab" * 32,
            ),
        ),
        t.Payment(
            event_id=eid("payment"),
            source="backend",
            occurred_at=ts(12),
            entities=who,
            payload=t.PaymentPayload(
                payment_id="pay-1",
                amount=1.0,
                currency="EUR",
                merchant="coffee-shop",
                card_fingerprint="fp-1",
                status="declined",
                decline_reason="cvv",
            ),
        ),
        t.LoyaltyRedemption(
            event_id=eid("loyalty_redemption"),
            source="backend",
            occurred_at=ts(13),
            entities=who,
            payload=t.LoyaltyRedemptionPayload(
                redemption_id="r-1", points=50_000, reward="gift-card", value_usd=500.0
            ),
        ),
        t.Order(
            event_id=eid("order"),
            source="backend",
            occurred_at=ts(14),
            entities=Entities(customer=_CUST, account="acct-42"),
            payload=t.OrderPayload(order_id="o-1", symbol="BTC-USD", side="buy", price=64000.0, quantity=2.0),
        ),
        t.OrderCancel(
            event_id=eid("order_cancel"),
            source="backend",
            occurred_at=ts(15),
            entities=Entities(customer=_CUST, account="acct-42"),
            payload=t.OrderCancelPayload(
                order_id="o-1",
                symbol="BTC-USD",
                side="buy",
                price=64000.0,
                remaining_quantity=2.0,
                placed_at=ts(14),
            ),
        ),
        t.Trade(
            event_id=eid("trade"),
            source="backend",
            occurred_at=ts(16),
            entities=Entities(customer=_CUST, account="acct-42"),
            payload=t.TradePayload(
                trade_id="t-1",
                symbol="BTC-USD",
                price=64010.0,
                quantity=0.5,
                taker_side="sell",
                maker_account="acct-42",
                taker_account="acct-77",
            ),
        ),
        t.CrmLogin(
            event_id=eid("crm_login"),
            source="salesforce",
            occurred_at=ts(17),
            entities=Entities(vendor="salesforce", employee="emp-7", ip="198.51.100.4"),
            payload=t.CrmLoginPayload(platform="salesforce", user="emp-7@exchange.example", geo=geo),
        ),
        t.CrmRecordExport(
            event_id=eid("crm_record_export"),
            source="hubspot",
            occurred_at=ts(18),
            entities=Entities(vendor="hubspot", employee="emp-7", ip="198.51.100.4"),
            payload=t.CrmRecordExportPayload(
                platform="hubspot", record_count=2, export_id="exp-1", customer_ids=[_CUST, "cust-000043"]
            ),
        ),
        t.CrmApiTokenUsed(
            event_id=eid("crm_api_token_used"),
            source="hubspot",
            occurred_at=ts(19),
            entities=Entities(vendor="hubspot", ip="192.0.2.66"),
            payload=t.CrmApiTokenUsedPayload(
                platform="hubspot",
                token_id="tok-1",  # noqa: S106 - an example id, not a secret
                operation="crm.objects.contacts.read",
                records_accessed=5000,
            ),
        ),
        t.EmailCampaignSent(
            event_id=eid("email_campaign_sent"),
            source="mailchimp",
            occurred_at=ts(20),
            entities=Entities(vendor="mailchimp"),
            payload=t.EmailCampaignSentPayload(
                platform="mailchimp",
                campaign_id="cmp-1",
                subject="Verify your account",
                sender_domain="exchange.example",
                recipient_count=2,
                link_domains=["exchange-login.io"],
            ),
        ),
        t.EmailLinkClicked(
            event_id=eid("email_link_clicked"),
            source="mailchimp",
            occurred_at=ts(21),
            entities=Entities(customer=_CUST, vendor="mailchimp", domain="exchange-login.io"),
            payload=t.EmailLinkClickedPayload(
                platform="mailchimp",
                campaign_id="cmp-1",
                url="https://exchange-login.io/verify",
                url_domain="exchange-login.io",
            ),
        ),
        t.ChainTransfer(
            event_id=eid("chain_transfer"),
            source="ethereum",
            occurred_at=ts(22),
            entities=Entities(wallet=_USUAL, counterparty=_ADDR),
            payload=t.ChainTransferPayload(
                chain="ethereum",
                tx_hash="0x" + "cd" * 32,
                log_index=3,
                block_number=17173049,
                from_address=_USUAL,
                to_address=_ADDR,
                asset="USDT",
                token_contract=_USDT,
                value_raw=9_800_000_000,
                decimals=6,
                amount=9800.0,
            ),
        ),
        t.TokenApproval(
            event_id=eid("token_approval"),
            source="ethereum",
            occurred_at=ts(23),
            entities=Entities(wallet=_USUAL, counterparty=_SPENDER),
            payload=t.TokenApprovalPayload(
                tx_hash="0x" + "ef" * 32,
                log_index=1,
                block_number=17173050,
                owner=_USUAL,
                spender=_SPENDER,
                token_contract=_USDT,
                asset="USDT",
                amount_raw=2**256 - 1,
                unlimited=True,
            ),
        ),
        t.SecurityEvent(
            event_id=eid("security_event"),
            source="cloudtrail",
            occurred_at=ts(24),
            entities=Entities(employee="emp-7", ip="198.51.100.4"),
            payload=t.SecurityEventPayload(
                provider="aws",
                action="CreateAccessKey",
                outcome="success",
                principal="arn:aws:iam::123456789012:user/emp-7",
            ),
        ),
        t.IntelIndicator(
            event_id=eid("intel_indicator"),
            source="ofac",
            occurred_at=ts(25),
            payload=t.IntelIndicatorPayload(
                indicator_type="eth_address",
                value=_SPENDER,
                category="sanctioned",
                feed="ofac",
                list_version="2024-09-27",
            ),
        ),
    ]
    alert_id = stable_id("example-alert", at.isoformat())
    out.append(
        t.Alert(
            event_id=alert_id,
            source="vigil.detect",
            occurred_at=ts(11),
            entities=Entities(customer=_CUST),
            payload=t.AlertPayload(
                rule_id="ato-sequence",
                rule_version=2,
                severity="critical",
                score=92.0,
                entity=t.EntityRef(kind="customer", id=_CUST),
                explanation="Login from a new IP without a second factor, 2FA reset and a "
                "first-seen withdrawal address within 10 seconds, then a withdrawal.",
                evidence=[t.Evidence(event_id=eid("login"), type="login", occurred_at=ts(0))],
                typology="account_takeover",
                attack=["T1078"],
                first_evidence_at=ts(0),
                last_evidence_at=ts(10),
                detection_latency_ms=12.5,
            ),
        )
    )
    out.append(
        t.Decision(
            event_id=stable_id("example-decision", at.isoformat()),
            source="vigil.detect",
            occurred_at=ts(10),
            entities=Entities(customer=_CUST),
            payload=t.DecisionPayload(
                action="hold_withdrawal",
                entity=t.EntityRef(kind="customer", id=_CUST),
                rule_id="ato-sequence",
                alert_id=alert_id,
                reason="account takeover sequence",
                withdrawal_id="wd-1",
            ),
        )
    )
    held = out[-1]
    out.append(
        t.Release(
            event_id=t.Release.id_for(held.event_id),
            source="vigil.release",
            occurred_at=ts(600),
            entities=Entities(customer=_CUST),
            payload=t.ReleasePayload(
                decision_id=held.event_id,
                action="hold_withdrawal",
                entity=t.EntityRef(kind="customer", id=_CUST),
                rule_id="ato-sequence",
                alert_id=alert_id,
                withdrawal_id="wd-1",
                released_by="alice",
                reason="the customer confirmed the withdrawal by phone",
            ),
        )
    )
    return out
