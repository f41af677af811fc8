"""Look-alike keys and flags across address formats (segwit, base58, EVM), and address
literals in rule conditions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.unit.detect.chain_events import transfer

from vigil.detect.engine import RuleSet, detect_events
from vigil.detect.fields import Condition
from vigil.detect.intel import IntelIndex
from vigil.detect.kinds.base import Hit
from vigil.detect.kinds.lookalike import LookalikeDetector, imitation_key
from vigil.detect.rules.validate import load_rules
from vigil.events.base import Entities, Event
from vigil.events.types import (
    Alert,
    Deposit,
    DepositPayload,
    WithdrawalRequest,
    WithdrawalRequestPayload,
    WithdrawalSent,
    WithdrawalSentPayload,
)
from vigil.testing import MemoryState

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
#: The shipped rule that holds withdrawals to look-alikes.
POISONING = [r for r in load_rules([ROOT / "rules"]) if r.id == "poisoning-withdrawal"]

SEGWIT = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"  # BIP-173's example
OTHER_SEGWIT = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv85mdq"  # unrelated, same last 4
TRON = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE"
TRON_FAKE = "TQn9Y2b3c4d5e6f7g8h9jAkBmCnDpEbLSE"  # same 4 after the T, same last 4
REAL = "0x" + "1234" + "ab" * 16 + "5678"
FAKE = "0x" + "1234" + "ef" * 16 + "5678"
WALLET = "0x" + "9" * 40


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def deposit(n: int, customer: str, source: str, hours: float) -> Deposit:
    return Deposit(
        event_id=f"dep-{n}",
        source="test",
        occurred_at=at(hours),
        entities=Entities(customer=customer),
        payload=DepositPayload(
            deposit_id=f"d{n}", asset="ETH", amount=1.0, amount_usd=500.0, from_address=source
        ),
    )


def withdraw(n: int, customer: str, dest: str, hours: float) -> WithdrawalRequest:
    return WithdrawalRequest(
        event_id=f"wd-{n}",
        source="test",
        occurred_at=at(hours),
        entities=Entities(customer=customer),
        payload=WithdrawalRequestPayload(
            withdrawal_id=f"w{n}", asset="BTC", amount=1.0, amount_usd=900.0, to_address=dest
        ),
    )


def sent(n: int, customer: str, dest: str | None, hours: float) -> WithdrawalSent:
    return WithdrawalSent(
        event_id=f"ws-{n}",
        source="test",
        occurred_at=at(hours),
        entities=Entities(customer=customer),
        payload=WithdrawalSentPayload(withdrawal_id=f"w{n}", asset="BTC", amount=1.0, to_address=dest),
    )


def alerts(events: list[Event], *, arrival: bool = False) -> list[Alert]:
    """``arrival``: one event a batch, in the order listed (else in event-time order)."""
    found, _ = detect_events(RuleSet(POISONING, IntelIndex()), events, batch_size=1 if arrival else 2000)
    return found


def held(events: list[Event], *, arrival: bool = False) -> list[str]:
    return [a.payload.entity.id for a in alerts(events, arrival=arrival)]


def test_the_head_is_taken_after_the_prefix_every_address_of_its_kind_shares() -> None:
    # "bc1q" was the head of every segwit address: any two with the same last 4 characters
    # were look-alikes.
    assert imitation_key(SEGWIT, 4) == "ar0s|5mdq"
    assert imitation_key(OTHER_SEGWIT, 4) == "w508|5mdq"
    assert imitation_key(SEGWIT.upper(), 4) == imitation_key(SEGWIT, 4)  # as QR codes spell it
    assert imitation_key("bc1p" + SEGWIT[4:], 4) == "ar0s|5mdq"  # taproot
    assert imitation_key("tb1q" + SEGWIT[4:], 4) == imitation_key("bcrt1q" + SEGWIT[4:], 4) == "ar0s|5mdq"
    # Base58check: past the version character (legacy Bitcoin 1... and 3..., Tron T...).
    assert imitation_key("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", 4) == "bvbm|nvn2"
    assert imitation_key("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", 4) == "j98t|wnly"
    assert imitation_key(TRON, 4) == imitation_key(TRON_FAKE, 4) == "qn9y|blse"
    assert imitation_key(TRON.lower(), 4) == "qn9y|blse"  # as earlier versions kept it
    # A Solana key has no version character; EVM as ever.
    assert imitation_key("So11111111111111111111111111111111111111112", 4) == "so11|1112"
    assert imitation_key(REAL.upper().replace("0X", "0x"), 4) == "1234|5678"


def test_unrelated_segwit_addresses_with_the_same_tail_are_no_look_alikes() -> None:
    assert held([sent(1, "c1", SEGWIT, 0), withdraw(2, "c2", OTHER_SEGWIT, 1)]) == []
    imitation = SEGWIT[:8] + "x" * (len(SEGWIT) - 12) + SEGWIT[-4:]
    assert held([sent(1, "c1", SEGWIT, 0), withdraw(2, "c2", imitation, 1)]) == ["c2"]


def test_a_reference_is_no_imitation_of_one_known_after_it() -> None:
    # c1 has paid B twice; another customer's A, with B's head and tail, becomes known later:
    # c1 paying B again was held as paying an imitation of A.
    events = [
        sent(1, "c1", REAL, 0),
        sent(2, "c1", REAL, 24),
        sent(3, "c2", FAKE, 48),
        withdraw(4, "c1", REAL, 72),
    ]
    assert held(events) == []
    assert held(events, arrival=True) == []
    # The one known later is still an imitation of the first: a poisoner's address funded
    # (and so known) before it dusts anyone.
    assert held([*events, withdraw(5, "c3", FAKE, 73)]) == ["c3"]
    funded = [
        deposit(1, "c1", REAL, 0),
        transfer(2, WALLET, FAKE, at(1), 5.0),
        transfer(3, FAKE, WALLET, at(2), 0.0),
    ]
    assert held([*funded, withdraw(4, "c1", FAKE, 3)]) == ["c1"]


def test_a_known_address_s_own_small_transfer_is_no_dusting() -> None:
    # A test transfer, or a spoofed zero-value transferFrom naming it as sender: the known
    # address was flagged "only ever sent dust", and every withdrawal to it held.
    events = [deposit(1, "c4", REAL, 0), transfer(2, REAL, WALLET, at(1), 0.5), withdraw(3, "c4", REAL, 3)]
    assert held(events) == []
    assert held(events, arrival=True) == []


def test_a_dust_sender_that_sends_more_than_dust_is_a_dust_sender_no_longer() -> None:
    dust = transfer(1, REAL, WALLET, at(0), 0.5)
    assert held([dust, withdraw(2, "c4", REAL, 3)]) == ["c4"]  # has only ever sent dust
    # No original known: the alert names the dust sender alone (an empty counterparty linked
    # every such alert to every other).
    (alert,) = alerts([dust, withdraw(2, "c4", REAL, 3)])
    assert [(r.kind, r.id) for r in alert.payload.related] == [("wallet", REAL)]
    # And says so (its explanation read: imitates the known counterparty "" ...).
    assert "has sent nothing but dust or zero-value transfers" in alert.payload.explanation
    assert "imitates" not in alert.payload.explanation
    assert held([dust, transfer(2, REAL, WALLET, at(1), 50.0), withdraw(3, "c4", REAL, 3)]) == []
    # Being paid is no sending: a poisoner funded after its dust is still one.
    assert held([dust, transfer(2, WALLET, REAL, at(1), 50.0), withdraw(3, "c4", REAL, 3)]) == ["c4"]


def test_a_dust_only_flag_earlier_versions_put_on_a_reference_is_dropped() -> None:
    (det,) = [d for d in RuleSet(POISONING, IntelIndex()).detectors if isinstance(d, LookalikeDetector)]
    state = MemoryState()
    since = T0.timestamp()
    state.set("k:1234|5678", [[REAL, since, since]])
    state.set(f"f:{REAL}", "")  # a bare flag, dust only, as earlier versions kept it
    state.set("r:1234|5678", [REAL])
    hits: list[Hit] = []
    det.process(withdraw(1, "c4", REAL, 3), state, hits)
    assert hits == []
    assert state.get(f"f:{REAL}") is None
    assert state.get("r:1234|5678") is None


def test_a_flag_earlier_versions_put_on_a_segwit_address_for_its_tail_alone_is_dropped() -> None:
    (det,) = [d for d in RuleSet(POISONING, IntelIndex()).detectors if isinstance(d, LookalikeDetector)]
    state = MemoryState()
    state.set(f"f:{OTHER_SEGWIT}", [SEGWIT, T0.timestamp()])  # "imitates" it: same "bc1q", same tail
    hits: list[Hit] = []
    det.process(withdraw(1, "c2", OTHER_SEGWIT, 1), state, hits)
    assert hits == []
    assert state.get(f"f:{OTHER_SEGWIT}") is None


def test_base58_addresses_keep_their_case_in_alerts() -> None:
    # Lower-cased, a Tron address names another address, or none.
    (alert,) = alerts([sent(1, "c1", TRON, 0), withdraw(2, "c2", TRON_FAKE, 1)])
    assert [r.id for r in alert.payload.related] == [TRON_FAKE, TRON]
    assert f'"{TRON_FAKE}"' in alert.payload.explanation
    assert f'"{TRON}"' in alert.payload.explanation
    # What earlier versions kept lower-cased is still found.
    (det,) = [d for d in RuleSet(POISONING, IntelIndex()).detectors if isinstance(d, LookalikeDetector)]
    state = MemoryState()
    state.set(f"f:{TRON_FAKE.lower()}", [TRON.lower(), 0.0])
    hits: list[Hit] = []
    det.process(withdraw(3, "c3", TRON_FAKE, 2), state, hits)
    assert [h.context["address"] for h in hits] == [TRON_FAKE]


CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55


def test_an_address_condition_matches_whatever_case_either_side_spells_it() -> None:
    # Sources publish addresses lower-cased: a rule naming one in its checksum case validated,
    # passed its own case, and never matched a live event.
    for spelling in (CHECKSUMMED.lower(), CHECKSUMMED, CHECKSUMMED.upper().replace("0X", "0x")):
        event = withdraw(1, "c1", spelling, 0)
        assert Condition("payload.to_address", "eq", CHECKSUMMED).compile()(event)
        assert Condition("payload.to_address", "in", ("x", CHECKSUMMED)).compile()(event)
        assert not Condition("payload.to_address", "ne", CHECKSUMMED).compile()(event)
        assert not Condition("payload.to_address", "not_in", (CHECKSUMMED,)).compile()(event)
        assert Condition("payload.to_address", "eq", SEGWIT.upper()).compile()(withdraw(2, "c1", SEGWIT, 0))
    # A CashAddr one with its prefix or in upper case (events carry it lower-case, without the
    # prefix), the token-aware form too: compared as written, it never matched (found in review).
    for listed in (f"bitcoincash:{BCH}", f"BITCOINCASH:{BCH.upper()}", BCH.upper()):
        assert Condition("payload.to_address", "eq", listed).compile()(withdraw(5, "c1", BCH, 0))
        assert Condition("payload.to_address", "in", ("x", listed)).compile()(withdraw(5, "c1", BCH, 0))
    tokens = "z" + BCH[1:]  # (not a real address: a rule compares spellings, not checksums)
    condition = Condition("payload.to_address", "eq", f"bitcoincash:{tokens}").compile()
    assert condition(withdraw(6, "c1", tokens, 0))
    # Other text keeps its case; a missing field is no address.
    assert not Condition("payload.to_address", "eq", TRON.lower()).compile()(withdraw(3, "c1", TRON, 0))
    assert Condition("payload.to_address", "ne", CHECKSUMMED).compile()(sent(4, "c1", None, 0))


def test_a_known_entry_reading_the_dust_event_itself_does_not_clear_its_flag(tmp_path: Path) -> None:
    # A rule whose known entry reads every transfer's sender (no where of its own) saw the dust
    # event twice: flagged by the remember check, then taken for a send of more than dust and
    # learned as a reference, so the withdrawal to the poisoner passed.
    rule = (ROOT / "rules" / "chain.yaml").read_text()
    start = rule.index("  - id: poisoning-withdrawal")
    text = rule[start : rule.index("\n  - id: ", start + 10)].replace(
        "{type: chain_transfer, field: payload.from_address, where: {payload.amount_usd: {gte: 1}}}",
        "{type: chain_transfer, field: payload.from_address}",
    )
    assert "field: payload.from_address}" in text
    (tmp_path / "r.yaml").write_text("rules:\n" + text + "\n")
    rules = load_rules([tmp_path])
    events = [transfer(1, FAKE, WALLET, at(0), 0.0), deposit(2, "c1", REAL, 1), withdraw(3, "c1", FAKE, 2)]
    found, _ = detect_events(RuleSet(rules, IntelIndex()), events)
    assert [a.payload.entity.id for a in found] == ["c1"]


BCH = "qpf2cphc5dkuclkqur7lhj2yuqq9pk3hmukle77vhq"  # CashAddr, as OFAC lists it
OTHER_BCH = "qr" + "z" * 36 + BCH[-4:]  # unrelated, same last 4


def test_cashaddr_addresses_are_compared_without_their_prefix() -> None:
    # With "bitcoincash:" counted in the head, any two prefixed addresses with the same last 4
    # characters were look-alikes (the detector keys an address as canonical_address spells it).
    assert (
        held([sent(1, "c1", f"bitcoincash:{BCH}", 0), withdraw(2, "c2", f"bitcoincash:{OTHER_BCH}", 1)]) == []
    )
    # The same address in another spelling is no imitation of itself.
    assert held([sent(1, "c1", BCH, 0), withdraw(2, "c2", f"BITCOINCASH:{BCH.upper()}", 1)]) == []
    # The head is read after the type character (q: every P2PKH address has it), as base58's
    # version character is.
    imitation = BCH[:5] + "x" * 33 + BCH[-4:]
    assert held([sent(1, "c1", BCH, 0), withdraw(2, "c2", BCH[:4] + "y" * 34 + BCH[-4:], 1)]) == []
    (alert,) = alerts([sent(1, "c1", f"bitcoincash:{BCH}", 0), withdraw(2, "c2", imitation.upper(), 1)])
    assert [r.id for r in alert.payload.related] == [imitation, BCH]


def test_an_imitation_of_a_known_counterparty_names_it() -> None:
    (alert,) = alerts(
        [deposit(1, "c4", REAL, 0), transfer(2, FAKE, WALLET, at(1), 0.5), withdraw(3, "c4", FAKE, 3)]
    )
    explanation = alert.payload.explanation
    assert f'imitates the known counterparty "{REAL}"' in explanation
    assert "only ever sent dust" not in explanation  # (the other case, said once either way)


def test_a_withdrawal_held_before_the_dust_that_flags_its_address_arrives_says_dust_only() -> None:
    # The withdrawal's check is kept; the dust sent before it (in event time) arrives after it.
    (alert,) = alerts([withdraw(2, "c4", REAL, 3), transfer(1, REAL, WALLET, at(1), 0.5)], arrival=True)
    assert "has sent nothing but dust or zero-value transfers" in alert.payload.explanation


def test_without_a_dust_only_explanation_the_original_reads_unknown() -> None:
    plain = [
        dataclasses.replace(r, params=dataclasses.replace(r.params, dust_only_explanation=None))
        for r in POISONING
    ]
    found, _ = detect_events(
        RuleSet(plain, IntelIndex()), [transfer(1, REAL, WALLET, at(0), 0.5), withdraw(2, "c4", REAL, 3)]
    )
    (alert,) = found
    assert "imitates the known counterparty (unknown)" in alert.payload.explanation
