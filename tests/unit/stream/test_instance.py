"""Host-local instance slots: the lowest free one, different for live processes, freed by death."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.stream.instance import InstanceSlot

HOLD = """
import sys, time
from pathlib import Path
from vigil.stream.instance import InstanceSlot
held = InstanceSlot(Path(sys.argv[1]), "app")
print(held.acquire(), flush=True)
time.sleep(600)
"""


def test_live_holders_get_different_slots_and_a_released_one_is_reused(tmp_path: Path) -> None:
    first, second = InstanceSlot(tmp_path, "app"), InstanceSlot(tmp_path, "app")
    assert (first.acquire(), second.acquire()) == (0, 1)
    other = InstanceSlot(tmp_path, "other")
    assert other.acquire() == 0  # slots are per application
    other.release()
    first.release()
    third = InstanceSlot(tmp_path, "app")
    assert third.acquire() == 0
    second.release()
    third.release()


def test_a_process_killed_with_sigkill_leaves_its_slot_to_its_restart(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "0"
        other = InstanceSlot(tmp_path, "app")
        assert other.acquire() == 1  # 0 is held by the live process
        other.release()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    restarted = InstanceSlot(tmp_path, "app")
    assert restarted.acquire() == 0
    restarted.release()


def test_the_default_id_goes_with_the_home_not_its_path_or_host(tmp_path: Path) -> None:
    from vigil.stream.instance import instance_id

    one, other = tmp_path / "one", tmp_path / "other"
    first = instance_id(one, 0)
    assert instance_id(one, 0) == first  # a restart in the same home fences its predecessor
    assert instance_id(one, 1) != first
    assert instance_id(other, 0) != first  # other users, deployments, private /tmp
    # A volume mounted elsewhere (a rescheduled pod, a new host name) keeps its id ...
    one.rename(tmp_path / "moved")
    assert instance_id(tmp_path / "moved", 0) == first
    # ... and another volume at the same path (containers alike in host name and paths) has
    # its own: the id was a digest of the path and the host name, shared by all of them.
    assert instance_id(one, 0) != first


MAKE_ID = """
import sys
from pathlib import Path
from vigil.stream.instance import home_id
print(home_id(Path(sys.argv[1])), flush=True)
"""


def test_processes_starting_at_once_in_a_new_home_agree_on_its_id(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", MAKE_ID, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(ids) == 1
    assert ids == {(tmp_path / "state" / ".instances" / "id").read_text().strip()}
    assert sorted(p.name for p in (tmp_path / "state" / ".instances").iterdir()) == ["id", "id.lock"]


def test_a_damaged_id_file_is_named(tmp_path: Path) -> None:
    import pytest

    from vigil.stream.instance import home_id

    path = tmp_path / "state" / ".instances" / "id"
    path.parent.mkdir(parents=True)
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match=r"state/\.instances/id: expected the home's instance id"):
        home_id(tmp_path)


def test_an_id_file_left_empty_by_a_crash_is_made_anew(tmp_path: Path) -> None:
    from vigil.stream.instance import home_id

    path = tmp_path / "state" / ".instances" / "id"
    path.parent.mkdir(parents=True)
    path.write_text("")  # created exclusively, then the process died before writing it
    made = home_id(tmp_path)
    assert len(made) == 12
    assert home_id(tmp_path) == made == path.read_text().strip()


def test_an_id_file_left_empty_is_made_anew_by_one_process_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes that found it empty both deleted it, and the second could delete the id the
    # first had just made: the two went on with different ids (found in review).
    import fcntl
    import threading

    from vigil.stream import instance

    path = tmp_path / "state" / ".instances" / "id"
    path.parent.mkdir(parents=True)
    path.write_text("")
    read, found_empty = instance._read_id, threading.Event()

    def reading(at: Path) -> str:
        try:
            return read(at)
        except instance._EmptyId:
            found_empty.set()
            raise

    monkeypatch.setattr(instance, "_read_id", reading)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(instance.home_id(tmp_path)), daemon=True)
    with (path.parent / "id.lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process making it now
        reader.start()
        assert found_empty.wait(30)
        path.write_text("0123456789ab\n")  # what that process made
    reader.join(30)
    assert got == ["0123456789ab"]
    assert path.read_text() == "0123456789ab\n"
