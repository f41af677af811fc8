"""`vigil demo` end to end on the real broker: simulate, detect through Kafka, score."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.kafka_read import wait_for

REPO = Path(__file__).resolve().parents[2]


def _score_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """The score table's rows: each scenario's episodes and recall (percent), by scenario."""
    lines = stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if "Detection on the simulated exchange" in line)
    header = next(
        i for i in range(title, len(lines)) if lines[i].split()[:4] == ["scenario", "eps", "alerts", "recall"]
    )
    rows: dict[str, tuple[int, int]] = {}
    for line in lines[header + 2 :]:  # after the header and the rule under it
        row = re.match(r"(\S+)\s+(\d+)\s+\d+\s+(\d+)%(\s|$)", line)
        if row is None:
            break  # the summary after the table
        rows[row[1]] = (int(row[2]), int(row[3]))
    return rows


def test_demo_runs_the_pipeline_and_prints_the_score_table(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path), "COLUMNS": "120"}
    out = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "demo", "--events", "4000", "--customers", "150",
         "--speed", "1000000", "--rules", str(REPO / "rules")],
        env=env, capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Detection on the simulated exchange" in out.stdout
    rows = _score_rows(out.stdout)
    for scenario in ("account_takeover", "address_poisoning", "drainer_approval", "sanctioned_exposure"):
        assert scenario in rows, f"{scenario} is not in the score table: {sorted(rows)}"
        episodes, recall = rows[scenario]
        # Its attacks ran, and detection through Kafka caught some of them.
        assert episodes > 0, (scenario, rows[scenario])
        assert recall > 0, (scenario, rows[scenario])
    # Live alerts were printed as they came off the alerts topic (severity and rule id lines).
    assert "latency" in out.stdout
    # The run cleaned up its own topics.
    from vigil.config import load_settings
    from vigil.hub.client import make_admin

    admin = make_admin(load_settings(kafka_bootstrap=kafka_bootstrap))

    def left() -> list[str]:  # deletion is accepted before metadata stops listing the topics
        return [t for t in admin.list_topics(timeout=10).topics if t.startswith("demo-")]

    wait_for(lambda: not left(), 30, "the demo's topics to be gone")
    # Its consumer groups and local state too: every run left them (11.6 MB for 3,000 events).
    listed = admin.list_consumer_groups(request_timeout=10).result()
    assert [g.group_id for g in listed.valid if g.group_id.startswith("demo-")] == []
    assert not list((tmp_path / "state").glob("demo-*"))
