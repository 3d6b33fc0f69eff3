"""End to end: the ``p2paid`` command, run as a subprocess, on two (or three) data dirs.

Every test runs ``python -m p2paid`` exactly as a user would, with ``HOME`` pointed
at a temporary dir so nothing touches the real per-user data dir. Independent
commands (``--help`` pages, the not-initialised checks) run in parallel to keep
the suite fast.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from automerge.core import ROOT, Document, ObjType

TIMEOUT = 60
DAY_MS = 86_400_000


def _env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "home" / ".local" / "share")
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def _run(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2paid", *argv], capture_output=True,
                          text=True, env=dict(env), timeout=TIMEOUT)


def _run_parallel(
    argvs: Sequence[Sequence[str]], env: Mapping[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at once; results in the order given."""
    procs = [
        (argv, subprocess.Popen([sys.executable, "-m", "p2paid", *argv], env=dict(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for argv in argvs
    ]
    out = []
    for argv, p in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(list(argv), p.returncode, stdout, stderr))
    return out


def _one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Status 1, nothing on stdout, exactly one ``p2paid: ...`` line on stderr."""
    assert done.returncode == 1, (done.args, done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", (done.args, done.stdout)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2paid: "), (done.args, done.stderr)
    for needle in needles:
        assert needle in lines[0], (done.args, lines[0], needle)


@dataclass
class Node:
    """One data dir driven through the CLI."""

    data_dir: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(["--data-dir", str(self.data_dir), *args], self.env)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fail(self, *args: str, needles: Sequence[str] = ()) -> str:
        done = self.run(*args)
        _one_line_error(done, *needles)
        return done.stderr.strip()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path)


def _node(tmp_path: Path, env: dict[str, str], name: str) -> Node:
    node = Node(tmp_path / name, env)
    assert "node key fingerprint" in node.ok("init")
    return node


def _prefix(posted_line: str, kind: str) -> str:
    """The 8-character id prefix from ``posted need abcd1234: Title``."""
    m = re.fullmatch(rf"posted {kind} ([0-9a-f]{{8}}): .+", posted_line.strip())
    assert m, posted_line
    return m.group(1)


def _automerge_strings(doc: Document, obj: Any = ROOT) -> list[str]:
    """Every string value reachable from ``obj`` in a loaded Automerge document."""
    out: list[str] = []
    for value, oid in doc.values(obj):
        if isinstance(value, ObjType):
            if value == ObjType.Map:
                out.extend(_automerge_strings(doc, oid))
        elif isinstance(value[1], str):
            out.append(value[1])
    return out


# ---------------------------------------------------------------------------- scenario


def test_two_members_share_a_board_by_bundles(tmp_path: Path, env: dict[str, str]) -> None:
    """The README scenario: A creates a board and posts a need and an offer, B joins,
    imports A's bundle, claims 10 litres; A imports B's bundle (twice: the second time
    nothing is new) and sees the claim; A fulfils, edits and withdraws; B unclaims;
    exports in every format carry the data; ``board list``/``board invite`` agree."""
    a = _node(tmp_path, env, "a")
    created = a.json("board", "create", "Riverside mutual aid", "--as", "Amina")
    assert created["name"] == "Riverside mutual aid"
    invite = created["invite"]
    assert invite.startswith("p2paid:")
    need = _prefix(a.ok("need", "add", "Drinking water", "--category", "water", "--quantity",
                        "40", "--unit", "litres", "--location", "north camp",
                        "--urgency", "high"), "need")
    offer = _prefix(a.ok("offer", "add", "Van with driver, Tuesdays", "--category",
                         "transport"), "offer")
    table = a.ok("list")
    need_row = next(line for line in table.splitlines() if need in line)
    for text in ("NEED", " high ", "Drinking water", "40 litres", "water", "open", "north camp",
                 "Amina"):
        assert text in need_row, (text, need_row)
    offer_row = next(line for line in table.splitlines() if offer in line)
    assert "OFFER" in offer_row and "Van with driver, Tuesdays" in offer_row
    assert "transport" in offer_row
    a_bundle = tmp_path / "a.p2paid"
    assert a.ok("bundle", "export", str(a_bundle)).strip() == f"wrote 3 envelopes to {a_bundle}"

    b = _node(tmp_path, env, "b")
    assert "joined board 'Riverside mutual aid'" in b.ok("board", "join", invite, "--as", "Bo")
    assert b.ok("bundle", "import", str(a_bundle)).strip() == (
        "Riverside mutual aid: 3 accepted, 0 already had, 0 rejected")
    items = {i["id"][:8]: i for i in b.json("list")}
    assert set(items) == {need, offer}
    n = items[need]
    assert (n["kind"], n["title"], n["category"], n["quantity"], n["unit"], n["location"],
            n["urgency"], n["status"], n["author_name"]) == (
        "need", "Drinking water", "water", 40, "litres", "north camp", "high", "open",
        "Amina")
    assert items[offer]["kind"] == "offer" and items[offer]["category"] == "transport"
    assert n["board"] == created["board"]

    assert b.ok("claim", need, "--quantity", "10", "--note", "from the well").strip() == (
        f"claimed 10 of need {need}: Drinking water")
    shown = b.ok("show", need)
    assert "40 litres  (10 claimed)" in shown and "from the well" in shown
    assert b.json("show", need)["claimed_quantity"] == 10
    b.fail("edit", need, "--title", "mine now", needles=["only its author can change it"])
    b.fail("fulfil", need, needles=["only its author"])
    b_bundle = tmp_path / "b.p2paid"
    assert "wrote 5 envelopes" in b.ok("bundle", "export", str(b_bundle))

    assert a.ok("bundle", "import", str(b_bundle)).strip() == (
        "Riverside mutual aid: 2 accepted, 3 already had, 0 rejected")
    assert a.ok("bundle", "import", str(b_bundle)).strip() == (
        "Riverside mutual aid: 0 accepted, 5 already had, 0 rejected")
    shown = a.ok("show", need)
    bo_key = b.json("board", "list")["boards"][0]["author_fingerprint"]
    assert "(10 claimed)" in shown and f"10 by Bo ({bo_key[:9]}) on " in shown
    assert "from the well" in shown
    [claim] = a.json("show", need)["claims"]
    assert (claim["author_name"], claim["quantity"], claim["status"]) == ("Bo", 10, "active")
    a.fail("claim", need, needles=["cannot claim your own"])

    assert a.ok("fulfil", need).strip() == f"need {need} is now fulfilled"
    assert [i["id"][:8] for i in a.json("list", "--status", "fulfilled")] == [need]
    assert [i["id"][:8] for i in a.json("list", "--status", "open")] == [offer]
    assert [i["id"][:8] for i in a.json("list", "--offers")] == [offer]
    a.fail("fulfil", need, needles=["already fulfilled"])
    assert "updated need" in a.ok("edit", need, "--title", "Drinking water (bottled)",
                                  "--quantity", "50")
    edited = a.json("show", need)
    assert (edited["title"], edited["quantity"], edited["unit"]) == (
        "Drinking water (bottled)", 50, "litres")
    assert a.ok("withdraw", need).strip() == f"need {need} is now withdrawn"
    b.fail("claim", offer, "--board", "nonexistent", needles=["nonexistent"])

    assert b.ok("unclaim", need).strip() == f"cancelled 1 claim on need {need}"
    assert b.json("show", need)["claims"] == []
    b.fail("unclaim", need, needles=["no active claim"])
    b.ok("bundle", "export", str(b_bundle))
    assert "1 accepted" in a.ok("bundle", "import", str(b_bundle))
    final = a.json("show", need)
    assert (final["status"], final["claims"], final["claimed_quantity"]) == ("withdrawn", [], 0)

    # Exports.
    out_json, out_csv, out_am = (tmp_path / f"export.{x}" for x in ("json", "csv", "automerge"))
    a.ok("export", "--format", "json", "-o", str(out_json))
    exported = json.loads(out_json.read_text())
    assert exported["name"] == "Riverside mutual aid"
    assert {i["title"] for i in exported["items"]} == {"Drinking water (bottled)",
                                                       "Van with driver, Tuesdays"}
    assert json.loads(a.ok("export"))["items"] == exported["items"]  # stdout, json default
    a.ok("export", "--format", "csv", "-o", str(out_csv))
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert {r["title"]: r["status"] for r in rows} == {
        "Drinking water (bottled)": "withdrawn", "Van with driver, Tuesdays": "open"}
    a.ok("export", "--format", "automerge", "-o", str(out_am))
    doc = Document.load(out_am.read_bytes())
    strings = _automerge_strings(doc)
    assert "Drinking water (bottled)" in strings and "Van with driver, Tuesdays" in strings
    assert "from the well" in strings  # B's claim is part of the document too

    boards = a.json("board", "list")
    assert boards["carried"] == {}
    [row] = boards["boards"]
    assert (row["board"], row["name"], row["needs"], row["offers"], row["members"]) == (
        created["board"], "Riverside mutual aid", 1, 1, 2)
    assert a.ok("board", "invite").strip() == invite


def test_need_add_expires_in_14_days_by_default(tmp_path: Path, env: dict[str, str]) -> None:
    """``need add`` without ``--expires-days`` gives the need the documented default
    expiry of 14 days (the option's help says "needs default to 14", and the library's
    ``post_need`` does so); ``offer add`` gives none; ``--expires-days 3`` gives 3."""
    a = _node(tmp_path, env, "a")
    a.ok("board", "create", "Expiry board")
    need = a.json("need", "add", "Blankets")
    assert need["expires"] is not None, "a need posted by the CLI never expires"
    assert need["expires"] - need["created"] == 14 * DAY_MS
    assert a.json("offer", "add", "Spare tent")["expires"] is None
    short = a.json("need", "add", "Bread", "--expires-days", "3")
    assert short["expires"] - short["created"] == 3 * DAY_MS


# ---------------------------------------------------------------------------- carried boards


def test_bundle_for_unjoined_board_is_carried_then_applied(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A bundle for a board B has not joined is kept (``board list`` shows it as carried)
    and can be passed on by B to C; once B (and C) join, the items are readable."""
    a = _node(tmp_path, env, "a")
    created = a.json("board", "create", "Other camp")
    board_id = created["board"]
    a.ok("need", "add", "Insulin", "--category", "medical", "--urgency", "critical")
    bundle = tmp_path / "other.p2paid"
    a.ok("bundle", "export", str(bundle))

    b = _node(tmp_path, env, "b")
    assert b.ok("bundle", "import", str(bundle)).strip() == (
        f"not joined, carried for others: {board_id[:12]}: 1 accepted, 0 already had, "
        "0 rejected")
    assert b.json("board", "list") == {"boards": [], "carried": {board_id: 1}}
    text = b.ok("board", "list")
    assert f"{board_id[:12]}  (carried for others, not joined: 1 envelope)" in text
    assert "no boards joined yet" in b.ok("list")
    # B carries it on to C without being able to read it.
    relayed = tmp_path / "relayed.p2paid"
    assert "wrote 1 envelope" in b.ok("bundle", "export", str(relayed), "--board", board_id[:8])

    assert "1 item so far" in b.ok("board", "join", created["invite"])
    [item] = b.json("list")
    assert (item["title"], item["urgency"], item["board"]) == ("Insulin", "critical", board_id)
    assert b.json("board", "list")["carried"] == {}

    c = _node(tmp_path, env, "c")
    assert "1 accepted" in c.ok("bundle", "import", str(relayed))
    c.ok("board", "join", created["invite"])
    assert [i["title"] for i in c.json("list")] == ["Insulin"]


# ---------------------------------------------------------------------------- environment


def test_data_dir_from_environment(tmp_path: Path) -> None:
    """``P2PAID_DATA_DIR`` selects the data dir when ``--data-dir`` is absent (and nothing
    lands in the per-user default); ``--data-dir`` wins over it."""
    data_dir = tmp_path / "from-env"
    env = _env(tmp_path, {"P2PAID_DATA_DIR": str(data_dir)})
    init = _run(["init"], env)
    assert init.returncode == 0, init.stderr
    assert f"p2paid data dir: {data_dir}" in init.stdout
    created = _run(["board", "create", "Env board"], env)
    assert created.returncode == 0, created.stderr
    invite_lines = [ln for ln in created.stdout.splitlines() if ln.startswith("p2paid:")]
    assert len(invite_lines) == 1, created.stdout
    assert _run(["need", "add", "Candles"], env).returncode == 0
    listed = _run(["list", "--json"], env)
    assert [i["title"] for i in json.loads(listed.stdout)] == ["Candles"]
    assert (data_dir / "p2paid.sqlite3").exists()
    assert not (tmp_path / "home" / ".local" / "share" / "p2paid").exists()
    elsewhere = tmp_path / "elsewhere"
    _one_line_error(_run(["--data-dir", str(elsewhere), "list"], env), str(elsewhere), "init")


# ---------------------------------------------------------------------------- help and errors

#: Each command path and options its ``--help`` must mention.
HELP: dict[tuple[str, ...], tuple[str, ...]] = {
    (): ("--data-dir", "--version", "init", "board", "need", "offer", "list", "show", "claim",
         "unclaim", "edit", "fulfil", "withdraw", "reopen", "bundle", "export", "name"),
    ("init",): (),
    ("board",): ("create", "join", "list", "invite"),
    ("board", "create"): ("name", "--as", "--relay", "--json"),
    ("board", "join"): ("invite", "--as", "--json"),
    ("board", "list"): ("--json",),
    ("board", "invite"): ("--board", "--relay"),
    ("name",): ("name", "--board"),
    ("need",): ("add",),
    ("need", "add"): ("title", "--details", "--category", "--quantity", "--unit", "--location",
                      "--urgency", "--expires-days", "--board", "--json"),
    ("offer",): ("add",),
    ("offer", "add"): ("title", "--details", "--category", "--quantity", "--unit",
                       "--location", "--expires-days", "--board", "--json"),
    ("list",): ("--needs", "--offers", "--status", "--category", "--board", "--json"),
    ("show",): ("id", "--board", "--json"),
    ("claim",): ("id", "--quantity", "--note", "--board"),
    ("unclaim",): ("id", "--board"),
    ("edit",): ("id", "--title", "--details", "--category", "--quantity", "--no-quantity",
                "--unit", "--location", "--urgency", "--expires-days", "--board"),
    ("fulfil",): ("id", "--board"),
    ("withdraw",): ("id", "--board"),
    ("reopen",): ("id", "--board"),
    ("bundle",): ("export", "import"),
    ("bundle", "export"): ("file", "--board"),
    ("bundle", "import"): ("file", "--json"),
    ("export",): ("--format", "json", "csv", "automerge", "--output", "--board"),
    ("bench",): ("--quick", "--only", "--json"),
    ("relay", "list"): ("--json",),
    ("relay", "accept"): ("address", "--board"),
    ("relay", "reject"): ("address", "--board"),
    ("relay", "remove"): ("address", "--board"),
}


def test_help_of_every_command(tmp_path: Path, env: dict[str, str]) -> None:
    """``--help`` of the main command and of every subcommand exits 0, prints a usage
    line for that command and names its options."""
    paths = list(HELP)
    results = _run_parallel([[*path, "--help"] for path in paths], env)
    for path, done in zip(paths, results, strict=True):
        assert done.returncode == 0, (path, done.stderr)
        assert done.stderr == ""
        assert done.stdout.startswith(f"usage: {' '.join(('p2paid', *path))}"), (
            path, done.stdout[:80])
        for needle in HELP[path]:
            assert needle in done.stdout, (path, needle)
    version = _run(["--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("p2paid ")
    # An argument mistake is argparse's status 2 with a usage message.
    bad = _run(["need", "add", "x", "--category", "bogus"], env)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_commands_without_init_print_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """Every command that needs a store, run on a data dir that was never initialised,
    prints one clear line (naming 'init') and exits 1 -- and does not create the dir."""
    data_dir = tmp_path / "never-initialised"
    bundle = tmp_path / "x.p2paid"
    commands = [
        ["list"], ["list", "--json"], ["board", "list"], ["board", "create", "X"],
        ["board", "join", "p2paid:aaaa"], ["board", "invite"], ["name", "Ann"],
        ["need", "add", "Water"], ["offer", "add", "Van"], ["show", "abcd"],
        ["claim", "abcd"], ["unclaim", "abcd"], ["edit", "abcd", "--title", "t"],
        ["fulfil", "abcd"], ["withdraw", "abcd"], ["reopen", "abcd"],
        ["bundle", "export", str(bundle)], ["bundle", "import", str(bundle)], ["export"],
    ]
    results = _run_parallel([["--data-dir", str(data_dir), *c] for c in commands], env)
    for done in results:
        _one_line_error(done, "init", str(data_dir))
    assert not data_dir.exists()
    assert not bundle.exists()


def test_user_errors_are_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """Mistakes a user can make print one ``p2paid:`` line and exit 1, changing nothing:
    ambiguous board, unknown/short ids, a bad invite, joining twice, a damaged bundle."""
    a = _node(tmp_path, env, "a")
    first = a.json("board", "create", "First")
    a.ok("board", "create", "Second")
    a.fail("need", "add", "Water", needles=["several boards are joined", "--board"])
    need = _prefix(a.ok("need", "add", "Water", "--board", "First"), "need")
    assert a.ok("name", "Ann", "--board", "First").strip() == "on 'First' you now appear as 'Ann'"
    assert a.json("show", need)["author_name"] == "Ann"
    a.fail("show", "ffffffff", needles=["no need or offer"])
    a.fail("show", "abc", needles=["at least 4 characters"])
    assert json.loads(a.ok("show", need, "--json"))["title"] == "Water"  # found across boards
    a.fail("board", "join", "p2paid:not-an-invite")
    a.fail("board", "join", first["invite"], needles=["already joined"])
    damaged = tmp_path / "damaged.p2paid"
    a.ok("bundle", "export", str(damaged))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    a.fail("bundle", "import", str(damaged))
    a.fail("bundle", "import", str(tmp_path / "missing.p2paid"), needles=["missing.p2paid"])
    a.fail("need", "add", "Zero", "--board", "First", "--quantity", "0", needles=["quantity"])
    a.fail("need", "add", "bad\x01title", "--board", "First", needles=["control characters"])
    a.fail("edit", need, needles=["nothing to change"])
    a.ok("withdraw", need)
    assert a.ok("reopen", need).strip() == f"need {need} is now open"
    listed = a.json("list")
    assert [(i["title"], i["status"]) for i in listed] == [("Water", "open")]
