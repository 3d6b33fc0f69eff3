"""The pairing poster: the QR code of the invite URL, its text escaped, three kinds."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import segno

from p2paid.errors import UsageError
from p2paid.web.poster import invite_url, poster_svg, write_poster

URL = invite_url("http://10.0.0.1:8080/", "Zm9vYmFyYmF6cXV4")


def test_the_svg_poster_draws_the_url_s_qr_code_and_escapes_the_board_name() -> None:
    svg = poster_svg(URL, "Riverside <&> camp", ["ar", "my"])
    root = ET.fromstring(svg)  # well-formed XML
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[0] == "Riverside <&> camp" and texts[1] == URL
    assert len(texts) == 5  # name, URL, Arabic, Burmese, English
    arabic = [t for t in root.iter("{http://www.w3.org/2000/svg}text")
              if t.get("{http://www.w3.org/XML/1998/namespace}lang") == "ar"]
    assert arabic and arabic[0].get("direction") == "rtl"
    path = next(root.iter("{http://www.w3.org/2000/svg}path")).get("d") or ""
    dark = sum(sum(row) for row in segno.make(URL, error="m").matrix)
    assert len(re.findall("M", path)) == dark  # one square per dark module


def test_the_url_names_the_pairing_page() -> None:
    assert URL == "http://10.0.0.1:8080/pair/Zm9vYmFyYmF6cXV4"


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                               (".svg", b"<?xml")])
def test_posters_of_each_kind(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = write_poster(tmp_path / f"poster{suffix}", URL, "Camp")
    assert out.read_bytes().startswith(magic)


def test_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="a poster is"):
        write_poster(tmp_path / "poster.jpg", URL, "Camp")
