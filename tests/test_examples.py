"""The examples in examples/ run and do what their docstrings say.

An example runs as a script, so Python would import p2paid from wherever it is
installed; :func:`example_env` puts this checkout first, so that the examples run
against the code under test.

Every example is run with mDNS off and listening on 127.0.0.1 only (``--no-mdns
--listen 127.0.0.1:0``): tests send traffic only to the loopback interface (the
suite's multicast guard fails a test whose process, or a child of it, tries mDNS).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import Service

EXAMPLES = Path(__file__).parents[1] / "examples"
#: A short key fingerprint, as event lines show it beside a name.
FP = "[a-z2-7]{4}-[a-z2-7]{4}"
#: How every example runs in the tests: no mDNS, loopback only.
LOCAL_ONLY = ("--no-mdns", "--listen", "127.0.0.1:0")


def example_env() -> dict[str, str]:
    """The suite's environment with this checkout first on ``PYTHONPATH``."""
    paths = [str(EXAMPLES.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_example(name: str, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args, *LOCAL_ONLY],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=example_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_example_can_run_without_mdns_and_says_how() -> None:
    """Each example takes ``--no-mdns`` and ``--listen`` and documents them in its
    ``--help`` (argparse), so a test or a cautious user can keep it off the LAN."""
    examples = sorted(EXAMPLES.glob("*.py"))
    assert len(examples) >= 3
    for example in examples:
        done = subprocess.run([sys.executable, str(example), "--help"], capture_output=True,
                              text=True, timeout=60, check=False, env=example_env())
        assert done.returncode == 0, (example.name, done.stderr)
        for option in ("--no-mdns", "--listen"):
            assert option in done.stdout, (example.name, option, done.stdout)


def test_two_nodes_sync_and_see_the_claim() -> None:
    out = run_example("two_nodes.py")
    assert "Bo sees: ['Drinking water']" in out
    # Event lines name the member with its key fingerprint (names are not verified).
    assert re.search(rf"Bo \({FP}\) claimed 10 of need 'Drinking water'", out), out
    assert "Drinking water: 10 of 40 claimed" in out


def test_embedded_node_runs_beside_the_app_and_closes() -> None:
    out = run_example("embed_in_trio_app.py")
    assert re.search(rf"Desk \({FP}\) posted need 'Blankets' \(30 pcs\)", out), out
    assert "2 open need(s): Blankets (0/30), Baby formula (0/12)" in out
    assert out.rstrip().endswith("the store holds everything that was confirmed")


def _cli(data_dir: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def test_matchmaker_bot_matches_an_offer_to_open_needs(tmp_path: Path) -> None:
    """The bot (a node) learns a new offer from a peer node and prints the needs it
    could meet, most urgent first."""
    poster, bot_dir = tmp_path / "poster", tmp_path / "bot"
    _cli(poster, "init")
    _cli(bot_dir, "init")
    created = json.loads(_cli(poster, "board", "create", "Camp", "--as", "Amina", "--json"))
    _cli(poster, "need", "add", "Ride to the clinic", "--category", "transport",
         "--urgency", "high")
    _cli(poster, "need", "add", "Move boxes", "--category", "transport", "--urgency", "low")
    _cli(poster, "need", "add", "Rice", "--category", "food")
    _cli(bot_dir, "board", "join", created["invite"])
    node = subprocess.Popen([sys.executable, "-m", "p2paid", "--data-dir", str(poster), "run",
                             "--listen", "127.0.0.1:0", "--no-mdns"], stderr=subprocess.PIPE,
                            text=True)
    bot = None
    try:
        assert node.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = node.stderr.readline()
            if "listening on 127.0.0.1:" in line:
                port = line.rsplit("127.0.0.1:", 1)[1].split()[0]
        assert port is not None, "the poster's node did not start"
        bot = subprocess.Popen([sys.executable, str(EXAMPLES / "matchmaker_bot.py"),
                                str(bot_dir), "--peer", f"127.0.0.1:{port}", *LOCAL_ONLY],
                               stdout=subprocess.PIPE, text=True,
                               env={**example_env(), "PYTHONUNBUFFERED": "1"})
        assert bot.stdout is not None
        assert "matchmaker watching Camp" in bot.stdout.readline()
        time.sleep(2)  # synced and listening for events
        _cli(poster, "offer", "add", "Van with driver", "--category", "transport")
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lines.append(bot.stdout.readline())
            if "Move boxes" in lines[-1]:
                break
        text = "".join(lines)
        assert "offer" in text and "Van with driver" in text and "could meet" in text
        assert text.index("Ride to the clinic") < text.index("Move boxes")
        assert "Rice" not in text
    finally:
        for proc in (bot, node):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=15)


# ---------------------------------------------------------------------------- Ctrl-C, mistakes


def test_ctrl_c_stops_the_embedded_app_cleanly(tmp_path: Path) -> None:
    """SIGINT while the app runs: the app's nursery is cancelled, the node closes, exit
    status 0 and no traceback (not a BaseExceptionGroup of KeyboardInterrupt)."""
    app = Service([sys.executable, str(EXAMPLES / "embed_in_trio_app.py"), *LOCAL_ONLY],
                  tmp_path / "app.log", example_env())
    try:
        app.wait_for(r"\[board\] Desk .* posted need 'Blankets'")
        assert app.interrupt() == 0, app.output
    finally:
        app.kill()
    assert "Traceback" not in app.output and "[app] stopping" in app.output, app.output
    assert app.output.rstrip().endswith("the store holds everything that was confirmed")


def test_ctrl_c_stops_the_matchmaker_cleanly(tmp_path: Path) -> None:
    bot_dir = tmp_path / "bot"
    _cli(bot_dir, "init")
    _cli(bot_dir, "board", "create", "Camp")
    bot = Service([sys.executable, str(EXAMPLES / "matchmaker_bot.py"), str(bot_dir),
                   *LOCAL_ONLY], tmp_path / "bot.log", example_env())
    try:
        bot.wait_for("matchmaker watching Camp")
        assert bot.interrupt() == 0, bot.output
    finally:
        bot.kill()
    assert "Traceback" not in bot.output, bot.output
    assert bot.output.splitlines()[-1] == "matchmaker stopped"


def test_the_matchmaker_on_a_data_dir_without_a_board_says_so_in_one_line(
        tmp_path: Path) -> None:
    bot_dir = tmp_path / "bot"
    _cli(bot_dir, "init")
    done = subprocess.run([sys.executable, str(EXAMPLES / "matchmaker_bot.py"), str(bot_dir),
                           *LOCAL_ONLY], capture_output=True, text=True, timeout=60,
                          check=False, env=example_env())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"matchmaker: {bot_dir} has joined no board: run 'p2paid --data-dir {bot_dir} board "
        "join INVITE' first"]


def test_the_matchmaker_refuses_a_data_dir_a_node_runs_on_in_one_line(tmp_path: Path) -> None:
    """What ``except p2paid.P2paidError`` around ``open_node`` gives an application."""
    bot_dir = tmp_path / "bot"
    _cli(bot_dir, "init")
    _cli(bot_dir, "board", "create", "Camp")
    node = Service([sys.executable, "-m", "p2paid", "--data-dir", str(bot_dir), "run",
                    *LOCAL_ONLY], tmp_path / "node.log")
    try:
        node.wait_for("listening on 127.0.0.1:")
        done = subprocess.run([sys.executable, str(EXAMPLES / "matchmaker_bot.py"),
                               str(bot_dir), *LOCAL_ONLY], capture_output=True, text=True,
                              timeout=60, check=False, env=example_env())
    finally:
        node.interrupt()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"matchmaker: a p2paid node (pid {node.proc.pid}) is already running on {bot_dir}; "
        "stop it first, or give this one another --data-dir"]
