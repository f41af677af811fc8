"""The local broker's node properties (written, not started: no JVM)."""

from __future__ import annotations

from pathlib import Path

from vigil.hub.broker import ClusterInfo, LocalBroker, log4j2_config


def _properties(home: Path, nodes: int) -> dict[str, str]:
    broker = LocalBroker(home, port=19092)
    info = ClusterInfo(version="4.1.1", host="127.0.0.1", port=19092, nodes=nodes, cluster_id="x")
    lines = broker._write_properties(info, 1).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_min_insync_replicas_default_follows_the_clusters_replicas(tmp_path: Path) -> None:
    # 1 on three nodes: a write acknowledged by a lone leader (the others out of sync) was lost
    # with it.  Two nodes keep 1, as two-replica topics do: 2 would stop writes with either down.
    insync = {n: _properties(tmp_path / str(n), n)["min.insync.replicas"] for n in (1, 2, 3, 4)}
    assert insync == {1: "1", 2: "1", 3: "2", 4: "2"}


def test_log_levels_are_set_over_vigils_own_logging_configuration(tmp_path: Path) -> None:
    # The tests' brokers log their controller's fencing and their group joins (Kafka's own
    # loggers are at WARN in Vigil's configuration, so a stalled join left no trace).
    levels = {"org.apache.kafka.coordinator.group": "INFO", "org.apache.kafka.controller.X": "DEBUG"}
    text = log4j2_config(levels)
    props = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    loggers = {
        v: props[k[: -len("name")] + "level"]
        for k, v in props.items()
        if k.startswith("logger.") and k.endswith(".name")
    }
    assert loggers["org.apache.kafka.coordinator.group"] == "INFO"
    assert loggers["org.apache.kafka.controller.X"] == "DEBUG"
    assert loggers["org.apache.kafka"] == "WARN"  # (Vigil's own, kept)
    assert text.startswith(log4j2_config())
    # A broker given levels writes them at every start, into a home formatted before too.
    broker = LocalBroker(tmp_path, port=19092)
    broker.data_root.mkdir(parents=True)
    assert broker._log_config(fresh=False).read_text() == log4j2_config()
    again = LocalBroker(tmp_path, port=19092, log_levels=levels)._log_config(fresh=False)
    assert again.read_text() == text
    # (Without levels, a file kept: one edited by hand.)
    again.write_text("# mine\n")
    assert LocalBroker(tmp_path, port=19092)._log_config(fresh=False).read_text() == "# mine\n"
