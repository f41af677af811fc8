"""One settings model for every Vigil process.

Values come from, in order of precedence: keyword arguments, ``VIGIL_*`` environment
variables, then the optional TOML file (``vigil.toml`` in the working directory, or the
file named by ``VIGIL_CONFIG``).  An empty environment variable counts as unset (as templated
env files leave them): the TOML file's value, else the default, applies.  So does an empty
secret in the file; an empty ``home``, ``kafka_bootstrap`` or ``kafka_client_id`` there, which
would mean something else in silence, is refused.  Environment
variables are read only here, and only when the entry point calls :func:`load_settings`,
which warns about a ``VIGIL_*`` variable that is no setting (a misspelt one was ignored).
Connectors' credentials are settings too, handed to each connector with the rest.

Secrets are :class:`~pydantic.SecretStr` (or :class:`~pydantic.Secret`, for the extra Kafka
client options): they print as ``**********`` in every dump.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    Secret,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from vigil.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
#: A librdkafka setting's value, as ``kafka_client_options`` takes it.
ClientOption = str | int | float | bool

#: librdkafka settings that Vigil makes from its own settings (:meth:`Settings.kafka_client_config`),
#: refused in ``kafka_client_options``: each with the setting to use instead.  (Aliases too: given
#: both ways, which one librdkafka took would depend on the order it was handed them.)
OWN_CLIENT_OPTIONS: dict[str, str] = {
    "bootstrap.servers": "kafka_bootstrap",
    "metadata.broker.list": "kafka_bootstrap",
    "security.protocol": "kafka_security_protocol",
    "sasl.mechanism": "kafka_sasl_mechanism",
    "sasl.mechanisms": "kafka_sasl_mechanism",
    "sasl.username": "kafka_sasl_username",
    "sasl.password": "kafka_sasl_password",
    "ssl.ca.location": "kafka_ssl_ca_location",
    "ssl.certificate.location": "kafka_ssl_certificate_location",
    "ssl.key.location": "kafka_ssl_key_location",
    "ssl.key.password": "kafka_ssl_key_password",
    "client.id": "kafka_client_id",
    "group.protocol": "kafka_group_protocol",
}
#: librdkafka settings of the classic group protocol that its ``consumer`` protocol (KIP-848)
#: refuses ("not supported for group.protocol=consumer", when a consumer is made): the broker holds
#: them.  With ``kafka_group_protocol = "consumer"`` they are refused wherever Vigil takes client
#: settings, each with what to do instead.
CLASSIC_GROUP_OPTIONS: dict[str, str] = {
    "session.timeout.ms": (
        "the session is the broker's: its group.consumer.session.timeout.ms (below 45 s, lower "
        "group.consumer.min.session.timeout.ms too), or the group's own consumer.session.timeout.ms "
        "(kafka-configs --entity-type groups)"
    ),
    "heartbeat.interval.ms": (
        "the heartbeat is the broker's: its group.consumer.heartbeat.interval.ms (below 5 s, lower "
        "group.consumer.min.heartbeat.interval.ms too), or the group's own "
        "consumer.heartbeat.interval.ms (kafka-configs --entity-type groups)"
    ),
    "group.protocol.type": "the consumer protocol has none: leave it out",
}

_ACKS_ALL = "producers write with acks=all (with idempotence: nothing lost or written twice)"
_KEYED = (
    "every producer partitions by librdkafka's default on the key: one entity's events in one "
    "partition, repartition topics co-partitioned"
)
_TIMEOUTS = (
    "each client bounds its own sends and transactions (a checkpoint fails on an output not "
    "acknowledged in time; message.timeout.ms must stay under transaction.timeout.ms)"
)
#: librdkafka settings that Vigil's own clients depend on, refused in ``kafka_client_options``:
#: each with why.  (Every other setting there, tuning such as ``linger.ms`` or
#: ``fetch.wait.max.ms`` included, wins over the value a client would set itself.)
GUARANTEE_CLIENT_OPTIONS: dict[str, str] = {
    "acks": _ACKS_ALL,
    "request.required.acks": _ACKS_ALL,
    "enable.idempotence": "producers are idempotent (no duplicates on retry)",
    "transactional.id": "each application names its own transactions",
    "isolation.level": "consumers read committed records only (exactly-once)",
    "enable.auto.commit": "applications commit offsets with their outputs",
    "enable.auto.offset.store": "applications commit offsets with their outputs",
    "group.id": "each application names its own consumer group",
    "partition.assignment.strategy": "applications rebalance cooperatively (cooperative-sticky)",
    "auto.offset.reset": "a new group starts at the earliest record (nothing skipped)",
    "enable.partition.eof": "restores and tails find the end of a partition by its end-of-partition events",
    "delivery.report.only.error": "delivery reports tell when a record is acknowledged",
    "partitioner": _KEYED,
    "partitioner_cb": _KEYED,
    "group.instance.id": "each consumer of each application is a member of its own (a shared "
    "static id made the members fence each other)",
    "transaction.timeout.ms": _TIMEOUTS,
    "message.timeout.ms": _TIMEOUTS,
    "delivery.timeout.ms": _TIMEOUTS,
    "message.max.bytes": "each client sets the largest record it sends (raw records are larger "
    "than librdkafka's default)",
}
#: Prefixes of librdkafka settings refused the same way: ``test.mock.num.brokers`` replaced the
#: cluster by an in-memory one that acknowledged every record (nothing reached Kafka).
GUARANTEE_CLIENT_PREFIXES: dict[str, str] = {
    "test.": "librdkafka's test settings (a mock cluster) are never for a running Vigil",
}


def client_option_name(key: str) -> str:
    """The librdkafka setting a client option's key names: lower-cased, and ``topic.<name>`` as
    ``<name>`` (librdkafka reads it so for every topic: topic.partitioner partitioned by it)."""
    return key.lower().removeprefix("topic.")


def classic_group_refusal(key: str) -> str | None:
    """Why a client option ``key`` may not be given with ``kafka_group_protocol = "consumer"``,
    and what to set instead (None: it may)."""
    instead = CLASSIC_GROUP_OPTIONS.get(client_option_name(key))
    if instead is None:
        return None
    return f'a classic group protocol setting, and kafka_group_protocol is "consumer": {instead}'


def guarantee_of(name: str) -> str | None:
    """Why Vigil's clients depend on the setting ``name`` (see :func:`client_option_name`),
    or None when they do not."""
    why = GUARANTEE_CLIENT_OPTIONS.get(name)
    if why is not None:
        return why
    return next((why for prefix, why in GUARANTEE_CLIENT_PREFIXES.items() if name.startswith(prefix)), None)


#: A listener's protocol before a bootstrap address (``SASL_SSL://b1:9093``), as librdkafka takes it.
_PROTOCOL_PREFIX = re.compile(r"^[A-Za-z_]+://")


class Settings(BaseSettings):
    """Every setting Vigil reads, validated at start.

    ``kafka_bootstrap`` unset means "use the local broker that Vigil manages under
    ``home``"; set, every command talks to that existing cluster and starts nothing.
    """

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_",
        # An empty variable, as templated env files leave them, is unset: an empty SASL password
        # or mechanism failed every command (SecretStr("") is not "", "" is no mechanism).
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        toml_file="vigil.toml",
        # A ValidationError's text quoted every bad value, a password or an RPC URL's API key too,
        # when Settings is built directly (load_settings words its own message, hiding them).
        hide_input_in_errors=True,
    )

    # --- where Vigil keeps its local files (broker jars and data, state stores, warehouse)
    home: Path = Field(default=Path(".vigil"), description="Directory for local broker, state and data")

    # --- Kafka connection
    kafka_bootstrap: str | None = Field(default=None, description="Existing cluster, host:port[,host:port]")
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    # Mutual TLS: the client's certificate and its private key (PEM), given together.
    kafka_ssl_certificate_location: Path | None = Field(
        default=None,
        description="PEM file of the client's certificate (mutual TLS), with kafka_ssl_key_location",
    )
    kafka_ssl_key_location: Path | None = Field(
        default=None, description="PEM file of the client's private key (mutual TLS)"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the client's private key, if it is encrypted"
    )
    kafka_client_id: str = Field(default="vigil", description="client.id of every Kafka client")
    # KIP-848 (Kafka 4.0+): the broker assigns partitions, with no group-wide barrier at each
    # rebalance (classic: every member rejoins, the partitions each keeps included).
    kafka_group_protocol: Literal["classic", "consumer"] = Field(
        default="classic",
        description=(
            "Consumer group protocol: classic (cooperative-sticky, assigned by a member) or "
            "consumer (KIP-848, Kafka 4.0 and later: assigned by the broker)"
        ),
    )
    # Every other librdkafka setting (OIDC's sasl.oauthbearer.*, timeouts, ssl.endpoint.* ...),
    # handed to every client.  A Secret as a whole: an OIDC client secret is one of them, and a
    # value's key does not always say so.  NoDecode: bad JSON in the variable is our one-line
    # error, which shows none of it.
    kafka_client_options: Annotated[Secret[dict[str, ClientOption]] | None, NoDecode] = Field(
        default=None,
        description=(
            'Other librdkafka settings for every Kafka client: JSON {"name": value} (in vigil.toml, a '
            "[kafka_client_options] table); values are secrets, never shown"
        ),
    )

    # --- the local broker Vigil starts when kafka_bootstrap is unset
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=19092, ge=1024, le=65535, description="First broker's client port")
    # Every topic partition costs broker heap; stream apps add a changelog per store, so a
    # development broker gathers thousands of topics (512 MB ran out at about 3,900).
    # (The upper bounds of these three are far beyond any real deployment: what passes them is a
    # typo, 99999999 handed to the JVM as its heap, or "inf", a start that waited forever.)
    broker_heap_mb: int = Field(default=1024, ge=128, le=32768, description="Local broker's heap (MB)")
    broker_start_timeout_s: float = Field(
        default=90.0, gt=0, le=3600, description="How long to wait for the local broker to answer at start"
    )

    # --- operations: Prometheus metrics of the stream applications a command runs
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve /metrics on this port (unset: not served)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics listens on")

    # --- topics
    default_partitions: int = Field(
        default=6, ge=1, le=10_000, description="Partitions of each topic that does not set its own"
    )
    # Unset: the cluster's own default.replication.factor (1 on the local broker).  A fixed 1
    # overrode a production cluster's 3: one broker lost, and its partitions with it.
    default_replication: int | None = Field(
        default=None, ge=1, description="Replicas per topic; unset: the cluster's default.replication.factor"
    )

    # --- connector credentials, each read by its connector's from_settings.  Where a connector has
    # an option of the same meaning (``vigil source hubspot -o client_secret=...``) the option wins,
    # but a command line shows in the process list and the shell's history: these are the place.
    hubspot_client_secret: SecretStr | None = Field(
        default=None, description="HubSpot app's client secret: checks its webhooks' v3 signatures"
    )
    # No option of the same meaning: a token on the command line is there for other users to read.
    hubspot_access_token: SecretStr | None = Field(
        default=None,
        description=(
            "HubSpot private app's access token (scope account-info.security.read): the hubspot_audit "
            "source reads the account's audit log (logins, exports) with it"
        ),
    )
    salesforce_webhook_token: SecretStr | None = Field(
        default=None, description="Secret token in the path of the Salesforce outbound-message URL"
    )
    mailchimp_webhook_secret: SecretStr | None = Field(
        default=None, description="Secret token in the path of the Mailchimp webhook URL"
    )
    mandrill_webhook_key: SecretStr | None = Field(
        default=None,
        description="Mandrill webhook key: checks X-Mandrill-Signature (unset: the path token alone)",
    )
    backend_keys: SecretStr | None = Field(
        default=None,
        description=(
            'Back-end ingest API keys: JSON {"service": "<sha256 hex of its key>"} (in vigil.toml, a '
            "[backend_keys] table)"
        ),
    )
    # Not a secret: it says what a key may do, not the key.  Its names are checked against the
    # event types, and its services against the keys, when the ingest API starts (Scopes in
    # vigil.sources.backend); NoDecode so that bad JSON in the variable is our one-line error.
    backend_scopes: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description=(
            'Back-end ingest API scopes: JSON {"service": ["<event type or domain>", ...]} (in vigil.toml, '
            "a [backend_scopes] table); a service without an entry may send identity, payments and "
            "market events, and chain, saas and security events only with an entry naming them"
        ),
    )
    taxii_user: str | None = Field(default=None, description="TAXII server user (HTTP basic auth)")
    taxii_password: SecretStr | None = Field(default=None, description="TAXII server password")
    # A secret too: hosted nodes (Infura, Alchemy) put the API key in the path or the user-info.
    ethereum_rpc_url: SecretStr | None = Field(
        default=None, description="Ethereum node's JSON-RPC URL (unset: http://127.0.0.1:8545)"
    )
    bitcoin_rpc_user: str | None = Field(default=None, description="Bitcoin Core RPC user (HTTP basic auth)")
    bitcoin_rpc_password: SecretStr | None = Field(default=None, description="Bitcoin Core RPC password")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # As an empty variable is (env_ignore_empty): an empty password in vigil.toml was
        # SecretStr(""), which is not "", so "needs kafka_sasl_password" never fired; the client
        # was then made without one and its error blamed kafka_client_options.
        if value == "" and info.field_name is not None and _is_secret_str(info.field_name):
            return None
        return value

    @field_validator("home", "kafka_bootstrap", "kafka_client_id", mode="before")
    @classmethod
    def _not_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # An empty variable is unset and never gets here; an empty value in vigil.toml did, and
        # meant something else in silence: home the working directory, kafka_bootstrap the local
        # broker, kafka_client_id clients the brokers' logs and quotas could not tell apart.
        if isinstance(value, str) and not value.strip():
            msg = f"empty; expected {_NOT_EMPTY[str(info.field_name)]}"
            raise ValueError(msg)
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for part in value.split(","):
            # (librdkafka takes a listener's protocol before an address, SASL_SSL://b1:9093.)
            host, sep, port = _PROTOCOL_PREFIX.sub("", part.strip(), count=1).rpartition(":")
            # (The whole value is shown after this, by load_settings: the part is named here.)
            where = "" if part == value else f"{part.strip()!r} of it "
            if not sep or not host or not port.isdigit():
                # (foo:bar has a port, not a number: "has no port" sent the reader looking for it.)
                what = (
                    f"has a port that is not a number ({port!r})" if sep and host and port else "has no port"
                )
                msg = f"{where}{what}; expected host:port[,host:port...]"
                raise ValueError(msg)
            if not 1 <= int(port) <= 65535:
                # (librdkafka wraps it: 99999 connected to 34463.)
                msg = f"port {port} of {part.strip()!r} is out of range; expected 1-65535"
                raise ValueError(msg)
            # "::1" passed as host ":" and port 1: an IPv6 address goes in brackets, as librdkafka
            # takes it.
            bracketed = host.startswith("[") and host.endswith("]")
            if ":" in host and not bracketed:
                msg = f"{where}is an IPv6 address without brackets; expected [address]:port, e.g. [::1]:9092"
                raise ValueError(msg)
            if bracketed:
                try:
                    ipaddress.IPv6Address(host[1:-1])
                except ValueError:
                    msg = f"{where}has no IPv6 address in brackets; expected [address]:port, e.g. [::1]:9092"
                    raise ValueError(msg) from None
        return value

    @field_validator("home")
    @classmethod
    def _home_absolute(cls, value: Path) -> Path:
        # Absolute, so every part of a command, and every process it starts (Maven's too, which
        # read a relative one against the pom's directory), uses the same directory.  It is still
        # taken relative to the directory the command runs in, as vigil.toml is (README).
        return value.expanduser().absolute()

    @field_validator("broker_host")
    @classmethod
    def _broker_on_loopback(cls, value: str) -> str:
        # The local broker has no authentication (PLAINTEXT, no ACLs): on any other address,
        # anyone who can reach it reads and writes every topic.  (IPv4: its ports are checked
        # free on an IPv4 socket.)
        try:
            loopback = value == "localhost" or ipaddress.IPv4Address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            msg = f"{value!r} is not a loopback address; expected 127.0.0.1 (another 127.x.y.z, or localhost)"
            raise ValueError(msg)
        return value

    @field_validator("metrics_host")
    @classmethod
    def _metrics_host_is_an_address(cls, value: str) -> str:
        # Checked here: a mistyped one ("127.0.0.1:9100", a space) was found only when /metrics
        # was started, and reported as a problem with the port.
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if len(value) > 253 or not _HOST_NAME.fullmatch(value):
                msg = (
                    "neither an IP address nor a host name; expected an address of this machine "
                    "(127.0.0.1, or 0.0.0.0 for every interface) or a host name"
                )
                raise ValueError(msg) from None
        return value

    @field_validator("kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location")
    @classmethod
    def _pem_file_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # librdkafka refused a missing one only when the first client was made, as a traceback.
        # The CAs may also be a directory of them, or "probe" (librdkafka looks in the system's
        # usual places): both were refused here, with no way round.
        probe = value is not None and str(value) == "probe"
        if (
            info.field_name == "kafka_ssl_ca_location"
            and value is not None
            and (probe or value.expanduser().is_dir())
        ):
            return value if probe else value.expanduser()
        if value is not None and not value.expanduser().is_file():
            relative = "" if value.expanduser().is_absolute() else f" (relative to {Path.cwd()})"
            msg = f"no such file{relative}; expected {_PEM_FILES[str(info.field_name)]}"
            raise ValueError(msg)
        # Expanded here: librdkafka takes the path as given, and "~/ca.pem" passed this check
        # only to fail when the first client was made.
        return value.expanduser() if value is not None else None

    @field_validator("backend_keys", mode="before")
    @classmethod
    def _keys_table_as_json(cls, value: Any) -> Any:
        # A [backend_keys] table in vigil.toml arrives as a mapping; the variable is its JSON.
        # Kept as text, not read with _json_table: the backend ingest source reads it, and refuses
        # bad JSON there (vigil.sources.backend), so that bad keys stop that source, not every command.
        return json.dumps(value) if isinstance(value, dict) else value

    @field_validator("kafka_client_options", mode="before")
    @classmethod
    def _client_options(cls, value: Any) -> Any:
        # No message here shows a value (they are secrets): keys and types only.
        if value is None:  # (unset: the default, which pydantic-settings validates too)
            return None
        if isinstance(value, Secret):
            value = value.get_secret_value()
        table = _json_table(value, expected='{"<librdkafka setting>": value, ...}')
        options: dict[str, ClientOption] = {}
        for key, option in _flatten(table):
            # ([kafka_client_options.topic] in vigil.toml flattens to topic.<name> too.)
            name = client_option_name(key)
            shown = repr(key) if name == key.lower() else f"{key!r} (librdkafka's {name} for every topic)"
            own = OWN_CLIENT_OPTIONS.get(name)
            if own is not None:
                msg = f"{shown} is set by Vigil from its own setting; set {own} (VIGIL_{own.upper()}) instead"
                raise ValueError(msg)
            why = guarantee_of(name)
            if why is not None:
                msg = f"{shown} is Vigil's to set, not an option: {why}"
                raise ValueError(msg)
            if not isinstance(option, str | int | float | bool):
                msg = f"the value of {key!r} is a {_kind(option)}; expected a string, number or true/false"
                raise ValueError(msg)
            options[key] = option
        return options

    @field_validator("backend_scopes", mode="before")
    @classmethod
    def _scopes_json(cls, value: Any) -> Any:
        table = _json_table(value, expected='{"service": ["<event type or domain>", ...]}')
        # One name alone (wallet = "payments") is a scope of one, not "a valid list" refused.
        return {service: [names] if isinstance(names, str) else names for service, names in table.items()}

    @field_validator("ethereum_rpc_url")
    @classmethod
    def _rpc_url_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not when the first call fails: without a scheme, httpx refused the URL
        # only as the connector's first request, a traceback.
        if value is not None:
            parsed = urlsplit(value.get_secret_value())
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                msg = "expected the node's http:// or https:// URL (e.g. https://host/v3/<key>)"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _security_settings_agree(self) -> Settings:
        """Credentials with a protocol that sends none, or SASL without them: librdkafka only
        warns (and connects without credentials), or fails later as an unanswered request."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        given = [
            name
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
            if getattr(self, name) not in (None, "")
        ]
        if given and not sasl:
            msg = (
                f"{', '.join(given)} set with kafka_security_protocol {protocol}, "
                "which sends no credentials; expected SASL_SSL (or SASL_PLAINTEXT)"
            )
            raise ValueError(msg)
        if sasl and self.kafka_sasl_mechanism == "OAUTHBEARER":
            self._oauthbearer_agrees(given)
        elif sasl and len(given) < 3:
            missing = sorted(
                {"kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"} - set(given)
            )
            msg = f"kafka_security_protocol {protocol} needs {', '.join(missing)}"
            raise ValueError(msg)
        tls = [
            name
            for name in (
                "kafka_ssl_ca_location",
                "kafka_ssl_certificate_location",
                "kafka_ssl_key_location",
                "kafka_ssl_key_password",
            )
            if getattr(self, name) is not None
        ]
        if tls and not protocol.endswith("SSL"):
            msg = (
                f"{', '.join(tls)} set with kafka_security_protocol {protocol}, "
                "which does not use TLS; expected SSL or SASL_SSL"
            )
            raise ValueError(msg)
        # A certificate without its key (or the key without its certificate): librdkafka made the
        # client, and the broker refused the handshake of a client that showed none.
        certificate, key = self.kafka_ssl_certificate_location, self.kafka_ssl_key_location
        if (certificate is None) != (key is None):
            have, lacking = (
                ("kafka_ssl_certificate_location", "kafka_ssl_key_location")
                if key is None
                else ("kafka_ssl_key_location", "kafka_ssl_certificate_location")
            )
            msg = f"{have} set without {lacking}; expected both: the client's certificate and its private key"
            raise ValueError(msg)
        if self.kafka_ssl_key_password is not None and key is None:
            msg = "kafka_ssl_key_password set without kafka_ssl_key_location, the key it opens"
            raise ValueError(msg)
        self._client_options_agree()
        if self.kafka_group_protocol == "consumer" and self.kafka_client_options is not None:
            # (librdkafka refuses them only when a consumer is made: a stage's first start.)
            for option in self.kafka_client_options.get_secret_value():
                why = classic_group_refusal(option)
                if why is not None:
                    msg = f"kafka_client_options {option!r} is {why}"
                    raise ValueError(msg)
        if self.kafka_bootstrap is None:
            # Without a cluster Vigil starts its own broker, which has no TLS or SASL listener:
            # every client then failed some 10 s later with a TLS or SASL error that never said
            # kafka_bootstrap was missing.
            given = [
                name for name in _SECURITY_SETTINGS if getattr(self, name) not in (None, "", "PLAINTEXT")
            ]
            if given:
                msg = (
                    f"{', '.join(given)} set without kafka_bootstrap, so Vigil would use its local "
                    "broker, which speaks PLAINTEXT only; expected kafka_bootstrap (or kafka_bootstrap "
                    "in the settings file) naming the cluster these settings are for"
                )
                raise ValueError(msg)
        return self

    def _client_options_agree(self) -> None:
        """An ``ssl.*`` client option with a protocol without TLS, or ``sasl.*`` with one without
        SASL, as the settings of the same meaning are refused: librdkafka ignores it in silence,
        and a client meant to verify or authenticate connects without."""
        protocol = self.kafka_security_protocol
        options = self.kafka_client_options.get_secret_value() if self.kafka_client_options else {}
        for option in options:
            # (enable.ssl.* and enable.sasl.* switch parts of TLS and SASL on or off.)
            name = client_option_name(option).removeprefix("enable.")
            if name.startswith("ssl.") and not protocol.endswith("SSL"):
                msg = (
                    f"kafka_client_options {option!r} set with kafka_security_protocol {protocol}, "
                    "which does not use TLS; expected SSL or SASL_SSL"
                )
                raise ValueError(msg)
            if name.startswith("sasl.") and not protocol.startswith("SASL_"):
                msg = (
                    f"kafka_client_options {option!r} set with kafka_security_protocol {protocol}, "
                    "which sends no credentials; expected SASL_SSL (or SASL_PLAINTEXT)"
                )
                raise ValueError(msg)

    def _oauthbearer_agrees(self, given: list[str]) -> None:
        """OAUTHBEARER takes a token, not a user and password; the token comes from an OIDC
        provider (or, on a test broker, librdkafka's unsecured JWT), set in kafka_client_options.
        Without either librdkafka made the clients, and every connection failed for want of one."""
        unused = [name for name in given if name != "kafka_sasl_mechanism"]
        if unused:
            msg = (
                f"{', '.join(unused)} set with kafka_sasl_mechanism OAUTHBEARER, which sends a token "
                "instead; expected the OIDC client's sasl.oauthbearer.client.id and "
                "sasl.oauthbearer.client.secret in kafka_client_options"
            )
            raise ValueError(msg)
        options = self.kafka_client_options.get_secret_value() if self.kafka_client_options else {}
        method = str(options.get("sasl.oauthbearer.method", "default")).lower()
        unsecured = str(options.get("enable.sasl.oauthbearer.unsecure.jwt", "false")).lower() in ("true", "1")
        if method != "oidc" and not unsecured:
            msg = (
                "kafka_sasl_mechanism OAUTHBEARER needs a token source in kafka_client_options: "
                "sasl.oauthbearer.method = oidc, with sasl.oauthbearer.client.id, "
                "sasl.oauthbearer.client.secret and sasl.oauthbearer.token.endpoint.url"
            )
            raise ValueError(msg)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("VIGIL_CONFIG")
        toml = (
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
            if toml_path
            else (TomlConfigSettingsSource(settings_cls))
        )
        return (init_settings, env_settings, toml)

    @property
    def uses_external_cluster(self) -> bool:
        return self.kafka_bootstrap is not None

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings for connection and security, ``kafka_client_options`` included
        (never logged: holds the passwords and the options' secrets)."""
        conf: dict[str, Any] = (
            dict(self.kafka_client_options.get_secret_value()) if self.kafka_client_options else {}
        )
        conf.update(
            {
                "bootstrap.servers": self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}",
                "security.protocol": self.kafka_security_protocol,
                "client.id": self.kafka_client_id,
            }
        )
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        if self.kafka_ssl_certificate_location:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certificate_location)
        if self.kafka_ssl_key_location:
            conf["ssl.key.location"] = str(self.kafka_ssl_key_location)
        if self.kafka_ssl_key_password:
            conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return conf


#: The settings of TLS and SASL, which the local broker (PLAINTEXT only) does not speak.
_SECURITY_SETTINGS = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_location",
    "kafka_ssl_certificate_location",
    "kafka_ssl_key_location",
    "kafka_ssl_key_password",
)

#: What each setting refused empty in the settings file expects instead.
_NOT_EMPTY = {
    "home": "the directory for Vigil's local files (leave home out for the default, .vigil)",
    "kafka_bootstrap": "host:port[,host:port...] (leave kafka_bootstrap out to use the local broker)",
    "kafka_client_id": "the name the brokers know Vigil's clients by (leave kafka_client_id out for vigil)",
}

#: A host name: dot-separated labels of letters, digits and inner hyphens (RFC 1123), or
#: underscores, which resolvers take and container names use (``metrics_exporter``).
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _is_secret_str(name: str) -> bool:
    """Whether setting ``name`` is a :class:`~pydantic.SecretStr` (one text secret)."""
    field = Settings.model_fields.get(name)
    return field is not None and "SecretStr" in str(field.annotation)


#: What each file setting names, for the message saying it is not there.
_PEM_FILES = {
    "kafka_ssl_ca_location": (
        "a PEM file of the CA certificates that verify the brokers, a directory of them, or 'probe'"
    ),
    "kafka_ssl_certificate_location": "a PEM file of the client's certificate, which the brokers verify",
    "kafka_ssl_key_location": "a PEM file of the client's private key",
}


def _json_table(value: Any, *, expected: str) -> dict[Any, Any]:
    """A table setting as given: JSON text in its variable, a mapping from a table in vigil.toml
    (or from keyword arguments).  Refused saying what it is and what was ``expected``, never
    showing it: some of these settings are secrets.  (The setting itself is named by where it came
    from, as every setting is: see :func:`load_settings`.)"""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            # (json's message says where, never what: "Expecting value: line 1 column 9 (char 8)";
            # from None: the exception holds the whole text.)
            msg = f"not JSON ({exc}); expected {expected}"
            raise ValueError(msg) from None
        except RecursionError:
            msg = f"JSON nested too deeply to read; expected {expected}"
            raise ValueError(msg) from None
    if not isinstance(value, dict):
        msg = f"a {_kind(value)}; expected {expected}"
        raise ValueError(msg)
    return value


def _flatten(table: dict[Any, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A table's settings as dotted names: in vigil.toml an unquoted ``sasl.oauthbearer.method``
    is a table in a table, and librdkafka knows it only as the one name."""
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        items.extend(_flatten(value, f"{name}.") if isinstance(value, dict) else [(name, value)])
    return items


def _kind(value: Any) -> str:
    """What a value is, in JSON's words, without showing it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table (object)"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from environment and file; a bad value raises :class:`ConfigError`
    naming the setting where it was given (its environment variable, or its key in the TOML
    file) and what was wrong."""
    named = os.environ.get("VIGIL_CONFIG")
    if named and not Path(named).expanduser().is_file():
        # Read as "no file", a mistyped path ran on the defaults: a local broker instead of the
        # cluster the file names.
        msg = f"VIGIL_CONFIG names {named!r}, which is not a file; expected a TOML settings file"
        raise ConfigError(msg)
    toml_path = Path(named).expanduser() if named else Path("vigil.toml")
    in_file = _toml_keys(toml_path) if toml_path.is_file() else set()
    # Before the settings are built: a misspelt variable may be why they fail (a SASL password
    # under the wrong name is "kafka_sasl_password missing").
    _warn_unknown_variables()
    origin = _Origins(overrides, in_file, toml_path)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # A check of several settings together (no loc) names them in its message.
            if not err["loc"]:
                problems.append(f"settings that disagree: {origin.rename(_reason(err))}")
                continue
            name = ".".join(str(p) for p in err["loc"])
            # A setting not known (a misspelt one too) may be a password: its value is not shown.
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(Settings.model_fields))
                problems.append(f"{origin.of(name)}: unknown setting; expected one of: {known}")
                continue
            got = "<hidden>" if _is_secret(name) else repr(err.get("input"))
            problems.append(f"{origin.of(name)}: {_reason(err)}; got {got}")
        msg = "invalid settings:\n  " + "\n  ".join(problems)
        raise ConfigError(msg) from None
    _warn_unverified_tls(settings, origin)
    _warn_clear_password(settings, origin)
    return settings


_SECRET_WORDS = ("password", "secret", "token", "key", "pass", "credential")


def _is_secret(name: str) -> bool:
    """Whether the value of setting ``name`` must not be shown: a SecretStr setting (an RPC URL
    holds an API key without saying so in its name), or by its name one that is not a setting
    (a misspelt password)."""
    # (A nested name, "kafka_client_options.<key>", is its setting's.)
    field = Settings.model_fields.get(name.split(".", 1)[0])
    if field is not None and "Secret" in str(field.annotation):
        return True
    return any(word in name for word in _SECRET_WORDS)


#: ``VIGIL_*`` variables Vigil reads that are not settings: not warned about as unknown.
NOT_SETTINGS = frozenset(
    {
        "VIGIL_CONFIG",  # names the settings file itself (load_settings)
        "VIGIL_SHARED_DATA",  # where tests and benchmarks find the shared data (shared_data_dir)
        "VIGIL_COMPILE",  # the Makefile's build switch; make passes it on to the tests it runs
    }
)

log = logging.getLogger(__name__)

#: Variables already warned about: a command may load the settings more than once (the local
#: broker's readiness check does), and one warning is enough.
_warned: set[str] = set()


def _warn_unknown_variables() -> None:
    """One warning line naming the ``VIGIL_*`` environment variables that are no setting, each
    with the closest known name.  Such a variable was silently ignored: ``VIGIL_KAFKA_BOOSTRAP``
    ran on the local broker instead of the cluster it named.  Values are never shown (a
    misspelt password is still a password)."""
    known = {f"VIGIL_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    # Matched regardless of case, as pydantic-settings reads them.
    unknown = sorted(
        key
        for key in os.environ
        if key.upper().startswith("VIGIL_") and key.upper() not in known and key not in _warned
    )
    if not unknown:
        return
    _warned.update(unknown)
    # Compared without the prefix every name shares, which made any two names look alike.
    suffixes = {name.removeprefix("VIGIL_"): name for name in known}
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key.upper().removeprefix("VIGIL_"), suffixes, n=1)
        described.append(f"{key} (did you mean {suffixes[close[0]]}?)" if close else key)
    many = len(unknown) > 1
    log.warning(
        "ignoring environment variable%s %s: %s Vigil setting%s (each is a field of vigil.config.Settings)",
        "s" if many else "",
        ", ".join(described),
        "not" if many else "not a",
        "s" if many else "",
    )


#: kafka_client_options that turn off the check of the brokers' TLS certificates, each with the
#: values (as librdkafka reads them, in any case) that do.
UNVERIFIED_TLS_OPTIONS: dict[str, tuple[str, ...]] = {
    "enable.ssl.certificate.verification": ("false", "f", "0"),
    "ssl.endpoint.identification.algorithm": ("none",),
}


def _warn_unverified_tls(settings: Settings, origin: _Origins) -> None:
    """A warning naming each client option that turns off the check of the brokers' TLS
    certificates (once a process): allowed, as some test clusters need it, but then anyone
    between Vigil and the cluster can pose as a broker, and security teams look for it."""
    options = settings.kafka_client_options.get_secret_value() if settings.kafka_client_options else {}
    where = origin.of("kafka_client_options")
    for key, value in options.items():
        said = f"{where}: {key!r}"
        if (
            str(value).lower() not in UNVERIFIED_TLS_OPTIONS.get(client_option_name(key), ())
            or said in _warned
        ):
            continue
        _warned.add(said)
        # (The option's name only: these values are secrets, and its name says what it does.)
        log.warning(
            "%s turns off the check of the brokers' TLS certificates: anyone on the way to the cluster "
            "can pose as a broker and read or change what Vigil sends and receives (for a test cluster only)",
            said,
        )


def _warn_clear_password(settings: Settings, origin: _Origins) -> None:
    """A warning (once a process for a cluster) when the SASL password goes over the network as
    it is: PLAIN sends it in every connection's first request, and SASL_PLAINTEXT does not
    encrypt it (SCRAM sends a proof, not the password).  Allowed (a private network may be
    trusted); said, as nothing else would tell the security team."""
    if settings.kafka_security_protocol != "SASL_PLAINTEXT" or settings.kafka_sasl_mechanism != "PLAIN":
        return
    said = f"clear password: {settings.kafka_bootstrap}"
    if said in _warned:
        return
    _warned.add(said)
    log.warning(
        "%s PLAIN with %s SASL_PLAINTEXT: the SASL password goes to the cluster unencrypted, and "
        "anyone on the way can read it; expected SASL_SSL (or SCRAM, which sends no password)",
        origin.of("kafka_sasl_mechanism"),
        origin.of("kafka_security_protocol"),
    )


def _reason(err: Any) -> str:
    # pydantic words a validator's own ValueError as "Value error, <message>": the message is ours.
    text = str(err["msg"])
    return text.removeprefix("Value error, ") if err["type"] == "value_error" else text


def _toml_keys(path: Path) -> set[str]:
    """The keys the settings file sets; a file that is not valid TOML is a ConfigError saying
    where (pydantic let tomllib's exception out as a traceback)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's exception carries the place only in its text: "... (at line 1, column 24)".
        found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(exc))
        where, reason = (f"{path}:{found[2]}:{found[3]}", found[1]) if found else (str(path), str(exc))
        msg = f"{where}: the settings file is not valid TOML: {reason}; expected key = value lines"
        if reason.startswith(("Invalid value", "Expected newline or end of document")):
            # What an unquoted text value gives (kafka_bootstrap = localhost:9092).
            msg += ' (a text value needs quotes: kafka_bootstrap = "host:9092")'
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the settings file ({exc}); expected a readable TOML file"
        raise ConfigError(msg) from None
    return set(data)


class _Origins:
    """Where each setting came from, to name it as the user gave it: ``VIGIL_BROKER_PORT`` for
    a variable, ``broker_port in vigil.toml`` for the file.  A setting not given at all is named
    by its variable, the way to set it."""

    def __init__(self, overrides: dict[str, Any], in_file: set[str], toml_path: Path) -> None:
        self.overrides, self.in_file, self.toml_path = overrides, in_file, toml_path
        # Variable names are matched regardless of case, as pydantic-settings reads them; an empty
        # one is unset.
        self.env = {key.upper() for key, value in os.environ.items() if value != ""}

    def of(self, name: str, *, with_name: bool = True) -> str:
        head, dot, rest = name.partition(".")
        if dot and head in Settings.model_fields:
            # A value inside a table setting (backend_scopes.svc): where the setting came from,
            # then the path in it ("VIGIL_BACKEND_SCOPES.SVC" named no variable there is).
            return f"{self.of(head, with_name=with_name)}: at {rest}"
        variable = f"VIGIL_{name.upper()}"
        if name in self.overrides:
            return name
        if variable in self.env:
            return f"{variable} ({name})" if with_name else variable
        if name in self.in_file:
            return f"{name} in {self.toml_path}"
        return variable

    def rename(self, text: str) -> str:
        """``text`` with each setting's name replaced by where it came from."""
        names = sorted(Settings.model_fields, key=len, reverse=True)
        # (A name said as the file's key, "<name> in the settings file", stays one.)
        pattern = r"\b(" + "|".join(map(re.escape, names)) + r")\b(?! in the settings file)"
        return re.sub(pattern, lambda m: self.of(m[1], with_name=False), text)


def shared_data_dir() -> Path:
    """The shared public data: OFAC and scam lists, STIX bundles, feed recordings, chain responses.

    ``VIGIL_SHARED_DATA`` if set; else a ``shared/data`` beside the working directory or beside
    any parent of this package (the usual ``../shared/data`` next to a checkout); else this
    machine's ``/work/shared/data``, so a clone made elsewhere (CI) still finds it.
    """
    explicit = os.environ.get("VIGIL_SHARED_DATA")
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve()
    candidates = [Path.cwd().parent / "shared" / "data", *(p / "shared" / "data" for p in here.parents)]
    candidates.append(Path("/work/shared/data"))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]
