"""``p2paid list``, ``status`` and ``peers`` as a coordinator uses them, end to end.

Boards are filled through the library on real SQLite files (fast), then read with
the ``p2paid`` command in subprocesses: piped, and on a pseudo-terminal for the
pager and the default limit. Nodes and the relay run with mDNS off, on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import cli_env, run

import p2paid
from p2paid.cli.width import ELLIPSIS, display_width, graphemes

STARTUP = 30.0
#: A stand-in pager: copies what it is given into the file named by its argument.
FAKE_PAGER = "import shutil, sys; shutil.copyfileobj(sys.stdin, open(sys.argv[1], 'w'))"


def _ok(argv: list[str], env: dict[str, str]) -> str:
    done = run(argv, env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done.stderr)
    return done.stdout


def _post_distinct(board: p2paid.Board, kind: str, title: str, **fields: object) -> str:
    """Post, one millisecond after the previous post at least (so "newest" is defined)."""
    time.sleep(0.002)
    post = board.post_need if kind == "need" else board.post_offer
    return post(title, **fields).id  # type: ignore[arg-type]


def test_list_shows_what_a_coordinator_needs_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        b = store.create_board("Camp", display_name="Amina")
        ids = {
            "low": _post_distinct(b, "need", "low, oldest", urgency="low"),
            "critical": _post_distinct(b, "need", "critical", urgency="critical"),
            "offer": _post_distinct(b, "offer", "an offer"),
            "normal": _post_distinct(b, "need", "normal, newer than the offer"),
            "fulfilled": _post_distinct(b, "need", "high but fulfilled", urgency="high"),
            "withdrawn": _post_distinct(b, "need", "critical but withdrawn",
                                        urgency="critical"),
            "high": _post_distinct(b, "need", "high", urgency="high"),
        }
        b.fulfil(ids["fulfilled"])
        b.withdraw(ids["withdrawn"])
    expected = ["critical", "high", "normal", "offer", "low", "fulfilled", "withdrawn"]
    env = cli_env(tmp_path)
    d = ["--data-dir", str(data_dir)]
    listed = json.loads(_ok(["list", "--json", *d], env))
    assert [i["id"] for i in listed] == [ids[k] for k in expected]
    lines = _ok(["list", *d], env).splitlines()
    assert lines[0] == f"Camp ({b.id.hex()[:8]}): 7 items: 4 open needs, 1 open offer"
    assert lines[1].split() == ["KIND", "ID", "URGENCY", "TITLE", "AMOUNT", "CATEGORY",
                                "STATUS", "WHERE", "BY"]
    assert [line.split()[1] for line in lines[2:]] == [ids[k][:8] for k in expected]
    assert len(lines) == 2 + 7  # piped: every item, no pager
    # --limit, and a count of what matched the filter.
    limited = _ok(["list", "--needs", "--limit", "2", *d], env).splitlines()
    assert limited[0].endswith("6 items match: 4 open needs, 0 open offers; showing the "
                               "first 2 ('--all' for all, or '--limit N')")
    assert [line.split()[1] for line in limited[2:]] == [ids["critical"][:8], ids["high"][:8]]
    assert len(json.loads(_ok(["list", "--json", "--limit", "1", *d], env))) == 1
    one = _ok(["list", "--status", "fulfilled", *d], env).splitlines()
    assert one[0].endswith("1 item matches: 0 open needs, 0 open offers")


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run the command with its stdout on a pseudo-terminal; what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "p2paid", *argv], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.fixture
def sixty_items(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "big"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Big")
        with board.group():
            for n in range(60):
                board.post_need(f"item {n}")
    yield data_dir


def test_a_terminal_gets_a_pager_and_a_page_a_pipe_gets_everything(
        tmp_path: Path, sixty_items: Path) -> None:
    paged = tmp_path / "paged.txt"
    env = {**cli_env(tmp_path), "PAGER": f"{sys.executable} -c \"{FAKE_PAGER}\" {paged}"}
    d = ["--data-dir", str(sixty_items)]
    shown = _on_a_terminal(["list", *d], env)
    assert "item " not in shown  # it all went to the pager
    text = paged.read_text()
    assert "60 items: 60 open needs, 0 open offers; showing the first 50" in text
    assert len(re.findall(r"^NEED ", text, re.M)) == 50
    paged.unlink()
    # --all on the terminal: every item, still paged; --no-pager: straight to it.
    _on_a_terminal(["list", "--all", *d], env)
    assert len(re.findall(r"^NEED ", paged.read_text(), re.M)) == 60
    paged.unlink()
    direct = _on_a_terminal(["list", "--no-pager", *d], env)
    assert len(re.findall(r"^NEED ", direct, re.M)) == 50 and not paged.exists()
    assert len(re.findall(r"^NEED ", _on_a_terminal(["list", *d], {**env, "PAGER": "cat"}),
                          re.M)) == 50
    # Piped: never a pager, every item.
    piped = _ok(["list", *d], env)
    assert len(re.findall(r"^NEED ", piped, re.M)) == 60 and not paged.exists()


TITLES = [
    "Water for the family 👩\u200d👩\u200d👧\u200d👦 at the north gate, as soon as you can",
    "ရေ သန့် မြန်မာနိုင်ငံ ဆေးရုံ အတွက် ရေ လိုအပ်သည် ကျေးဇူးပြု၍ ကူညီပါ",
    "家族用のテントが必要です、できるだけ早く届けてください。よろしくお願いします",
    "Blankets 👍🏽👍🏽",
]


def test_columns_line_up_and_cuts_keep_whole_characters(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Camp", display_name="日本の友達")
        for title in TITLES:
            board.post_need(title, location="北キャンプ 🏕️", quantity=3, unit="個")
    lines = _ok(["list", "--data-dir", str(data_dir)], cli_env(tmp_path)).splitlines()[1:]
    heading, rows = lines[0], lines[1:]
    assert len(rows) == len(TITLES)
    start = heading.index("STATUS")
    for row in rows:
        # The status column starts at the same terminal column in every row.
        before = row[: row.index("  open  ") + 2]
        assert display_width(before) == start, row
        # The cut title is whole grapheme clusters of the original, then an ellipsis.
        title_cell = row[heading.index("TITLE"):]
        original = next(t for t in TITLES if t.startswith(title_cell.split(ELLIPSIS)[0][:4]))
        if ELLIPSIS in title_cell:
            kept = title_cell.split(ELLIPSIS)[0]
            assert "".join(graphemes(original)[: len(graphemes(kept))]) == kept, row


def test_status_counts_plurals_and_the_last_bundle_import(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with p2paid.open_store(a_dir) as a:
        board = a.create_board("Camp")
        with board.group():
            for n in range(1000):
                board.post_need(f"need {n}")
        board.post_offer("Van")
        invite = board.invite()
        bundle = tmp_path / "camp.p2paid"
        a.export_bundle(bundle)
    env = cli_env(tmp_path)
    _ok(["init", "--data-dir", str(b_dir)], env)
    _ok(["board", "join", invite, "--data-dir", str(b_dir)], env)
    before = _ok(["status", "--data-dir", str(b_dir)], env)
    assert "0 open needs, 0 open offers (0 items in all)" in before
    assert "last sync never" in before
    assert "connected to 0 peers and 0 relays" in before
    imported = _ok(["bundle", "import", str(bundle), "--data-dir", str(b_dir)], env)
    assert imported.strip() == "Camp: 1,001 accepted, 0 already had, 0 rejected"
    after = _ok(["status", "--data-dir", str(b_dir)], env)
    assert "1,000 open needs, 1 open offer (1,001 items in all), 1 author, " in after
    assert "1,001 envelopes" in after  # 1,000 needs and the offer
    assert re.search(r"last sync \d{4}-\d\d-\d\d \d\d:\d\d \(bundle import\)", after), after
    status = json.loads(_ok(["status", "--json", "--data-dir", str(b_dir)], env))
    [row] = status["boards"]
    assert row["last_sync_via"] == "bundle" and row["last_sync"] > 1.5e9


# ---------------------------------------------------------------------------- peers


def _wait_line(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, path.read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in {path}:\n{path.read_text(errors='replace')}")


def test_peers_and_status_tell_relays_from_peers(tmp_path: Path) -> None:
    """A node connected to a relay and to another node: ``peers`` marks which is which,
    and ``status`` counts them apart. The relay is started with ``--data-dir`` after
    the subcommand, as the issue that introduced relays wrote it."""
    env = {**cli_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    relay_dir, a_dir, b_dir = tmp_path / "relay", tmp_path / "a", tmp_path / "b"
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "p2paid", *argv], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        relay_log = tmp_path / "relay.log"
        relay = start(["relay", "--listen", "127.0.0.1:0", "--data-dir", str(relay_dir)],
                      relay_log)
        address = _wait_line(relay_log, r"relay address: (\S+)", relay).group(1)
        for data_dir in (a_dir, b_dir):
            _ok(["init", "--data-dir", str(data_dir)], env)
        invite = json.loads(_ok(["board", "create", "Camp", "--json", "--data-dir",
                                 str(a_dir)], env))["invite"]
        _ok(["board", "join", invite, "--data-dir", str(b_dir)], env)
        _ok(["relay", "add", address, "--data-dir", str(a_dir)], env)
        b_log = tmp_path / "b.log"
        b = start(["run", "--no-mdns", "--listen", "127.0.0.1:0", "--data-dir", str(b_dir)],
                  b_log)
        port = _wait_line(b_log, r"listening on 127\.0\.0\.1:(\d+)", b).group(1)
        a = start(["run", "--no-mdns", "--no-listen", "--peer", f"127.0.0.1:{port}",
                   "--data-dir", str(a_dir)], tmp_path / "a.log")
        deadline = time.monotonic() + STARTUP
        kinds: list[str] = []
        while time.monotonic() < deadline and sorted(kinds) != ["peer", "relay"]:
            time.sleep(0.2)
            assert a.poll() is None, (tmp_path / "a.log").read_text()
            done = run(["peers", "--json", "--data-dir", str(a_dir)], env)
            kinds = [p["kind"] for p in json.loads(done.stdout)] if done.returncode == 0 else []
        assert sorted(kinds) == ["peer", "relay"], (tmp_path / "a.log").read_text()
        table = _ok(["peers", "--data-dir", str(a_dir)], env)
        assert sorted(line.split()[0] for line in table.splitlines()) == ["peer", "relay"]
        assert "connected to 1 peer and 1 relay" in _ok(["status", "--data-dir", str(a_dir)],
                                                        env)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
