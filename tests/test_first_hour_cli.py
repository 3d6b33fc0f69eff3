"""Issue 9, a newcomer's first hour, through the real command in subprocesses: an
unreachable ``--peer`` or relay is said once and again when it comes back, and
``status`` shows it; ``status`` keeps the last live sync; a big sync is summarised
in ``run``'s log; bundle import and export show progress only when asked or on a
terminal, and Ctrl-C during an import says what was stored."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import cli_env, run

import p2paid
from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress

STARTUP = 60.0
LOCALHOST = "127.0.0.1"
#: More envelopes than one import batch (``IMPORT_BATCH``): an import of them takes
#: two batches, with a point to stop at between them.
BIG = 12_000


def _ok(argv: list[str], env: dict[str, str]) -> str:
    done = run(argv, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _held_port() -> socket.socket:
    """A port on 127.0.0.1 that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind((LOCALHOST, 0))
    return sock


class Procs:
    """Long-running ``p2paid`` children, their output in files; all stopped at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "p2paid", *argv], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path, cli_env(tmp_path))
    try:
        yield p
    finally:
        p.stop_all()


def _wait(what: str, check: object, proc: subprocess.Popen[bytes], log: Path) -> object:
    """Poll ``check()`` until it returns something true; fail if ``proc`` exits."""
    assert callable(check)
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')}")


def _status(data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    done = run(["status", "--json", "--data-dir", str(data_dir)], env)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def _targets(data_dir: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {t["address"]: t for t in _status(data_dir, env)["node"]["targets"]}


def test_an_unreachable_peer_and_relay_are_said_once_and_the_peer_again_when_back(
        tmp_path: Path, procs: Procs) -> None:
    """A node told of a peer and a relay that refuse connections says so once each at
    the default log level (however often it retries), and ``status`` shows both as
    unreachable with the error. Once a node listens on the peer's port, the log says
    it was reached again, ``status`` shows it connected, and after both nodes stop,
    ``status`` still shows the live sync as the board's last sync."""
    env = procs.env
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    peer_sock, relay_sock = _held_port(), _held_port()
    peer_port, relay_port = peer_sock.getsockname()[1], relay_sock.getsockname()[1]
    relay = str(RelayAddress(LOCALHOST, relay_port, NodeKey.generate().public))
    for d in (a_dir, b_dir):
        _ok(["init", "--data-dir", str(d)], env)
    invite = json.loads(_ok(["board", "create", "Camp", "--json", "--data-dir", str(a_dir)],
                            env))["invite"]
    _ok(["board", "join", invite, "--data-dir", str(b_dir)], env)
    _ok(["relay", "add", relay, "--data-dir", str(a_dir)], env)
    assert _status(b_dir, env)["boards"][0]["last_sync"] is None

    a, a_log = procs.start("a", ["run", "--no-mdns", "--no-listen", "--peer",
                                 f"{LOCALHOST}:{peer_port}", "--data-dir", str(a_dir)])
    peer_at, relay_at = f"{LOCALHOST}:{peer_port}", f"{LOCALHOST}:{relay_port}"

    def retried() -> bool:
        targets = _targets(a_dir, env)
        return all(int(targets.get(t, {}).get("attempts") or 0) >= 2
                   for t in (peer_at, relay_at))

    _wait("a retry of both targets", retried, a, a_log)
    targets = _targets(a_dir, env)
    assert targets[peer_at]["kind"] == "peer" and targets[relay_at]["kind"] == "relay"
    for t in (peer_at, relay_at):
        assert targets[t]["state"] == "unreachable"
        assert targets[t]["last_error"] == "connection refused"
        assert isinstance(targets[t]["since"], float)
    text = _ok(["status", "--data-dir", str(a_dir)], env)
    assert re.search(rf"^peer\s+{re.escape(peer_at)}\s+unreachable since \d\d:\d\d:\d\d "
                     r"\(connection refused, \d+ attempts\)$", text, re.M), text
    assert re.search(rf"^relay\s+{re.escape(relay_at)}\s+unreachable since ", text, re.M), text
    log_text = a_log.read_text()
    assert log_text.count(f"cannot reach peer {peer_at} (connection refused); retrying with "
                          "backoff") == 1, log_text
    assert log_text.count(f"cannot reach relay {relay_at} (connection refused); retrying "
                          "with backoff") == 1, log_text

    # The peer comes back: a node listens on its port.
    peer_sock.close()
    b, b_log = procs.start("b", ["run", "--no-mdns", "--listen", peer_at, "--data-dir",
                                 str(b_dir)])
    _wait("the peer reached again",
          lambda: re.search(rf"reached peer {re.escape(peer_at)} again after \d+ failed "
                            r"attempts", a_log.read_text()), a, a_log)
    _wait("the peer connected in status",
          lambda: _targets(a_dir, env)[peer_at]["state"] == "connected", a, a_log)
    assert re.search(rf"^peer\s+{re.escape(peer_at)}\s+connected since \d\d:\d\d:\d\d$",
                     _ok(["status", "--data-dir", str(a_dir)], env), re.M)
    _wait("b synced", lambda: re.search(r"board 'Camp': (in sync with|.* new envelope)",
                                        b_log.read_text()), b, b_log)
    procs.stop(a)
    procs.stop(b)
    relay_sock.close()
    log_text = a_log.read_text()
    assert log_text.count(f"cannot reach peer {peer_at}") == 1, log_text
    for data_dir in (a_dir, b_dir):
        status = _status(data_dir, env)
        assert status["node"]["running"] is False
        [board] = status["boards"]
        assert board["last_sync_via"] == "peer", status
        assert board["last_sync"] > time.time() - 600, status
        assert "last sync never" not in _ok(["status", "--data-dir", str(data_dir)], env)


def test_a_big_sync_is_summarised_and_small_changes_are_one_line_each(
        tmp_path: Path, procs: Procs) -> None:
    """A node that receives a board of 1,200 needs logs a summary, not a line per need,
    and never says that it dropped events; two needs posted afterwards are one line
    each."""
    env = procs.env
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with p2paid.open_store(a_dir) as store:
        board = store.create_board("Big", display_name="Amina")
        with board.group():
            for n in range(1200):
                board.post_need(f"need {n}")
        invite = board.invite()
    _ok(["init", "--data-dir", str(b_dir)], env)
    _ok(["board", "join", invite, "--data-dir", str(b_dir)], env)
    a, a_log = procs.start("a", ["run", "--no-mdns", "--listen", f"{LOCALHOST}:0",
                                 "--data-dir", str(a_dir)])
    port = _wait("a listening", lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                                  a_log.read_text()), a, a_log)
    assert isinstance(port, re.Match)
    b, b_log = procs.start("b", ["run", "--no-mdns", "--no-listen", "--peer",
                                 f"{LOCALHOST}:{port.group(1)}", "--data-dir", str(b_dir)])

    def synced_needs() -> int:
        return sum(int(n.replace(",", "")) for n in re.findall(
            r"Big: synced ([\d,]+) new needs", b_log.read_text()))

    _wait("the summary of 1,200 needs", lambda: synced_needs() == 1200, b, b_log)
    for n in range(2):
        _ok(["need", "add", f"tents {n}", "--data-dir", str(a_dir)], env)
    _wait("the two needs", lambda: all(re.search(
        rf"Big: Amina \(\S+\) posted need 'tents {n}' \(synced\)$", b_log.read_text(), re.M)
        for n in range(2)), b, b_log)
    text = b_log.read_text()
    assert len(text.splitlines()) < 30, text
    assert "behind" not in text and "need 17'" not in text, text
    assert re.search(r"board 'Big': [\d,]+ new envelopes from ", text), text
    assert synced_needs() == 1200, text


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bundle of one board with BIG needs (and the board's invite)."""
    home = tmp_path_factory.mktemp("big")
    with p2paid.open_store(home / "src") as store:
        board = store.create_board("Big", display_name="Amina")
        with board.group():
            for n in range(BIG):
                board.post_need(f"need {n}")
        store.export_bundle(home / "big.p2paid")
        return home / "big.p2paid", board.invite()


def _joined(tmp_path: Path, invite: str, env: dict[str, str]) -> Path:
    data_dir = tmp_path / "dest"
    _ok(["init", "--data-dir", str(data_dir)], env)
    _ok(["board", "join", invite, "--data-dir", str(data_dir)], env)
    return data_dir


def test_bundle_progress_shows_only_when_asked_or_on_a_terminal(
        tmp_path: Path, big_bundle: tuple[Path, str]) -> None:
    """Piped (as here), import and export print no progress; with P2PAID_PROGRESS=1
    they show counts up to the total on stderr, and stdout is the same."""
    bundle, invite = big_bundle
    env = cli_env(tmp_path)
    dest = _joined(tmp_path, invite, env)
    total = BIG + 1  # the needs, and the creator's first envelope
    forced = {**env, "P2PAID_PROGRESS": "1"}
    done = run(["bundle", "import", str(bundle), "--data-dir", str(dest)], forced)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Big: {BIG + 1:,} accepted, 0 already had, 0 rejected\n"
    assert f"importing: 0 of {BIG + 1:,} envelopes (0%)" in done.stderr
    assert f"importing: 10,000 of {BIG + 1:,} envelopes" in done.stderr
    assert f"importing: {BIG + 1:,} of {BIG + 1:,} envelopes (100%)" in done.stderr
    # The line is cleared ("\r" + erase to its end; text mode reads "\r" as "\n").
    assert done.stderr.endswith("\n\x1b[K")
    again = run(["bundle", "import", str(bundle), "--data-dir", str(dest)], env)
    assert again.returncode == 0 and again.stderr == ""
    out = tmp_path / "out.p2paid"
    done = run(["bundle", "export", str(out), "--data-dir", str(dest)], forced)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {total:,} envelopes to {out}\n"
    assert f"exporting: 1,000 of {total:,} envelopes" in done.stderr
    assert f"exporting: {total:,} of {total:,} envelopes (100%)" in done.stderr
    quiet = run(["bundle", "export", str(out), "--data-dir", str(dest)], env)
    assert quiet.returncode == 0 and quiet.stderr == ""
    off = run(["bundle", "export", str(out), "--data-dir", str(dest)],
              {**env, "P2PAID_PROGRESS": "0"})
    assert off.returncode == 0 and off.stderr == ""


def test_ctrl_c_during_an_import_says_what_was_stored_and_the_next_import_finishes(
        tmp_path: Path, big_bundle: tuple[Path, str]) -> None:
    """Ctrl-C while the first batch is being stored: the import stops after it, says
    how many envelopes of how many boards were stored, exits 130 without a
    traceback; importing again stores the rest and finds the first part there."""
    bundle, invite = big_bundle
    env = {**cli_env(tmp_path), "P2PAID_PROGRESS": "1"}
    dest = _joined(tmp_path, invite, env)
    proc = subprocess.Popen([sys.executable, "-m", "p2paid", "bundle", "import", str(bundle),
                             "--data-dir", str(dest)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = b""
    while b"importing: 0 of" not in seen:  # the file is checked; the first batch starts
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, seen
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stderr = (seen + err).decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert out == b""
    assert ("p2paid: interrupted: 10,000 envelopes of 1 board were stored; run the import "
            "again to finish; nothing is lost\n") in stderr
    assert "stopping after the envelopes being stored now" in stderr
    again = run(["bundle", "import", str(bundle), "--json", "--data-dir", str(dest)], env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["accepted"], result["already_had"]) == (BIG + 1 - 10_000, 10_000)
    assert f"{BIG:,} open needs" in _ok(["status", "--data-dir", str(dest)], env)
