"""The local broker's home and shape: never formatted afresh unasked, never read relative."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.errors import BrokerError, ConfigError
from vigil.hub.broker import ClusterInfo, LocalBroker, free_port_block

#: The suite's cache of the broker jars (formatting a node's storage runs Kafka's StorageTool).
DIST = Path(__file__).resolve().parents[3] / ".vigil" / "kafka-dist"


def _made(home: Path, *, port: int, nodes: int = 1) -> LocalBroker:
    """A home holding a stopped cluster made on ``port`` (its data a file to see deleted)."""
    broker = LocalBroker(home, port=port)
    broker.data_root.mkdir(parents=True)
    info = ClusterInfo(version=broker.version, host="127.0.0.1", port=port, nodes=nodes, cluster_id="c" * 22)
    broker.cluster_file.write_text(json.dumps(asdict(info)))
    (broker.data_root / "node-1").mkdir()
    (broker.data_root / "node-1" / "topic-data").write_text("kept")
    return broker


@pytest.mark.parametrize(("port", "nodes"), [(39292, None), (39092, 3)])
def test_a_start_in_another_shape_is_refused_naming_both_and_deletes_nothing(
    tmp_path: Path, port: int, nodes: int | None
) -> None:
    # Following a port clash's advice (set VIGIL_BROKER_PORT) formatted the cluster afresh:
    # every topic deleted, without a word.
    _made(tmp_path, port=39092)
    moved = LocalBroker(tmp_path, port=port)
    with pytest.raises(BrokerError) as raised:
        moved.start(nodes=nodes)
    text = str(raised.value)
    assert "was made with 1 node(s) at 127.0.0.1:39092" in text
    assert f"asks for {nodes or 1} node(s) at 127.0.0.1:{port}" in text
    assert "VIGIL_BROKER_PORT=39092" in text
    assert "--reformat" in text
    assert (tmp_path / "kafka" / "node-1" / "topic-data").read_text() == "kept"


def test_a_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative, Maven put the jars under the pom's directory (an empty download then marked
    # complete).  (Taken against the directory the command runs in, as vigil.toml is.)
    monkeypatch.chdir(tmp_path)
    assert LocalBroker(Path(".vigil")).home == tmp_path / ".vigil"
    assert LocalBroker(Path(".vigil")).dist_dir().is_absolute()
    assert load_settings(home=Path(".vigil")).home == tmp_path / ".vigil"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.2", "::1", "example.com"])
def test_the_local_broker_listens_on_loopback_only(host: str) -> None:
    # It has no authentication: on another address anyone reaching it reads every topic.
    with pytest.raises(ConfigError, match="is not a loopback address"):
        load_settings(broker_host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost"])
def test_loopback_hosts_are_taken(host: str) -> None:
    assert load_settings(broker_host=host).broker_host == host


def test_a_bootstrap_port_out_of_range_is_refused() -> None:
    # librdkafka wrapped it: 99999 connected to 34463.
    with pytest.raises(ConfigError, match=r"port 99999 .* out of range; expected 1-65535"):
        load_settings(kafka_bootstrap="127.0.0.1:99999")


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[LocalBroker]:
    """A stopped cluster whose node 1 reads as running: a process (no Java) whose command line
    is a Kafka broker's with node 1's properties, its pid in node 1's pid file."""
    broker = _made(tmp_path, port=free_port_block(2))
    broker.start_timeout_s = 1.0  # (a start that went on to wait for it gives up soon)
    props = broker.node_dir(1) / "server.properties"
    props.write_text("")
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "kafka.Kafka", str(props)])
    try:
        (broker.node_dir(1) / "pid").write_text(str(fake.pid))
        deadline = time.monotonic() + 10
        while broker.running_nodes() != (1,):  # until the child has exec'd its command line
            assert time.monotonic() < deadline, "the stand-in broker process never showed as node 1"
            time.sleep(0.02)
        yield broker
    finally:
        fake.kill()
        fake.wait(10)


def test_reformat_of_a_running_cluster_is_refused_naming_its_nodes(running_node: LocalBroker) -> None:
    # In the shape it was made (nothing to refuse about the shape), --reformat was ignored: the
    # start found it running, and said nothing of the data it did not delete.
    with pytest.raises(BrokerError) as raised:
        running_node.start(reformat=True)
    text = str(raised.value)
    assert "has node(s) 1 of 1 running" in text
    assert "vigil broker stop" in text
    assert "--reformat" in text
    assert (running_node.data_root / "node-1" / "topic-data").read_text() == "kept"


def test_reformat_of_a_stopped_cluster_in_the_same_shape_deletes_its_data(tmp_path: Path) -> None:
    # Data kept when the shape was unchanged, though --reformat's help says it deletes it.  Runs
    # the part of start that formats (Kafka's StorageTool: Java and the suite's jar cache), not
    # the launch after it.
    if not (DIST / LocalBroker(tmp_path).version / ".complete").exists():
        pytest.skip(f"no Kafka jars in {DIST} (`vigil broker start` fetches them once)")
    made = _made(tmp_path, port=free_port_block(2))
    broker = LocalBroker(tmp_path, port=made.port, dist_root=DIST)
    before = broker.read_info()
    assert before is not None
    info = broker._formatted(before, before.nodes, reformat=True)
    assert not (broker.data_root / "node-1" / "topic-data").exists()
    assert info.cluster_id != before.cluster_id
    assert broker.read_info() == info
    # Unasked, the same shape is launched as it is.
    assert broker._formatted(info, info.nodes, reformat=False) is info


@pytest.mark.parametrize(("port", "nodes"), [(65535, 1), (65530, 5)])
def test_ports_past_65535_are_refused_naming_the_setting_and_the_nodes(
    tmp_path: Path, port: int, nodes: int
) -> None:
    # Two ports a node from VIGIL_BROKER_PORT: bind() of 65536 raised OverflowError, a traceback.
    with pytest.raises(
        BrokerError, match=rf"{nodes} node\(s\) need ports {port}-\d+ .* past 65535; set VIGIL_BROKER_PORT"
    ):
        LocalBroker(tmp_path, port=port).start(nodes)


def test_a_made_clusters_port_in_use_is_not_answered_with_another_port(tmp_path: Path) -> None:
    # The advice to set VIGIL_BROKER_PORT was refused as another shape by the next start, whose
    # own way on was --reformat: every topic deleted.
    import socket

    port = free_port_block(1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        with pytest.raises(BrokerError) as made:
            LocalBroker._check_ports_free("127.0.0.1", [port], 0.0, made_here=tmp_path / "kafka")
        with pytest.raises(BrokerError) as fresh:
            LocalBroker._check_ports_free("127.0.0.1", [port], 0.0)
    assert f"port 127.0.0.1:{port} of the local cluster in {tmp_path / 'kafka'} is in use" in str(made.value)
    assert "VIGIL_BROKER_PORT" not in str(made.value)
    assert "free it" in str(made.value)
    assert "set VIGIL_BROKER_PORT" in str(fresh.value)  # a cluster not made yet may move


def test_starts_and_stops_of_one_home_wait_for_each_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two starts on a fresh home both formatted it; the second failed in Kafka's StorageTool.
    import fcntl
    import threading

    broker = _made(tmp_path, port=free_port_block(2))  # (a stopped cluster: its stop stops nothing)
    stopped = threading.Event()
    waiter = threading.Thread(target=lambda: (broker.stop(), stopped.set()), daemon=True)
    with caplog.at_level("WARNING", logger="vigil.hub.broker"), (tmp_path / "kafka.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process's start, holding the home
        waiter.start()
        assert not stopped.wait(1.0), "a stop went on while another start held the home"
        # Said, not waited out in silence (the other may be fetching the jars for minutes).
        assert f"waiting for another start or stop of the local broker in {tmp_path}" in caplog.text
    waiter.join(30)
    assert stopped.is_set()


def test_a_stop_where_nothing_was_made_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "never-used"
    assert LocalBroker(home).stop() == []
    assert not home.exists()
