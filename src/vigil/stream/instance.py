"""A host-local instance number per application, so a restarted process reuses its predecessor's.

Exactly-once applications name their transactional producer ``<name>-<host>-<home>-<slot>``,
``<home>`` a digest of the process's ``VIGIL_HOME`` (where its state lives).  Kafka
fences a transactional id's previous producer when a new one initialises with the same id,
aborting its open transaction at once.  With the process id in the name instead, a worker
killed mid-transaction and restarted came back under a new id: its old transaction stayed
open, and ``read_committed`` readers of its outputs (and its own restart, reading offsets)
waited for ``transaction.timeout.ms`` (30 s) before Kafka aborted it.

A slot is the lowest number whose lock file (under the home) no live process holds (``flock``:
released by the kernel when the holder dies, however it dies), so two processes of an
application sharing a home get different slots, processes with different homes (other users,
other deployments, services with a private ``/tmp``) different ids, and a restart after
``kill -9`` with the same home gets the dead one's.
"""

from __future__ import annotations

import fcntl
import hashlib
import socket
from pathlib import Path
from typing import IO

MAX_SLOTS = 1024


def slot_directory(home: Path) -> Path:
    return home / "state" / ".instances"


def instance_id(home: Path, slot: int) -> str:
    """``<host>-<home digest>-<slot>``: the same for a restart in the same home on this host."""
    digest = hashlib.blake2b(str(home.resolve()).encode(), digest_size=4).hexdigest()
    return f"{socket.gethostname()}-{digest}-{slot}"


class InstanceSlot:
    """``acquire()`` the lowest free slot of ``name`` under ``directory``; ``release()`` it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.number: int | None = None
        self._handle: IO[bytes] | None = None

    def acquire(self) -> int:
        if self.number is not None:
            return self.number
        self.directory.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            handle = (self.directory / f"{self.name}.{slot}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle, self.number = handle, slot
            return slot
        msg = f"application {self.name!r}: all {MAX_SLOTS} instance slots under {self.directory} are held"
        raise RuntimeError(msg)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        self.number = None
