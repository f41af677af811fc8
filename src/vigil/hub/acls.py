"""Least-privilege topic access: one principal per component, and the ACLs each one needs.

Every Vigil process is one component and should connect with that component's own
credential (``VIGIL_KAFKA_SASL_USERNAME`` / ``_PASSWORD`` per process), so that a
compromised webhook receiver can write its ``raw.<source>`` topic and nothing else: not
``decisions`` or ``releases`` (which would hold or release withdrawals), not another source's
raw topic.

:data:`COMPONENTS` is the explicit registry of components; :func:`bindings` turns it,
with the topic registry, into Kafka ACL bindings (:class:`~confluent_kafka.admin.AclBinding`),
all ALLOW, any host.  The names below are the ones the code uses (the sink's
transactional ids, the stream applications' consumer groups, transactional ids and
internal topics, the redrive's group and ledger); ``tests/unit/hub/test_acls.py`` fails
when they drift from it.

Topics are created by the admin principal first (``vigil topics apply``).  Components
call ``ensure_topics`` at start, which lists the topics (Describe) and reads their
configs (DescribeConfigs), and creates only what is missing: they get Create only on
the topics named after their stream application (changelogs, ``<app>.late``,
``detect.routed``), which no ``topics apply`` creates.

PREFIXED patterns are used where names are patterned (``raw.``, ``events.``, the
applications' ``<app>.`` topics, ``<app>-<instance>`` transactional ids); LITERAL
otherwise.  Only the admin component gets a wildcard (``*``) resource.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from vigil.errors import BrokerError, ConfigError
from vigil.hub.answers import wait_answered
from vigil.hub.topics import TOPICS, TopicRegistry

log = logging.getLogger(__name__)

Op = AclOperation
LITERAL = ResourcePatternType.LITERAL
PREFIXED = ResourcePatternType.PREFIXED
TOPIC = ResourceType.TOPIC
GROUP = ResourceType.GROUP
TXN = ResourceType.TRANSACTIONAL_ID
CLUSTER = ResourceType.BROKER  # Kafka's "Cluster" resource (librdkafka calls it BROKER)
#: The one name a cluster resource has.
CLUSTER_NAME = "kafka-cluster"

# -- the names the code uses (checked against it by the unit tests) ----------------------
CURSOR_TOPIC_PREFIX = "vigil.cursors."  # vigil.sources.sink.cursor_topic: one per source id
LEGACY_CURSOR_TOPIC = "vigil.cursors"  # the one every source shared before; read on upgrade
SOURCE_TXN_PREFIX = "vigil.source."  # the sink's transactional.id: vigil.source.<source id>
#: ``read_committed``'s throwaway consumer groups (partitions assigned, nothing committed).
READER_GROUP_PREFIX = "vigil.reader."
#: ``partition_offsets``' consumers (a consumer needs a group id; it never joins it, but
#: librdkafka looks up its coordinator.  Read, as for the readers' groups: with Describe alone
#: the coordinator was found and the offsets query then failed, "Unknown partition").
OFFSETS_GROUP_PREFIX = "vigil.offsets."
INGEST_DLQ = "dlq.ingest"  # vigil.sources.backend.DLQ_TOPIC
NORMALIZE_APP = "normalize"  # vigil.sources.normalize.build's default name
NORMALIZE_DLQ = "dlq.normalize"
DETECT_APPS = ("detect-route", "detect")  # DetectTopology().route_app, .detect_app
DETECT_DLQ = "dlq.detect"
DECISIONS_TOPIC = "decisions"  # vigil.detect.engine.DECISIONS_TOPIC
RELEASES_TOPIC = "releases"  # vigil.cli.release.RELEASES: analysts' releases of decisions
ROUTED_TOPIC = "detect.routed"
INTEL_TOPIC = "intel.indicators"
INTEL_FEED_GROUP_PREFIX = "vigil-intel-"  # IntelFeed: a group per process, commits nothing
REDRIVE_PREFIX = "vigil.dlq-redrive."  # redrive_group(): its group and transactional id
REDRIVE_READ_GROUP_PREFIX = "vigil.dlq-read."  # the redrive's readers of original records
DLQ_SUMMARY_GROUP_PREFIX = "vigil.dlq-summary."  # vigil.hub.dlq.summarize's throwaway readers
LEDGER_SUFFIX = ".redriven"  # ledger_topic(): <dead-letter topic>.redriven

#: Sources whose connector also writes somewhere besides ``raw.<source>``: the back-end ingest
#: API dead-letters the lines it rejects to ``dlq.ingest``.
_EXTRA_WRITES: dict[str, tuple[str, ...]] = {"backend": (INGEST_DLQ,)}


@dataclass(frozen=True)
class Grant:
    """One ALLOW binding, with the component it is for."""

    component: str
    principal: str
    operation: AclOperation
    resource_type: ResourceType
    name: str
    pattern: ResourcePatternType

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource_type,
            self.name,
            self.pattern,
            self.principal,
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )

    @property
    def resource(self) -> str:
        kind = "cluster" if self.resource_type == CLUSTER else self.resource_type.name.lower()
        return f"{kind}:{self.name}"


#: What a component may do: (operation, resource type, resource name, pattern type).
Rights = list[tuple[AclOperation, ResourceType, str, ResourcePatternType]]


def _allow(rtype: ResourceType, name: str, pattern: ResourcePatternType, *ops: AclOperation) -> Rights:
    return [(op, rtype, name, pattern) for op in ops]


def _source(name: str) -> Rights:
    """A connector: its raw topic, its transactional id, the shared cursor topic."""
    rights = _allow(TOPIC, f"raw.{name}", LITERAL, Op.WRITE, Op.DESCRIBE)
    for topic in _EXTRA_WRITES.get(name, ()):
        rights += _allow(TOPIC, topic, LITERAL, Op.WRITE, Op.DESCRIBE)
    # PREFIXED: a connector's source id defaults to its name but may be given (two Ethereum
    # nodes: ethereum-a, ethereum-b; the intel lists and TAXII feed are intel.lists and
    # intel.taxii), and it names the transactional id.
    rights += _allow(TXN, SOURCE_TXN_PREFIX + name, PREFIXED, Op.WRITE, Op.DESCRIBE)
    # Its cursor topics, vigil.cursors.<source id> (PREFIXED as the transactional ids), which
    # the sink creates at start: a topic per source, as ACLs cannot scope a write by key (with
    # the one shared topic, any connector could rewind or skip another's cursor).  The shared
    # topic of earlier versions is read only, once, on upgrade.
    rights += _allow(TOPIC, CURSOR_TOPIC_PREFIX + name, PREFIXED, *_OWNED)
    rights += _allow(TOPIC, LEGACY_CURSOR_TOPIC, LITERAL, Op.READ, Op.DESCRIBE)
    rights += _allow(GROUP, READER_GROUP_PREFIX, PREFIXED, Op.READ)
    return rights


def _offsets() -> Rights:
    """Asking partitions' ends (``vigil.hub.client.partition_offsets``): restore, tables, the
    dead-letter tools and readers do, every component but the admin."""
    return _allow(GROUP, OFFSETS_GROUP_PREFIX, PREFIXED, Op.READ)


def _application(app: str) -> Rights:
    """What the stream runtime itself needs for application ``app``: its consumer group (and
    its changelog restorer's, ``<app>.restore``), its transactional ids (``<app>-<instance>``)
    and the topics named after it (``<app>.changelog.<store>``, ``<app>.late``, ``<app>.peers``),
    which it creates at start: no ``vigil topics apply`` declares them."""
    rights = _allow(GROUP, app, LITERAL, Op.READ, Op.DESCRIBE)
    rights += _allow(GROUP, f"{app}.", PREFIXED, Op.READ)
    rights += _allow(TXN, f"{app}-", PREFIXED, Op.WRITE, Op.DESCRIBE)
    rights += _allow(TOPIC, f"{app}.", PREFIXED, *_OWNED)
    return rights


#: On a topic a component makes itself and owns (changelogs, ``<app>.late``, a redrive's
#: ledger): owned topics keep their declared settings (``ensure_topics(owned=True)``), and a
#: changelog's record limit is raised when the declaration's is larger, hence AlterConfigs.
_OWNED = (Op.CREATE, Op.READ, Op.WRITE, Op.DESCRIBE, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS)


def _normalize() -> Rights:
    rights = _allow(TOPIC, "raw.", PREFIXED, Op.READ, Op.DESCRIBE)
    # Its outputs are ensured at start (created when missing, their live settings left as they
    # are but for a larger record limit, which these topics do not declare): listed and their
    # configs read.
    rights += _allow(TOPIC, "events.", PREFIXED, Op.WRITE, Op.DESCRIBE, Op.DESCRIBE_CONFIGS)
    rights += _allow(TOPIC, INTEL_TOPIC, LITERAL, Op.WRITE, Op.DESCRIBE, Op.DESCRIBE_CONFIGS)
    rights += _allow(TOPIC, NORMALIZE_DLQ, LITERAL, Op.WRITE, Op.DESCRIBE)
    return rights + _application(NORMALIZE_APP)


def _detect() -> Rights:
    rights = _allow(TOPIC, "events.", PREFIXED, Op.READ, Op.DESCRIBE)
    rights += _allow(TOPIC, INTEL_TOPIC, LITERAL, Op.READ, Op.DESCRIBE)
    rights += _allow(GROUP, INTEL_FEED_GROUP_PREFIX, PREFIXED, Op.READ)
    # detect.routed is under the detect application's own "detect." prefix (created at start).
    for topic in ("alerts", DECISIONS_TOPIC, DETECT_DLQ):
        rights += _allow(TOPIC, topic, LITERAL, Op.WRITE, Op.DESCRIBE)
    for app in DETECT_APPS:
        rights += _application(app)
    return rights


def _redrive(registry: TopicRegistry) -> Rights:
    """An operator's credential for ``vigil dlq``: reads the dead-letter topics (``summary``) and
    appends the original records again to the stages' inputs (``redrive``; only those: see
    vigil.hub.redrive)."""
    rights = _allow(TOPIC, "dlq.", PREFIXED, Op.READ, Op.DESCRIBE)
    for dlq in sorted(s.name for s in registry if s.name.startswith("dlq.")):
        # The ledger of letters sent, made on the first redrive and kept as declared (owned).
        rights += _allow(TOPIC, dlq + LEDGER_SUFFIX, LITERAL, *_OWNED)
    for prefix in ("raw.", "events."):
        rights += _allow(TOPIC, prefix, PREFIXED, Op.READ, Op.WRITE, Op.DESCRIBE)
    rights += _allow(TOPIC, ROUTED_TOPIC, LITERAL, Op.READ, Op.WRITE, Op.DESCRIBE)
    rights += _allow(GROUP, REDRIVE_PREFIX, PREFIXED, Op.READ, Op.DESCRIBE)
    rights += _allow(GROUP, REDRIVE_READ_GROUP_PREFIX, PREFIXED, Op.READ)
    # Reading the ledger again (read_committed's groups), and `vigil dlq summary`'s readers: a
    # second redrive and the summary were refused ("Group authorization failed").
    rights += _allow(GROUP, READER_GROUP_PREFIX, PREFIXED, Op.READ)
    rights += _allow(GROUP, DLQ_SUMMARY_GROUP_PREFIX, PREFIXED, Op.READ)
    rights += _allow(TXN, REDRIVE_PREFIX, PREFIXED, Op.WRITE, Op.DESCRIBE)
    return rights


def _release() -> Rights:
    """An analyst's credential for ``vigil release``: reads the decisions and the releases (its
    readers' groups commit nothing) and writes releases.  Nothing else: an analyst's laptop holds
    this one, and it must write no hold or block (``decisions`` is detection's alone), alerts,
    canonical events or another stage's topics."""
    rights = _allow(TOPIC, DECISIONS_TOPIC, LITERAL, Op.READ, Op.DESCRIBE)
    rights += _allow(TOPIC, RELEASES_TOPIC, LITERAL, Op.READ, Op.WRITE, Op.DESCRIBE)
    rights += _allow(GROUP, READER_GROUP_PREFIX, PREFIXED, Op.READ)
    return rights


def _admin() -> Rights:
    """``vigil topics apply`` (create, add partitions = Alter, set configs) and
    ``vigil topics acls --apply`` (CreateAcls needs Alter on the cluster).  The first ACLs
    are created by a super user (``super.users``), or by this principal once it is one."""
    rights = _allow(
        TOPIC, "*", LITERAL, Op.CREATE, Op.ALTER, Op.ALTER_CONFIGS, Op.DESCRIBE, Op.DESCRIBE_CONFIGS
    )
    rights += _allow(CLUSTER, CLUSTER_NAME, LITERAL, Op.DESCRIBE, Op.ALTER)
    return rights


def components(registry: TopicRegistry = TOPICS) -> dict[str, Rights]:
    """The explicit registry of components and what each may do: ``source-<name>`` for every
    raw topic's connector(s) (``source-intel`` covers the intel lists and TAXII feed, both
    writing ``raw.intel``), ``normalize``, ``detect`` (both of its applications), ``redrive``,
    ``release`` (an analyst's ``vigil release``) and ``admin``."""
    out: dict[str, Rights] = {}
    for spec in registry:
        if spec.name.startswith("raw."):
            name = spec.name.removeprefix("raw.")
            out[f"source-{name}"] = _source(name) + _offsets()
    out["normalize"] = _normalize() + _offsets()
    out["detect"] = _detect() + _offsets()
    out["redrive"] = _redrive(registry) + _offsets()
    out["release"] = _release() + _offsets()
    out["admin"] = _admin()
    return out


def default_principal(component: str) -> str:
    """The convention: ``User:vigil-<component>`` (``User:vigil-source-coinbase``)."""
    return f"User:vigil-{component}"


def grants(principals: Mapping[str, str] | None = None, registry: TopicRegistry = TOPICS) -> list[Grant]:
    """Every component's grants, under its principal: ``principals`` maps a component to a
    principal (``{"detect": "User:fraud-detect"}``); the others follow :func:`default_principal`.
    An unknown component or a principal not shaped ``<type>:<name>`` is a ConfigError."""
    registered = components(registry)
    given = dict(principals or {})
    unknown = sorted(set(given) - set(registered))
    if unknown:
        msg = f"unknown component(s) {unknown} in the principal mapping; known: {', '.join(registered)}"
        raise ConfigError(msg)
    for component, principal in given.items():
        kind, sep, name = principal.partition(":")
        if not (sep and kind and name):
            msg = (
                f"principal of component {component!r} must be <type>:<name> (User:alice); got {principal!r}"
            )
            raise ConfigError(msg)
    return [
        Grant(component, given.get(component, default_principal(component)), op, rtype, name, pattern)
        for component, rights in registered.items()
        for op, rtype, name, pattern in rights
    ]


def bindings(
    principals: Mapping[str, str] | None = None, registry: TopicRegistry = TOPICS
) -> list[AclBinding]:
    """The ACL bindings of :func:`grants`, ready for ``AdminClient.create_acls``."""
    return [g.binding() for g in grants(principals, registry)]


def parse_principals(pairs: Iterable[str]) -> dict[str, str]:
    """``COMPONENT=User:name`` pairs (the CLI's ``--principal``) as a mapping."""
    out: dict[str, str] = {}
    for pair in pairs:
        component, sep, principal = pair.partition("=")
        if not (sep and component.strip() and principal.strip()):
            msg = f"--principal must be COMPONENT=User:name (detect=User:fraud-detect); got {pair!r}"
            raise ConfigError(msg)
        out[component.strip()] = principal.strip()
    return out


def describe(binding: AclBinding) -> str:
    """One binding in one line: ``ALLOW User:vigil-detect WRITE topic:alerts (LITERAL)``."""
    kind = "cluster" if binding.restype == CLUSTER else binding.restype.name.lower()
    return (
        f"{binding.permission_type.name} {binding.principal} {binding.operation.name} "
        f"{kind}:{binding.name} ({binding.resource_pattern_type.name})"
    )


def create(admin: Any, wanted: Iterable[AclBinding], timeout_s: float = 30.0) -> int:
    """Create ``wanted`` on the cluster with ``admin`` (an AdminClient); returns how many.
    Idempotent: Kafka takes a binding that exists already as created.  Raises
    :class:`BrokerError` naming the first binding refused and how many were."""
    wanted = list(wanted)
    if not wanted:
        return 0
    failed: list[str] = []
    futures = admin.create_acls(wanted, request_timeout=timeout_s)
    wait_answered(admin, futures.values(), timeout_s)
    for binding, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # KafkaException, or the future's own timeout
            detail = exc.args[0] if exc.args else exc
            failed.append(f"{describe(binding)}: {detail}")
    if failed:
        msg = f"creating {len(failed)} of {len(wanted)} ACL binding(s) failed; first: {failed[0]}"
        raise BrokerError(msg)
    _wait_in_force(admin, wanted, timeout_s)
    return len(wanted)


def _wait_in_force(admin: Any, wanted: list[AclBinding], timeout_s: float) -> None:
    """Return once the broker lists every binding of ``wanted``: created, they reach the
    brokers' authorizers through the metadata log a moment later, and a component started at
    once was refused (measured: the first write after creating, then not)."""
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, Op.ANY, AclPermissionType.ANY
    )
    deadline = time.monotonic() + timeout_s
    missing = len(wanted)
    while time.monotonic() < deadline:
        try:
            asked = admin.describe_acls(everything, request_timeout=timeout_s)
            wait_answered(admin, [asked], max(deadline - time.monotonic(), 0.0))
            listed = set(asked.result(timeout=0))
        except Exception as exc:  # KafkaException, or the future's timeout: asked again
            log.debug("describing ACLs: %s", exc)
        else:
            missing = sum(1 for b in wanted if b not in listed)
            if not missing:
                return
        time.sleep(0.2)
    msg = f"{missing} of {len(wanted)} ACL binding(s) created were not in force within {timeout_s:g} s"
    raise BrokerError(msg)
