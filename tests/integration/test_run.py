"""`vigil run`: a connector, the normalise application and detection together in one process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from vigil.config import load_settings, shared_data_dir
from vigil.hub import admin as topic_admin
from vigil.hub.broker import free_port_block
from vigil.hub.client import make_admin, watermarks
from vigil.hub.topics import TOPICS

REPO = Path(__file__).resolve().parents[2]
INTEL = shared_data_dir() / "intel"


def _count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return 0
        total = 0
        for p in meta.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, p))
            total += high - low
        return total
    finally:
        consumer.close()


def test_run_flows_a_connector_through_normalise_into_the_indicator_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path)}
    before = _count(kafka_bootstrap, "intel.indicators")
    # A source id of its own, so that its cursor starts empty: on a cluster where the lists were
    # published before (a long-lived one), the default id's cursor knows their versions and,
    # rightly, publishes nothing new.
    source_id = f"intel.lists.test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "run", "--source", "intel", "-o", f"intel.data_dir={INTEL}",
         "-o", f"intel.source_id={source_id}", "--rules", str(REPO / "rules"), "--at-least-once"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # The shipped lists hold thousands of indicators; they must reach the compacted topic
        # through raw.intel and the normaliser, not by any shortcut.
        while time.monotonic() < deadline and _count(kafka_bootstrap, "intel.indicators") < before + 1000:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        assert _count(kafka_bootstrap, "intel.indicators") >= before + 1000
        assert _count(kafka_bootstrap, "raw.intel") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left running: it holds the groups and ids a next run would use
            proc.communicate()
            raise
    assert proc.returncode == 0, err[-3000:]
    assert "stopped" in out


#: `vigil run` with a SIGTERM sent to itself as detection starts (its intel loading may take a
#: minute), the moment a deploy's stop may come.
def _run_intel_with(script: str, kafka_bootstrap: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``vigil run --source intel`` (at-least-once, the repository's rules) by ``script``, a
    Python program that patches what the test needs and then runs the command line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", script, "run", "--source", "intel",
         "-o", f"intel.data_dir={INTEL}", "--rules", str(REPO / "rules"), "--at-least-once"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )  # fmt: skip


_TERM_AS_DETECTION_STARTS = """
import os, signal, sys
from vigil.detect.app import DetectionService
real = DetectionService.start
def start(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(self, *args, **kwargs)
DetectionService.start = start
from vigil.cli import main
sys.argv = ["vigil", *sys.argv[1:]]
main()
"""


def test_a_stop_while_detection_starts_is_a_graceful_stop(kafka_bootstrap: str, tmp_path: Path) -> None:
    # The handlers were installed after detection started: a SIGTERM before took Python's
    # default and killed the process (exit -15), normalise mid-transaction, no last checkpoint.
    proc = _run_intel_with(_TERM_AS_DETECTION_STARTS, kafka_bootstrap, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped" in proc.stdout
    assert "running:" not in proc.stdout  # asked to stop before: no connector started


_A_PART_THAT_DOES_NOT_STOP = """
import os, signal, sys, threading
import vigil.cli.run
from vigil.sources.intel.lists import IntelListSource
vigil.cli.run.STOP_WAIT_S = 1.0
def run(self, sink):
    os.kill(os.getpid(), signal.SIGTERM)  # asked to stop once running ...
    threading.Event().wait()  # ... and never returning
IntelListSource.run = run
IntelListSource.stop = lambda self: None
from vigil.cli import main
sys.argv = ["vigil", *sys.argv[1:]]
main()
"""


def test_a_part_that_does_not_stop_is_named_and_the_exit_is_not_clean(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Each part had 30 s to stop, and then the command said "stopped" and exited 0 whatever still
    # ran, its daemon thread killed with the process.
    proc = _run_intel_with(_A_PART_THAT_DOES_NOT_STOP, kafka_bootstrap, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "source-intel did not stop within 1s; exiting with it running" in said
    assert "stopped\n" not in proc.stdout


def test_normalize_on_its_own_serves_its_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Moved to a process of its own, normalise served no metrics (no --metrics-port, and the
    # VIGIL_METRICS_PORT every process is given was ignored): its lag went unseen.
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, home=tmp_path)
    topic_admin.apply(make_admin(settings), [TOPICS.get("raw.intel")], settings)
    port = free_port_block(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {
        "VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VIGIL_HOME": str(tmp_path),
        "VIGIL_METRICS_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "normalize", "--source", "intel", "--at-least-once"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        text = ""
        # (Its lag once raw.intel is assigned, whether or not anything is there to read.)
        while 'vigil_stream_consumer_lag{app="normalize",partition="0",topic="raw.intel"}' not in text:
            assert time.monotonic() < deadline, f"no lag served: {text[-2000:]!r}"
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            text = _scrape(port)
            time.sleep(0.2)  # poll interval; the scrape is what synchronises
        assert 'vigil_stream_loop_timestamp_seconds{app="normalize"}' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err[-3000:]
    assert f"metrics: http://127.0.0.1:{port}/metrics" in out
    # What it did, said when it stops, as vigil detect says its totals (found in review).
    # (Counts of whatever raw.intel held: the suite's broker is shared.)
    assert re.search(r"\nprocessed \d+ records; \d+ dead-lettered to dlq\.normalize\n", out), out[-2000:]


def _scrape(port: int) -> str:
    """The metrics served on ``port`` ("" while nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


_A_PART_THAT_FAILS = """
import sys
from vigil.errors import SourceError
from vigil.sources.intel.lists import IntelListSource
def run(self, sink):
    raise SourceError("the feed went away (a test's)")
IntelListSource.run = run
from vigil.cli import main
sys.argv = ["vigil", *sys.argv[1:]]
main()
"""


def test_a_part_that_fails_stops_the_command_said_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Its failure was printed as it happened, then again as the command's "error:" line.
    proc = _run_intel_with(_A_PART_THAT_FAILS, kafka_bootstrap, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "source-intel failed: the feed went away (a test's)" in said
    assert said.count("the feed went away") == 1, said[-3000:]
    assert "stopped\n" not in proc.stdout
