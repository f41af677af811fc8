"""Host-local instance slots: the lowest free one, different for live processes, freed by death."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

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


def test_the_default_id_is_the_same_for_a_restart_in_one_home_and_differs_between_homes(
    tmp_path: Path,
) -> None:
    from vigil.stream.instance import instance_id

    one, other = tmp_path / "one", tmp_path / "other"
    assert instance_id(one, 0) == instance_id(one, 0)
    assert instance_id(one, 0) != instance_id(other, 0)  # other users, deployments, private /tmp
    assert instance_id(one, 0) != instance_id(one, 1)
