"""Stops the Kafka brokers a test process started, once that process is gone.

Run by the integration tests' session fixture as ``python reap_brokers.py <root>``, with its
standard input a pipe the test process holds open.  A broker runs detached from whoever started
it (``vigil broker start`` keeps it running after the command returns), so a test process that
died without its finalizers (a crash in a C extension, ``kill -9``) left its brokers running: a
JVM each, for good.  The end of the pipe (EOF) is the signal, whatever way the process ended;
then every broker with a home under ``root`` that still runs is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vigil.hub.broker import LocalBroker


def reap(root: Path) -> list[Path]:
    """Stop every local broker whose home is under ``root``; the homes that had nodes running."""
    stopped = []
    for cluster_file in sorted(root.glob("**/kafka/cluster.json")):
        home = cluster_file.parent.parent
        if LocalBroker(home=home).stop():
            stopped.append(home)
    return stopped


def main() -> None:
    root = Path(sys.argv[1])
    sys.stdin.buffer.read()  # returns at EOF: the test process closed the pipe or died
    for home in reap(root):
        print(f"reap_brokers: stopped the broker left running in {home}", file=sys.stderr)


if __name__ == "__main__":
    main()
