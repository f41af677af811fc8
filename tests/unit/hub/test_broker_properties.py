"""The local broker's node properties (written, not started: no JVM)."""

from __future__ import annotations

from pathlib import Path

from vigil.hub.broker import ClusterInfo, LocalBroker


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
