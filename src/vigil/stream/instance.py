"""A host-local instance number per application, so a restarted process reuses its predecessor's.

Exactly-once applications (and at-least-once ones with state) name their transactional
producer ``<name>-<home id>-<slot>``.  Kafka fences a transactional id's previous producer
when a new one initialises with the same id, aborting its open transaction at once.  With the
process id in the name instead, a worker killed mid-transaction and restarted came back under
a new id: its old transaction stayed open, and ``read_committed`` readers of its outputs (and
its own restart, reading offsets) waited for ``transaction.timeout.ms`` before Kafka aborted it.

The home id is random, made the first time a home is used and kept in it
(``state/.instances/id``), so it goes wherever the state goes.  It was the host name and a
digest of the home's path: containers that all have the same host name and mount their own
volume at the same path shared one transactional id and fenced each other in turn, and a
replacement with a new host name on the old one's volume (a rescheduled pod) did not fence
its predecessor's open transaction.  (A copy of a home has the same id: a cloned volume, or
a home baked into a container image and run as several replicas, which then fence each other
in turn.  Processes sharing one home get a slot each; copies of a home must not run side by
side.)

A slot is the lowest number whose lock file (under the home) no live process holds (``flock``:
released by the kernel when the holder dies, however it dies), so two processes of an
application sharing a home get different slots, processes with different homes (other users,
other deployments, services with a private ``/tmp``) different ids, and a restart after
``kill -9`` with the same home gets the dead one's.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import IO

MAX_SLOTS = 1024


def slot_directory(home: Path) -> Path:
    return home / "state" / ".instances"


def home_id(home: Path) -> str:
    """The home's random id, made on first use (by one process when several start at once)."""
    directory = slot_directory(home)
    path = directory / "id"
    try:
        return _read_id(path)
    except (FileNotFoundError, _EmptyId):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    # Made by one process at a time: two that found a file left empty both deleted it, and the
    # second could delete the id the first had just made (found in review).
    with (directory / "id.lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _read_id(path)
        except FileNotFoundError:
            pass
        except _EmptyId:
            # Left empty by a crash while it was created exclusively (the fallback below): made anew.
            path.unlink(missing_ok=True)
        return _make_id(directory, path)


def _make_id(directory: Path, path: Path) -> str:
    # Written whole under a name of its own, synced, then linked into place: link fails if
    # another process got there first, and then its id is the home's.
    made = directory / f"id.{os.getpid()}.{secrets.token_hex(4)}"
    text = (secrets.token_hex(6) + "\n").encode("ascii")
    _write_synced(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), text)
    try:
        os.link(made, path)
    except FileExistsError:
        pass
    except OSError:
        # A file system without hard links (some network shares): created exclusively instead,
        # and a reader meanwhile waits for its content (_read_id).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            _write_synced(fd, text)
    finally:
        made.unlink()
    # The directory entry synced too: an id that a crash takes back would change the
    # transactional id, and the restart would not fence its predecessor.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _read_id(path)


def _write_synced(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class _EmptyId(ValueError):
    pass


def _read_id(path: Path) -> str:
    text = path.read_text(encoding="ascii").strip()
    deadline = time.monotonic() + 2.0
    while not text and time.monotonic() < deadline:
        time.sleep(0.01)  # created exclusively by another process, which is writing it now
        text = path.read_text(encoding="ascii").strip()
    if not text:
        raise _EmptyId(str(path))
    if not all(c in "0123456789abcdef" for c in text):
        msg = f"{path}: expected the home's instance id (hex digits); delete the file to make a new one"
        raise ValueError(msg)
    return text


def instance_id(home: Path, slot: int) -> str:
    """``<home id>-<slot>``: the same for a restart with the same home, wherever it runs."""
    return f"{home_id(home)}-{slot}"


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
