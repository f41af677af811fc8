"""The catalogue of canonical event types.

Each type is an envelope subclass with a ``payload`` struct.  ``domain`` says which
``events.<domain>`` topic carries it; ``key_entity`` says which entity keys it there.
Amounts are floats in the asset's units (detection scores, it does not keep ledgers);
on-chain values also keep the exact integer in base units (``value_raw``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from vigil.events.base import Amount, ChainInt, Count, Event, Id, Int, Struct, UtcDateTime
from vigil.events.ids import stable_id

# --------------------------------------------------------------------------- identity


class Geo(Struct, kw_only=True, frozen=True):
    country: str | None = None
    city: str | None = None
    #: Degrees; out of range is refused (impossible travel measures distances between them).
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    #: The IP's connection type, as IP intelligence gives it (MaxMind's connection type:
    #: Cellular; Cable/DSL, Dialup and Corporate are ``fixed``; Satellite), ``hosting`` for data
    #: centres and VPN exits; any other value is refused.  A cellular or satellite IP is located
    #: where the carrier's gateway is, not the customer (a phone roaming abroad egresses at
    #: home): impossible-travel does not score a login from one.
    connection: Literal["cellular", "fixed", "satellite", "hosting"] | None = None


class LoginPayload(Struct, kw_only=True, frozen=True):
    method: Literal["password", "sso", "passkey", "api"] = "password"
    mfa_used: bool = False
    user_agent: str | None = None
    geo: Geo | None = None
    session_id: str | None = None


class Login(Event, tag="login", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: LoginPayload = LoginPayload()


class FailedLoginPayload(Struct, kw_only=True, frozen=True):
    reason: Literal["bad_password", "unknown_user", "mfa_failed", "locked", "captcha"] = "bad_password"
    username: str | None = None
    user_agent: str | None = None
    geo: Geo | None = None


class FailedLogin(Event, tag="failed_login", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: FailedLoginPayload = FailedLoginPayload()


class LogoutPayload(Struct, kw_only=True, frozen=True):
    session_id: str | None = None
    reason: Literal["user", "timeout", "forced"] = "user"


class Logout(Event, tag="logout", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: LogoutPayload = LogoutPayload()


class PasswordResetPayload(Struct, kw_only=True, frozen=True):
    stage: Literal["requested", "completed"] = "completed"
    channel: Literal["email", "sms", "support", "app"] = "email"


class PasswordReset(Event, tag="password_reset", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: PasswordResetPayload = PasswordResetPayload()


class MfaChangePayload(Struct, kw_only=True, frozen=True):
    action: Literal["enabled", "disabled", "reset", "device_added", "device_removed"]
    method: Literal["totp", "sms", "push", "webauthn", "email"] = "totp"
    via_support: bool = False


class MfaChange(Event, tag="mfa_change", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: MfaChangePayload


class MfaChallengePayload(Struct, kw_only=True, frozen=True):
    result: Literal["approved", "denied", "timeout"]
    method: Literal["totp", "sms", "push", "webauthn", "email"] = "push"


class MfaChallenge(Event, tag="mfa_challenge", frozen=True):
    """A second-factor prompt and its answer (MFA fatigue is many denied pushes, then one approved)."""

    domain: ClassVar[str] = "identity"
    payload: MfaChallengePayload


class EmailChangePayload(Struct, kw_only=True, frozen=True):
    old_email: str | None = None
    new_email: Id


class EmailChange(Event, tag="email_change", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: EmailChangePayload


class ApiKeyCreatedPayload(Struct, kw_only=True, frozen=True):
    key_id: Id
    permissions: list[Literal["read", "trade", "withdraw", "transfer"]] = msgspec.field(default_factory=list)
    ip_allowlist: list[str] = msgspec.field(default_factory=list)
    label: str | None = None


class ApiKeyCreated(Event, tag="api_key_created", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: ApiKeyCreatedPayload


class WithdrawalAddressAddedPayload(Struct, kw_only=True, frozen=True):
    address: Id
    asset: Id
    chain: str
    label: str | None = None


class WithdrawalAddressAdded(Event, tag="withdrawal_address_added", frozen=True):
    domain: ClassVar[str] = "identity"
    payload: WithdrawalAddressAddedPayload


# --------------------------------------------------------------------------- payments


class DepositPayload(Struct, kw_only=True, frozen=True):
    deposit_id: Id
    asset: Id
    amount: Amount
    amount_usd: Amount | None = None
    method: Literal["crypto", "bank", "card"] = "crypto"
    chain: str | None = None
    tx_hash: Id | None = None
    from_address: Id | None = None


class Deposit(Event, tag="deposit", frozen=True):
    domain: ClassVar[str] = "payments"
    payload: DepositPayload


class WithdrawalRequestPayload(Struct, kw_only=True, frozen=True):
    withdrawal_id: Id
    asset: Id
    amount: Amount
    amount_usd: Amount | None = None
    method: Literal["crypto", "bank"] = "crypto"
    chain: str | None = None
    to_address: Id | None = None
    channel: Literal["web", "app", "api"] = "web"


class WithdrawalRequest(Event, tag="withdrawal_request", frozen=True):
    domain: ClassVar[str] = "payments"
    payload: WithdrawalRequestPayload


class WithdrawalSentPayload(Struct, kw_only=True, frozen=True):
    withdrawal_id: Id
    asset: Id
    amount: Amount
    amount_usd: Amount | None = None
    chain: str | None = None
    to_address: Id | None = None
    tx_hash: Id | None = None


class WithdrawalSent(Event, tag="withdrawal_sent", frozen=True):
    domain: ClassVar[str] = "payments"
    payload: WithdrawalSentPayload


class PaymentPayload(Struct, kw_only=True, frozen=True):
    payment_id: Id
    amount: Amount
    currency: Id
    amount_usd: Amount | None = None
    method: Literal["card", "bank", "wallet"] = "card"
    merchant: str | None = None
    card_fingerprint: str | None = None
    status: Literal["approved", "declined"] = "approved"
    decline_reason: str | None = None


class Payment(Event, tag="payment", frozen=True):
    domain: ClassVar[str] = "payments"
    payload: PaymentPayload


class LoyaltyRedemptionPayload(Struct, kw_only=True, frozen=True):
    redemption_id: Id
    points: Count
    reward: str
    value_usd: Amount | None = None


class LoyaltyRedemption(Event, tag="loyalty_redemption", frozen=True):
    domain: ClassVar[str] = "payments"
    payload: LoyaltyRedemptionPayload


# --------------------------------------------------------------------------- market


Side = Literal["buy", "sell"]


class OrderPayload(Struct, kw_only=True, frozen=True):
    order_id: Id
    symbol: Id
    side: Side
    order_type: Literal["limit", "market", "stop"] = "limit"
    price: Amount | None = None
    quantity: Amount
    notional_usd: Amount | None = None


class Order(Event, tag="order", frozen=True):
    domain: ClassVar[str] = "market"
    key_entity: ClassVar[str] = "account"
    payload: OrderPayload


class OrderCancelPayload(Struct, kw_only=True, frozen=True):
    order_id: Id
    symbol: Id
    side: Side
    price: Amount | None = None
    remaining_quantity: Amount = 0.0
    placed_at: UtcDateTime | None = None


class OrderCancel(Event, tag="order_cancel", frozen=True):
    domain: ClassVar[str] = "market"
    key_entity: ClassVar[str] = "account"
    payload: OrderCancelPayload


class TradePayload(Struct, kw_only=True, frozen=True):
    trade_id: Id
    symbol: Id
    price: Amount
    quantity: Amount
    taker_side: Side
    maker_account: str | None = None
    taker_account: str | None = None
    maker_order_id: str | None = None
    taker_order_id: str | None = None
    venue: str = "internal"
    notional_usd: Amount | None = None


class Trade(Event, tag="trade", frozen=True):
    domain: ClassVar[str] = "market"
    key_entity: ClassVar[str] = "account"
    payload: TradePayload


# --------------------------------------------------------------------------- SaaS (CRM, e-mail)

Platform = Literal["hubspot", "salesforce", "mailchimp"]


class CrmLoginPayload(Struct, kw_only=True, frozen=True):
    platform: Platform
    user: str
    user_agent: str | None = None
    geo: Geo | None = None
    success: bool = True


class CrmLogin(Event, tag="crm_login", frozen=True):
    domain: ClassVar[str] = "saas"
    key_entity: ClassVar[str] = "vendor"
    payload: CrmLoginPayload


class CrmRecordExportPayload(Struct, kw_only=True, frozen=True):
    platform: Platform
    object_type: str = "contacts"
    record_count: Count
    export_id: Id
    actor: str | None = None
    #: Customer ids whose records were exported, when the platform reports them.
    customer_ids: list[Id] = msgspec.field(default_factory=list)
    geo: Geo | None = None


class CrmRecordExport(Event, tag="crm_record_export", frozen=True):
    domain: ClassVar[str] = "saas"
    key_entity: ClassVar[str] = "vendor"
    payload: CrmRecordExportPayload


class CrmApiTokenUsedPayload(Struct, kw_only=True, frozen=True):
    platform: Platform
    token_id: Id
    operation: str
    records_accessed: Count = 0
    geo: Geo | None = None
    user_agent: str | None = None


class CrmApiTokenUsed(Event, tag="crm_api_token_used", frozen=True):
    domain: ClassVar[str] = "saas"
    key_entity: ClassVar[str] = "vendor"
    payload: CrmApiTokenUsedPayload


class EmailCampaignSentPayload(Struct, kw_only=True, frozen=True):
    platform: Platform
    campaign_id: Id
    subject: str
    sender_domain: str
    recipient_count: Count
    link_domains: list[Id] = msgspec.field(default_factory=list)
    recipient_customer_ids: list[Id] = msgspec.field(default_factory=list)


class EmailCampaignSent(Event, tag="email_campaign_sent", frozen=True):
    domain: ClassVar[str] = "saas"
    key_entity: ClassVar[str] = "vendor"
    payload: EmailCampaignSentPayload


class EmailLinkClickedPayload(Struct, kw_only=True, frozen=True):
    platform: Platform
    campaign_id: Id
    url: str
    url_domain: str


class EmailLinkClicked(Event, tag="email_link_clicked", frozen=True):
    domain: ClassVar[str] = "saas"
    payload: EmailLinkClickedPayload


# --------------------------------------------------------------------------- chain

Chain = Literal["ethereum", "bitcoin"]


class ChainTransferPayload(Struct, kw_only=True, frozen=True):
    chain: Chain
    tx_hash: Id
    #: Log index of an ERC-20 Transfer; ``None`` for a native transfer (ETH value, BTC output).
    log_index: Count | None = None
    block_number: Count
    from_address: Id
    to_address: Id
    asset: Id
    token_contract: Id | None = None
    value_raw: ChainInt
    decimals: Count
    amount: Amount
    amount_usd: Amount | None = None
    #: The block the transfer was read from (0x-hex for Ethereum, hex for Bitcoin): after a reorg
    #: the same height holds another block, and a consumer tells the orphaned block's events by it.
    block_hash: Id | None = None
    #: ``decimals`` is assumed (18), not known: the token is not among the known ones and did not
    #: say; ``amount`` may be off by powers of ten (``value_raw`` is exact).
    decimals_assumed: bool = False
    #: Whether the transaction succeeded is unknown (the block was read without its receipts): a
    #: native transfer of a reverted transaction moved nothing.
    success_unknown: bool = False


class ChainTransfer(Event, tag="chain_transfer", frozen=True):
    """A native or token transfer; ``entities.wallet`` is the sender, ``counterparty`` the receiver."""

    domain: ClassVar[str] = "chain"
    key_entity: ClassVar[str] = "wallet"
    payload: ChainTransferPayload


class TokenApprovalPayload(Struct, kw_only=True, frozen=True):
    chain: Chain = "ethereum"
    tx_hash: Id
    log_index: Count | None = None
    block_number: Count
    owner: Id
    spender: Id
    token_contract: Id
    asset: Id
    amount_raw: ChainInt
    unlimited: bool
    #: ``approve_nft``: ERC-721 ``approve(spender, token_id)``, one token (``amount_raw`` 1).
    kind: Literal["approve", "permit", "set_approval_for_all", "approve_nft"] = "approve"
    #: The one token an ``approve_nft`` lets the spender move.
    token_id: ChainInt | None = None
    #: The block the approval was read from (see ``ChainTransferPayload.block_hash``).
    block_hash: Id | None = None


class TokenApproval(Event, tag="token_approval", frozen=True):
    domain: ClassVar[str] = "chain"
    key_entity: ClassVar[str] = "wallet"
    payload: TokenApprovalPayload


# --------------------------------------------------------------------------- security logs


class SecurityEventPayload(Struct, kw_only=True, frozen=True):
    provider: Literal["aws", "syslog", "okta", "other"]
    action: str
    outcome: Literal["success", "failure", "unknown"] = "unknown"
    principal: str | None = None
    resource: str | None = None
    severity: Int | None = None
    message: str | None = None
    geo: Geo | None = None
    #: Source-specific facts worth keeping as data (syslog host/app/structured data, CloudTrail
    #: MFAUsed, region, user agent ...), flattened to strings; never interpreted as code.
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class SecurityEvent(Event, tag="security_event", frozen=True):
    """A technical log record (CloudTrail, syslog) about a person, key or host."""

    domain: ClassVar[str] = "security"
    key_entity: ClassVar[str] = "employee"
    payload: SecurityEventPayload


# --------------------------------------------------------------------------- intelligence

IndicatorType = Literal[
    "eth_address",
    "btc_address",
    "crypto_address",
    "ipv4",
    "ipv6",
    "domain",
    "url",
    "email",
    "vendor_token",
    "stix_withdrawal",
]
#: The indicator type of a STIX indicator's version that lists no value Vigil matches (its
#: pattern became a file hash, an ``AND``, another pattern language): a record carrying only its
#: STIX id (as value too) and ``modified``, always revoked, so that the values its older versions
#: listed are withdrawn (they are on the compacted topic under keys of their own, which this
#: version writes nothing to).  Never matched as an indicator.
STIX_WITHDRAWAL = "stix_withdrawal"
IndicatorCategory = Literal[
    "sanctioned", "scam", "drainer", "phishing", "mixer", "c2", "malware", "compromised_vendor", "other"
]


class IntelIndicatorPayload(Struct, kw_only=True, frozen=True):
    indicator_type: IndicatorType
    value: Id
    category: IndicatorCategory
    feed: Id
    list_version: Id
    valid_from: UtcDateTime | None = None
    valid_until: UtcDateTime | None = None
    revoked: bool = False
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)] = 100
    description: str | None = None
    stix_id: str | None = None


class IntelIndicator(Event, tag="intel_indicator", frozen=True):
    """One indicator; keyed by ``<type>:<value>@<feed>`` on the compacted ``intel.indicators``
    topic, and a STIX one by ``<type>:<value>@<feed>#<STIX id>``."""

    domain: ClassVar[str] = "intel"

    def key(self) -> str:
        # The feed is part of the key: two feeds may list the same value, and on the
        # compacted topic one feed's revocation must not erase the other's listing.  So is a
        # STIX id, for the same reason within one feed: two indicators may list one IP.
        p = self.payload
        key = f"{p.indicator_type}:{p.value}@{p.feed}"
        return key if p.stix_id is None else f"{key}#{p.stix_id}"

    payload: IntelIndicatorPayload


# --------------------------------------------------------------------------- alerts & decisions

Severity = Literal["low", "medium", "high", "critical"]


class EntityRef(Struct, kw_only=True, frozen=True):
    kind: str
    id: str


class Evidence(Struct, kw_only=True, frozen=True):
    event_id: str
    type: str
    occurred_at: UtcDateTime
    fields: dict[str, str] = msgspec.field(default_factory=dict)


class AlertPayload(Struct, kw_only=True, frozen=True):
    rule_id: str
    rule_version: Int
    severity: Severity
    score: float
    entity: EntityRef
    related: list[EntityRef] = msgspec.field(default_factory=list)
    explanation: str
    evidence: list[Evidence] = msgspec.field(default_factory=list)
    typology: str
    attack: list[str] = msgspec.field(default_factory=list)
    first_evidence_at: UtcDateTime
    last_evidence_at: UtcDateTime
    detection_latency_ms: float | None = None
    intel_version: str | None = None


class Alert(Event, tag="alert", frozen=True):
    """A detection.  ``event_id`` is the deterministic alert id; ``occurred_at`` the last evidence time."""

    domain: ClassVar[str] = "alerts"
    payload: AlertPayload

    def key(self) -> str:
        return f"{self.payload.entity.kind}:{self.payload.entity.id}"


DecisionAction = Literal["hold_withdrawal", "require_step_up", "block", "release"]
#: What detection's decisions do (``release`` is no longer one: releases are records of their own).
ReleasableAction = Literal["hold_withdrawal", "require_step_up", "block"]


class DecisionPayload(Struct, kw_only=True, frozen=True):
    action: DecisionAction
    entity: EntityRef
    rule_id: str
    alert_id: str
    reason: str
    withdrawal_id: Id | None = None
    expires_at: UtcDateTime | None = None


class Decision(Event, tag="decision", frozen=True):
    """What the platform asks the back end to do ("may this withdrawal leave?")."""

    domain: ClassVar[str] = "decisions"
    payload: DecisionPayload

    def key(self) -> str:
        return f"{self.payload.entity.kind}:{self.payload.entity.id}"


#: What an analyst typed for logs and audit exports to show: no control characters, line or
#: paragraph separators, bidirectional controls (which reorder what a reader of the export
#: sees: Unicode's Bidi_Control, U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069) or
#: invisible ones (U+200B, U+2060-U+2064, U+FEFF: "alice" and "alice" followed by U+200B look
#: alike); the joiners U+200C and U+200D stay (scripts and emoji need them).  ``vigil release``
#: refuses more (every character Python does not print) and says which; this holds another
#: client with the release credential to the same plain text.  (A look-ahead for any such
#: character, not ``^[^...]*$``: a ``$`` matches before a last newline in Python's ``re``,
#: which msgspec and the JSON Schema validators search with.  Then
#: :data:`vigil.events.schema.TEXT_PATTERN`, which a string with a pattern of its own is not
#: given: no lone surrogate.  Written as regex escapes, so the schema file holds no such
#: character itself.)
TypedText = (
    "^(?![\\s\\S]*[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200b\\u200e\\u200f\\u2028-\\u202e"
    "\\u2060-\\u2064\\u2066-\\u2069\\ufeff])"
    "([^\\ud800-\\udfff]|[\\ud800-\\udbff][\\udc00-\\udfff])*$"
)


class ReleasePayload(Struct, kw_only=True, frozen=True):
    #: The decision let go (its ``event_id``), and what it was.
    decision_id: Id
    action: ReleasableAction
    entity: EntityRef
    rule_id: str
    alert_id: str
    withdrawal_id: Id | None = None
    #: Who released it (the analyst's word, as given), and why.
    released_by: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=TypedText)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=TypedText)]


class Release(Event, tag="release", frozen=True):
    """An analyst's release of a decision (``vigil release``): the back end lets go what it
    held for that decision.  One decision, not the withdrawal: another alert's decision stopping
    it stands."""

    domain: ClassVar[str] = "releases"
    payload: ReleasePayload

    def key(self) -> str:
        return f"{self.payload.entity.kind}:{self.payload.entity.id}"

    @staticmethod
    def id_for(decision_id: str) -> str:
        """The ``event_id`` of a release of the decision ``decision_id``: the same for every
        release of it, so the back end, keeping the first of an id, keeps one."""
        return stable_id(decision_id, "release", prefix="release-")


# --------------------------------------------------------------------------- registry

#: Every canonical event type, by its ``type`` tag.  Explicit: adding a type means adding it here.
EVENT_CLASSES: tuple[type[Event], ...] = (
    Login,
    FailedLogin,
    Logout,
    PasswordReset,
    MfaChange,
    MfaChallenge,
    EmailChange,
    ApiKeyCreated,
    WithdrawalAddressAdded,
    Deposit,
    WithdrawalRequest,
    WithdrawalSent,
    Payment,
    LoyaltyRedemption,
    Order,
    OrderCancel,
    Trade,
    CrmLogin,
    CrmRecordExport,
    CrmApiTokenUsed,
    EmailCampaignSent,
    EmailLinkClicked,
    ChainTransfer,
    TokenApproval,
    SecurityEvent,
    IntelIndicator,
    Alert,
    Decision,
    Release,
)

EVENT_TYPES: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in EVENT_CLASSES}  # type: ignore[misc]

AnyEvent = (
    Login
    | FailedLogin
    | Logout
    | PasswordReset
    | MfaChange
    | MfaChallenge
    | EmailChange
    | ApiKeyCreated
    | WithdrawalAddressAdded
    | Deposit
    | WithdrawalRequest
    | WithdrawalSent
    | Payment
    | LoyaltyRedemption
    | Order
    | OrderCancel
    | Trade
    | CrmLogin
    | CrmRecordExport
    | CrmApiTokenUsed
    | EmailCampaignSent
    | EmailLinkClicked
    | ChainTransfer
    | TokenApproval
    | SecurityEvent
    | IntelIndicator
    | Alert
    | Decision
    | Release
)


def event_class(type_name: str) -> type[Event]:
    try:
        return EVENT_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(EVENT_TYPES))
        msg = f"unknown event type {type_name!r}; expected one of: {known}"
        raise KeyError(msg) from None


def types_in_domain(domain: str) -> tuple[type[Event], ...]:
    return tuple(cls for cls in EVENT_CLASSES if cls.domain == domain)
