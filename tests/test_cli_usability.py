"""The command line as a newcomer meets it: global options anywhere, help for every
option, one clear line for every argument mistake, names and validation.

Walks over every subcommand run in this process through ``p2paid.cli.main.main``
(see ``cli_helpers.py``); a few of the same cases, and everything about terminals
and processes, run as real subprocesses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cli_helpers import cli_env, command_paths, in_process, parser_at, run, run_parallel

import p2paid
from p2paid.cli.main import build_parser
from p2paid.relay.server import open_relay_db


@dataclass
class Setup:
    data_dir: Path
    need: str
    offer: str


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """A data dir with one board, one need and one offer (and no default data dir to
    fall back on: HOME is in tmp_path)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / ".local" / "share"))
    monkeypatch.delenv("P2PAID_DATA_DIR", raising=False)
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Camp", display_name="Amina")
        need = board.post_need("Water", quantity=40, unit="litres", urgency="high")
        offer = board.post_offer("Van")
    yield Setup(data_dir, need.id[:8], offer.id[:8])


# ---------------------------------------------------------------------------- help


def test_every_command_help_lists_the_global_options(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    paths = list(command_paths())
    assert len(paths) > 35 and ("relay", "token", "revoke") in paths
    for path in [(), *paths]:
        code, out, err = in_process(capsys, [*path, "--help"])
        assert code == 0 and err == "", (path, err)
        assert out.startswith(f"usage: {' '.join(('p2paid', *path))}"), (path, out[:80])
        for needle in ("global options (before or after the command)", "--data-dir DIR",
                       "--verbose", "--quiet", "--no-pager"):
            assert needle in out, (path, needle)


def test_help_mentions_data_dir_in_real_processes(tmp_path: Path) -> None:
    paths = [("list",), ("relay",), ("relay", "status"), ("board", "create"), ("run",),
             ("export",)]
    for path, done in zip(paths, run_parallel([[*p, "--help"] for p in paths],
                                              cli_env(tmp_path)), strict=True):
        assert done.returncode == 0 and "--data-dir" in done.stdout, (path, done.stderr)


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action._choices_actions
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield action


def test_every_positional_and_option_has_help_text() -> None:
    missing = [
        (" ".join(path) or "p2paid", action.dest)
        for path in [(), *command_paths()]
        for action in _actions(parser_at(path))
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert not missing, missing


def test_relay_help_does_not_look_as_if_an_action_were_required(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = in_process(capsys, ["relay", "--help"])
    assert code == 0
    usage = out.split("\n\n", 1)[0]
    first, second = usage.splitlines()[:2]
    assert first.startswith("usage: p2paid relay [--listen HOST:PORT]") and "ACTION" not in first
    assert second.strip().startswith("p2paid relay ACTION")
    assert "Without an ACTION: run a relay" in out
    assert "actions (optional; without one, the relay runs)" in out


# ---------------------------------------------------------------------------- globals


def test_global_options_before_or_after_the_command(setup: Setup,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    d = str(setup.data_dir)
    for argv in (["--data-dir", d, "list"], ["list", "--data-dir", d],
                 ["board", "list", "--data-dir", d], ["-q", "list", "--data-dir", d],
                 ["list", "--no-pager", "--data-dir", d, "--needs"]):
        code, out, err = in_process(capsys, argv)
        assert code == 0 and "Camp" in out, (argv, err)
    # After the command, the command's own value wins over one given before it.
    code, _, err = in_process(capsys, ["--data-dir", str(setup.data_dir.parent / "none"),
                                       "list", "--data-dir", d])
    assert code == 0, err
    code, _, err = in_process(capsys, ["-v", "list", "-q", "--data-dir", d])
    assert code == 2 and "cannot be used together" in err


# ---------------------------------------------------------------------------- bad arguments

#: Every command path with arguments that must be refused; ``{need}``/``{offer}`` are
#: id prefixes on the board of the data dir each runs on. ``run`` and ``relay`` check
#: their addresses before anything starts; what only a running one can find (a port in
#: use, a privileged port, the other's data dir) is tested in real processes below.
BAD: dict[tuple[str, ...], list[list[str]]] = {
    (): [[], ["bogus"], ["-v", "-q", "list"], ["--data-dir"]],
    ("init",): [["init", "extra"], ["init", "--passphrase", "--argon2-iterations", "0"],
                ["init", "--passphrase"]],
    ("board",): [["board"], ["board", "bogus"]],
    ("board", "create"): [["board", "create"], ["board", "create", ""],
                          ["board", "create", "X", "--relay", "nonsense"]],
    ("board", "join"): [["board", "join"], ["board", "join", "p2paid:not-an-invite"]],
    ("board", "list"): [["board", "list", "--bogus"]],
    ("board", "invite"): [["board", "invite", "--board", "nope"],
                          ["board", "invite", "--relay", "nonsense"]],
    ("name",): [["name"], ["name", "x" * 80]],
    ("need",): [["need"]],
    ("need", "add"): [["need", "add"], ["need", "add", "x", "--quantity", "abc"],
                      ["need", "add", "x", "--quantity", "0"],
                      ["need", "add", "x", "--urgency", "bogus"],
                      ["need", "add", "x", "--expires-days", "0"]],
    ("offer",): [["offer", "bogus"]],
    ("offer", "add"): [["offer", "add", "x", "--urgency", "high"],
                       ["offer", "add", "x", "--category", "bogus"]],
    ("list",): [["list", "--limit", "0"], ["list", "--limit", "5", "--all"],
                ["list", "--status", "bogus"], ["list", "--needs", "--offers"]],
    ("show",): [["show"], ["show", "ab"], ["show", "ffffffff"]],
    ("claim",): [["claim", "ffffffff"], ["claim", "{need}", "--quantity", "x"]],
    ("unclaim",): [["unclaim", "{need}"]],
    ("edit",): [["edit", "{offer}", "--urgency", "high"],
                ["edit", "{need}", "--quantity", "3", "--no-quantity"],
                ["edit", "{need}"], ["edit", "{need}", "--urgency", "bogus"]],
    ("fulfil",): [["fulfil"], ["fulfil", "ffffffff"]],
    ("withdraw",): [["withdraw", "ffffffff"]],
    ("reopen",): [["reopen", "{need}"]],
    ("bundle",): [["bundle"]],
    ("bundle", "export"): [["bundle", "export"], ["bundle", "export", "/nonexistent/dir/x"]],
    ("bundle", "import"): [["bundle", "import", "/nonexistent/x.p2paid"]],
    ("export",): [["export", "--format", "bogus"], ["export", "--hxl"],
                  ["export", "--format", "json", "--no-bom"]],
    ("run",): [["run", "--max-connections", "0"], ["run", "--max-per-address", "-1"],
               ["run", "--max-connections", "many"], ["run", "--peer", "::::"],
               ["run", "--listen", "foo"], ["run", "--listen", "::1:0"],
               ["run", "--listen", "999.1.1.1:5"], ["run", "--listen", ""],
               ["run", "--listen", "127.0.0.1:99999"], ["run", "--listen", "[::1"],
               ["run", "--peer", "host:x"], ["run", "--peer", "2001:db8::5"],
               ["run", "--web", "foo"], ["run", "--web", "127.0.0.1:99999"]],
    ("peers",): [["peers"], ["peers", "--bogus"]],
    ("status",): [["status", "--bogus"]],
    ("relay",): [["relay", "--max-connections", "-1"], ["relay", "--rate-kib", "0"],
                 ["relay", "--max-board-mib", "-5"], ["relay", "--quota-key-mib", "nan"],
                 ["relay", "--max-per-address", "0"], ["relay", "--public", ""],
                 ["relay", "--public", "bad host:99"], ["relay", "--listen", "999.1.1.1:5"],
                 ["relay", "--listen", "foo"], ["relay", "--listen", "::1:0"],
                 ["relay", "--listen", "localhost:x"], ["relay", "--public", "[::1"],
                 ["relay", "--metrics", "foo:9447"], ["relay", "--metrics", "127.0.0.1"]],
    ("relay", "status"): [["relay", "status"]],  # a node's data dir, not a relay's
    ("relay", "add"): [["relay", "add", "not-an-address"]],
    ("relay", "remove"): [["relay", "remove", "not-an-address"]],
    ("relay", "list"): [["relay", "list", "--bogus"]],
    ("relay", "accept"): [["relay", "accept", "not-an-address"]],
    ("relay", "reject"): [["relay", "reject", "not-an-address"]],
    ("relay", "token"): [["relay", "token"]],
    ("relay", "token", "create"): [["relay", "token", "create"]],  # a node's data dir
    ("relay", "token", "list"): [["relay", "token", "list", "--bogus"]],
    ("relay", "token", "revoke"): [["relay", "token", "revoke", "nope"]],
    ("relay", "migrate"): [["relay", "migrate"], ["relay", "migrate", "--store", "mysql://x"]],
    ("relay", "key"): [["relay", "key"]],
    ("relay", "key", "export"): [["relay", "key", "export"]],  # a node's data dir
    ("bench",): [["bench", "--only", "bogus"], ["bench", "--only", ","]],
    ("web",): [["web"], ["web", "bogus"]],
    ("web", "invite"): [["web", "invite"], ["web", "invite", "--uses", "0"],
                        ["web", "invite", "--expires", "soon"],
                        ["web", "invite", "--url", "http://10.0.0.1:8080", "-o", "p.jpg"],
                        ["web", "invite", "--revoke", "nothing"]],
    ("web", "pair"): [["web", "pair"], ["web", "pair", "--as-me"]],  # no node serves it
    ("web", "invites"): [["web", "invites", "--bogus"]],
    ("web", "devices"): [["web", "devices", "--bogus"]],
    ("web", "revoke"): [["web", "revoke"], ["web", "revoke", "nothing"]],
    # the data dir has no passphrase, and there is no terminal to ask for a new one on
    ("passphrase",): [["passphrase"], ["passphrase", "bogus"]],
    ("passphrase", "set"): [["passphrase", "set"], ["passphrase", "set", "--argon2-memory", "0"],
                            ["passphrase", "set", "--new-passphrase-file", "/nonexistent"]],
    ("passphrase", "change"): [["passphrase", "change"]],
    ("passphrase", "remove"): [["passphrase", "remove"]],
    ("passphrase", "duress"): [["passphrase", "duress"], ["passphrase", "duress", "--clear"]],
    ("wipe",): [["wipe"], ["wipe", "--bogus"]],  # (no --yes, and no terminal to ask on)
}


def test_the_walk_covers_every_command() -> None:
    assert set(BAD) == {(), *command_paths()}


def test_every_command_refuses_bad_arguments_in_one_line(
        setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traceback, a non-zero status, and exactly one line on stderr, for every
    mistake of :data:`BAD`; nothing changes on the board."""

    def no_event_loop(*args: object) -> None:
        raise AssertionError("a refused 'run' or 'relay' started one")

    monkeypatch.setattr(trio, "run", no_event_loop)
    fill = {"{need}": setup.need, "{offer}": setup.offer}
    before = p2paid.open_store(setup.data_dir).board().items()
    for cases in BAD.values():
        for case in cases:
            argv = [fill.get(a, a) for a in case]
            code, out, err = in_process(capsys, [*argv, "--data-dir", str(setup.data_dir)]
                                        if argv and argv != ["--data-dir"] else argv)
            assert code != 0, (argv, out, err)
            assert "Traceback" not in out + err, (argv, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("p2paid"), (argv, err)
    with p2paid.open_store(setup.data_dir) as store:
        assert store.board().items() == before


def test_validation_mistakes_in_real_processes(setup: Setup, tmp_path: Path) -> None:
    """The refusals the issue names, each one line and a non-zero status as a user
    sees them."""
    d = str(setup.data_dir)
    cases = {
        ("edit", setup.offer, "--urgency", "high"): "offers have no urgency",
        ("edit", setup.need, "--quantity", "3", "--no-quantity"): "not allowed with",
        ("relay", "--max-connections", "-1"): "must be at least 1",
        ("relay", "--rate-kib", "0"): "greater than 0",
        ("run", "--max-connections", "0"): "must be at least 1",
        ("bench", "--only", "bogus"): "no benchmark called 'bogus'",
        ("list", "--limit", "0"): "must be at least 1",
    }
    results = run_parallel([[*argv, "--data-dir", d] for argv in cases], cli_env(tmp_path))
    for (argv, needle), done in zip(cases.items(), results, strict=True):
        assert done.returncode != 0 and done.stdout == "", (argv, done.stdout)
        assert "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert needle in line, (argv, line)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on itself (so a run on it exits at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_run_and_relay_refuse_addresses_in_one_line(setup: Setup, tmp_path: Path,
                                                    held_port: int) -> None:
    """The mistakes the issue names, as a user meets them: one line, "p2paid: ..." or
    argparse's "p2paid run: ...", status 2 for an address that is not one and 1 for one
    that cannot be used; no traceback, no false "port 7446 is taken"."""
    node = ["--data-dir", str(setup.data_dir)]
    relay_dir = tmp_path / "relay"
    open_relay_db(relay_dir).close()
    relay = ["--data-dir", str(relay_dir)]
    # (the cases run at once: each that gets as far as locking its data dir has its own)
    other_relay_dir = tmp_path / "relay2"
    open_relay_db(other_relay_dir).close()
    other_relay = ["--data-dir", str(other_relay_dir)]
    held = f"127.0.0.1:{held_port}"
    in_use = f"p2paid: port {held_port} on 127.0.0.1 is in use"
    cases: dict[tuple[str, ...], tuple[int, str]] = {  # argv: (status, part of the line)
        ("run", "--listen", held, *node):
            (1, f"{in_use} (another p2paid run?); choose another with --listen HOST:PORT"),
        ("run", "--listen", "foo", *node): (2, "p2paid run: argument --listen: 'foo' is not "
                                               "an IP address: listen on one of this"),
        ("run", "--listen", "::1:0", *node): (2, "write an IPv6 address in brackets, then "
                                                 "the port: [::1]:0"),
        ("run", "--listen", "999.1.1.1:5", *node): (2, "'999.1.1.1' is neither an IPv4"),
        ("run", "--web", "foo", *node): (2, "p2paid run: argument --web: 'foo' is not an IP"),
        ("run", "--peer", "::::", *node): (2, "p2paid run: argument --peer: '::::': write "
                                              "an IPv6 address in brackets"),
        ("relay", "--listen", held, *relay):
            (1, f"{in_use} (another p2paid relay?); choose another with --listen HOST:PORT"),
        ("relay", "--listen", "127.0.0.1:0", "--metrics", held, *other_relay):
            (1, f"{in_use} (another relay's metrics?); choose another with --metrics"),
        ("relay", "--listen", "127.0.0.1:0", *node):
            (1, f"p2paid: {setup.data_dir} is a node's data dir; give the relay its own"),
        ("relay", "--public", "bad host:99", *relay):
            (2, "p2paid relay: argument --public: 'bad host': host names hold only"),
        ("relay", "--public", "", *relay): (2, "argument --public: the host is empty"),
    }
    results = run_parallel(list(cases), cli_env(tmp_path))
    for (argv, (status, needle)), done in zip(cases.items(), results, strict=True):
        assert "Traceback" not in done.stderr, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("p2paid"), (argv, done.stderr)
        assert needle in lines[0], (argv, lines[0])
        assert done.returncode == status and done.stdout == "", (argv, done)
        assert "is taken" not in done.stderr and "free port" not in done.stderr, argv


def _without_net_bind_service() -> tuple[list[str], int] | str:
    """How to run a process that may not listen on privileged ports, and such a port;
    or why that cannot be done here."""
    first = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if first <= 1:
        return "every port is unprivileged on this machine (ip_unprivileged_port_start)"
    if os.geteuid() != 0:
        return [], first - 1
    if shutil.which("setpriv") is None:
        return "running as root, and setpriv (util-linux) is missing to drop the capability"
    # root without CAP_NET_BIND_SERVICE is refused a privileged port as any other user is
    prefix = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service"]
    return prefix, first - 1


def test_a_privileged_port_as_non_root_is_one_line(setup: Setup, tmp_path: Path) -> None:
    how = _without_net_bind_service()
    if isinstance(how, str):
        pytest.skip(how)
    prefix, port = how
    relay_dir = tmp_path / "relay"
    open_relay_db(relay_dir).close()
    for argv, data_dir in ((["run", "--no-mdns"], setup.data_dir), (["relay"], relay_dir)):
        done = subprocess.run([*prefix, sys.executable, "-m", "p2paid", *argv, "--listen",
                               f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                              capture_output=True, text=True, env=cli_env(tmp_path),
                              timeout=60, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (argv, done.stderr)
        assert done.stderr.strip().splitlines() == [
            f"p2paid: port {port} is privileged (only root may listen below {port + 1}); "
            f"choose a port from {port + 1} up with --listen HOST:PORT"], argv


# ---------------------------------------------------------------------------- names


def test_an_empty_name_means_anonymous(setup: Setup, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    d = ["--data-dir", str(setup.data_dir)]
    code, out, err = in_process(capsys, ["name", "", *d])
    assert code == 0, err
    assert "you now appear as anonymous (key " in out and "''" not in out
    code, out, _ = in_process(capsys, ["show", setup.need, "--json", *d])
    assert '"author_name": ""' in out
    code, out, _ = in_process(capsys, ["name", "Amina", *d])
    assert out.strip() == "on 'Camp' you now appear as 'Amina'"


def test_offers_have_no_urgency_in_the_library_either(setup: Setup) -> None:
    with p2paid.open_store(setup.data_dir) as store:
        board = store.board()
        with pytest.raises(p2paid.UsageError, match="offers have no urgency"):
            board.edit(setup.offer, urgency="high")
        with pytest.raises(p2paid.UsageError, match="offers have no urgency"):
            board.post_offer("Tent", urgency="critical")
        assert board.post_offer("Tent", urgency="normal").urgency.value == "normal"
        assert board.edit(setup.need, urgency="critical").urgency.value == "critical"


def test_help_of_the_main_command_runs_as_a_program(tmp_path: Path) -> None:
    done = run(["--help"], cli_env(tmp_path))
    assert done.returncode == 0 and "global options" in done.stdout
    build_parser()  # builds without side effects (no data dir made)
    assert not (tmp_path / "home" / ".local" / "share" / "p2paid").exists()


def test_bench_help_names_every_benchmark() -> None:
    from p2paid.bench.main import BENCHMARKS

    [only] = [a for a in parser_at(["bench"])._actions if "--only" in a.option_strings]
    assert only.help is not None
    assert [name for name in BENCHMARKS if name not in only.help] == []


@pytest.mark.parametrize("argv", [
    ["relay", "status", "--store", "postgresql://nobody@127.0.0.1:1/x"],
    ["relay", "token", "list", "--store", "postgresql://nobody@127.0.0.1:1/x"],
    ["relay", "token", "--store", "postgresql://nobody@127.0.0.1:1/x", "list"],
])
def test_an_unreachable_cluster_database_is_one_line_at_once(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Nothing listens on 127.0.0.1:1: PostgreSQL's own reason, in one line, without the
    pool's 30 s of retries (and --store goes after 'token list' too)."""
    code, out, err = in_process(capsys, argv)
    assert code == 1 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2paid: cannot connect to"), err
