"""Values a rule keeps in state mean the same read back from RocksDB (after a restart, or once the
store's cache let them go) as when they were kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from vigil.detect.engine import ALERTS_TOPIC, DetectOperator, RuleSet
from vigil.detect.fields import as_stored, kept, seen_text
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.validate import validate_paths
from vigil.events.types import Geo
from vigil.testing import run_operators

HEAD = """\
rules:
  - id: under-test
    version: 1
    typology: test
    severity: low
    score: 10
    explanation: "{entity}"
"""
#: Two logins of c1 from one place: one distinct place, not two.
DISTINCT_PLACES = """\
    type: threshold
    match: {type: login}
    group_by: customer
    timespan: 1h
    aggregate: distinct
    field: payload.geo
    condition: {gte: 2}
"""
#: A failed login, then a login from the same place: linked.
SAME_PLACE = """\
    type: sequence
    group_by: customer
    within: 1h
    steps:
      - {name: failed, type: failed_login}
      - {name: ok, type: login, same_as: {payload.geo: failed.payload.geo}}
"""
SYDNEY = "{country: AU, city: Sydney, lat: -33.87, lon: 151.21}"


@pytest.mark.parametrize(
    ("rule", "first", "alerts"), [(DISTINCT_PLACES, "login", 0), (SAME_PLACE, "failed_login", 1)]
)
def test_a_struct_field_kept_in_state_means_the_same_after_a_restart(
    tmp_path: Path, rule: str, first: str, alerts: int
) -> None:
    # Kept as the event had it (a Geo) and read back as a dict, the two texts differed: two
    # logins from Sydney were two distinct places, and same_as never linked.
    events = (
        f"      - {{type: {first}, at: 0, customer: c1, payload: {{geo: {SYDNEY}}}}}\n"
        f"      - {{type: login, at: 10m, customer: c1, payload: {{geo: {SYDNEY}}}}}\n"
    )
    (tmp_path / "r.yaml").write_text(
        f"{HEAD}{rule}cases:\n  - name: c\n    events:\n{events}    expect: none\n"
    )
    checked = validate_paths([tmp_path])
    evs = checked.cases[0].events

    def detect() -> DetectOperator:
        return DetectOperator(RuleSet(checked.rules, IntelIndex()))

    whole = run_operators([detect()], evs)
    restarted = run_operators([detect()], evs[1:], result=run_operators([detect()], evs[:1]))
    assert len(whole.emitted(ALERTS_TOPIC)) == alerts
    assert len(restarted.emitted(ALERTS_TOPIC)) == alerts


def test_values_are_kept_as_state_gives_them_back() -> None:
    geo = Geo(country="AU", city="Sydney")
    assert kept(geo) == as_stored(geo)
    assert (type(kept(geo)), kept(geo)["city"]) == (dict, "Sydney")
    east = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert kept(east) == datetime(2026, 1, 1, tzinfo=UTC)
    assert str(kept(east)) == str(kept(kept(east)))
    assert seen_text(geo) == seen_text(as_stored(geo))
    assert seen_text(("a", "B")) == seen_text(["a", "b"]) == "['a', 'b']"
    # Plain values stay as they are; what state cannot hold is kept as its text.
    assert [kept(v) for v in ("x", 3, 2.5, True, None)] == ["x", 3, 2.5, True, None]
    assert kept([2**70]) == "[1180591620717411303424]"
    assert seen_text(2.5) == "2.5"
