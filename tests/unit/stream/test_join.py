"""Interval join of two co-partitioned streams, through the in-memory harness."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vigil.events.base import Entities, Event
from vigil.events.codec import EventCodec, encode
from vigil.events.types import CrmLogin, CrmLoginPayload, Login, WithdrawalRequest, WithdrawalRequestPayload
from vigil.stream.base import Context, Record, StoreSpec
from vigil.stream.join import IntervalJoin
from vigil.stream.repartition import GroupBy, entity_key, group_by, repartition_topic
from vigil.stream.windows import QuietKeys, to_ms
from vigil.testing import HarnessResult, HarnessWarning, MemoryState, run_operators

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def login(i: int, customer: str, minute: float) -> Login:
    return Login(
        event_id=f"l{i}",
        source="t",
        occurred_at=T0 + timedelta(minutes=minute),
        entities=Entities(customer=customer),
    )


def withdrawal(i: int, customer: str, minute: float) -> WithdrawalRequest:
    return WithdrawalRequest(
        event_id=f"w{i}",
        source="t",
        occurred_at=T0 + timedelta(minutes=minute),
        entities=Entities(customer=customer),
        payload=WithdrawalRequestPayload(withdrawal_id=f"w{i}", asset="BTC", amount=1.0),
    )


def topic_of(event: Event) -> str:
    return f"events.{event.domain}"


def login_withdrawal_join(on_match: Callable[[Event, Event, Context], None], **kw: Any) -> IntervalJoin:
    """Logins (left) joined with withdrawals (right) by customer."""
    options: dict[str, Any] = {"within": "10m", **kw}
    return IntervalJoin(
        "login-withdrawal",
        StoreSpec("login-withdrawal", 1),
        left="events.identity",
        right="events.payments",
        on_match=on_match,
        **options,
    )


def test_pairs_within_the_interval_whichever_side_comes_first() -> None:
    pairs: list[tuple[str, str]] = []

    def matched(left: Event, right: Event, ctx: Context) -> None:
        pairs.append((left.event_id, right.event_id))

    join = login_withdrawal_join(matched, lateness="1m")
    events = [
        login(1, "c1", 0),
        withdrawal(1, "c1", 5),  # 5 min after l1: pair
        withdrawal(2, "c2", 6),  # other customer: waits
        login(2, "c2", 7),  # arrives after w2, 1 min apart: pair
        withdrawal(3, "c1", 11),  # 11 min after l1: too far
        login(4, "c1", 12),  # 7 and 1 min after w1 and w3: two pairs
        # Behind both sides' watermarks (logins 12 - 1, withdrawals 11 - 1): joins nothing.
        login(3, "c1", 4.5),
    ]
    result = run_operators([join], events, partitions=3, batch_size=2, topic_of=topic_of)
    assert sorted(pairs) == [("l1", "w1"), ("l2", "w2"), ("l4", "w1"), ("l4", "w3")]
    assert [r.event.event_id for r in result.late] == ["l3"]


def test_pairs_exactly_within_apart_are_joined() -> None:
    # |dt| <= within is inclusive, also when the later event sits right at the watermark.
    pairs: list[tuple[str, str]] = []
    join = login_withdrawal_join(lambda left, right, ctx: pairs.append((left.event_id, right.event_id)))
    events = [
        login(1, "c1", 0),
        withdrawal(1, "c1", 10),  # exactly 10 min later
        login(2, "c2", 10),
        withdrawal(3, "c3", 20),  # the watermark moves to 20 min
        withdrawal(2, "c2", 20),  # at the watermark, exactly 10 min after l2
    ]
    run_operators([join], events, partitions=1, batch_size=1, topic_of=topic_of)
    assert sorted(pairs) == [("l1", "w1"), ("l2", "w2")]


def test_join_needs_two_different_topics() -> None:
    with pytest.raises(ValueError, match="left and right must be different topics"):
        IntervalJoin(
            "j", StoreSpec("j"), left="a", right="a", within="1m", on_match=lambda left, right, ctx: None
        )


def test_keys_that_go_quiet_do_not_stay_in_the_store() -> None:
    # (max_skew 0: with no withdrawal at all, waiting logins expire as soon as the logins' own
    # watermark has passed them.)
    join = login_withdrawal_join(lambda left, right, ctx: None, within="1m", max_skew=0)
    # 6,000 customers who log in once, a second apart, and never withdraw.
    events = [login(i, f"c{i}", i / 60) for i in range(6000)]
    result = run_operators([join], events, partitions=1, batch_size=100, topic_of=topic_of)
    waiting = [k for k, _ in result.states[join.store.id, 0].items("L:")]
    assert join.quiet.deleted > 5000
    assert len(waiting) < 400, f"{len(waiting)} customers still waiting"


@settings(max_examples=200, deadline=None)
@example(  # a case found by deleting every key a walk step looks at (all waiting events lost)
    [(False, "c1", 0)] * 4 + [(False, "c1", 9), (False, "c1", 6), (True, "c1", 6), (True, "c1", 6)]
)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["c1", "c2", "c3"]), st.integers(0, 60)),
        min_size=1,
        max_size=60,
    )
)
def test_walking_for_quiet_keys_at_every_update_changes_no_pair(stream: list[tuple[bool, str, int]]) -> None:
    # A walk step at every update against none at all, on out-of-order events over a few keys:
    # deleting waiting events that could still match would lose pairs.
    def pairs_with(quiet: QuietKeys) -> tuple[list[tuple[str, str]], list[str]]:
        pairs: list[tuple[str, str]] = []
        join = login_withdrawal_join(
            lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
            within="5m",
            lateness="3m",
            quiet=quiet,
        )
        events = [
            login(i, c, minute) if is_login else withdrawal(i, c, minute)
            for i, (is_login, c, minute) in enumerate(stream)
        ]
        result = run_operators([join], events, partitions=1, batch_size=3, topic_of=topic_of)
        return pairs, [r.event.event_id for r in result.late]

    walking = pairs_with(QuietKeys("L:", "R:", step_keys=1, every=1))
    assert walking == pairs_with(QuietKeys("L:", "R:", step_keys=10**9, every=10**9))


def pairs_of(
    events: list[Event], batch_size: int = 10, **kw: Any
) -> tuple[list[tuple[str, str]], list[str], IntervalJoin, Any]:
    """Pairs joined (sorted), late event ids, the join and the harness result.  (Aligned, each
    batch's two sides are merged by event time, as the runtime merges them: a side that arrives
    after the other is given in a later batch.)"""
    pairs: list[tuple[str, str]] = []
    join = login_withdrawal_join(lambda left, right, ctx: pairs.append((left.event_id, right.event_id)), **kw)
    result = run_operators([join], events, partitions=1, batch_size=batch_size, topic_of=topic_of)
    return sorted(pairs), [r.event.event_id for r in result.late], join, result


def test_a_side_read_after_the_other_is_not_late() -> None:
    # The consumer hands over the two topics in no particular order: all of one side's events
    # (here 50 minutes of logins) may come before the other's.  With one watermark for both,
    # every withdrawal was late (its time behind the latest login) and no pair was made.
    logins = [login(i, f"c{i % 5}", i) for i in range(50)]
    withdrawals = [withdrawal(i, f"c{i % 5}", i + 2) for i in range(50)]
    pairs, late, _, _ = pairs_of([*logins, *withdrawals], within="3m")
    expected = sorted(
        (f"l{i}", f"w{j}") for i in range(50) for j in range(50) if i % 5 == j % 5 and abs(i - j - 2) <= 3
    )
    assert pairs == expected
    assert late == []


def test_a_side_with_no_events_keeps_the_other_waiting_max_skew_at_most() -> None:
    # Logins for three hours and no withdrawal (a source down): the join's watermark trails the
    # logins by max_skew, so waiting logins expire instead of piling up for as long as it lasts.
    logins = [login(i, f"c{i % 5}", i) for i in range(180)]
    _, _, join, result = pairs_of(logins, within="5m", max_skew="1h")
    t0 = T0.timestamp() * 1000
    for j in range(5):
        last = 175 + j  # each customer's last login; its waiting ones were pruned then
        size, entries = result.states[join.store.id, 0].get(f"L:customer:c{j}")
        stored = [(t - t0) / 60_000 for t, _ in entries]
        assert size == sum(len(raw) for _, raw in entries)
        assert stored == [i for i in range(j, 180, 5) if i >= last - 60 - 5]


def test_a_side_more_than_max_skew_behind_is_late() -> None:
    # Withdrawals arriving after three hours of logins: one more than max_skew behind them is
    # late, one within it pairs, and from then on the join follows the withdrawals' watermark.
    logins = [login(i, f"c{i}", i) for i in range(180)]
    withdrawals = [
        withdrawal(1, "c10", 11),
        withdrawal(2, "c170", 171),
        withdrawal(3, "c150", 150),
        withdrawal(4, "c172", 173),
    ]
    # (The withdrawals in a batch after the logins': in one batch they would be merged among them.)
    pairs, late, _, _ = pairs_of([*logins, *withdrawals], batch_size=len(logins), within="5m", max_skew="1h")
    assert pairs == [("l170", "w2"), ("l172", "w4")]
    assert late == ["w1", "w3"]


def test_events_without_the_key_join_nothing_and_are_not_stored() -> None:
    # Event.key() falls back to the event id; the join's default key does not, so events with
    # no customer neither wait in the store nor pair.
    anonymous = [login(i, "", i) for i in range(3)] + [withdrawal(i, "", i) for i in range(3)]
    pairs, late, join, result = pairs_of([*anonymous, login(9, "c1", 0), withdrawal(9, "c1", 1)])
    assert pairs == [("l9", "w9")]
    assert late == []
    stored = sorted(k for prefix in ("L:", "R:") for k, _ in result.states[join.store.id, 0].items(prefix))
    assert stored == ["L:customer:c1", "R:customer:c1"]


@pytest.mark.parametrize("option", ["within", "lateness", "max_skew"])
def test_negative_durations_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must not be negative"):
        login_withdrawal_join(lambda left, right, ctx: None, **{option: -1})


class BadgeSwipe(Event, tag="test_badge_swipe", frozen=True):
    """An application's own event type (not in the canonical catalogue)."""

    domain: ClassVar[str] = "physical"
    key_entity: ClassVar[str] = "employee"
    door: str = "main"


class VpnLogin(Event, tag="test_vpn_login", frozen=True):
    domain: ClassVar[str] = "network"
    key_entity: ClassVar[str] = "employee"


def test_an_applications_own_event_types_join_when_named() -> None:
    # They waited encoded and were decoded with the canonical catalogue only: the first match
    # raised DecodeError, which stops the application.
    pairs: list[tuple[str, str]] = []

    def matched(left: Event, right: Event, ctx: Context) -> None:
        assert isinstance(left, BadgeSwipe)
        pairs.append((left.event_id, right.event_id))

    def at(minute: int) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)

    join = IntervalJoin(
        "badge-vpn",
        StoreSpec("badge-vpn", 1),
        left="events.physical",
        right="events.network",
        within="10m",
        on_match=matched,
        event_types=[BadgeSwipe, VpnLogin],
    )
    who = Entities(employee="e1")
    events: list[Event] = [
        BadgeSwipe(event_id="b1", source="t", occurred_at=at(0), entities=who, door="lab"),
        VpnLogin(event_id="v1", source="t", occurred_at=at(3), entities=who),
    ]
    # The application reads its own types with its own decoder, here as on Kafka.
    codec = EventCodec([BadgeSwipe, VpnLogin])
    run_operators([join], events, topic_of=topic_of, decode=lambda _t, value, _k, _h: codec.decode(value))
    assert pairs == [("b1", "v1")]


class MyLogin(Event, tag="login", frozen=True):
    """An application's own reading of a canonical tag."""

    domain: ClassVar[str] = "identity"
    seat: str = "-"


def test_an_applications_type_may_replace_a_canonical_one_of_its_tag() -> None:
    # Both in the union raised msgspec's TypeError, naming the whole union, at construction.
    join = login_withdrawal_join(lambda left, right, ctx: None, event_types=[MyLogin, BadgeSwipe])
    decoded = join._codec.decode(
        b'{"type":"login","event_id":"l","source":"s","occurred_at":"2026-01-01T00:00:00Z"}'
    )
    assert isinstance(decoded, MyLogin)


def test_a_flooded_key_waits_at_most_max_waiting_events_and_the_rest_are_dead_lettered() -> None:
    # A flood of logins on one customer (credential stuffing) with no withdrawal: all of them
    # waited in one store entry, copied at every event (quadratic), until the entry outgrew a
    # changelog record and every checkpoint failed, the restart's too.
    flood = [login(i, "victim", i / 600) for i in range(50)]  # 50 logins in 5 seconds
    later = [withdrawal(1, "victim", 0.5), login(99, "other", 0.2)]
    pairs, late, join, result = pairs_of([*flood, *later], within="10m", max_waiting=20)
    # The first 20 wait; the other 30 are paired with what waits on the other side (nothing
    # yet) and dead-lettered, named; the withdrawal pairs with the 20 that waited.
    assert pairs == sorted((f"l{i}", "w1") for i in range(20))
    assert late == []
    assert [rec.event.event_id for rec, _ in result.dead_letters] == [f"l{i}" for i in range(20, 50)]
    reason = result.dead_letters[0][1]
    assert "join 'login-withdrawal': key 'customer:victim' already has 20 left events" in reason
    assert "at most 20 events" in reason
    assert join.refused == 30

    size, entries = result.states[join.store.id, 0].get("L:customer:victim")
    assert len(entries) == 20
    assert size == sum(len(raw) for _, raw in entries)
    # Another customer is not held back by the flooded one.
    assert result.states[join.store.id, 0].get("L:customer:other") is not None


def test_a_full_key_s_reason_keeps_its_own_words_however_long_the_key() -> None:
    # Quoted whole, a key of 5,000 characters filled the reason up to where reasons are cut.
    name = "v" * 5_000
    flood = [login(i, name, i / 600) for i in range(3)]
    _, _, _, result = pairs_of(flood, within="10m", max_waiting=2)
    ((_, reason),) = result.dead_letters
    assert f"key 'customer:{'v' * 71}...' already has 2 left events" in reason
    assert "does not wait for later ones" in reason


def test_a_key_waits_at_most_max_waiting_bytes_and_room_comes_back_as_events_expire() -> None:
    pairs: list[tuple[str, str]] = []
    join = login_withdrawal_join(
        lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
        within="1m",
        max_skew=0,
        max_waiting_bytes=1000,
    )
    burst = [login(i, "c1", i / 6000) for i in range(12)]  # 0.01 s apart
    after = [login(100 + i, "c1", 5 + i / 6000) for i in range(12)]  # 5 minutes on

    def fitting(events: list[Login]) -> int:
        """How many of ``events`` fit 1,000 bytes, in order."""
        sizes = [len(encode(e)) for e in events]
        return next(n for n in range(len(sizes) + 1) if n == len(sizes) or sum(sizes[: n + 1]) > 1000)

    result = run_operators([join], [*burst, *after], partitions=1, batch_size=7, topic_of=topic_of)
    dead = [rec.event.event_id for rec, _ in result.dead_letters]
    # The burst fills the key's bytes; 5 minutes later the burst has expired (within 1 m and no
    # withdrawals: max_skew 0) and the key takes as many again.
    kept, kept_after = fitting(burst), fitting(after)
    assert 0 < kept < len(burst)
    assert 0 < kept_after < len(after)
    assert dead == [e.event_id for e in burst[kept:] + after[kept_after:]]
    assert "bytes" in result.dead_letters[0][1]
    size, entries = result.states[join.store.id, 0].get("L:customer:c1")
    assert len(entries) == kept_after
    assert size <= 1000


def test_expired_events_behind_a_later_one_do_not_count_against_the_limit() -> None:
    # An event out of order (within lateness) that expired behind a later one stayed in the
    # key's list (the cut takes the front only) and counted: l4 was refused with one live event
    # waiting, and its pair with w5 was lost.
    s = 1 / 60  # a second, in minutes
    events = [
        login(1, "c", 10 * s),  # waits
        login(2, "c", 0.5 * s),  # 9.5 s out of order, within the lateness: waits, behind l1
        withdrawal(3, "x", 13 * s),  # another customer's: the right side's watermark moves
        # (A batch of its own from here: merged with w3 by event time, l4 came before it.)
        login(4, "c", 12 * s),  # the joint watermark reaches 2 s: l2 expired, l1 still live
        withdrawal(5, "c", 12.5 * s),
    ]
    pairs, late, join, result = pairs_of(
        events, batch_size=3, within="1s", lateness="10s", max_skew="1h", max_waiting=2
    )
    assert pairs == [("l4", "w5")]
    assert (late, result.dead_letters, join.refused) == ([], [], 0)
    _, waiting = result.states[join.store.id, 0].get("L:customer:c")
    assert [entry[0] for entry in waiting] == [to_ms(T0 + timedelta(seconds=t)) for t in (10, 12)]


def test_waiting_events_stored_before_the_limits_still_join() -> None:
    # A store written before the limits holds a side's events as a bare list.
    pairs: list[tuple[str, str]] = []
    join = login_withdrawal_join(lambda left, right, ctx: pairs.append((left.event_id, right.event_id)))
    before = HarnessResult()
    waiting = login(1, "c1", 0)
    before.states[join.store.id, 0] = old = MemoryState()
    old.set("L:customer:c1", [[to_ms(waiting.occurred_at), encode(waiting)]])
    result = run_operators(
        [join], [login(2, "c1", 1), withdrawal(1, "c1", 2)], topic_of=topic_of, result=before
    )
    assert sorted(pairs) == [("l1", "w1"), ("l2", "w1")]
    size, entries = result.states[join.store.id, 0].get("L:customer:c1")
    assert [e[0] for e in entries] == [to_ms(waiting.occurred_at), to_ms(login(2, "c1", 1).occurred_at)]
    assert size == sum(len(raw) for _, raw in entries)


def test_waiting_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_waiting must be at least 1; got 0"):
        login_withdrawal_join(lambda left, right, ctx: None, max_waiting=0)
    with pytest.raises(ValueError, match=r"max_waiting_bytes must be at most 8,388,608"):
        login_withdrawal_join(lambda left, right, ctx: None, max_waiting_bytes=16 << 20)


def from_ip(event: Event, ip: str) -> Event:
    return msgspec.structs.replace(event, entities=msgspec.structs.replace(event.entities, ip=ip))


def test_an_event_whose_join_key_is_not_its_partitioning_key_is_dead_lettered_naming_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Joined by IP while both topics are keyed by customer, pairs were found only when the two
    # customers' events happened to share a partition; the others were missed without a word.
    join = login_withdrawal_join(lambda left, right, ctx: None, key=entity_key("ip"))
    events = [from_ip(login(1, "c1", 0), "10.0.0.1"), from_ip(withdrawal(1, "c2", 1), "10.0.0.1")]
    result = run_operators([join], events, partitions=4, topic_of=topic_of)
    assert [dead.event.event_id for dead, _ in result.dead_letters] == ["l1", "w1"]
    assert join.mispartitioned == 2
    text = result.dead_letters[0][1]
    assert "join 'login-withdrawal': the join key '10.0.0.1' of events.identity[" in text
    assert "is not the key it is partitioned by ('c1')" in text
    assert "re-key them with group_by" in text
    # The first is logged as well (the dead-letter topic alone is easy to miss); not every one.
    warned = [r.getMessage() for r in caplog.records if r.name == "vigil.stream.join"]
    assert warned == [f"{text} (the first; the rest go to the dead-letter topic too)"]
    assert not [
        k for prefix in ("L:", "R:") for state in result.states.values() for k, _ in state.items(prefix)
    ]


def test_a_join_key_finer_than_the_partitioning_key_pairs_when_the_check_is_off() -> None:
    # Equal join keys share a partition when the join key includes the partitioning key.
    pairs: list[tuple[str, str]] = []
    join = login_withdrawal_join(
        lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
        key=lambda event: f"{event.entities.customer}|{event.entities.ip}",
        partitioned_by_key=False,
    )
    events = [
        from_ip(login(1, "c1", 0), "10.0.0.1"),
        from_ip(login(2, "c1", 0), "10.0.0.2"),
        from_ip(withdrawal(1, "c1", 1), "10.0.0.1"),
    ]
    result = run_operators([join], events, partitions=4, topic_of=topic_of)
    assert pairs == [("l1", "w1")]
    assert result.dead_letters == []


def test_a_custom_join_key_that_is_not_utf8_fails_at_its_event_or_is_dead_lettered() -> None:
    # (A key function may make one: json.loads turns "\\ud800" into a lone surrogate.)  The
    # runtime's state took the key and failed at the checkpoint, away from the event.
    def key(event: Event) -> str:
        return f"{event.entities.customer}\ud800"

    events = [login(1, "c1", 0), withdrawal(1, "c1", 1)]
    join = login_withdrawal_join(lambda left, right, ctx: None, key=key, partitioned_by_key=False)
    with pytest.raises(
        ValueError, match=re.escape(r"state key 'L:c1\ud800' has a lone surrogate at character 4")
    ):
        run_operators([join], events, topic_of=topic_of)
    join.dead_letter_errors = True
    result = run_operators([join], events, topic_of=topic_of)
    assert [(rec.event.event_id, "lone surrogate" in why) for rec, why in result.dead_letters] == [
        ("l1", True),
        ("w1", True),
    ]


def test_inputs_re_keyed_by_the_join_key_pair_across_partitions() -> None:
    # The same join, each side first re-keyed by IP: logins and withdrawals of different
    # customers from one address pair, wherever their customers' partitions are.
    app = "fraud"
    lefts, rights = repartition_topic(app, "logins-by-ip"), repartition_topic(app, "withdrawals-by-ip")
    internal = repartition_topic(app, "")

    def ip_of(type_: str) -> Callable[[Event], str | None]:
        return lambda event: event.entities.ip if event.type == type_ else None

    pairs: list[tuple[str, str]] = []
    ops = [
        GroupBy("logins-by-ip", lefts, ip_of("login"), internal_prefix=internal),
        GroupBy("withdrawals-by-ip", rights, ip_of("withdrawal_request"), internal_prefix=internal),
        IntervalJoin(
            "same-ip",
            StoreSpec("same-ip"),
            left=lefts,
            right=rights,
            within="10m",
            lateness="10m",  # (re-keyed records arrive in no particular time order)
            key=entity_key("ip"),
            on_match=lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
        ),
    ]
    customers = [f"c{i}" for i in range(8)]
    events: list[Event] = [from_ip(login(i, c, i), f"10.0.0.{i % 2}") for i, c in enumerate(customers)]
    events += [from_ip(withdrawal(i, c, i + 1), f"10.0.0.{i % 2}") for i, c in enumerate(reversed(customers))]
    # (Warned of, as the runtime logs at its start: re-keyed sides come back after their sources.)
    with pytest.warns(HarnessWarning, match="re-keyed by this application"):
        result = run_operators(ops, events, partitions=4, topic_of=topic_of, read_back=[lefts, rights])
    assert result.late == []
    # Login i (minute i, address i % 2) and withdrawal j (minute j + 1, address j % 2) pair when
    # the addresses agree and they are at most 10 minutes apart: all of them here.
    assert sorted(pairs) == sorted((f"l{i}", f"w{j}") for i in range(8) for j in range(8) if i % 2 == j % 2)


def test_each_input_re_keyed_by_an_entity_into_a_topic_of_its_own_pairs_by_it() -> None:
    # The recipe the docs give: group_by each side (topics=, name=), then join by the entity.
    # Re-keying every input into one topic (group_by's default) put both sides in one topic; two
    # re-keyings of every input paired each event with itself too (found in review, 2026-12-07).
    app = "fraud"
    logins, logins_topic = group_by(app, "ip", 4, topics=["events.identity"], name="logins-by-ip")
    payouts, payouts_topic = group_by(app, "ip", 4, topics=["events.payments"], name="payouts-by-ip")
    assert (logins.id, logins_topic.name) == ("group-logins-by-ip", repartition_topic(app, "logins-by-ip"))
    assert logins.reads == ("events.identity",)
    pairs: list[tuple[str, str]] = []
    join = IntervalJoin(
        "same-ip",
        StoreSpec("same-ip"),
        left=logins_topic.name,
        right=payouts_topic.name,
        within="10m",
        lateness="10m",
        key=entity_key("ip"),
        on_match=lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
    )
    events: list[Event] = [
        from_ip(login(1, "c1", 0), "10.0.0.1"),
        from_ip(withdrawal(2, "c2", 1), "10.0.0.1"),
    ]
    with pytest.warns(HarnessWarning, match="re-keyed by this application"):
        run_operators(
            [logins, payouts, join],
            events,
            partitions=4,
            topic_of=topic_of,
            read_back=[logins_topic.name, payouts_topic.name],
        )
    assert pairs == [("l1", "w2")]


class Sending:
    """A context that notes what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, bytes | None]] = []

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self.sent.append(("emit", topic, key or "", encode(event)))

    def forward(self, topic: str, record: Record[Event], key: str) -> None:
        self.sent.append(("forward", topic, key, record.value))


def test_a_group_by_forwards_each_record_as_read_and_re_keys_only_its_topics() -> None:
    # The bytes as read go on (a field this version does not know, from a newer writer, is
    # kept, and nothing is encoded again); records of other inputs are left alone.
    op, spec = group_by("fraud", "ip", 4, topics=["events.identity"], name="logins-by-ip")
    event = from_ip(login(1, "c1", 0), "10.0.0.1")
    raw = encode(event)[:-1] + b',"from_a_newer_writer":1}'
    other = from_ip(withdrawal(2, "c2", 1), "10.0.0.1")
    ctx = Sending()
    batch = [
        Record(event, "events.identity", 0, 5, b"c1", 0, raw),
        Record(other, "events.payments", 0, 6, b"c2", 0, encode(other)),
    ]
    op.process(batch, ctx)  # type: ignore[arg-type]
    assert ctx.sent == [("forward", spec.name, "10.0.0.1", raw)]


def test_group_by_refuses_a_partition_count_below_one() -> None:
    for partitions in (0, -3):
        with pytest.raises(
            ValueError, match="group_by 'by-ip': partitions must be a whole number, at least 1"
        ):
            group_by("fraud", "ip", partitions)


def test_a_join_s_durations_are_named_when_wrong() -> None:
    with pytest.raises(ValueError, match="join 'j': within"):
        IntervalJoin("j", StoreSpec("j"), left="a", right="b", within="10 minutes", on_match=lambda *_: None)
    with pytest.raises((ValueError, TypeError), match="join 'j': max_skew"):
        IntervalJoin(
            "j", StoreSpec("j"), left="a", right="b", within="1m", max_skew=3600.0, on_match=lambda *_: None
        )


def test_by_default_events_pair_by_the_kind_of_entity_they_are_keyed_by_too() -> None:
    # events.saas is keyed by vendor: vendor "acme" is not customer "acme".
    pairs: list[tuple[str, str]] = []
    join = IntervalJoin(
        "login-crm",
        StoreSpec("login-crm"),
        left="events.identity",
        right="events.saas",
        within="10m",
        on_match=lambda left, right, ctx: pairs.append((left.event_id, right.event_id)),
    )
    crm = CrmLogin(
        event_id="crm1",
        source="t",
        occurred_at=T0,
        entities=Entities(vendor="acme"),
        payload=CrmLoginPayload(platform="hubspot", user="ops@acme.example"),
    )
    result = run_operators([join], [login(1, "acme", 1), crm], topic_of=topic_of)
    assert pairs == []
    stored = sorted(k for prefix in ("L:", "R:") for k, _ in result.states[join.store.id, 0].items(prefix))
    assert stored == ["L:customer:acme", "R:vendor:acme"]


def test_a_join_of_a_side_the_application_re_keys_with_one_it_reads_directly_is_warned_of() -> None:
    # Re-keyed events come back a checkpoint later at best, a whole backlog later on a catch-up:
    # with max_skew 1 h a 12-hour backlog paired 60 of 720 (found in review, 2026-12-05).
    join = IntervalJoin(
        "pay-login",
        StoreSpec("pl", 1),
        left="payments",
        right="app.repartition.by-customer",
        within="2m",
        on_match=lambda left, right, ctx: None,
    )
    rekeyed = frozenset({"app.repartition.by-customer"})
    (warning,) = join.input_warnings(rekeyed)
    assert "app.repartition.by-customer re-keyed by this application" in warning
    assert "max_skew (3600 s)" in warning
    assert "lateness (0 s)" in warning
    # Both read directly: aligned as they come.
    assert join.input_warnings(frozenset()) == []
