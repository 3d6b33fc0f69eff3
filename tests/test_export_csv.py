"""``p2paid export --format csv``: what spreadsheets and HXL tools read.

The board is made by two members through the library (real SQLite files, a bundle
between them), exported by the ``p2paid`` command in a subprocess, and parsed back
with the ``csv`` module.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from cli_helpers import cli_env, run

import p2paid
from p2paid.cli.csvexport import COLUMNS, HXL_CORE_ATTRIBUTES, HXL_CORE_HASHTAGS

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
BOM = b"\xef\xbb\xbf"
README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Amina's data dir: a need with a quantity and two claims (one by Bo, one of her
    own offer's), a need without a quantity claimed by Bo, an offer, a title that a
    spreadsheet would run as a formula, and Burmese and Arabic text."""
    root = tmp_path_factory.mktemp("csv")
    with p2paid.open_store(root / "amina") as amina, p2paid.open_store(root / "bo") as bo:
        board = amina.create_board("Riverside mutual aid", display_name="Amina")
        water = board.post_need("Drinking water", category="water", quantity=40,
                                unit="litres", location="north camp", urgency="high")
        board.post_need("=HYPERLINK(\"http://x\")", details="@SUM(1)")
        board.post_need("ရေ သန့်", location="مخيم الشمال")
        tents = board.post_need("Tents")
        van = board.post_offer("Van with driver", category="transport")
        theirs = bo.join(board.invite(), display_name="Bo")
        bundle = root / "a.p2paid"
        amina.export_bundle(bundle)
        bo.import_bundle(bundle)
        theirs.claim(water.id, quantity=10, note="from the well")
        theirs.claim(tents.id, note="two family tents")
        theirs.claim(van.id, note="Tuesday")
        bo.export_bundle(bundle)
        amina.import_bundle(bundle)
    return root / "amina"


def _export(board_dir: Path, tmp_path: Path, *flags: str) -> bytes:
    out = tmp_path / "board.csv"
    done = run(["export", "--format", "csv", "-o", str(out), *flags, "--data-dir",
                str(board_dir)], cli_env(tmp_path))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return out.read_bytes()


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def test_csv_rows_items_then_their_claims(board_dir: Path, tmp_path: Path) -> None:
    data = _export(board_dir, tmp_path)
    assert data.startswith(BOM)  # so that Excel reads Burmese and Arabic as UTF-8
    header, *body = _rows(data)
    assert header == [name for name, _ in COLUMNS]
    rows = [dict(zip(header, r, strict=True)) for r in body]
    assert [r["record"] for r in rows].count("claim") == 3
    by_title = {r["title"]: r for r in rows if r["record"] != "claim"}
    water, van = by_title["Drinking water"], by_title["Van with driver"]
    assert (water["record"], water["quantity"], water["unit"], water["claimed_quantity"],
            water["over_claimed"], water["urgency"], water["status"], water["location"]) == (
        "need", "40", "litres", "10", "no", "high", "open", "north camp")
    assert water["board"] == "Riverside mutual aid" and water["item"] == water["id"]
    # Fields that do not apply are empty: an offer has no urgency or expiry, an item
    # without a quantity no claimed quantity, an item no note.
    assert (van["record"], van["urgency"], van["expires"], van["quantity"],
            van["claimed_quantity"], van["over_claimed"], van["note"]) == (
        "offer", "", "", "", "", "", "")
    for r in rows:
        for name in ("created", "updated"):
            assert ISO_UTC.fullmatch(r[name]), (name, r[name])
        assert r["expires"] == "" or ISO_UTC.fullmatch(r["expires"])
    assert ISO_UTC.fullmatch(water["expires"])
    # Each claim row follows its item: who, how many, the note, when.
    at = rows.index(water)
    claim = rows[at + 1]
    assert (claim["record"], claim["item"], claim["title"], claim["author_name"],
            claim["quantity"], claim["unit"], claim["claimed_quantity"], claim["note"],
            claim["status"], claim["category"], claim["urgency"]) == (
        "claim", water["id"], "Drinking water", "Bo", "10", "litres", "10", "from the well",
        "active", "", "")
    assert claim["id"] != water["id"] and claim["created"] >= water["created"]
    tents_claim = rows[rows.index(by_title["Tents"]) + 1]
    assert (tents_claim["quantity"], tents_claim["claimed_quantity"],
            tents_claim["note"]) == ("", "", "two family tents")
    # Formula-like cells are escaped; other scripts come through unchanged.
    assert "'=HYPERLINK(\"http://x\")" in by_title and any(
        r["details"] == "'@SUM(1)" for r in rows)
    assert by_title["ရေ သန့်"]["location"] == "مخيم الشمال"
    for r in rows:
        for name, cell in r.items():
            assert not cell.startswith(tuple("=+-@\t\r")), (name, cell)


def test_no_bom_and_stdout(board_dir: Path, tmp_path: Path) -> None:
    data = _export(board_dir, tmp_path, "--no-bom")
    assert data.startswith(b"board,record,id,")
    done = run(["export", "--format", "csv", "--data-dir", str(board_dir)], cli_env(tmp_path))
    assert done.returncode == 0 and done.stdout.startswith("\ufeffboard,record,")


def _parse_tag(tag: str) -> tuple[str, list[str]]:
    m = re.fullmatch(r"(#[a-z][a-z0-9_]*)((?:\+[a-z][a-z0-9_]*)*)", tag)
    assert m, tag
    return m.group(1), [f"+{a}" for a in m.group(2).split("+")[1:]]


def test_hxl_row_uses_only_core_hashtags_and_attributes(board_dir: Path,
                                                        tmp_path: Path) -> None:
    rows = _rows(_export(board_dir, tmp_path, "--hxl"))
    header, tags = rows[0], rows[1]
    assert header == [name for name, _ in COLUMNS] and len(tags) == len(header)
    used = [t for t in tags if t]
    assert len(used) >= 12
    for tag in used:
        hashtag, attributes = _parse_tag(tag)
        assert hashtag in HXL_CORE_HASHTAGS, tag
        assert all(a in HXL_CORE_ATTRIBUTES for a in attributes), tag
    assert dict(zip(header, tags, strict=True))["title"] == "#item+name"
    assert all(r[1] in ("need", "offer", "claim") for r in rows[2:])  # data below the tags
    # Without --hxl the data follows the header directly.
    assert _rows(_export(board_dir, tmp_path))[1][1] in ("need", "offer")


def test_core_lists_match_the_hxl_dictionary_and_the_readme_documents_the_tags() -> None:
    """A spot check of the cited lists (HXL 1.1: 44 hashtags), and every tag the
    export writes is in the README's table, next to its column."""
    assert len(HXL_CORE_HASHTAGS) == 44 and len(HXL_CORE_ATTRIBUTES) == 53
    assert {"#item", "#sector", "#loc", "#severity", "#status", "#date", "#org",
            "#contact", "#meta"} <= HXL_CORE_HASHTAGS
    assert "#date+created" not in {t for _, t in COLUMNS}  # +created is not core
    readme = README.read_text()
    for column, tag in COLUMNS:
        if tag:
            assert re.search(rf"`{column}`[^|\n]*\| `{re.escape(tag)}`", readme), (column, tag)
