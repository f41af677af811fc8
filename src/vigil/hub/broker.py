"""The local Apache Kafka broker: KRaft mode, official jars from Maven Central, no Docker.

``vigil broker start`` resolves the broker jars once with Maven (``infra/kafka/pom.xml``)
into ``<home>/kafka-dist/<version>/``, formats storage, and starts one JVM per node,
detached, with its pid in ``<home>/kafka/node-<id>/pid``.  Every node is combined
broker + controller; node ``i`` (1-based) listens on ``port + 2(i-1)`` for clients and
the next port for the controller quorum, all on loopback.

The running cluster is described by ``<home>/kafka/cluster.json`` so any later process
(``status``, ``stop``, a second ``start``) finds it without guessing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vigil.errors import BrokerError
from vigil.hub.topics import min_insync_replicas

log = logging.getLogger(__name__)

#: The Maven file that pins the broker version (kept in the repo, not in the package).
POM = Path(__file__).resolve().parents[3] / "infra" / "kafka" / "pom.xml"

_LOG4J2 = """\
# Written by vigil: broker logs go to the node's server.log (stdout is redirected there).
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
# The request and state-change loggers repeat every metadata change; keep them quiet.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.kafkacore.name = kafka
logger.kafkacore.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def log4j2_config(levels: Mapping[str, str] | None = None) -> str:
    """The brokers' log4j2 configuration: Vigil's, and ``levels`` (a logger's name: its level)
    over it, for a log that says more of one part (the tests' brokers log their controller's
    fencing and the group coordinator's joins: a stalled join was otherwise left unexplained)."""
    extra = "".join(
        f"logger.extra{i}.name = {name}\nlogger.extra{i}.level = {level}\n"
        for i, (name, level) in enumerate((levels or {}).items())
    )
    return _LOG4J2 + extra


def pom_version(pom: Path = POM) -> str:
    """The Kafka version the Maven file pins (``<kafka.version>``)."""
    try:
        text = pom.read_text()
    except OSError as exc:
        msg = (
            f"cannot read the broker's Maven file {pom}: {exc}; run from a source checkout "
            "or set VIGIL_KAFKA_BOOTSTRAP to use an existing cluster"
        )
        raise BrokerError(msg) from exc
    start = text.find("<kafka.version>")
    end = text.find("</kafka.version>")
    if start < 0 or end < 0:
        msg = f"{pom}: no <kafka.version> property; expected e.g. <kafka.version>4.1.1</kafka.version>"
        raise BrokerError(msg)
    return text[start + len("<kafka.version>") : end].strip()


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A base port such that ``count`` consecutive ports from it are free on ``host`` now.

    Taken below the kernel's range for outgoing connections' source ports where there is room:
    a block inside it was free when checked, and then an outgoing connection (a starting
    cluster's nodes dialling each other) took one of its ports before its node bound it."""
    low, _high = _ephemeral_range()
    for attempt in range(200):
        if low - count > 10_000 and attempt < 150:
            base = 10_000 + secrets.randbelow(low - count - 10_000)
        else:
            with socket.socket() as probe:
                probe.bind((host, 0))
                base = int(probe.getsockname()[1])
        if base + count >= 65535:
            continue
        if all(_port_free(host, base + i) for i in range(count)):
            return base
    msg = f"no block of {count} free consecutive ports on {host}"
    raise BrokerError(msg)


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; else the IANA one)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except (OSError, OverflowError):  # (OverflowError: past 65535)
            return False
    return True


@dataclass
class ClusterInfo:
    """What ``cluster.json`` records about the started cluster."""

    version: str
    host: str
    port: int
    nodes: int
    cluster_id: str
    started_at: float = field(default_factory=time.time)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{self.client_port(i)}" for i in range(1, self.nodes + 1))

    def client_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.port + 2 * (node - 1) + 1


@dataclass(frozen=True)
class BrokerStatus:
    up: bool
    info: ClusterInfo | None
    nodes_running: tuple[int, ...]
    topics: int | None = None


@dataclass(frozen=True)
class StartResult:
    info: ClusterInfo
    already_running: bool
    seconds: float

    @property
    def bootstrap(self) -> str:
        return self.info.bootstrap


class LocalBroker:
    """A KRaft cluster of 1..n combined nodes on loopback, run from a home directory."""

    def __init__(
        self,
        home: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 19092,
        heap_mb: int = 1024,
        start_timeout_s: float = 90.0,
        dist_root: Path | None = None,
        pom: Path = POM,
        log_levels: Mapping[str, str] | None = None,
    ) -> None:
        # Absolute: relative, Maven read it against the pom's directory (see ensure_jars), and the
        # broker's own processes against theirs.
        self.home = Path(home).expanduser().absolute()
        self.host = host
        self.port = port
        self.heap_mb = heap_mb
        self.start_timeout_s = start_timeout_s
        self.pom = pom
        self.dist_root = Path(dist_root).absolute() if dist_root else self.home / "kafka-dist"
        self.data_root = self.home / "kafka"
        #: Loggers to log at another level than Vigil's configuration has (see log4j2_config).
        self.log_levels = dict(log_levels or {})

    # -- jars -----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return pom_version(self.pom)

    def dist_dir(self) -> Path:
        return self.dist_root / self.version

    def ensure_jars(self) -> Path:
        """Resolve the broker jars with Maven once; later calls reuse the cache.

        A ``.complete`` marker is written last, so an interrupted download is redone
        rather than used half-finished.
        """
        target = self.dist_dir().absolute()
        if (target / ".complete").exists():
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            msg = "Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars (apt install maven)"
            raise BrokerError(msg)
        if shutil.which("java") is None:
            msg = "java is not on PATH; the Kafka broker needs a JDK 17+ (apt install default-jdk-headless)"
            raise BrokerError(msg)
        staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(self.pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            msg = f"Maven could not resolve the Kafka jars from {self.pom}:\n" + "\n".join(tail)
            raise BrokerError(msg)
        if not any(staging.glob("kafka_*.jar")):
            # (A relative output directory was read against the pom's directory: Maven put the
            # jars there, exited 0, and an empty cache was marked complete for good.)
            shutil.rmtree(staging, ignore_errors=True)
            msg = f"Maven resolved no Kafka broker jar (kafka_*.jar) into {staging} from {self.pom}"
            raise BrokerError(msg)
        (staging / ".complete").write_text(self.version)
        if target.exists():  # another process finished first; keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(target)
        return target

    # -- layout ---------------------------------------------------------------------------

    @property
    def cluster_file(self) -> Path:
        return self.data_root / "cluster.json"

    def node_dir(self, node: int) -> Path:
        return self.data_root / f"node-{node}"

    def log_path(self, node: int = 1) -> Path:
        return self.node_dir(node) / "server.log"

    def read_info(self) -> ClusterInfo | None:
        try:
            return ClusterInfo(**json.loads(self.cluster_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _pid(self, node: int) -> int | None:
        try:
            pid = int((self.node_dir(node) / "pid").read_text())
        except (OSError, ValueError):
            return None
        # This node's broker, not any Kafka: after a reboot the number may be another
        # checkout's broker, which stop would then kill.
        return pid if _is_kafka_process(pid, self.node_dir(node) / "server.properties") else None

    def _pid_file_value(self, node: int) -> int | None:
        try:
            return int((self.node_dir(node) / "pid").read_text())
        except (OSError, ValueError):
            return None

    def node_pids(self) -> list[int]:
        """Process ids of the running nodes (to measure or place them: the benchmarks)."""
        info = self.read_info()
        if info is None:
            return []
        return [pid for n in range(1, info.nodes + 1) if (pid := self._pid(n)) is not None]

    def running_nodes(self, info: ClusterInfo | None = None) -> tuple[int, ...]:
        info = info or self.read_info()
        if info is None:
            return ()
        return tuple(n for n in range(1, info.nodes + 1) if self._pid(n) is not None)

    # -- lifecycle ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lifecycle(self) -> Iterator[None]:
        """One start or stop of this home's cluster at a time, across processes.  Two starts on
        a fresh home both found no cluster, both deleted the data directory and formatted it:
        the second failed in Kafka's StorageTool on the first's cluster id (found in review).
        The lock file sits beside the data (formatting deletes the data directory)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "kafka.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Said, not waited out in silence: the other may be fetching the jars (minutes,
                # the first time) or waiting for its nodes (up to start_timeout_s).
                log.warning("waiting for another start or stop of the local broker in %s", self.home)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # (released when the file closes)

    def start(self, nodes: int | None = None, *, reformat: bool = False) -> StartResult:
        """Start the cluster, or find it running.  Returns once it answers a metadata request.

        ``nodes=None`` means "the cluster this home has, running or stopped, else one node".
        A cluster made with another node count, host or port is an error naming both, never
        formatted afresh unasked: that deleted its topics (a port clash's advice to set
        ``VIGIL_BROKER_PORT`` did, and under nodes still running).  ``reformat`` deletes a
        stopped cluster's data and makes it anew in the shape asked for (the same shape too);
        asked of a cluster with nodes running, the start is refused.  A start that fails
        stops the nodes it launched.  Starts and stops of one home wait for each other.
        """
        with self._lifecycle():
            return self._start(nodes, reformat=reformat)

    def _start(self, nodes: int | None, *, reformat: bool) -> StartResult:
        info = self.read_info()
        if nodes is None:
            nodes = info.nodes if info is not None else 1
        if self.port + 2 * nodes - 1 > 65535:
            # Two ports a node from VIGIL_BROKER_PORT up: past 65535, bind() raised OverflowError,
            # a traceback.
            msg = (
                f"{nodes} node(s) need ports {self.port}-{self.port + 2 * nodes - 1} (two a node from "
                "VIGIL_BROKER_PORT), past 65535; set VIGIL_BROKER_PORT lower or ask fewer --nodes"
            )
            raise BrokerError(msg)
        if nodes < 1:
            msg = f"--nodes must be at least 1; got {nodes}"
            raise BrokerError(msg)
        began = time.monotonic()
        if info is not None:
            running = self.running_nodes(info)
            asked = (nodes, self.host, self.port)
            made = f"{info.nodes} node(s) at {info.host}:{info.port}"
            if running and asked != (info.nodes, info.host, info.port):
                msg = (
                    f"the local cluster in {self.data_root} is running with {made}; this start "
                    f"asks for {nodes} node(s) at {self.host}:{self.port}: stop it first "
                    "(vigil broker stop)"
                )
                raise BrokerError(msg)
            if running and reformat:
                # Refused, not ignored: the start found the cluster running and the operator
                # went on believing its topics were gone.  Formatting under running nodes
                # would delete files they hold open.
                msg = (
                    f"--reformat deletes a stopped cluster's data, and the local cluster in "
                    f"{self.data_root} has node(s) {', '.join(map(str, running))} of {info.nodes} "
                    "running: stop it first (vigil broker stop), then start it with --reformat"
                )
                raise BrokerError(msg)
            if asked != (info.nodes, info.host, info.port) and not reformat:
                msg = (
                    f"the local cluster in {self.data_root} was made with {made}; this start "
                    f"asks for {nodes} node(s) at {self.host}:{self.port}.  Start it as it was "
                    f"made (VIGIL_BROKER_HOST={info.host} VIGIL_BROKER_PORT={info.port}, "
                    f"--nodes {info.nodes}), or pass --reformat to delete its data (every "
                    "topic) and make it anew"
                )
                raise BrokerError(msg)
            if len(running) == info.nodes:
                self.wait_ready(info)
                return StartResult(info, already_running=True, seconds=time.monotonic() - began)
        info = self._formatted(info, nodes, reformat=reformat)
        dist = self.ensure_jars()
        launching = [n for n in range(1, info.nodes + 1) if self._pid(n) is None]
        # Checked at every launch, not only when formatting: another broker on our port would
        # answer wait_ready in our node's place (and ours would die on the clash).
        self._check_ports_free(
            info.host,
            [p for n in launching for p in (info.client_port(n), info.controller_port(n))],
            made_here=self.data_root,
        )
        launched: list[int] = []
        try:
            for node in launching:
                self._launch(info, node, dist)
                launched.append(node)
            self.wait_ready(info)
        except BaseException:
            # Not left running on its own (a slow start timing out, Ctrl-C): the next start
            # would find a half-started cluster, and its memory stays taken.
            for node in launched:
                # By the handle this process holds (its command line may still read empty if
                # it was launched a moment ago, and then _pid would not know it).
                child = _CHILDREN.get(self._pid_file_value(node) or -1)
                if child is not None:
                    child.kill()
                    child.wait(30)
                    _CHILDREN.pop(child.pid, None)
                (self.node_dir(node) / "pid").unlink(missing_ok=True)
            raise
        return StartResult(info, already_running=False, seconds=time.monotonic() - began)

    def _formatted(self, info: ClusterInfo | None, nodes: int, *, reformat: bool) -> ClusterInfo:
        """The stopped cluster to launch: ``info`` as it is, or formatted afresh when there is
        none, when ``nodes``, host or port differ from it (start refused that unless asked), or
        when ``reformat`` asks (the same shape too: --reformat deletes the data, as it says)."""
        if info is None or reformat or (nodes, self.host, self.port) != (info.nodes, info.host, info.port):
            return self._format(nodes)
        return info

    @staticmethod
    def _check_ports_free(
        host: str, ports: list[int], grace_s: float = 2.0, *, made_here: Path | None = None
    ) -> None:
        # A broker stopped a moment ago may hold its ports a little longer: the kernel closes
        # a killed process's sockets after its command line already reads empty.
        deadline = time.monotonic() + grace_s
        for port in ports:
            while not _port_free(host, port) and time.monotonic() < deadline:
                time.sleep(0.05)  # poll interval; the port's state is what is waited for
            if not _port_free(host, port):
                if made_here is not None:
                    # A cluster's ports are part of it: another VIGIL_BROKER_PORT is refused as
                    # another shape, and --reformat (deleting every topic) was the advice's end.
                    msg = (
                        f"port {host}:{port} of the local cluster in {made_here} is in use by "
                        "another program (another Vigil home's broker? `vigil broker status` with "
                        "its VIGIL_HOME; `ss -ltnp` names it): free it and start again"
                    )
                else:
                    msg = (
                        f"port {host}:{port} is in use by another program; set VIGIL_BROKER_PORT "
                        "to a base port with free ports after it (two per node)"
                    )
                raise BrokerError(msg)

    def _format(self, nodes: int) -> ClusterInfo:
        """Fresh storage for a new cluster shape: a new cluster id, every node formatted."""
        dist = self.ensure_jars()
        self._check_ports_free(self.host, list(range(self.port, self.port + 2 * nodes)))
        shutil.rmtree(self.data_root, ignore_errors=True)
        self.data_root.mkdir(parents=True)
        cluster_id = _random_cluster_id()
        info = ClusterInfo(
            version=self.version, host=self.host, port=self.port, nodes=nodes, cluster_id=cluster_id
        )
        self._log_config(fresh=True)
        for node in range(1, nodes + 1):
            props = self._write_properties(info, node)
            cmd = [
                "java", "-cp", f"{dist}/*", "kafka.tools.StorageTool", "format",
                "-t", cluster_id, "-c", str(props),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
            if proc.returncode != 0:
                msg = f"formatting node {node} storage failed: {(proc.stdout + proc.stderr).strip()[-800:]}"
                raise BrokerError(msg)
        self.cluster_file.write_text(json.dumps(asdict(info), indent=2))
        return info

    def _write_properties(self, info: ClusterInfo, node: int) -> Path:
        rf = min(3, info.nodes)
        voters = ",".join(f"{n}@{info.host}:{info.controller_port(n)}" for n in range(1, info.nodes + 1))
        ndir = self.node_dir(node)
        (ndir / "data").mkdir(parents=True, exist_ok=True)
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": node,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{info.host}:{info.client_port(node)},"
            f"CONTROLLER://{info.host}:{info.controller_port(node)}",
            "advertised.listeners": f"PLAINTEXT://{info.host}:{info.client_port(node)}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": ndir / "data",
            "num.partitions": 3,
            "default.replication.factor": rf,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min(2, rf),
            # The default of topics not declared with their own (consumer offsets, others'
            # topics): 2 from 3 nodes up, as Vigil's topics declare, or an acks=all write
            # acknowledged by a lone leader is lost with it.
            "min.insync.replicas": min_insync_replicas(rf),
            # A developer broker: no 3 s wait before the first consumer group balances.
            "group.initial.rebalance.delay.ms": 0,
            # Groups of the consumer protocol (KIP-848) as the runtime sets the classic ones up
            # (vigil.stream.app): a member gone for 10 s loses its partitions, not after 45 s.
            "group.consumer.min.session.timeout.ms": 6000,
            "group.consumer.session.timeout.ms": 10000,
            "group.consumer.min.heartbeat.interval.ms": 1000,
            "group.consumer.heartbeat.interval.ms": 1000,
            "auto.create.topics.enable": "false",
            "log.retention.check.interval.ms": 60000,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": 1,
        }
        path = ndir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _log_config(self, *, fresh: bool) -> Path:
        """The brokers' log4j2 file: written when ``fresh`` (a new cluster), when missing, or when
        this broker was given log levels of its own; else kept (edited by hand, say)."""
        path = self.data_root / "log4j2.properties"
        if fresh or self.log_levels or not path.exists():
            path.write_text(log4j2_config(self.log_levels))
        return path

    def _launch(self, info: ClusterInfo, node: int, dist: Path) -> None:
        # Written at every start, not only when the storage is formatted: a broker formatted by
        # an earlier Vigil takes the settings this one's code and tests expect (the consumer
        # protocol's session, say).
        props = self._write_properties(info, node)
        ndir = self.node_dir(node)
        log4j = self._log_config(fresh=False)
        cmd = [
            "java", f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={ndir}",
            "-cp", f"{dist}/*", "kafka.Kafka", str(props.resolve()),
        ]  # fmt: skip
        with open(self.log_path(node), "ab") as log:
            # Its own session: the broker outlives the CLI command and ignores our Ctrl-C.
            proc = subprocess.Popen(  # noqa: S603
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        _CHILDREN[proc.pid] = proc
        (ndir / "pid").write_text(str(proc.pid))

    def start_node(self, node: int) -> None:
        """(Re)start one node of an existing cluster (fault tests)."""
        info = self._require_info()
        if self._pid(node) is None:
            self._launch(info, node, self.ensure_jars())

    def kill_node(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Kill one node abruptly (fault tests)."""
        pid = self._pid(node)
        if pid is not None:
            os.kill(pid, sig)
            _wait_exit(pid, 30)

    def wait_ready(self, info: ClusterInfo | None = None) -> None:
        """Block until every node answers a metadata request with all nodes registered."""
        from vigil.config import load_settings  # the hub's settings-aware client
        from vigil.hub.client import check_reachable

        info = info or self._require_info()
        deadline = time.monotonic() + self.start_timeout_s
        settings = load_settings(kafka_bootstrap=info.bootstrap)
        last = ""
        while time.monotonic() < deadline:
            dead = [n for n in range(1, info.nodes + 1) if not _alive(self._pid_file_value(n))]
            if dead:
                msg = (
                    f"broker node(s) {dead} exited during start-up; last log lines:\n{self.tail(dead[0], 20)}"
                )
                raise BrokerError(msg)
            if not all(_accepts(info.host, info.client_port(n)) for n in range(1, info.nodes + 1)):
                # Not listening yet: asking for metadata now would only make the client log
                # "connection refused" lines.
                time.sleep(0.2)
                continue
            try:
                if check_reachable(settings, timeout=2.0) >= info.nodes:
                    return
            except BrokerError as exc:
                last = str(exc)
            time.sleep(0.2)
        msg = (
            f"the broker at {info.bootstrap} did not answer within {self.start_timeout_s:.0f} s ({last}); "
            f"see {self.log_path(1)}"
        )
        raise BrokerError(msg)

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Controlled shutdown of every node (SIGTERM), SIGKILL after ``timeout``.  Returns stopped nodes."""
        if not self.cluster_file.exists():
            return []  # nothing made here, nothing to stop (and no home made to say so)
        with self._lifecycle():
            return self._stop(timeout)

    def _stop(self, timeout: float) -> list[int]:
        info = self.read_info()
        if info is None:
            return []
        pids = {n: pid for n in range(1, info.nodes + 1) if (pid := self._pid(n)) is not None}
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids.values():
            if not _wait_exit(pid, max(0.0, deadline - time.monotonic())):
                os.kill(pid, signal.SIGKILL)
                _wait_exit(pid, 10)
        for n in pids:
            (self.node_dir(n) / "pid").unlink(missing_ok=True)
        return sorted(pids)

    def status(self) -> BrokerStatus:
        info = self.read_info()
        running = self.running_nodes(info)
        if info is None or not running:
            return BrokerStatus(up=False, info=info, nodes_running=running)
        topics: int | None = None
        try:
            from vigil.config import load_settings
            from vigil.hub.client import make_admin

            admin = make_admin(load_settings(kafka_bootstrap=info.bootstrap))
            topics = len([t for t in admin.list_topics(timeout=5).topics if not t.startswith("__")])
        except Exception:  # status reports "up, topics unknown" rather than failing
            topics = None
        return BrokerStatus(up=True, info=info, nodes_running=running, topics=topics)

    def tail(self, node: int = 1, lines: int = 50) -> str:
        try:
            with open(self.log_path(node), "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 200 * lines))
                return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _require_info(self) -> ClusterInfo:
        info = self.read_info()
        if info is None:
            msg = f"no local cluster in {self.data_root}; run `vigil broker start` first"
            raise BrokerError(msg)
        return info


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as StorageTool makes).

    Never one that starts with "-" (one in 64 would): the storage tool's argument parser reads
    ``-t -xyz`` as a missing id and an unknown option, and Kafka's own ``Uuid.randomUuid`` skips
    those ids for the same reason."""
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _is_kafka_process(pid: int, config: Path | None = None) -> bool:
    """Whether ``pid`` runs a Kafka broker (with ``config`` as its properties file, if given:
    compared as resolved paths, each argument against the process's own working directory,
    since a home may be named relative, absolute or through a symlink)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = cmdline.split(b"\0")
    if b"kafka.Kafka" not in args:
        return False
    if config is None:
        return True
    want = config.resolve()
    try:
        cwd: Path | None = Path(f"/proc/{pid}/cwd").resolve(strict=True)
    except OSError:
        cwd = None  # (another user's process: only absolute arguments can be compared)
    for arg in args:
        if not arg.endswith(b"server.properties"):
            continue
        path = Path(os.fsdecode(arg))
        if not path.is_absolute():
            if cwd is None:
                continue
            path = cwd / path
        if path.resolve() == want:
            return True
    return False


#: Brokers this process launched.  Holding the Popen objects lets us reap them, and keeps
#: Python from warning that a still-running child was garbage-collected (it is meant to outlive us).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int | None) -> bool:
    """The process exists and is not a zombie (its command line may still be settling)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        _reap(pid)
        return False
    return True


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _exited(pid: int) -> bool:
    """Whether the broker process has exited.  A child of ours only once reaped: its command
    line reads empty while the JVM still tears down, and a process that ended then, and a
    moment later this one, left Python warning of a child "still running"."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _CHILDREN[pid]
        return True
    if _is_kafka_process(pid):
        return False
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our child (tests), so it does not linger as a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def from_settings(settings: Any) -> LocalBroker:
    """The local broker the settings describe (home, host, port, heap, timeout)."""
    return LocalBroker(
        home=settings.home,
        host=settings.broker_host,
        port=settings.broker_port,
        heap_mb=settings.broker_heap_mb,
        start_timeout_s=settings.broker_start_timeout_s,
    )
