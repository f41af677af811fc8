"""Topics as code: the one declared registry of every topic Vigil uses.

Naming: ``raw.<source>`` (bytes exactly as the source sent them), ``events.<domain>``
(canonical events), ``intel.indicators`` (compacted), ``alerts``, ``decisions``, ``releases``,
``labels`` and ``dlq.<stage>``.  A connector's checkpoints go to ``vigil.cursors.<source id>``,
which the connector makes (see vigil.sources.sink.cursor_spec).
Internal topics of stream applications (changelogs, repartitions) are named by the
runtime from the application and store ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from vigil.errors import TopicError
from vigil.events.base import Event
from vigil.events.records import DeadLetter, EpisodeLabel
from vigil.events.types import Alert, Decision, IntelIndicator, Release, types_in_domain

#: What Kafka takes in a topic name, and how long one may be.
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")
TOPIC_NAME_MAX = 249

Cleanup = Literal["delete", "compact"]

DAY = timedelta(days=1)
#: How long dead letters are kept: a month to fix what failed and send them again (``vigil dlq
#: redrive``), the declared ``dlq.<stage>`` topics and every application's own alike.
DEAD_LETTER_RETENTION = 30 * DAY


#: The topic config that sets how many replicas acknowledge an ``acks=all`` write.
MIN_INSYNC = "min.insync.replicas"


def min_insync_replicas(replication: int) -> int:
    """How many replicas must have a record before an ``acks=all`` write of it (every Vigil
    producer's) is acknowledged, on a topic or cluster of ``replication`` replicas.

    Kafka's default, 1, acknowledges a record held by the leader alone once the others fall
    out of sync; losing that leader then loses records whose senders were told they were
    stored (a webhook's 2xx).  With 3 or more replicas: 2, so an acknowledged record survives
    the loss of any one broker, and writes go on while one is down (a rolling restart).  More
    than 2 would stop writes with fewer brokers lost and keep nothing more through one loss.
    With 2 replicas: 1, by choice.  2 would refuse every write to a partition while either of
    its brokers is down, each restart included: sources would be refused (webhook senders
    retry, maybe not for long) and decisions would not reach the back end, fraud let through
    meanwhile.  So a 2-replica topic stays writable and, while a replica is out of sync,
    acknowledges records with one copy, on a cluster whose controllers keep their quorum (the
    local `vigil broker start --nodes 2` has two KRaft voters, and one down stops the cluster:
    its shapes are one node or three); a deployment that needs both runs 3.  With 1: 1."""
    return max(1, min(2, replication - 1))


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic.

    ``value`` is what the topic carries: a tuple of event classes (a canonical contract),
    ``"raw"`` for source bytes, or a record type name (``"label"``, ``"dead_letter"``).
    ``partitions``/``replication`` of ``None`` take the settings' defaults.
    """

    name: str
    key: str
    value: tuple[type[Event], ...] | Literal["raw", "label", "dead_letter", "cursor"]
    description: str
    partitions: int | None = None
    replication: int | None = None
    retention: timedelta | None = field(default=7 * DAY)
    cleanup: Cleanup = "delete"
    #: The largest record the topic takes (``max.message.bytes``; None: the broker's, 1 MB).
    max_message_bytes: int | None = None
    #: Whether a live compacted topic may be given more partitions.  Not by default (applying
    #: leaves it as it is, with a note): a key's new records would go to another partition while
    #: its older ones stay where they were, and readers of the whole topic (global tables) could
    #: take a stale value, or a deleted key's, as its latest.  Changelogs may: their partitions
    #: follow their application's inputs.
    grow_compacted: bool = False
    #: How long a compacted topic keeps a deletion (``delete.retention.ms``; None: the broker's,
    #: a day).  A deletion that must stay readable (a connector reset) is kept for good.
    delete_retention: timedelta | None = None

    @property
    def event_types(self) -> tuple[type[Event], ...]:
        return self.value if isinstance(self.value, tuple) else ()

    @property
    def value_name(self) -> str:
        if isinstance(self.value, tuple):
            return " | ".join(cls.__struct_config__.tag for cls in self.value)  # type: ignore[misc]
        return self.value

    def config(self, replication: int | None = None) -> dict[str, str]:
        """Kafka topic configs this declaration implies, for a topic of ``replication`` replicas.

        ``min.insync.replicas`` follows the replicas (:func:`min_insync_replicas`); with
        ``replication`` unknown (None: the cluster's default, before the topic exists) it is
        left out, and set once the topic shows how many replicas it was given."""
        conf: dict[str, str] = {"cleanup.policy": self.cleanup}
        if replication is not None:
            if replication < 1:
                msg = f"topic {self.name!r}: replicas must be at least 1 (None: unknown); got {replication}"
                raise TopicError(msg)
            conf[MIN_INSYNC] = str(min_insync_replicas(replication))
        conf["retention.ms"] = (
            "-1" if self.retention is None else str(int(self.retention.total_seconds() * 1000))
        )
        # Retention is by time only: a size limit on the topic (or the cluster's
        # log.retention.bytes) deleted alerts declared for a year while `topics list` said ok.
        conf["retention.bytes"] = "-1"
        if self.cleanup == "compact":
            # Compacted topics keep the latest value per key; let the cleaner run promptly.
            conf["min.cleanable.dirty.ratio"] = "0.1"
            conf["segment.ms"] = str(int(DAY.total_seconds() * 1000))
        if self.max_message_bytes is not None:
            conf["max.message.bytes"] = str(self.max_message_bytes)
        if self.delete_retention is not None:
            conf["delete.retention.ms"] = str(int(self.delete_retention.total_seconds() * 1000))
        return conf


RAW_SOURCES: dict[str, str] = {
    "ethereum": "Ethereum JSON-RPC blocks, transactions and receipt logs",
    "bitcoin": "Bitcoin Core getblock verbosity 2 blocks",
    "coinbase": "Coinbase Exchange websocket messages",
    "binance": "Binance websocket messages",
    "backend": "The exchange's own back-end events (canonical JSON, unvalidated)",
    "hubspot": "HubSpot webhook deliveries",
    "salesforce": "Salesforce outbound messages and event-monitoring records",
    "mailchimp": "Mailchimp audience webhooks",
    "syslog": "Syslog RFC 5424 messages",
    "cloudtrail": "AWS CloudTrail records",
    "intel": "Threat-intelligence feeds (STIX bundles, OFAC and scam lists)",
}

DOMAINS: dict[str, tuple[str, str]] = {
    # domain: (key entity, description)
    "identity": ("customer", "Logins, credential and MFA changes, API keys, withdrawal addresses"),
    "payments": ("customer", "Deposits, withdrawals, card payments, loyalty redemptions"),
    "market": ("account", "Orders, cancels and trades"),
    "saas": ("vendor", "CRM and e-mail platform activity"),
    "chain": ("wallet", "On-chain transfers and token approvals"),
    "security": ("employee", "CloudTrail and syslog security events"),
}


#: The largest raw record a source may publish, and the limit of every raw topic.  A chain
#: connector publishes a block as one record, as the node sent it: a 1.5 MB Bitcoin block is
#: about 11 MB as ``getblock`` JSON (verbosity 2, more at 3), and past the broker's default 1 MB
#: every block stopped the connector, again after each restart.  So did a Coinbase order-book
#: snapshot of 2.7 MB (a websocket frame may be 8 MiB; the snapshot comes again at every
#: subscribe) and a 7.5 MB STIX bundle (still in its folder at the next start): every raw topic
#: takes what the sink lets through.
RAW_RECORD_MAX_BYTES = 64 << 20


def _declared() -> tuple[TopicSpec, ...]:
    specs: list[TopicSpec] = [
        TopicSpec(
            name=f"raw.{src}",
            key="source-specific",
            value="raw",
            description=desc,
            retention=3 * DAY,
            max_message_bytes=RAW_RECORD_MAX_BYTES,
        )
        for src, desc in RAW_SOURCES.items()
    ]
    specs += [
        TopicSpec(
            name=f"events.{dom}", key=key, value=types_in_domain(dom), description=desc, retention=30 * DAY
        )
        for dom, (key, desc) in DOMAINS.items()
    ]
    specs += [
        TopicSpec(
            name="intel.indicators",
            key="<indicator_type>:<value>@<feed>[#<STIX id>]",
            value=(IntelIndicator,),
            description="Threat indicators; the latest version per indicator (tombstone = withdrawn)",
            partitions=3,
            retention=None,
            cleanup="compact",
        ),
        TopicSpec(
            name="alerts",
            key="<entity kind>:<id>",
            value=(Alert,),
            description="Detections",
            retention=365 * DAY,
        ),
        # Kept for good, both: a hold of a `ttl: until_released` rule stands until it is released,
        # and `vigil release` finds it here (at a year's retention it was gone, the hold not);
        # releases are the audit trail of who let what go.  Both are a few records a day.
        TopicSpec(
            name="decisions",
            key="<entity kind>:<id>",
            value=(Decision,),
            description="Hold / step-up / block decisions for the back end (detection's alone)",
            retention=None,
        ),
        TopicSpec(
            name="releases",
            key="<entity kind>:<id>",
            value=(Release,),
            description="Analysts' releases of decisions, `vigil release` (the release principal's alone)",
            retention=None,
        ),
        TopicSpec(
            name="labels",
            key="episode_id",
            value="label",
            partitions=1,
            description="Ground truth of simulated attack episodes",
            retention=None,
        ),
        TopicSpec(
            name="dlq.normalize",
            key="original key",
            value="dead_letter",
            partitions=1,
            description="Raw records the normalisers could not parse, with the reason",
            retention=DEAD_LETTER_RETENTION,
        ),
        TopicSpec(
            name="dlq.detect",
            key="original key",
            value="dead_letter",
            partitions=1,
            description="Canonical records detection could not decode or process",
            retention=DEAD_LETTER_RETENTION,
        ),
        TopicSpec(
            name="dlq.ingest",
            key="original key",
            value="dead_letter",
            partitions=1,
            description="Records rejected at the ingest edge (HTTP, produce)",
            retention=DEAD_LETTER_RETENTION,
        ),
    ]
    return tuple(specs)


class TopicRegistry:
    """The declared topics, by name.  Duplicates fail at construction."""

    def __init__(self, specs: tuple[TopicSpec, ...]) -> None:
        self._specs: dict[str, TopicSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                msg = f"topic {spec.name!r} declared twice"
                raise TopicError(msg)
            self._specs[spec.name] = spec

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> TopicSpec:
        try:
            return self._specs[name]
        except KeyError:
            msg = f"topic {name!r} is not declared; declared topics: {', '.join(sorted(self._specs))}"
            raise TopicError(msg) from None

    def for_event(self, event_type: type[Event]) -> TopicSpec:
        """The canonical topic that carries ``event_type``."""
        for spec in self._specs.values():
            if event_type in spec.event_types:
                return spec
        msg = f"no declared topic carries event type {event_type.__name__}"
        raise TopicError(msg)

    def names(self) -> list[str]:
        return sorted(self._specs)


TOPICS = TopicRegistry(_declared())

# Records carried by non-event topics, for decoding in tools (tail) and tests.
RECORD_TYPES = {"label": EpisodeLabel, "dead_letter": DeadLetter}
