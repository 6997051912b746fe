"""The rollout controller's state file and lease (canaryws.adapters.rollout_store), with real
files, real flock and a real second process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from canaryws.adapters.rollout_store import LeaseHeld, RolloutStore, StoreError

HOLD = """
import sys, time
from pathlib import Path
from canaryws.adapters.rollout_store import RolloutStore
lease = RolloutStore(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def holder_process(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_controller_holds_the_lease_until_its_process_dies_even_by_sigkill(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollout.json")
    other = holder_process(store.path)
    try:
        with pytest.raises(LeaseHeld) as held:
            store.acquire()
        assert held.value.holder is not None and held.value.holder["pid"] == other.pid
        assert store.holder() == held.value.holder
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(10)
    lease = store.acquire()  # the kernel released the dead process's lock
    assert store.holder() == lease.holder  # status, from another open file, sees who holds it
    lease.release()
    assert store.holder() is None


def test_requests_queued_while_the_controller_saves_are_kept(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollout.json")
    store.save({"state": "ramping", "step": 1})
    store.add_request({"kind": "pause", "reason": "look"})
    store.save({"state": "ramping", "step": 2})  # the controller's save does not drop the request
    assert store.read() == {"state": "ramping", "step": 2, "requests": [{"kind": "pause", "reason": "look"}]}
    assert store.take_requests() == [{"kind": "pause", "reason": "look"}]
    assert store.take_requests() == [] and store.read() == {"state": "ramping", "step": 2}


def test_requests_are_bounded(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollout.json")
    for n in range(150):
        store.add_request({"kind": "pause", "n": n})
    taken = store.take_requests()
    assert len(taken) == 100 and taken[0]["n"] == 50 and taken[-1]["n"] == 149


@pytest.mark.parametrize(("text", "says"), [("{not json", "not JSON"), ("[1, 2]", "not a JSON object")])
def test_a_broken_state_file_is_named_not_guessed(tmp_path: Path, text: str, says: str) -> None:
    store = RolloutStore(tmp_path / "rollout.json")
    store.path.write_text(text)
    with pytest.raises(StoreError, match=says):
        store.read()


def test_a_finished_state_is_archived_out_of_the_trace_readers_way(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollout.json")
    assert store.archive() is None
    store.save({"state": "completed"})
    archived = store.archive()
    assert archived is not None and archived.name.startswith("rollout.json.") and archived.suffix == ".done"
    assert not store.path.exists() and store.read() is None
