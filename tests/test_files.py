"""Errors on the user's files and folders: one clear line naming the path, a FileError
(a P2paidError) with the OSError as its cause, nothing left behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2paid import P2paidError
from p2paid.board.store import open_store
from p2paid.errors import FileError
from p2paid.storage.files import describe


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2paid", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_importing_a_missing_bundle_is_a_file_error(tmp_path: Path) -> None:
    with open_store(tmp_path / "d") as store, pytest.raises(FileError) as caught:
        store.import_bundle(tmp_path / "missing.p2paid")
    error = caught.value
    assert isinstance(error, P2paidError)
    assert str(tmp_path / "missing.p2paid") in str(error) and "does not exist" in str(error)
    assert isinstance(error.__cause__, FileNotFoundError) and error.errno == errno.ENOENT


def test_importing_a_folder_is_a_file_error(tmp_path: Path) -> None:
    with open_store(tmp_path / "d") as store, pytest.raises(FileError, match="a folder"):
        store.import_bundle(tmp_path)


def test_exporting_into_a_missing_folder_or_over_a_folder_leaves_nothing(tmp_path: Path) -> None:
    with open_store(tmp_path / "d") as store:
        store.create_board("Aid")
        with pytest.raises(FileError, match=r"nope.*does not exist"):
            store.export_bundle(tmp_path / "nope" / "aid.p2paid")
        (tmp_path / "taken").mkdir()
        with pytest.raises(FileError, match="a folder"):
            store.export_bundle(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "taken"]
    assert list((tmp_path / "taken").iterdir()) == []


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    with pytest.raises(FileError, match="it is a file, not a folder"):
        open_store(tmp_path / "file")
    got = _cli("--data-dir", str(tmp_path / "file"), "list")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert got.stderr.strip() == (f"p2paid: cannot use the data dir {tmp_path / 'file'}: "
                                  "it is a file, not a folder")


def test_a_folder_of_another_user_names_its_owner(tmp_path: Path) -> None:
    """The message a user who is not the owner gets (made by the real function on a real
    folder owned by someone else; only the OSError is made here, as root cannot be
    refused)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    elif theirs.stat().st_uid == os.geteuid():
        pytest.skip("needs root to give a folder to another user")
    line = describe(theirs, PermissionError(errno.EPERM, "Operation not permitted"),
                    "use the data dir")
    assert line.startswith(f"cannot use the data dir {theirs}: {theirs} belongs to ")
    assert "run p2paid as" in line


def _can_mount_read_only() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a read-only bind mount in a private mount namespace)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, check=False)
    return None if probe.returncode == 0 else "cannot create a mount namespace here"


def test_a_read_only_data_dir_is_one_line(tmp_path: Path) -> None:
    reason = _can_mount_read_only()
    if reason is not None:
        pytest.skip(reason)
    data = tmp_path / "d"
    with open_store(data) as store:
        store.create_board("Aid")
    script = (f"mount --bind -o ro {data} {data} && "
              f"exec {sys.executable} -m p2paid --data-dir {data} list")
    got = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 1, got
    assert "Traceback" not in got.stderr
    assert got.stderr.strip() == (f"p2paid: cannot use the data dir {data}: it is on a "
                                  "read-only file system (copy it somewhere writable)")
