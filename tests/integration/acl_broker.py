"""A single-node KRaft broker that authenticates clients and enforces ACLs, for the ACL tests.

The session's broker (``conftest.py``) is PLAINTEXT with no authorizer: everyone may do
everything, so it cannot show that a refused write is refused.  This one listens on
loopback only, on free ports, from a temporary directory:

- clients: ``SASL_PLAINTEXT`` with PLAIN, one user per component under test (:data:`USERS`);
- controller: ``SASL_PLAINTEXT`` with PLAIN too, as ``admin``.  With a PLAINTEXT controller
  listener the broker's own requests to the controller (registration, heartbeats, the
  metadata log) come as ``User:ANONYMOUS`` and need ClusterAction, so ANONYMOUS would have
  to be a super user: anyone reaching that port would be one;
- ``StandardAuthorizer`` (KRaft's, ACLs kept in the metadata log), ``super.users=User:admin``.

The broker process is a :class:`~tests.integration.throwaway_broker.ThrowawayBroker`.
"""

from __future__ import annotations

from typing import Any

from tests.integration.throwaway_broker import ThrowawayBroker

from vigil.config import Settings, load_settings

ADMIN = "admin"
#: Users and their passwords (a test broker's; nothing else reads them).
USERS: dict[str, str] = {
    ADMIN: "admin-secret",
    "vigil-source-coinbase": "coinbase-secret",
    "vigil-normalize": "normalize-secret",
    "vigil-detect": "detect-secret",
    "vigil-admin": "vigil-admin-secret",
    "vigil-redrive": "redrive-secret",
    "vigil-release": "release-secret",
}


def _jaas(user: str) -> str:
    users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{user}" password="{USERS[user]}" {users};'
    )


class SecuredBroker(ThrowawayBroker):
    """SASL/PLAIN clients and controller, StandardAuthorizer (see the module)."""

    kind = "secured"

    def settings(self, user: str) -> Settings:
        """The settings a process of ``user`` runs with (VIGIL_KAFKA_SASL_* in production)."""
        return load_settings(
            kafka_bootstrap=self.bootstrap,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username=user,
            kafka_sasl_password=USERS[user],
            home=self.root / f"home-{user}",
        )

    def env(self, user: str) -> dict[str, str]:
        """The same as ``VIGIL_*`` variables, for a command run as ``user``."""
        return {
            "VIGIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "VIGIL_KAFKA_SASL_MECHANISM": "PLAIN",
            "VIGIL_KAFKA_SASL_USERNAME": user,
            "VIGIL_KAFKA_SASL_PASSWORD": USERS[user],
            "VIGIL_HOME": str(self.root / f"home-{user}"),
        }

    def listener_properties(self) -> dict[str, Any]:
        return {
            **self.listeners("SASL_PLAINTEXT", "SASL_PLAINTEXT"),
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": _jaas(ADMIN),
            "listener.name.controller.plain.sasl.jaas.config": _jaas(ADMIN),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
        }

    def ready_config(self) -> dict[str, Any]:
        return self.settings(ADMIN).kafka_client_config()
