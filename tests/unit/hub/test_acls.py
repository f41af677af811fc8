"""The ACL bindings of each component: what it needs is granted, nothing more is."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType
from typer.testing import CliRunner

from vigil.cli import app as cli
from vigil.cli import release
from vigil.detect.app import DetectTopology
from vigil.detect.engine import DECISIONS_TOPIC
from vigil.errors import ConfigError
from vigil.hub import acls
from vigil.hub.redrive import ledger_topic, redrive_group
from vigil.hub.topics import RAW_SOURCES, TOPICS
from vigil.sources import normalize
from vigil.sources.backend import DLQ_TOPIC as INGEST_DLQ
from vigil.sources.sink import LEGACY_CURSOR_TOPIC, cursor_topic
from vigil.stream.changelog import changelog_topic

Op = AclOperation
TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
#: Operations Kafka implies from others (Read/Write/Delete/Alter imply Describe; AlterConfigs
#: implies DescribeConfigs).
_IMPLIES = {
    Op.READ: {Op.DESCRIBE},
    Op.WRITE: {Op.DESCRIBE},
    Op.ALTER: {Op.DESCRIBE},
    Op.ALTER_CONFIGS: {Op.DESCRIBE_CONFIGS},
}
GRANTS = acls.grants()


def allowed(component: str, op: AclOperation, rtype: ResourceType, name: str) -> bool:
    """Whether ``component``'s grants allow ``op`` on resource ``name``, as Kafka matches them."""
    for g in GRANTS:
        if g.component != component or g.resource_type != rtype:
            continue
        if op != g.operation and op not in _IMPLIES.get(g.operation, set()):
            continue
        if g.pattern == ResourcePatternType.LITERAL and g.name in (name, "*"):
            return True
        if g.pattern == ResourcePatternType.PREFIXED and name.startswith(g.name):
            return True
    return False


def writers(topic: str) -> set[str]:
    return {c for c in acls.components() if allowed(c, Op.WRITE, TOPIC, topic)}


def test_one_component_per_raw_source_and_each_stage() -> None:
    expected = {f"source-{s}" for s in RAW_SOURCES} | {"normalize", "detect", "redrive", "release", "admin"}
    assert set(acls.components()) == expected


def test_only_the_admin_gets_a_wildcard_resource_or_all_operations() -> None:
    for g in GRANTS:
        if g.component == "admin":
            continue
        wildcard = g.name == "*" or (g.pattern == ResourcePatternType.PREFIXED and g.name == "")
        assert not wildcard, g
        assert g.operation != Op.ALL, g
        assert g.resource_type != ResourceType.BROKER, g  # the cluster: topics, ACLs


def test_every_binding_allows_from_any_host() -> None:
    for binding in acls.bindings():
        assert binding.permission_type == AclPermissionType.ALLOW
        assert binding.host == "*"


@pytest.mark.parametrize("source", sorted(RAW_SOURCES))
def test_a_source_writes_its_raw_topic_and_its_own_cursors_and_nothing_else(source: str) -> None:
    component = f"source-{source}"
    assert allowed(component, Op.WRITE, TOPIC, f"raw.{source}")
    assert allowed(component, Op.WRITE, TXN, f"vigil.source.{source}")
    own = cursor_topic(source)
    assert allowed(component, Op.CREATE, TOPIC, own)  # the sink's ensure_topics at start
    assert allowed(component, Op.WRITE, TOPIC, own)
    assert allowed(component, Op.READ, TOPIC, own)  # last_cursor
    # Another source's cursors are not its to write (with one shared topic they were).
    other = next(s for s in sorted(RAW_SOURCES) if not s.startswith(source) and not source.startswith(s))
    assert not allowed(component, Op.WRITE, TOPIC, cursor_topic(other))
    assert allowed(component, Op.READ, TOPIC, LEGACY_CURSOR_TOPIC)  # taken from there on upgrade
    assert not allowed(component, Op.WRITE, TOPIC, LEGACY_CURSOR_TOPIC)
    extra = {INGEST_DLQ} if source == "backend" else set()
    written = {spec.name for spec in TOPICS if allowed(component, Op.WRITE, TOPIC, spec.name)}
    assert written == {f"raw.{source}"} | extra
    assert not allowed(component, Op.CREATE, TOPIC, f"raw.{source}")


def test_the_intel_connectors_source_ids_are_covered_by_source_intel() -> None:
    for source_id in ("intel.lists", "intel.taxii"):
        assert allowed("source-intel", Op.WRITE, TXN, f"vigil.source.{source_id}")


def test_decisions_and_alerts_are_written_by_detection_alone() -> None:
    assert writers("decisions") == {"detect"}
    assert writers("alerts") == {"detect"}


def test_release_reads_the_decisions_and_writes_releases_and_nothing_else() -> None:
    # An analyst's credential: `vigil release` reads both to their ends (a reader group of its
    # own, committing nothing) and writes releases, which nothing else writes.
    assert writers("releases") == {"release"}
    assert allowed("release", Op.READ, TOPIC, "decisions")
    assert allowed("release", Op.READ, TOPIC, "releases")
    assert allowed("release", Op.READ, GROUP, f"{acls.READER_GROUP_PREFIX}0a1b2c3d")
    topics = {g.name for g in GRANTS if g.component == "release" and g.resource_type == TOPIC}
    assert topics == {"decisions", "releases"}
    assert not any(g.component == "release" and g.resource_type == TXN for g in GRANTS)


def test_raw_topics_are_written_by_their_source_and_the_redrive_operator_alone() -> None:
    for source in RAW_SOURCES:
        assert writers(f"raw.{source}") == {f"source-{source}", "redrive"}


def test_canonical_topics_are_written_by_normalize_and_the_redrive_operator_alone() -> None:
    for spec in TOPICS:
        if spec.name.startswith("events."):
            assert writers(spec.name) == {"normalize", "redrive"}
    assert writers("intel.indicators") == {"normalize"}


def test_normalize_has_what_its_stage_needs() -> None:
    app = "normalize"
    for source in RAW_SOURCES:
        assert allowed(app, Op.READ, TOPIC, f"raw.{source}")
    for name in normalize.OUTPUTS:
        assert allowed(app, Op.WRITE, TOPIC, name)
        assert allowed(app, Op.DESCRIBE_CONFIGS, TOPIC, name)
    assert allowed(app, Op.WRITE, TOPIC, normalize.DLQ)
    assert allowed(app, Op.READ, GROUP, "normalize")
    assert allowed(app, Op.WRITE, TXN, "normalize-host-1234")
    assert allowed(app, Op.CREATE, TOPIC, "normalize.late")
    assert not allowed(app, Op.READ, TOPIC, "events.payments")


def test_detect_has_what_both_its_stages_need() -> None:
    t = DetectTopology()
    for name in t.inputs:
        assert allowed("detect", Op.READ, TOPIC, name)
        assert not allowed("detect", Op.WRITE, TOPIC, name)
    assert allowed("detect", Op.READ, TOPIC, t.intel)
    for topic in (t.routed, t.alerts, t.decisions, t.dlq):
        assert allowed("detect", Op.WRITE, TOPIC, topic)
    assert allowed("detect", Op.CREATE, TOPIC, t.routed)  # created at start: not declared
    assert allowed("detect", Op.READ, TOPIC, t.routed)
    for app in (t.route_app, t.detect_app):
        assert allowed("detect", Op.READ, GROUP, app)
        assert allowed("detect", Op.READ, GROUP, f"{app}.restore")
        assert allowed("detect", Op.WRITE, TXN, f"{app}-host-1")
        changelog = changelog_topic(app, "rules.v1")
        for op in (Op.CREATE, Op.READ, Op.WRITE, Op.DESCRIBE_CONFIGS):
            assert allowed("detect", op, TOPIC, changelog)
        assert allowed("detect", Op.CREATE, TOPIC, f"{app}.late")
    assert allowed("detect", Op.READ, GROUP, "vigil-intel-0123456789ab")


def test_redrive_reads_letters_and_keeps_its_ledger() -> None:
    for dlq in ("dlq.normalize", "dlq.detect", "dlq.ingest"):
        assert allowed("redrive", Op.READ, TOPIC, dlq)
        assert not allowed("redrive", Op.WRITE, TOPIC, dlq)
        assert allowed("redrive", Op.CREATE, TOPIC, ledger_topic(dlq))
        assert allowed("redrive", Op.WRITE, TXN, redrive_group(dlq))
        assert allowed("redrive", Op.READ, GROUP, redrive_group(dlq))
    assert not allowed("redrive", Op.WRITE, TOPIC, LEGACY_CURSOR_TOPIC)
    assert not allowed("redrive", Op.WRITE, TOPIC, cursor_topic("coinbase"))


def test_only_the_admin_creates_declared_topics() -> None:
    for spec in TOPICS:
        creators = {c for c in acls.components() if allowed(c, Op.CREATE, TOPIC, spec.name)}
        assert creators == {"admin"}, spec.name


def test_principals_follow_the_convention_unless_mapped() -> None:
    mapped = acls.grants({"detect": "User:fraud-detect"})
    by_component = {g.component: g.principal for g in mapped}
    assert by_component["detect"] == "User:fraud-detect"
    assert by_component["source-coinbase"] == "User:vigil-source-coinbase"
    assert by_component["normalize"] == "User:vigil-normalize"


def test_an_unknown_component_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown component\(s\) \['detector'\].*known: source-"):
        acls.grants({"detector": "User:x"})


def test_a_principal_without_its_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="principal of component 'detect' must be <type>:<name>"):
        acls.grants({"detect": "fraud-detect"})


def test_principal_options_are_parsed_and_a_malformed_one_is_named() -> None:
    assert acls.parse_principals(["detect = User:fd"]) == {"detect": "User:fd"}
    with pytest.raises(ConfigError, match=r"--principal must be COMPONENT=User:name.*got 'detect'"):
        acls.parse_principals(["detect"])


def test_the_names_match_the_code() -> None:
    t = DetectTopology()
    assert acls.LEGACY_CURSOR_TOPIC == LEGACY_CURSOR_TOPIC
    assert cursor_topic("x") == acls.CURSOR_TOPIC_PREFIX + "x"
    assert acls.INGEST_DLQ == INGEST_DLQ
    assert acls.NORMALIZE_DLQ == normalize.DLQ
    assert (t.route_app, t.detect_app) == acls.DETECT_APPS
    assert (t.routed, t.dlq, t.intel) == (acls.ROUTED_TOPIC, acls.DETECT_DLQ, acls.INTEL_TOPIC)
    assert redrive_group("dlq.detect").startswith(acls.REDRIVE_PREFIX)
    assert acls.DECISIONS_TOPIC == DECISIONS_TOPIC
    assert (acls.DECISIONS_TOPIC, acls.RELEASES_TOPIC) == (release.DECISIONS, release.RELEASES)
    assert ledger_topic("dlq.detect") == "dlq.detect" + acls.LEDGER_SUFFIX


@pytest.mark.parametrize("component", sorted(set(acls.components()) - {"admin"}))
def test_every_component_may_ask_partition_ends(component: str) -> None:
    # partition_offsets' consumer names a group of this prefix; librdkafka looks up its
    # coordinator, refused (and logged by the broker) on every call without the grant.
    assert allowed(component, Op.READ, GROUP, f"{acls.OFFSETS_GROUP_PREFIX}0a1b2c3d")
    assert not allowed(component, Op.READ, GROUP, "vigil.offsetsX")


def test_one_components_grants_alone_for_an_analysts_own_principal() -> None:
    # Without --component, mapping the release component to an analyst's principal listed (and
    # --apply created) every component's grants, the others under their usual principals.
    runner = CliRunner()
    only = ["topics", "acls", "--component", "release", "--principal", "release=User:alice"]
    result = runner.invoke(cli, only, terminal_width=300)
    assert result.exit_code == 0, result.output
    mine = [g for g in GRANTS if g.component == "release"]
    assert f"{len(mine)} bindings; --apply creates them" in result.output
    assert "User:alice" in result.output
    assert "vigil-" not in result.output
    result = runner.invoke(cli, ["topics", "acls", "--component", "releaser"])
    assert isinstance(result.exception, ConfigError)
    assert "unknown component(s) ['releaser']; known: " in str(result.exception)
    # A mapping for a component not chosen would grant nothing to its principal, silently.
    result = runner.invoke(cli, ["topics", "acls", "--component", "release", "--principal", "detect=User:x"])
    assert isinstance(result.exception, ConfigError)
    assert "--principal detect=... names a component not among --component (release)" in str(result.exception)
