"""One node or relay per data dir: the second is refused, naming the first's pid; a
killed holder leaves no stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from p2paid.storage.lock import DataDirBusyError, DataDirLock

HOLDER = """
import sys
from p2paid.storage.lock import DataDirLock
with DataDirLock(sys.argv[1], "relay"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_holder_is_refused_in_one_process(tmp_path: Path) -> None:
    with DataDirLock(tmp_path, "node"):
        with pytest.raises(DataDirBusyError, match=r"a p2paid node \(pid \d+\) is already "
                                                   "running on") as caught:
            DataDirLock(tmp_path, "node").acquire()
        assert caught.value.pid is not None
    with DataDirLock(tmp_path, "node"):  # released: free again
        pass


def test_another_process_is_named_and_its_death_frees_the_dir(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirBusyError) as caught:
            DataDirLock(tmp_path, "node").acquire()
        assert caught.value.pid == holder.pid
        assert f"a p2paid relay (pid {holder.pid}) is already running on {tmp_path}" in str(
            caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with DataDirLock(tmp_path, "node"):  # a killed holder leaves no stale lock
        assert (tmp_path / "p2paid.lock").read_text().split()[1] == "node"
