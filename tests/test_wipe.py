"""``p2paid wipe``, and several processes on one protected data dir.

Real processes: a node (``p2paid run``), the CLI beside it, a wipe killed with
SIGKILL at random moments. After a wipe nothing of the data dir can be read: with a
passphrase, once the key is erased (the first step) even if the rest is cut short.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from atrest_helpers import FAST, PASSPHRASE, Needles, found, write_passphrase
from cli_helpers import TIMEOUT, Service, cli_env, in_process, run

from p2paid.board.store import open_store
from p2paid.errors import P2paidError
from p2paid.storage import keystore
from p2paid.storage.atrest import Credentials, unlock_record
from p2paid.storage.protect import protect
from p2paid.storage.wipe import wipe

CREDS = Credentials(PASSPHRASE)
RUN = ["run", "--no-mdns", "--listen", "127.0.0.1:0"]
FAST_OPTS = ["--argon2-memory", "1", "--argon2-iterations", "1"]


def _session(data_dir: Path, *, protected: bool = True, items: int = 3) -> Needles:
    needles = Needles()
    with open_store(data_dir) as store:
        if protected:
            unlocked = protect(store.database, CREDS, FAST)
            assert unlocked.data_key is not None
            needles.add("data-dir key", unlocked.data_key)
            record = keystore.read_record(data_dir)
            assert record is not None
            needles.add("wrapped key", record.real)
        board = store.create_board("Riverside Mutual Aid Board", display_name="Amina Zaw Oo")
        for n in range(items):
            board.post_need(f"Insulin pens number {n}")
        board.save_snapshot()
        needles.add("node key", store.node_key.private_bytes())
        needles.add("secret", store.database.boards()[0].secret)
        needles.add("board name", "Riverside Mutual Aid Board")
        needles.add("title", "Insulin pens number 0")
    return needles


def _unreadable(data_dir: Path, needles: Needles) -> None:
    """Nothing of the data dir opens, and no needle is in any file left."""
    assert not keystore.key_path(data_dir).exists()
    if data_dir.exists():
        assert found(data_dir, needles) == {}
        with pytest.raises(P2paidError):
            open_store(data_dir, create=False, credentials=CREDS).close()


@pytest.mark.parametrize("protected", [True, False])
def test_wipe_leaves_nothing_readable(tmp_path: Path, protected: bool) -> None:
    data_dir = tmp_path / "d"
    needles = _session(data_dir, protected=protected)
    if not protected:
        assert "title" in found(data_dir, needles)
    report = wipe(data_dir)
    assert report.key_erased is protected and report.files >= 1
    assert not data_dir.exists()
    assert found(tmp_path, needles) == {}


def test_wipe_keeps_files_that_are_not_p2paids(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _session(data_dir)
    (data_dir / "notes.txt").write_text("mine")
    wipe(data_dir)
    assert [p.name for p in data_dir.iterdir()] == ["notes.txt"]


def test_wipe_stops_a_running_node_and_needs_no_passphrase(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    data_dir = tmp_path / "d"
    _session(data_dir)
    node = Service.p2paid([*RUN, "--data-dir", str(data_dir), "--passphrase-file",
                           str(write_passphrase(tmp_path / "pw"))], tmp_path / "node.log", env)
    try:
        node.wait_for(r"listening on|p2paid node")
        refused = run(["wipe", "--data-dir", str(data_dir)], env)
        assert refused.returncode == 1 and "confirm with --yes" in refused.stderr
        assert keystore.key_path(data_dir).exists()
        done = run(["wipe", "--yes", "--data-dir", str(data_dir)], env)
        assert done.returncode == 0, done.stderr
        assert "key is erased" in done.stdout and f"pid {node.proc.pid}" in done.stdout
        assert node.proc.wait(timeout=TIMEOUT) == 0
    finally:
        node.kill()
    assert not data_dir.exists()  # (the node's log, outside it, names the board)


def test_sigkill_right_after_the_key_is_erased_leaves_nothing_readable(tmp_path: Path) -> None:
    """The wipe is killed while it waits for the node to stop: the files are still
    there, and unreadable."""
    env = cli_env(tmp_path)
    data_dir = tmp_path / "d"
    needles = _session(data_dir)
    node = Service.p2paid([*RUN, "--data-dir", str(data_dir), "--passphrase-file",
                           str(write_passphrase(tmp_path / "pw"))], tmp_path / "node.log", env)
    try:
        node.wait_for(r"listening on|p2paid node")
        wiping = subprocess.Popen([sys.executable, "-m", "p2paid", "wipe", "--yes",
                                   "--data-dir", str(data_dir)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        assert wiping.stdout is not None
        assert "key is erased" in wiping.stdout.readline()
        wiping.send_signal(signal.SIGKILL)
        wiping.wait(timeout=TIMEOUT)
        # (killed before or after it sent the node SIGTERM: stop the node either way)
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(timeout=TIMEOUT)
    finally:
        node.kill()
    assert (data_dir / "p2paid.sqlite3").exists()  # (the deleting was cut short)
    _unreadable(data_dir, needles)


def test_sigkill_at_any_moment_of_a_wipe_leaves_all_or_nothing(tmp_path: Path) -> None:
    """Killed at a random moment, a wipe leaves either the whole data dir, readable
    with the passphrase, or nothing readable at all."""
    env = cli_env(tmp_path)
    rng = random.Random(13)
    outcomes = set()
    for attempt in range(6):
        data_dir = tmp_path / f"d{attempt}"
        needles = _session(data_dir, items=50)
        wiping = subprocess.Popen([sys.executable, "-m", "p2paid", "wipe", "--yes",
                                   "--data-dir", str(data_dir)], env=env,
                                  stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 1.2))
        wiping.send_signal(signal.SIGKILL)
        wiping.wait(timeout=TIMEOUT)
        if keystore.key_path(data_dir).exists():
            record = keystore.read_record(data_dir)
            assert record is not None
            unlock_record(record, CREDS)
            with open_store(data_dir, create=False, credentials=CREDS) as store:
                assert len(store.board().items()) == 50
            outcomes.add("intact")
        else:
            _unreadable(data_dir, needles)
            outcomes.add("wiped")
    assert "wiped" in outcomes


def test_the_cli_beside_a_running_node_with_a_passphrase(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    data_dir = tmp_path / "d"
    d = ["--data-dir", str(data_dir)]
    pw = write_passphrase(tmp_path / "pw")
    made = run(["init", *d, "--passphrase", "--new-passphrase-file", str(pw), *FAST_OPTS], env)
    assert made.returncode == 0 and "encrypted at rest" in made.stdout, made.stderr
    env["P2PAID_PASSPHRASE_FILE"] = str(pw)
    assert run(["board", "create", "Aid", *d], env).returncode == 0
    node = Service.p2paid([*RUN, *d], tmp_path / "node.log", env)
    try:
        node.wait_for(r"listening on")
        posted = run(["need", "add", "Tents for the camp", *d], env)
        assert posted.returncode == 0, posted.stderr
        node.wait_for(r"Tents for the camp")  # the node picked it up
        status = run(["status", "--json", *d], env)
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["node"]["running"] and state["node"]["protected"]
        assert "(protected" in run(["status", *d], env).stdout
        # the passphrase can change while the node runs; removing it needs the node stopped
        new = write_passphrase(tmp_path / "new", b"another passphrase")
        changed = run(["passphrase", "change", "--new-passphrase-file", str(new), *d], env)
        assert changed.returncode == 0 and "only the key file" in changed.stdout
        env["P2PAID_PASSPHRASE_FILE"] = str(new)
        busy = run(["passphrase", "remove", *d], env)
        assert busy.returncode == 1 and "already running" in busy.stderr, busy.stderr
        listed = run(["list", *d], env)
        assert "Tents for the camp" in listed.stdout, listed.stderr
        wrong = run(["list", *d, "--passphrase-file", str(pw)], env)
        assert wrong.returncode == 1
        assert wrong.stderr == "p2paid: wrong passphrase; nothing was changed\n"
    finally:
        assert node.interrupt() == 0
    removed = run(["passphrase", "remove", *d], env)
    assert removed.returncode == 0, removed.stderr
    del env["P2PAID_PASSPHRASE_FILE"]
    assert "NOT protected" in run(["status", *d], env).stdout
    assert "Tents for the camp" in run(["list", *d], env).stdout


def test_init_asks_twice_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    class Terminal:
        def isatty(self) -> bool:
            return True

    answers: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt: answers.pop(0))
    d = ["--data-dir", str(tmp_path / "d")]
    answers[:] = ["one", "two"]
    code, _, err = in_process(capsys, ["init", "--passphrase", *FAST_OPTS, *d])
    assert code == 1 and "the two passphrases differ" in err
    answers[:] = ["same words", "same words"]
    code, out, _ = in_process(capsys, ["init", "--passphrase", *FAST_OPTS, *d])
    assert code == 0 and "encrypted at rest" in out
    answers[:] = ["same words"]
    code, out, _ = in_process(capsys, ["status", *d])
    assert code == 0 and "(protected" in out and not answers


def test_a_systemd_credential_unlocks(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "d"
    _session(data_dir)
    creds = tmp_path / "credentials"
    creds.mkdir()
    write_passphrase(creds / "p2paid-passphrase")
    monkeypatch.delenv("P2PAID_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    code, out, err = in_process(capsys, ["list", "--data-dir", str(data_dir)])
    assert code == 0 and "Insulin pens number 0" in out, err
