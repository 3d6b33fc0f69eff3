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


def _as_an_ordinary_user() -> list[str] | None:
    """A command prefix that runs a process without root's power over files (root
    keeps its uid but drops every capability), [] if we are not root, or None."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


_LIBRARY_CALLS = """
import sys, trio, p2paid
from p2paid.errors import FileError
from p2paid.relay.server import RelayOptions, serve_relay

shut = sys.argv[1]
mine = p2paid.open_store(sys.argv[2])
mine.create_board("Aid")

async def node():
    async with p2paid.open_node(shut + "/n", listen=None, mdns=False):
        pass

calls = {
    "open_store": lambda: p2paid.open_store(shut + "/d"),
    "open_store(create=False)": lambda: p2paid.open_store(shut + "/d", create=False),
    "open_node": lambda: trio.run(node),
    "serve_relay": lambda: trio.run(serve_relay, shut + "/r",
                                    RelayOptions(listen=("127.0.0.1", 0))),
    "export_bundle": lambda: mine.export_bundle(shut + "/aid.p2paid"),
    "import_bundle": lambda: mine.import_bundle(shut + "/aid.p2paid"),
}
for name, call in calls.items():
    try:
        call()
    except FileError as exc:
        ok = isinstance(exc.__cause__, PermissionError) and shut in str(exc)
        print(name, "ok" if ok else f"no cause or path: {exc!r}")
    except BaseException as exc:
        print(name, f"not a FileError: {exc!r}")
    else:
        print(name, "no error")
"""


def test_a_folder_that_cannot_be_searched_is_a_file_error_everywhere(tmp_path: Path) -> None:
    """Data dirs, relay data dirs and bundles inside a folder we may not look into:
    every library call raises FileError naming the path, the PermissionError as its
    cause (not a bare OSError from a check made before the real work)."""
    prefix = _as_an_ordinary_user()
    if prefix is None:
        pytest.skip("needs setpriv to drop root's capabilities")
    shut = tmp_path / "shut"
    shut.mkdir(mode=0o000)
    try:
        got = subprocess.run([*prefix, sys.executable, "-c", _LIBRARY_CALLS, str(shut),
                              str(tmp_path / "mine")], capture_output=True, text=True,
                             timeout=60, check=False)
        assert got.returncode == 0, got.stderr
        results = dict(line.split(" ", 1) for line in got.stdout.splitlines())
        assert len(results) == 6 and set(results.values()) == {"ok"}, results
        cli = subprocess.run([*prefix, sys.executable, "-m", "p2paid", "--data-dir",
                              str(shut / "d"), "run", "--no-mdns", "--listen", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert cli.returncode == 1 and "Traceback" not in cli.stderr
        assert cli.stderr.strip() == (f"p2paid: cannot use the data dir {shut / 'd'}: "
                                      f"permission denied (see 'ls -ld {shut}')")
    finally:
        shut.chmod(0o700)


def test_export_to_a_missing_folder_or_a_folder_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with open_store(data) as store:
        store.create_board("Aid")
    missing = _cli("--data-dir", str(data), "export", "-o", str(tmp_path / "nope" / "a.json"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == (f"p2paid: cannot write the export into "
                                      f"{tmp_path / 'nope'}: it does not exist")
    folder = _cli("--data-dir", str(data), "export", "-o", str(tmp_path))
    assert folder.stderr.strip() == (f"p2paid: cannot write the export to {tmp_path}: "
                                     "it is a folder, not a file")
