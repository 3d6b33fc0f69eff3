"""End to end: what the ``p2paid`` command shows when a member is hostile (finding 11).

Ana creates a board and posts a need for 40 litres. Bo joins with the CLI under
the name "Ana" and posts text that spreadsheets run as formulas. A third member
writes by hand what the CLI would refuse: a need with a right-to-left override in
its title, a relay hint with one in its host, and a claim of 10^9 litres. Ana
imports both bundles with the CLI; every command runs as a subprocess, as a user
would run it (``HOME`` in a temporary dir).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
from hostile_helpers import HostileMember

import p2paid
from p2paid.board.bundle import write_bundle
from p2paid.core.identity import short_fingerprint

TIMEOUT = 60
HYPERLINK = '=HYPERLINK("http://198.51.100.1/x","details")'


class Cli:
    """One data dir driven through ``python -m p2paid``."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.data_dir = tmp_path / name
        self.env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
        self.env.update(HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "p2paid", "--data-dir",
                               str(self.data_dir), *args], capture_output=True, text=True,
                              env=self.env, timeout=TIMEOUT)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        _no_raw_controls(done.stdout + done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fail(self, *args: str, needles: Sequence[str] = ()) -> str:
        done = self.run(*args)
        assert done.returncode == 1 and done.stdout == "", (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("p2paid: "), done.stderr
        _no_raw_controls(done.stderr)
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]


def _no_raw_controls(text: str) -> None:
    raw = [hex(ord(c)) for c in text if c in "\u202a\u202b\u202c\u202d\u202e\x1b\u200b"]
    assert not raw, raw


def _hand_made_invite(secret: bytes, name: str) -> str:
    """An invite written byte by byte (SPEC 3.2), with any name."""
    body = b"\x01" + msgpack.packb([secret, name, []], use_bin_type=True)
    check = hashlib.sha256(b"p2paid invite\x00" + body).digest()[:4]
    return "p2paid:" + base64.b32encode(body + check).decode().rstrip("=").lower()


def test_impersonation_injection_and_over_claims_through_the_cli(tmp_path: Path) -> None:
    ana, bo = Cli(tmp_path, "ana"), Cli(tmp_path, "bo")
    ana.ok("init")
    created = ana.json("board", "create", "Riverside", "--as", "Ana")
    posted = ana.ok("need", "add", "Drinking water", "--quantity", "40", "--unit", "litres")
    need = re.fullmatch(r"posted need ([0-9a-f]{8}): .+", posted.strip()).group(1)  # type: ignore[union-attr]
    ana.fail("need", "add", "Water \u202eretaw", needles=["invisible formatting", "U+202E"])

    bo.ok("init")
    bo.ok("board", "join", created["invite"], "--as", "Ana")
    bo.ok("need", "add", HYPERLINK, "--location", "+1", "--details", "@SUM(1)")
    bo.ok("bundle", "export", str(tmp_path / "bo.p2paid"))

    with p2paid.open_store(tmp_path / "hostile") as store:
        hostile = HostileMember(store, created["invite"])
    hostile.post({"title": "Water \u202eretaw"})
    hostile.set_profile(relays="p2paid-relay://evil\u202e.example:7447/" + "a" * 52)
    shown_need = ana.json("show", need)
    hostile.claim(shown_need["author"], shown_need["id"], quantity=10**9)
    write_bundle(tmp_path / "hostile.p2paid", hostile.envelopes)
    ana.ok("bundle", "import", str(tmp_path / "bo.p2paid"))
    ana.ok("bundle", "import", str(tmp_path / "hostile.p2paid"))

    boards = ana.json("board", "list")["boards"]
    ana_key = boards[0]["author_fingerprint"]
    items = {i["title"]: i for i in ana.json("list")}
    assert set(items) == {"Drinking water", HYPERLINK}  # the override need is not shown
    mine, theirs = items["Drinking water"], items[HYPERLINK]
    assert mine["author_name"] == theirs["author_name"] == "Ana"
    assert mine["name_shared"] and theirs["name_shared"]
    assert mine["author_fingerprint"] == ana_key != theirs["author_fingerprint"]
    assert (mine["claimed_quantity"], mine["over_claimed"]) == (40, True)
    assert [(c["quantity"], c["counted_quantity"], c["over_claimed"])
            for c in mine["claims"]] == [(10**9, 40, True)]

    table = ana.ok("list")
    assert "retaw" not in table
    row = next(line for line in table.splitlines() if need in line)
    assert f"Ana ({ana_key[:9]}, name shared)" in row and "(40 claimed, over-claimed)" in row
    bo_row = next(line for line in table.splitlines() if "HYPERLINK" in line)
    assert f"Ana ({theirs['author_fingerprint'][:9]}, name shared)" in bo_row

    shown = ana.ok("show", need)
    assert f"by        Ana ({ana_key}, name shared)" in shown
    assert "another member shows the same name" in shown
    assert "40 litres  (40 claimed, over-claimed)" in shown
    assert (f"1000000000 by anonymous ({short_fingerprint(hostile.author)}) on " in shown
            and "[over-claimed: counts 40]" in shown)
    assert "1000000040" not in shown and "1000000000 claimed" not in shown
    assert "another member shows the same name" in ana.ok("board", "list")

    rows = list(csv.DictReader(io.StringIO(ana.ok("export", "--format", "csv"))))
    bo_csv = next(r for r in rows if r["author"] == theirs["author"])
    assert (bo_csv["title"], bo_csv["location"], bo_csv["details"]) == (
        "'" + HYPERLINK, "'+1", "'@SUM(1)")
    ana_csv = next(r for r in rows if r["title"] == "Drinking water")
    assert (ana_csv["claimed_quantity"], ana_csv["over_claimed"]) == ("40", "yes")

    listed = ana.ok("relay", "list")  # escaped (or, once hosts are checked, left out)
    assert "evil\u202e" not in listed
    ana.ok("bundle", "export", str(tmp_path / "ana.p2paid"))  # holds the hostile's too
    bo.ok("bundle", "import", str(tmp_path / "ana.p2paid"))
    bo.fail("claim", need, "--quantity", "1", needles=["fully claimed"])
    assert bo.json("show", need)["claimed_quantity"] == 40

    evil_name = _hand_made_invite(os.urandom(32), "Riverside\u202e")
    ana.fail("board", "join", evil_name, needles=["board name", "U+202E"])
