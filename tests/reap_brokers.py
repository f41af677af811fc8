"""Stops the Kafka brokers a test process started, once that process is gone.

Run by the integration tests' session fixture as ``python reap_brokers.py <root>``, with its
standard input a pipe the test process holds open.  A broker runs detached from whoever started
it (``vigil broker start`` keeps it running after the command returns), so a test process that
died without its finalizers (a crash in a C extension, ``kill -9``) left its brokers running: a
JVM each, for good.  The end of the pipe (EOF) is the signal, whatever way the process ended;
then every broker with a home under ``root`` that still runs is stopped.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from vigil.hub.broker import LocalBroker

#: The file in a throwaway broker's root (tests/integration/throwaway_broker.py) naming its
#: process, its process group's leader, and its properties file, which its command line holds.
THROWAWAY_PID = "broker.pid"


def reap(root: Path) -> list[Path]:
    """Stop every local broker whose home is under ``root``, and every throwaway broker (see
    tests/integration/throwaway_broker.py) whose root is; the homes that had nodes running."""
    stopped = []
    for cluster_file in sorted(root.glob("**/kafka/cluster.json")):
        home = cluster_file.parent.parent
        if LocalBroker(home=home).stop():
            stopped.append(home)
    for pid_file in sorted(root.glob(f"**/{THROWAWAY_PID}")):
        if _kill_throwaway(pid_file):
            stopped.append(pid_file.parent)
    return stopped


def _kill_throwaway(pid_file: Path) -> bool:
    """Kill the throwaway broker ``pid_file`` names, if it still runs (its process's command line
    names its properties file: a pid used again since is another process's).  Killed outright,
    which a broker frozen by a test (SIGSTOP) takes too: a stop by SIGTERM would wait for it to
    be continued."""
    try:
        pid_text, props = pid_file.read_text().split("\n")[:2]
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False  # (gone, or never written whole)
    if not props or props not in cmdline:
        return False  # (a file cut short names no properties file: every command line holds "")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def main() -> None:
    root = Path(sys.argv[1])
    sys.stdin.buffer.read()  # returns at EOF: the test process closed the pipe or died
    for home in reap(root):
        print(f"reap_brokers: stopped the broker left running in {home}", file=sys.stderr)


if __name__ == "__main__":
    main()
