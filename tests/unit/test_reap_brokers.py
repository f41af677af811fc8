"""The reaper stops the throwaway brokers a killed test process left running (a JVM each, for
good), frozen ones too, and nothing else (tests/reap_brokers.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.reap_brokers import THROWAWAY_PID, reap

#: A stand-in for a broker's JVM: a process (its own process group's leader, as a throwaway
#: broker is) whose command line names its properties file.
SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def stand_in(root: Path, props: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(root / "server.properties")], start_new_session=True
    )
    procs.append(proc)
    (root / THROWAWAY_PID).write_text(f"{proc.pid}\n{props}\n")
    return proc


def test_a_throwaway_broker_left_running_is_killed_even_frozen(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    frozen = stand_in(
        tmp_path / "a" / "broker", str(tmp_path / "a" / "broker" / "server.properties"), started
    )
    os.killpg(frozen.pid, signal.SIGSTOP)  # (as test_outage.py's freeze: a SIGTERM would wait)
    # A pid file whose process is another's now (its command line does not name the file).
    other = stand_in(tmp_path / "b" / "broker", str(tmp_path / "elsewhere.properties"), started)
    # A pid file cut short, naming no properties file.
    cut = stand_in(tmp_path / "c" / "broker", "", started)
    (tmp_path / "c" / "broker" / THROWAWAY_PID).write_text(f"{cut.pid}\n")
    assert reap(tmp_path) == [tmp_path / "a" / "broker"]
    assert frozen.wait(10) == -signal.SIGKILL
    assert other.poll() is None
    assert cut.poll() is None
