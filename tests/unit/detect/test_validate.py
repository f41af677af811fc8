"""The validation pass: every problem reported at once, located, with the expected form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.unit.detect.test_kinds import HEAD

from vigil.detect.cases import run_cases
from vigil.detect.engine import DetectOperator, RuleSet
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.validate import load_rules, validate_paths
from vigil.errors import RuleError
from vigil.testing import run_operators

GOOD = """\
rules:
  - id: fatigue
    version: 1
    type: threshold
    typology: mfa_fatigue
    severity: high
    score: 70
    explanation: "{count} denied prompts for {entity}"
    match: {type: mfa_challenge, where: {payload.result: denied}}
    group_by: customer
    timespan: 10m
    condition: {gte: 3}
cases:
  - name: three denials
    events:
      - {type: mfa_challenge, at: 0, customer: c1, payload: {result: denied}}
      - {type: mfa_challenge, at: 1m, customer: c1, payload: {result: denied}}
      - {type: mfa_challenge, at: 2m, customer: c1, payload: {result: denied}}
    expect: [{rule: fatigue, entity: "customer:c1"}]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(tmp_path: Path) -> list[str]:
    return [str(i) for i in validate_paths([tmp_path]).errors]


def test_a_valid_file_loads_into_rules_and_cases(tmp_path: Path) -> None:
    write(tmp_path, "ok.yaml", GOOD)
    v = validate_paths([tmp_path])
    assert v.errors == []
    assert [r.key for r in v.rules] == ["fatigue.v1"]
    assert v.rules[0].line == 2
    assert [c.name for c in v.cases] == ["three denials"]


def test_every_error_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    bad = (
        GOOD.replace("timespan: 10m", "timespan: 10 minutes")
        .replace("severity: high", "severity: extreme")
        .replace("type: mfa_challenge, where", "type: mfa_chalenge, where")
    )
    path = write(tmp_path, "bad.yaml", bad)
    errors = messages(tmp_path)
    assert f"{path}:11:15: error: rule 'fatigue'.timespan must be a duration like '30s'" in "\n".join(errors)
    assert any(e.startswith(f"{path}:6:15:") and "one of: low, medium, high, critical" in e for e in errors)
    assert any(e.startswith(f"{path}:9:") and "unknown event type(s) 'mfa_chalenge'" in e for e in errors)
    assert len(errors) >= 3


def test_a_rule_matching_what_detection_never_hands_it_is_refused(tmp_path: Path) -> None:
    # Validated, a rule on intel_indicator never fired on Kafka (indicators go to the intel
    # index, not to rules) and in memory took them from the index: intel rules stopped matching.
    path = write(
        tmp_path, "intel.yaml", GOOD.replace("type: mfa_challenge, where", "type: intel_indicator, where")
    )
    text = "\n".join(messages(tmp_path))
    assert f"{path}:9:" in text
    assert "rules are never given event type(s) 'intel_indicator' (read into the intel index)" in text
    write(tmp_path, "intel.yaml", GOOD.replace("type: mfa_challenge, where", "type: alert, where"))
    assert "'alert' (detection's own output)" in "\n".join(messages(tmp_path))


def test_unknown_keys_and_fields_name_what_is_expected(tmp_path: Path) -> None:
    bad = GOOD.replace("    group_by: customer\n", "    group_by: customer\n    windw: 5m\n").replace(
        "payload.result", "payload.reslt"
    )
    path = write(tmp_path, "typo.yaml", bad)
    text = "\n".join(messages(tmp_path))
    assert f"{path}:11:5: error: unknown key 'windw' in rule 'fatigue'; expected one of:" in text
    assert "no field 'payload.reslt' on event type(s) mfa_challenge" in text


def test_unknown_rule_type_fails_by_name(tmp_path: Path) -> None:
    write(tmp_path, "kind.yaml", GOOD.replace("type: threshold", "type: thresold"))
    text = "\n".join(messages(tmp_path))
    assert (
        "type must be one of: threshold, sequence, propagation, intel, exposure, lookalike, deviation" in text
    )


def test_explanation_placeholders_are_plain_known_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tpl.yaml",
        GOOD.replace('"{count} denied prompts for {entity}"', '"{entity.__class__} {nope}"'),
    )
    text = "\n".join(messages(tmp_path))
    assert "placeholder {entity.__class__} must be a plain name" in text
    assert "unknown placeholder {nope}" in text


def test_an_explanation_quotes_only_fields_the_rules_events_have(tmp_path: Path) -> None:
    # {amount_usd} in an MFA rule is a field name, of other events: it always read "(unknown)".
    write(
        tmp_path,
        "tpl.yaml",
        GOOD.replace(
            '"{count} denied prompts for {entity}"', '"{count} prompts, {amount_usd} USD, {result}"'
        ),
    )
    (error,) = messages(tmp_path)
    assert "{amount_usd} is a field of none of the rule's event types (mfa_challenge)" in error


def test_an_explanation_names_only_what_the_rules_measure_sets(tmp_path: Path) -> None:
    # {speed_kmh} and {other_country} in an amount rule passed, and always read "(unknown)".
    shipped = (Path(__file__).resolve().parents[3] / "rules" / "payments.yaml").read_text()
    start = shipped.index("  - id: rapid-in-out")
    rule = shipped[start : shipped.index("\n  - id: ", start + 10)]
    assert "{ratio}" in rule
    write(tmp_path, "m.yaml", "rules:\n" + rule.replace("{ratio}", "{ratio} at {speed_kmh}"))
    (error,) = messages(tmp_path)
    assert ":" in error.split(" error: ")[0]  # (file:line:column)
    assert "{speed_kmh} is not set by a deviation rule with these settings" in error
    assert "(it sets baseline, group, history_count, measure, ratio, score)" in error
    write(tmp_path, "m.yaml", "rules:\n" + rule)
    assert messages(tmp_path) == []


def test_a_kinds_other_explanation_is_checked_as_the_explanation_is(tmp_path: Path) -> None:
    # A look-alike rule's explanation for a dust sender with no original known.
    shipped = (Path(__file__).resolve().parents[3] / "rules" / "chain.yaml").read_text()
    start = shipped.index("  - id: poisoning-withdrawal")
    rule = shipped[start : shipped.index("\n  - id: ", start + 10)]
    key = "dust_only_explanation: >-\n      "
    what = "rule 'poisoning-withdrawal'.dust_only_explanation"
    assert key + "Customer {entity}" in rule
    write(tmp_path, "d.yaml", "rules:\n" + rule.replace("nothing but dust", "nothing but {nope} dust"))
    (error,) = messages(tmp_path)
    line = 2 + rule[: rule.index(key)].count("\n")
    assert f"d.yaml:{line}:" in error
    assert f"{what}: unknown placeholder {{nope}}" in error
    write(tmp_path, "d.yaml", "rules:\n" + rule.replace(key + "Customer", key + "{decline_reason}"))
    (error,) = messages(tmp_path)
    assert f"{what}: {{decline_reason}} is a field of none of the rule's event types" in error
    write(tmp_path, "d.yaml", "rules:\n" + rule.replace(key, "dust_only_explanation: [1]\n    x: >-\n      "))
    assert any(f"{what} must be a non-empty string" in m for m in messages(tmp_path))
    # No original is known there: {imitates} would always read (unknown).
    write(tmp_path, "d.yaml", "rules:\n" + rule.replace(key + "Customer", key + "{imitates}"))
    (error,) = messages(tmp_path)
    assert f"{what}: {{imitates}} is not set by a lookalike rule in its dust_only_explanation" in error
    # Without one, a rule whose check remembers dust senders is warned that it reads so there.
    start = rule.index("    dust_only_explanation:")
    write(tmp_path, "d.yaml", "rules:\n" + rule[:start] + rule[rule.index("    decision:", start) :])
    v = validate_paths([tmp_path])
    assert v.errors == []
    said = [str(i) for i in v.issues if "dust_only_explanation" in str(i)]
    assert len(said) == 1
    assert f"d.yaml:{2 + rule[: rule.index('    explanation:')].count(chr(10))}:18: warning: " in said[0]
    assert "reads {imitates} as (unknown): say what it is in a dust_only_explanation" in said[0]
    write(tmp_path, "d.yaml", "rules:\n" + rule)
    assert messages(tmp_path) == []


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "syntax.yaml", "rules:\n  - id: x\n    version: [1\n")
    errors = messages(tmp_path)
    assert len(errors) == 1
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: error: not valid YAML", errors[0])


@pytest.mark.parametrize("value", ["!!int one", "!!float zz", "!!timestamp foo", "!!bool maybe"])
def test_a_yaml_tag_that_cannot_read_its_value_is_located(tmp_path: Path, value: str) -> None:
    # PyYAML's constructors raise plain errors (ValueError, KeyError ...): validation stopped
    # with a traceback naming no file or line.
    path = write(tmp_path, "tags.yaml", GOOD.replace("    version: 1\n", f"    version: {value}\n"))
    (error,) = messages(tmp_path)
    assert error.startswith(f"{path}:3:14: error: not valid YAML: cannot read tag:yaml.org,2002:"), error


@pytest.mark.parametrize(
    ("where", "says"),
    [
        # The contract lists mfa_challenge's results: approved, denied, timeout.
        ("{payload.result: Denied}", "'Denied' is none of the values payload.result holds (approved, denied"),
        ("{payload.result: {in: [denied, timed_out]}}", "'timed_out' is none of the values payload.result"),
        ("{payload.result: {in: []}}", "in [] never matches"),
    ],
)
def test_a_condition_no_value_of_its_field_can_meet_is_refused(tmp_path: Path, where: str, says: str) -> None:
    # They validated and never matched (values are case-sensitive): a rule silent for ever.
    path = write(tmp_path, "never.yaml", GOOD.replace("where: {payload.result: denied}", f"where: {where}"))
    text = "\n".join(messages(tmp_path))
    assert f"{path}:9:" in text
    assert says in text


def test_a_key_overriding_a_merged_one_is_no_duplicate(tmp_path: Path) -> None:
    # `<<: *base` then `severity: low`: overriding a merged key is YAML; it was reported as a
    # duplicate key.  The mapping's own key given twice still is one.
    base = GOOD.replace("  - id: fatigue\n", "  - &base\n    id: fatigue\n")
    merged = "  - <<: *base\n    id: fatigue-low\n    severity: low\n"
    write(tmp_path, "merge.yaml", base.replace("cases:\n", merged + "cases:\n"))
    assert messages(tmp_path) == []
    write(tmp_path, "merge.yaml", base.replace("cases:\n", merged + "    severity: medium\ncases:\n"))
    assert [m for m in messages(tmp_path) if "duplicate key 'severity' (first at line 16)" in m]


def test_duplicate_keys_and_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD.replace("    score: 70\n", "    score: 70\n    score: 71\n"))
    text = "\n".join(messages(tmp_path))
    assert "duplicate key 'score'" in text
    assert "duplicate rule id 'fatigue'" in text


def test_bad_case_event_is_reported_with_the_contract_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "case.yaml",
        GOOD.replace("payload: {result: denied}}\n    expect", "payload: {result: maybe}}\n    expect"),
    )
    text = "\n".join(messages(tmp_path))
    assert f"{path}:18:" in text
    assert "is not a valid 'mfa_challenge' event" in text


def test_case_expecting_an_unknown_rule(tmp_path: Path) -> None:
    write(tmp_path, "x.yaml", GOOD.replace("expect: [{rule: fatigue", "expect: [{rule: fatigue-2"))
    assert any("expects unknown rule 'fatigue-2'" in e for e in messages(tmp_path))


def test_load_rules_raises_with_every_error(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", GOOD.replace("version: 1", "version: 0").replace("score: 70", "score: 700"))
    with pytest.raises(RuleError, match=r"2 error\(s\) in rule files") as info:
        load_rules([tmp_path])
    assert info.value.line == 3


def test_values_that_can_never_match_their_field_are_errors(tmp_path: Path) -> None:
    # YAML reads unquoted NO as false and 1234 as a number: "country: [NO, RU]" never matched
    # Norway, and "contains: 1234" on a text field raised on every event at run time.
    bad = GOOD.replace(
        "where: {payload.result: denied}",
        "where: {payload.result: denied, payload.method: {contains: 1234}, geo_country_here: x}",
    ).replace("geo_country_here: x", "payload.result: {ne: [[denied]]}")
    write(tmp_path, "a.yaml", bad)
    got = messages(tmp_path)
    expected = "payload.method.contains: 1234 is a whole number, but payload.method holds text"
    assert any(expected in m for m in got)
    assert any("payload.result.ne must be a scalar" in m for m in got)
    norway = """\
rules:
  - id: norway
    version: 1
    type: threshold
    typology: t
    severity: low
    score: 1
    explanation: "{entity}"
    match: {type: login, where: {payload.geo.country: [NO, RU], payload.mfa_used: [yes]}}
    group_by: customer
    timespan: 1h
    condition: {gte: 1}
  - id: nested
    version: 1
    type: threshold
    typology: t
    severity: low
    score: 1
    explanation: "{entity}"
    match: {type: mfa_challenge, where: {payload.result: [[denied, timeout]]}}
    group_by: customer
    timespan: 1h
    condition: {gte: 1}
"""
    (tmp_path / "a.yaml").unlink()
    write(tmp_path, "n.yaml", norway)
    got = messages(tmp_path)
    assert len(got) == 2, got
    assert re.search(r"n\.yaml:9:\d+: .*payload\.geo\.country: False is true/false.*quote it", got[0])
    assert re.search(r"n\.yaml:20:\d+: .*payload\.result must be a list of scalars", got[1])
    # Quoted, and a boolean where the field is one, they are fine.
    fixed = norway.replace("[NO, RU]", '["NO", RU]').replace("[[denied, timeout]]", "[denied]")
    write(tmp_path, "n.yaml", fixed)
    assert messages(tmp_path) == []


def test_ids_with_a_final_newline_and_misspelt_entity_kinds_are_errors(tmp_path: Path) -> None:
    # "$" matches before a final newline: "fatigue\n" passed, and its state topic name was
    # refused by Kafka when the service started.
    bad = GOOD.replace("id: fatigue", 'id: "fatigue\\n"\n    entity: custmer\n    attack: ["T1621\\n"]')
    write(tmp_path, "a.yaml", bad)
    got = "\n".join(messages(tmp_path))
    assert "id must be lower-case letters" in got
    assert "'T1621\\n' is not a MITRE ATT&CK technique id" in got
    assert "entity must be one of: customer" in got


def test_unreadable_files_and_absurd_durations_are_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(GOOD.replace("denied prompts", "refus\xe9s").encode("latin-1"))
    write(tmp_path, "long.yaml", GOOD.replace("id: fatigue", "id: long").replace("10m", "99999999999d"))
    got = messages(tmp_path)
    assert any(re.search(r"latin1\.yaml:8:1: error: not UTF-8 text", m) for m in got), got
    assert any("timespan must be a duration" in m and "99999999999d" in m for m in got), got
    from vigil.detect.rules.validate import describe

    missing = validate_paths([tmp_path / "nowhere.yaml"]).errors
    assert [describe(i) for i in missing] == [
        f"{tmp_path / 'nowhere.yaml'}: error: no such file or directory; "
        "expected a rule file (*.yaml) or a directory of them"
    ]


def test_a_directory_is_searched_with_its_subdirectories_and_any_case_of_suffix(tmp_path: Path) -> None:
    # Rules filed by domain (rules/chain/...) or named .YAML were skipped with nothing said:
    # the set loaded "ok" without them.
    def rule(name: str) -> str:
        return GOOD.replace("id: fatigue", f"id: {name}").replace("rule: fatigue", f"rule: {name}")

    (tmp_path / "chain" / "mixers").mkdir(parents=True)
    write(tmp_path, "top.yaml", rule("top"))
    write(tmp_path, "chain/mixers/deep.yml", rule("deep"))
    write(tmp_path, "chain/UPPER.YAML", rule("upper"))
    (tmp_path / ".git").mkdir()
    write(tmp_path, ".git/hidden.yaml", rule("hidden"))
    write(tmp_path, ".#editor.yaml", "not: [a rule")
    write(tmp_path, "notes.txt", "not a rule")
    (tmp_path / "chain" / "loop").symlink_to(tmp_path, target_is_directory=True)
    v = validate_paths([tmp_path])
    assert v.errors == []
    assert sorted(r.id for r in v.rules) == ["deep", "top", "upper"]
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in v.files] == [
        "chain/UPPER.YAML",
        "chain/mixers/deep.yml",
        "top.yaml",
    ]
    empty = tmp_path / "chain" / "mixers"
    (empty / "deep.yml").unlink()
    assert [i.message for i in validate_paths([empty]).errors] == [
        "no rule files (*.yaml, *.yml) found in it or its subdirectories"
    ]


def test_a_missing_rules_directory_is_named_relative_to_where_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read as a file, it was "rules:0:0: error: cannot read the file" (and, from `vigil detect`,
    # "rules:0:0: 1 error(s) in rule files:" before it).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuleError) as caught:
        load_rules([Path("rules")])
    assert str(caught.value) == (
        f"rules: no such file or directory (relative to the current directory, {tmp_path}); "
        "expected a rule file (*.yaml) or a directory of them"
    )


def test_values_equal_under_python_equality_are_accepted_and_durations_bounded(tmp_path: Path) -> None:
    # 0 == False and 100.0 == 100 match at run time: refusing them broke rule files that loaded.
    logins = GOOD.replace(
        "mfa_challenge, where: {payload.result: denied}", "login, where: {payload.mfa_used: 0}"
    )
    logins = logins.replace("type: mfa_challenge,", "type: login,").replace(", payload: {result: denied}", "")
    write(tmp_path, "a.yaml", logins)
    v = validate_paths([tmp_path])
    assert [str(i) for i in v.errors] == []
    assert [r.ok for r in run_cases(v.cases, v.rules)] == [True]  # 0 matched mfa_used false
    exports = GOOD.replace(
        "type: mfa_challenge, where: {payload.result: denied}",
        "type: crm_record_export, where: {payload.record_count: {ne: 1.0}}",
    ).split("cases:")[0]
    write(tmp_path, "a.yaml", exports)
    assert messages(tmp_path) == []
    # A TTL past a century: its expiry (the alert's time plus it) overflowed at the first alert.
    ttl = "condition: {gte: 3}\n    decision: {action: block, ttl: 9999999d}"
    write(tmp_path, "a.yaml", GOOD.replace("condition: {gte: 3}", ttl))
    got = messages(tmp_path)
    assert len(got) == 1
    assert "ttl must be a duration" in got[0]


def test_a_condition_beside_type_in_match_is_an_error_not_ignored(tmp_path: Path) -> None:
    # Written beside ``type`` instead of under ``where``, the condition was dropped without a
    # word: the rule passed validation and then alerted on every event of the type.
    bad = GOOD.replace(
        "match: {type: mfa_challenge, where: {payload.result: denied}}",
        "match: {type: mfa_challenge, payload.result: denied, bogus_key: 1}",
    )
    path = write(tmp_path, "beside.yaml", bad)
    v = validate_paths([tmp_path])
    got = [str(i) for i in v.errors]
    assert got == [
        f"{path}:9:34: error: unknown key 'payload.result' in rule 'fatigue'.match (a condition on a "
        "field belongs under 'where:', e.g. where: {payload.result: ...}); expected one of: type, where",
        f"{path}:9:58: error: unknown key 'bogus_key' in rule 'fatigue'.match; expected one of: type, where",
    ]
    assert v.rules == []


SHIPPED = Path(__file__).resolve().parents[3] / "rules"


@pytest.mark.parametrize(
    ("file", "rule_id", "where"),
    [
        ("chain.yaml", "mixer-denominations", ("match",)),  # threshold
        ("identity.yaml", "impossible-travel", ("match",)),  # deviation
        ("payments.yaml", "rapid-in-out", ("history",)),
        ("payments.yaml", "rapid-in-out", ("seen_also", 0)),
        ("chain.yaml", "sanctioned-counterparty", ("match",)),  # intel
        ("chain.yaml", "sanctioned-exposure", ("edges",)),  # exposure
        ("chain.yaml", "sanctioned-exposure", ("check", 0)),
        ("chain.yaml", "poisoning-dust", ("known", 0)),  # lookalike
        ("chain.yaml", "poisoning-dust", ("check", 0)),
        ("market.yaml", "wash-trading-linked", ("links",)),  # linked
        ("market.yaml", "wash-trading-linked", ("match",)),
        ("saas.yaml", "vendor-export-propagation", ("mark",)),  # propagation
        ("saas.yaml", "vendor-export-propagation", ("trigger",)),
        ("chain.yaml", "signer-secret-access", ("steps", 1)),  # sequence
    ],
)
def test_every_mapping_that_matches_events_refuses_unknown_keys(
    file: str, rule_id: str, where: tuple[str | int, ...]
) -> None:
    from vigil.detect.rules.loader import load_file
    from vigil.detect.rules.parse import Parser
    from vigil.detect.rules.validate import parse_rule

    rule = next(r for r in load_file(SHIPPED / file).data["rules"] if r["id"] == rule_id)
    target = rule
    for step in where:
        target = target[step]
    # A field path where a key of the mapping goes, located at a line of its own.
    target["payload.amount_usd"] = {"gt": 1}
    target.key_marks["payload.amount_usd"] = (900, 7)
    p = Parser(file)
    assert parse_rule(rule, p, file) is None
    errors = [str(i) for i in p.issues if i.severity == "error"]
    assert len(errors) == 1, errors  # once, whether the kind or the match checks the keys
    label = ".".join(str(s) if isinstance(s, str) else f"[{s}]" for s in where).replace(".[", "[")
    assert errors[0].startswith(
        f"{file}:900:7: error: unknown key 'payload.amount_usd' in rule {rule_id!r}.{label} "
        "(a condition on a field belongs under 'where:', e.g. where: {payload.amount_usd: ...}); "
        "expected one of: "
    ), errors
    assert "type" in errors[0].rsplit("expected one of: ", 1)[1].split(", ")


def test_a_decision_may_stand_until_released_and_the_sanctions_holds_do(tmp_path: Path) -> None:
    # A sanctions hold lapsed by itself after 7 days (no rule can release one): compliance must
    # review it.  ``ttl: 0s``, the only way to ask for that before, was refused.
    text = GOOD.replace(
        "    condition: {gte: 3}\n",
        "    condition: {gte: 3}\n    decision: {action: block, ttl: until_released}\n",
    )
    write(tmp_path, "ok.yaml", text)
    v = validate_paths([tmp_path])
    assert [str(i) for i in v.errors] == []
    (rule,) = v.rules
    assert rule.decision is not None
    assert rule.decision.ttl is None
    events = v.cases[0].events
    decisions = run_operators([DetectOperator(RuleSet(v.rules, IntelIndex()))], events).emitted("decisions")
    assert [d.payload.expires_at for d in decisions] == [None]  # type: ignore[attr-defined]
    shipped = {r.id: r for r in load_rules([Path(__file__).parents[3] / "rules"])}
    for rule_id in ("sanctioned-counterparty", "sanctioned-exposure"):
        assert shipped[rule_id].decision.ttl is None  # type: ignore[union-attr]
    bad = GOOD.replace(
        "    condition: {gte: 3}\n", "    condition: {gte: 3}\n    decision: {action: block, ttl: forever}\n"
    )
    (tmp_path / "ok.yaml").unlink()
    write(tmp_path, "bad.yaml", bad)
    with pytest.raises(RuleError, match="'until_released' for a decision that stands until released"):
        load_rules([tmp_path])


SEQUENCE = """\
rules:
  - id: regular-then-withdraw
    version: 1
    type: sequence
    typology: account_takeover
    severity: high
    score: 70
    explanation: "{entity}"
    group_by: customer
    within: 1h
    steps:
      - {type: login, first_seen: device, min_seen: 2}
      - {type: withdrawal_request}
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # An empty list where a value is needed dropped the rule with "ok", or loaded one that
        # stopped detection when its rules were built (a sequence grouped by nothing).
        (
            "group_by: customer",
            "group_by: []",
            r"ok\.yaml:10:15: error: rule 'fatigue'\.group_by must list at least one value$",
        ),
        (
            "type: mfa_challenge, where",
            "type: [], where",
            r"ok\.yaml:9:19: error: rule 'fatigue'\.match\.type must list at least one value$",
        ),
        # Ignored, the rule counted: "sum of amount >= 2" fired on two small ones.
        (
            "group_by: customer",
            "group_by: customer\n    field: payload.result",
            r"ok\.yaml:11:12: error: rule 'fatigue'\.field is used by aggregate 'sum' or 'distinct' only",
        ),
        # Never true of a count, accepted.
        (
            "condition: {gte: 3}",
            "condition: {lt: 1}",
            r"ok\.yaml:12:16: error: rule 'fatigue'\.condition: a count is a whole number of at least 1 "
            r"when it is asked, so lt 1 never holds",
        ),
        ("condition: {gte: 3}", "condition: {eq: 2.5}", r"never holds"),
        # A group path one of the types lacks: that type's events were never counted.
        (
            "type: mfa_challenge, where: {payload.result: denied}",
            "type: [mfa_challenge, login]",
            r"rule 'fatigue'\.group_by: no field 'payload\.result' on event type\(s\) login "
            r"\(their events would never be grouped",
        ),
    ],
)
def test_rule_settings_that_would_be_ignored_or_never_fire_are_errors(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = GOOD.replace(old, new)
    if "login]" in new:
        text = text.replace("group_by: customer", "group_by: payload.result")
    write(tmp_path, "ok.yaml", text)
    v = validate_paths([tmp_path])
    assert v.rules == []
    assert any(re.search(expected, str(e)) for e in v.errors), [str(e) for e in v.errors]


def test_an_empty_attack_list_is_still_fine(tmp_path: Path) -> None:
    write(tmp_path, "ok.yaml", GOOD.replace("group_by: customer", "group_by: customer\n    attack: []"))
    assert validate_paths([tmp_path]).errors == []


def test_min_seen_without_first_seen_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "seq.yaml", SEQUENCE.replace("first_seen: device, ", ""))
    v = validate_paths([tmp_path])
    assert [str(e).split(": error: ")[1] for e in v.errors] == [
        "rule 'regular-then-withdraw'.steps[0].min_seen needs first_seen (the history it counts)"
    ]
    write(tmp_path, "seq.yaml", SEQUENCE)
    assert validate_paths([tmp_path]).errors == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A control character: PyYAML's reader raised before parsing, a traceback naming no file.
        (
            'rules:\n  - id: a\n    title: "x\x07"\n',
            r"x\.yaml:3:14: error: not valid YAML: special characters are not allowed #x07 \(a control",
        ),
        # 200 levels deep: PyYAML's recursion raised out of validation.
        ("rules: " + "[" * 400 + "]" * 400 + "\n", r"x\.yaml:1:1: error: not valid here: nested too deeply"),
        # Ten aliases of ten aliases: a 1 KB file made a billion values and ran out of memory.
        (
            "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
            + "rules: *a8\n",
            r"x\.yaml:1:1: error: its aliases \(\*name\) make its 30 values 2,345,679,021 once "
            r"expanded: refused",
        ),
    ],
)
def test_hostile_yaml_is_a_located_error_not_a_traceback(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "x.yaml", text)
    errors = [str(e) for e in validate_paths([tmp_path]).errors]
    assert len(errors) == 1
    assert re.search(expected, errors[0]), errors


@pytest.mark.parametrize(
    ("body", "says"),
    [
        # A sum over text: nothing to add up, the rule never fired.
        (
            "    type: threshold\n    match: {type: withdrawal_request}\n    group_by: customer\n"
            "    timespan: 1h\n    aggregate: sum\n    field: payload.to_address\n    condition: {gte: 5}\n",
            "field: payload.to_address holds text, not a number, so it never gives one",
        ),
        # gt on text compared nothing (a float of text is no number).
        (
            "    type: threshold\n    match: {type: withdrawal_request, where: {payload.asset: {gt: 5}}}\n"
            "    group_by: customer\n    timespan: 1h\n    condition: {gte: 1}\n",
            "payload.asset.gt: payload.asset holds text, not a number",
        ),
        # gt on a time: the seconds since it is what was meant.
        (
            "    type: threshold\n    match: {type: order_cancel, where: {payload.placed_at: {lte: 10}}}\n"
            "    group_by: account\n    timespan: 1h\n    condition: {gte: 1}\n",
            "payload.placed_at holds a time, not a number, so it never gives one (the seconds since it: "
            "elapsed:payload.placed_at)",
        ),
        # elapsed: on something that is not a time gave no seconds.
        (
            "    type: threshold\n"
            "    match: {type: order_cancel, where: {elapsed:payload.price: {lte: 10}}}\n"
            "    group_by: account\n    timespan: 1h\n    condition: {gte: 1}\n",
            "elapsed: takes a time field; payload.price holds a number",
        ),
        # Equality with a group of fields never holds.
        (
            "    type: threshold\n    match: {type: login, where: {payload.geo: US}}\n"
            "    group_by: customer\n    timespan: 1h\n    condition: {gte: 1}\n",
            "payload.geo is a group of fields, not one value, so it never matches; name one of them "
            "(payload.geo.city, payload.geo.connection, payload.geo.country",
        ),
        # A ratio of text, a deviation of an amount that is text.
        (
            "    type: sequence\n    group_by: customer\n    within: 2h\n    steps:\n"
            "      - {name: deposit, type: deposit}\n"
            "      - name: out\n        type: withdrawal_request\n"
            "        ratio_to:\n"
            "          {step: deposit, field: payload.to_address, of: payload.amount_usd, gte: 0.9}\n",
            "ratio_to.field: payload.to_address holds text, not a number",
        ),
        (
            "    type: deviation\n    match: {type: withdrawal_request}\n    group_by: customer\n"
            "    measure: amount\n    field: payload.asset\n    condition: {gte: 10}\n",
            "field: payload.asset holds text, not a number",
        ),
    ],
)
def test_a_field_of_the_wrong_kind_is_refused(tmp_path: Path, body: str, says: str) -> None:
    # Each validated "ok" and never fired: a sum over text, gt on text or a time, elapsed: on a
    # number, equality with a struct, a ratio or deviation of text.
    path = write(tmp_path, "kind.yaml", HEAD + body)
    got = messages(tmp_path)
    assert len(got) == 1, got
    assert got[0].startswith(f"{path}:"), got
    assert says in got[0], got


def test_fields_of_the_right_kind_stay_valid(tmp_path: Path) -> None:
    # A product of numbers, elapsed: on a time, a sum over an optional number, a field of a
    # struct.
    body = (
        "    type: threshold\n    match:\n      type: order_cancel\n      where:\n"
        "        elapsed:payload.placed_at: {lte: 10}\n"
        "        payload.price*payload.remaining_quantity: {gte: 100000}\n"
        "    group_by: account\n    timespan: 1h\n    aggregate: sum\n    field: payload.price\n"
        "    condition: {gte: 1}\n"
    )
    write(tmp_path, "ok.yaml", HEAD + body)
    geo = (
        "    type: threshold\n    match: {type: login, where: {payload.geo.country: US}}\n"
        "    group_by: customer\n    timespan: 1h\n    condition: {gte: 1}\n"
    )
    write(tmp_path, "geo.yaml", HEAD.replace("rule-under-test", "geo") + geo)
    assert messages(tmp_path) == []
