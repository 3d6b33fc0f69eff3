"""The poster a coordinator pins to the wall: a QR code of a pairing invite's URL.

A member scans it with the phone's camera and the browser opens the pairing page.
``.svg`` is the whole poster (the QR code, the board's name, the short URL under
it and a line of instructions in each language given, laid out for A4); ``.png``
and ``.pdf`` hold the QR code and a quiet zone only (segno draws them; a PDF with
text in any script would need fonts the node does not ship).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

import segno

from p2paid.errors import UsageError
from p2paid.storage.files import file_error

__all__ = ["POSTER_KINDS", "invite_url", "poster_svg", "write_poster"]

POSTER_KINDS: Final = (".svg", ".png", ".pdf")
#: Instructions under the code, per language (the board's languages first). Not yet
#: reviewed by fluent speakers, as the web interface's catalogs say too.
INSTRUCTIONS: Final = {
    "en": "Scan with your phone's camera to join the board (on this Wi-Fi).",
    "ar": "امسح الرمز بكاميرا هاتفك للانضمام إلى اللوحة (على شبكة الواي فاي هذه).",
    "my": "ဤ Wi-Fi ပေါ်တွင် ဘုတ်ကို ဝင်ရောက်ရန် ဖုန်းကင်မရာဖြင့် စကင်ဖတ်ပါ။",
    "fr": "Scannez avec l'appareil photo de votre téléphone pour rejoindre le tableau "
          "(sur ce Wi-Fi).",
    "es": "Escanee con la cámara de su teléfono para unirse al tablero (en esta red Wi-Fi).",
    "uk": "Скануйте камерою телефона, щоб приєднатися до дошки (у цій мережі Wi-Fi).",
}
_RTL: Final = frozenset({"ar", "fa", "he", "ur"})
_WIDTH_MM: Final = 210
_HEIGHT_MM: Final = 297


def invite_url(base: str, token: str) -> str:
    """The pairing URL of an invite token on the node's web address ``base``."""
    return f"{base.rstrip('/')}/pair/{token}"


def _qr(url: str) -> segno.QRCode:
    return segno.make(url, error="m", micro=False)


def poster_svg(url: str, board_name: str, languages: Sequence[str] = ("en",)) -> str:
    """An A4 poster as SVG text: the board's name, the QR code, the URL and the
    instructions (all text escaped)."""
    qr = _qr(url)
    size = len(qr.matrix) + 8  # modules with a quiet zone of 4 on each side
    side = 150.0  # mm
    module = side / size
    x0, y0 = (_WIDTH_MM - side) / 2, 40.0
    rects = "".join(
        f"M{x0 + (4 + x) * module:.3f} {y0 + (4 + y) * module:.3f}h{module:.3f}v{module:.3f}"
        f"h-{module:.3f}z"
        for y, row in enumerate(qr.matrix) for x, dark in enumerate(row) if dark)
    lines = [f'<text x="105" y="28" font-size="10" text-anchor="middle" '
             f'font-weight="bold">{escape(board_name)}</text>',
             f'<text x="105" y="{y0 + side + 10:.1f}" font-size="5" text-anchor="middle" '
             f'font-family="monospace">{escape(url)}</text>']
    y = y0 + side + 22
    for lang in dict.fromkeys([*languages, "en"]):
        text = INSTRUCTIONS.get(lang)
        if text is None:
            continue
        direction = "rtl" if lang in _RTL else "ltr"
        lines.append(f'<text x="105" y="{y:.1f}" font-size="4.5" text-anchor="middle" '
                     f'xml:lang="{lang}" direction="{direction}">{escape(text)}</text>')
        y += 9
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH_MM}mm" '
        f'height="{_HEIGHT_MM}mm" viewBox="0 0 {_WIDTH_MM} {_HEIGHT_MM}" '
        'font-family="sans-serif">\n'
        f'<rect width="{_WIDTH_MM}" height="{_HEIGHT_MM}" fill="#fff"/>\n'
        f'<path d="{rects}" fill="#000"/>\n' + "\n".join(lines) + "\n</svg>\n")


def write_poster(path: str | Path, url: str, board_name: str,
                 languages: Sequence[str] = ("en",)) -> Path:
    """Write the poster to ``path``; its suffix (``.svg``, ``.png``, ``.pdf``) chooses
    the kind.

    Raises:
        UsageError: another suffix.
        FileError: the file cannot be written.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in POSTER_KINDS:
        raise UsageError(f"a poster is {', '.join(POSTER_KINDS)}, not {suffix or 'nothing'}")
    try:
        if suffix == ".svg":
            out.write_text(poster_svg(url, board_name, languages), encoding="utf-8")
        else:
            _qr(url).save(str(out), kind=suffix[1:], scale=12, border=4)
    except OSError as exc:
        raise file_error(out, exc, "write the poster") from exc
    return out
