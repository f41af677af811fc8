"""A single-node KRaft broker of a test's own, with the listeners a test needs.

The session's broker (``conftest.py``) is PLAINTEXT with no authorizer: it cannot show that a
refused client is refused.  :class:`ThrowawayBroker` runs the project's own jars
(:meth:`LocalBroker.ensure_jars`) with the two java command lines LocalBroker runs (format,
launch), listening on loopback only, on free ports, from a temporary directory; a subclass
says what its listeners are (:meth:`ThrowawayBroker.listener_properties`) and how a client that
may ask for metadata connects (:meth:`ThrowawayBroker.ready_config`).  :class:`PlainBroker`:
PLAINTEXT, no authorizer, for a test that stops and restarts its broker (an outage).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from confluent_kafka.admin import AdminClient
from tests.reap_brokers import THROWAWAY_PID

from vigil.hub.broker import LocalBroker, free_port_block, log4j2_config

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: What a test's broker logs beyond Vigil's configuration (WARN for Kafka's own loggers): its
#: controller's fencing and unfencing of brokers and the group coordinator's joins, what a
#: failure left in a CI run's temporary directory is read for (a throwaway broker wrote nothing
#: at all, and the session broker's log said nothing of a join that stalled).
TEST_BROKER_LOG_LEVELS = {
    # Fencing, unfencing and registration (and topics made and deleted); not every config record.
    "org.apache.kafka.controller.ReplicationControlManager": "INFO",
    "org.apache.kafka.controller.BrokerHeartbeatManager": "INFO",
    "org.apache.kafka.controller.ClusterControlManager": "INFO",
    "org.apache.kafka.coordinator.group": "INFO",
}


class ThrowawayBroker:
    """Start with :meth:`start`, stop with :meth:`stop` (kills the process group, waits)."""

    #: What the broker is called in errors ("the TLS broker did not answer ...").
    kind = "test"
    #: Broker settings of a subclass's own, beside its listeners and the common ones.
    extra: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: Path, start_timeout_s: float = 90.0) -> None:
        self.root = root
        self.port = free_port_block(2, HOST)
        self.controller_port = self.port + 1
        self.bootstrap = f"{HOST}:{self.port}"
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = root / "broker.log"

    def listener_properties(self) -> dict[str, Any]:
        """The listeners and their security (the rest is common to every throwaway broker)."""
        raise NotImplementedError

    def listeners(self, protocol: str, controller: str) -> dict[str, Any]:
        """Clients on ``protocol`` at :attr:`port`, the controller on ``controller`` beside it."""
        return {
            "listeners": f"{protocol}://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"{protocol}://{HOST}:{self.port}",
            "listener.security.protocol.map": f"{protocol}:{protocol},CONTROLLER:{controller}",
            "inter.broker.listener.name": protocol,
        }

    def ready_config(self) -> dict[str, Any]:
        """librdkafka settings of a client allowed to ask for metadata (readiness)."""
        raise NotImplementedError

    def _properties(self) -> Path:
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            **self.listener_properties(),
            "log.dirs": self.root / "data",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            **self.extra,
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
            msg = f"formatting the {self.kind} broker failed: {(done.stdout + done.stderr)[-800:]}"
            raise RuntimeError(msg)
        self._launch()

    def restart(self) -> None:
        """Start it again after :meth:`stop`, with the data it had (an outage, not a new cluster)."""
        self._launch()

    def _launch(self) -> None:
        dist = LocalBroker(self.root, dist_root=REPO / ".vigil" / "kafka-dist").ensure_jars()
        props = self.root / "server.properties"
        log4j = self.root / "log4j2.properties"
        log4j.write_text(log4j2_config(TEST_BROKER_LOG_LEVELS))
        cmd = [
            "java", "-Xmx512m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{dist}/*", "kafka.Kafka", str(props),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        # For tests/reap_brokers.py: a test process killed (no finalizer runs) left it running.
        (self.root / THROWAWAY_PID).write_text(f"{self._proc.pid}\n{props}\n")
        self._wait_ready()

    def _wait_ready(self) -> None:
        conf = self.ready_config()
        deadline = time.monotonic() + self.start_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                msg = f"the {self.kind} broker exited at start; log tail:\n{self.log.read_text()[-2000:]}"
                raise RuntimeError(msg)
            if not _accepts(self.port):
                # Not listening yet: a client now would only log "connection refused" lines.
                time.sleep(0.2)  # poll interval; the port's state is what is waited for
                continue
            try:
                if AdminClient(conf).list_topics(timeout=2).brokers:
                    return
            except Exception as exc:  # KafkaException while it starts
                last = str(exc)
            time.sleep(0.3)  # poll interval; the broker's answer is what is waited for
        self.stop()
        msg = (
            f"the {self.kind} broker did not answer within {self.start_timeout_s:.0f} s ({last}); "
            f"see {self.log}"
        )
        raise RuntimeError(msg)

    def freeze(self) -> None:
        """Stop the broker's process where it stands (SIGSTOP): its connections stay open and
        nothing answers, as a broker in a long pause or behind a dead link; :meth:`thaw` ends it."""
        assert self._proc is not None, "not running"
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None, "not running"
        os.killpg(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)  # a throwaway broker: nothing to shut down cleanly
        proc.wait(30)


B = TypeVar("B", bound=ThrowawayBroker)


@contextmanager
def running(broker: B) -> Iterator[B]:
    """``broker`` started in a directory of its own (made here), stopped on the way out."""
    broker.root.mkdir()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class PlainBroker(ThrowawayBroker):
    """PLAINTEXT, no authorizer: the session's broker, but one a test may stop and restart."""

    kind = "plain"

    def listener_properties(self) -> dict[str, Any]:
        return self.listeners("PLAINTEXT", "PLAINTEXT")

    def ready_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}


class ClassicGroupsBroker(PlainBroker):
    """A plain broker whose consumer groups are of the classic protocol only: as a cluster
    before Kafka 4.0 is, as far as groups go."""

    kind = "classic-groups"
    extra = {"group.coordinator.rebalance.protocols": "classic"}


class LapsingBroker(PlainBroker):
    """A plain broker whose heartbeats lapse: sent every 20 s to a controller that fences it
    after 10 s without one, and unfences it at the next; for about 10 s of every 20, metadata
    names no controller (-1), as a cluster's does for a moment after a pause (a broker frozen
    past its session, its controller resuming first).  (10 s each way: what a test asks once
    it is unfenced has time to be answered before the next lapse.)"""

    kind = "lapsing"
    extra = {"broker.heartbeat.interval.ms": 20_000, "broker.session.timeout.ms": 10_000}
