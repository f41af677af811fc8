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

The jars are the project's own (:meth:`LocalBroker.ensure_jars`); formatting and launching
are the two java command lines LocalBroker runs, with these properties.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from vigil.config import Settings, load_settings
from vigil.hub.broker import LocalBroker, free_port_block

REPO = Path(__file__).resolve().parents[2]
ADMIN = "admin"
#: Users and their passwords (a test broker's; nothing else reads them).
USERS: dict[str, str] = {
    ADMIN: "admin-secret",
    "vigil-source-coinbase": "coinbase-secret",
    "vigil-normalize": "normalize-secret",
    "vigil-detect": "detect-secret",
    "vigil-admin": "vigil-admin-secret",
    "vigil-redrive": "redrive-secret",
}
_HOST = "127.0.0.1"


def _jaas(user: str) -> str:
    users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{user}" password="{USERS[user]}" {users};'
    )


class SecuredBroker:
    """Start with :meth:`start`, stop with :meth:`stop` (kills the process group, waits)."""

    def __init__(self, root: Path, start_timeout_s: float = 90.0) -> None:
        self.root = root
        self.port = free_port_block(2, _HOST)
        self.bootstrap = f"{_HOST}:{self.port}"
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = root / "broker.log"

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

    def _properties(self) -> Path:
        controller = self.port + 1
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{_HOST}:{controller}",
            "listeners": f"SASL_PLAINTEXT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{controller}",
            "advertised.listeners": f"SASL_PLAINTEXT://{_HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": _jaas(ADMIN),
            "listener.name.controller.plain.sasl.jaas.config": _jaas(ADMIN),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
            "log.dirs": self.root / "data",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
        }
        path = self.root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self) -> None:
        dist = LocalBroker(self.root, dist_root=REPO / ".vigil" / "kafka-dist").ensure_jars()
        props = self._properties()
        fmt = ["java", "-cp", f"{dist}/*", "kafka.tools.StorageTool", "format"]
        done = subprocess.run(
            [*fmt, f"--cluster-id={_cluster_id()}", "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            msg = f"formatting the secured broker failed: {(done.stdout + done.stderr)[-800:]}"
            raise RuntimeError(msg)
        cmd = ["java", "-Xmx512m", "-XX:+UseG1GC", "-cp", f"{dist}/*", "kafka.Kafka", str(props)]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        conf = self.settings(ADMIN).kafka_client_config()
        deadline = time.monotonic() + self.start_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                msg = f"the secured broker exited at start; log tail:\n{self.log.read_text()[-2000:]}"
                raise RuntimeError(msg)
            if not _accepts(self.port):
                # Not listening yet: a client now would only log "connection refused" lines.
                time.sleep(0.2)
                continue
            try:
                if AdminClient(conf).list_topics(timeout=2).brokers:
                    return
            except Exception as exc:  # KafkaException while it starts
                last = str(exc)
            time.sleep(0.3)
        self.stop()
        msg = (
            f"the secured broker did not answer within {self.start_timeout_s:.0f} s ({last}); see {self.log}"
        )
        raise RuntimeError(msg)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)  # a throwaway broker: nothing to shut down cleanly
        proc.wait(30)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
