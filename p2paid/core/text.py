"""Which characters text may hold, how outside text is shown, and when two names look alike.

Every text field of the board (titles, details, names, ...) comes from members who
may be hostile, so the same rule is applied to local input and to what is read
from remote sections (``protocol/SPEC.md`` section 6.2). The rule is fixed here
as explicit code points rather than "whatever this Python's Unicode database
calls a format character", so that every replica, whatever its Python, shows
exactly the same entries.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final

__all__ = [
    "ALLOWED_FORMAT",
    "REFUSED_FORMAT",
    "char_problem",
    "escape_json",
    "escape_text",
    "name_key",
    "plural",
    "shows_something",
    "text_problem",
]


def _ranges(*spans: tuple[int, int]) -> frozenset[int]:
    return frozenset(c for lo, hi in spans for c in range(lo, hi + 1))


#: Format characters (Unicode category Cf) that real text needs; see :func:`char_problem`.
ALLOWED_FORMAT: Final = _ranges(
    (0x200C, 0x200D),  # ZWNJ, ZWJ
    (0x200E, 0x200F),  # LRM, RLM
    (0x061C, 0x061C),  # ALM
    (0x2066, 0x2069),  # LRI, RLI, FSI, PDI
    (0xE0020, 0xE007F),  # emoji tag characters and CANCEL TAG
)

#: Every other format character (category Cf as of Unicode 15.1): refused. A fixed
#: list, so that replicas on different Pythons agree; tests check that it covers
#: this Python's Unicode database.
REFUSED_FORMAT: Final = _ranges(
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),  # Arabic number signs
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200B),  # zero width space
    (0x202A, 0x202E),  # LRE, RLE, PDF, LRO, RLO: embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x206A, 0x206F),  # deprecated shaping and digit controls
    (0xFEFF, 0xFEFF),  # zero width no-break space (BOM)
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0001, 0xE0001),  # LANGUAGE TAG (deprecated)
)

_LINE_SEPARATORS: Final = frozenset({0x2028, 0x2029})
_ISOLATE_OPEN: Final = frozenset({0x2066, 0x2067, 0x2068})
_ISOLATE_CLOSE: Final = 0x2069


def _char_class(codes: Iterable[int]) -> re.Pattern[str]:
    spans: list[list[int]] = []
    for code in sorted(codes):
        if spans and spans[-1][1] == code - 1:
            spans[-1][1] = code
        else:
            spans.append([code, code])
    return re.compile("[" + "".join(
        re.escape(chr(lo)) + ("" if lo == hi else "-" + re.escape(chr(hi))) for lo, hi in spans
    ) + "]")


#: Every character :func:`text_problem` must look at more closely.
_SUSPECT: Final = _char_class([
    *range(0x00, 0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000), *REFUSED_FORMAT,
    *_LINE_SEPARATORS, *_ISOLATE_OPEN, _ISOLATE_CLOSE,
])


def char_problem(char: str, *, multiline: bool = False) -> str | None:
    """Why ``char`` may not appear in a text field (None: it may).

    Refused everywhere: control characters (category Cc; newline and tab are
    allowed in multi-line fields), surrogates, and the format characters of
    :data:`REFUSED_FORMAT`, above all the bidi embeddings and overrides
    U+202A-202E, which reorder what follows them on the screen (a title could
    make the next column read backwards), and the invisible ones (U+200B, U+2060,
    U+FEFF, U+00AD, ...) that make two different strings look the same. The line
    and paragraph separators U+2028/U+2029 are refused in single-line fields,
    where they would break a line that must stay one.

    Allowed, because real text needs them and they cannot reach beyond the text:

    * U+200C ZWNJ and U+200D ZWJ: required for correct spelling in Persian, Arabic
      and Indic scripts (they select letter forms and conjuncts), and ZWJ joins
      emoji sequences (family, profession and flag emoji).
    * U+200E LRM, U+200F RLM, U+061C ALM: direction *marks*: invisible strong
      characters that fix where neutral characters such as punctuation and digits
      go in mixed right-to-left text. They have no scope, so they cannot reorder
      anything beyond their neighbours.
    * U+2066-2069 LRI, RLI, FSI, PDI: direction *isolates*, the recommended way to
      embed right-to-left text in left-to-right text and back. Their effect ends at
      the matching PDI, and :func:`text_problem` requires every isolate to be closed
      on its own line, so one field can never spill into the next.
    * U+E0020-E007F: tag characters, used only in emoji tag sequences (the flags of
      Scotland, England and Wales).
    """
    code = ord(char)
    category = unicodedata.category(char)
    if category == "Cc":
        if multiline and char in "\n\t":
            return None
        return "control characters"
    if category == "Cs":
        return "invalid characters (check the terminal's encoding)"
    if code in REFUSED_FORMAT:
        return f"invisible formatting characters (U+{code:04X})"
    if code in _LINE_SEPARATORS and not multiline:
        return f"line separators (U+{code:04X})"
    return None


def text_problem(text: str, *, multiline: bool = False) -> str | None:
    """What is wrong with ``text`` under :func:`char_problem` and the isolate rule
    (every LRI/RLI/FSI closed by a PDI on the same line, and no PDI without one);
    None if nothing is. The answer completes "<field> cannot contain ..." or
    "<field> has ..."."""
    if _SUSPECT.search(text) is None:
        return None  # the common case, without a Python call per character
    depth = 0
    for char in text:
        problem = char_problem(char, multiline=multiline)
        if problem is not None:
            return f"cannot contain {problem}"
        code = ord(char)
        if code in _ISOLATE_OPEN:
            depth += 1
        elif code == _ISOLATE_CLOSE:
            if depth == 0:
                return "has a direction isolate end (U+2069) that closes nothing"
            depth -= 1
        elif (char == "\n" or code in _LINE_SEPARATORS) and depth:
            break
    if depth:
        return "has a direction isolate (U+2066-2068) that is not closed on its line"
    return None


def escape_text(text: str) -> str:
    """``text`` with every character a terminal should not get raw written as an
    escape (``\\u202e``, ``\\x1b``, ``\\U0001bca0``): what :func:`char_problem`
    refuses in a single-line field, and isolates that are not balanced. For strings
    from outside (relay hints, board names from invites, peers' messages) printed
    to a terminal or a log."""
    unmatched = _unmatched_isolates(text)
    out: list[str] = []
    for index, char in enumerate(text):
        if index in unmatched or char_problem(char) is not None:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


#: What :func:`escape_json` escapes: what JSON itself leaves raw (it escapes
#: U+0000-001F), other than what text may hold.
_JSON_RAW: Final = _char_class([
    *range(0x7F, 0xA0), *range(0xD800, 0xE000), *REFUSED_FORMAT, *_LINE_SEPARATORS,
    *_ISOLATE_OPEN, _ISOLATE_CLOSE,
])


def escape_json(dumped: str) -> str:
    """JSON text (as ``json.dumps(..., ensure_ascii=False)`` writes it) with every C1
    control, refused format character, line separator and isolate written as a
    ``\\u`` escape. Such characters occur only inside JSON strings, and the escape
    denotes the same character, so a parser reads the same value."""
    return _JSON_RAW.sub(lambda m: _json_escape(ord(m.group())), dumped)


def _json_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


def _unmatched_isolates(text: str) -> set[int]:
    """Positions of isolate initiators without a PDI, and of PDIs without one."""
    open_at: list[int] = []
    unmatched: set[int] = set()
    for index, char in enumerate(text):
        code = ord(char)
        if code in _ISOLATE_OPEN:
            open_at.append(index)
        elif code == _ISOLATE_CLOSE:
            if open_at:
                open_at.pop()
            else:
                unmatched.add(index)
    unmatched.update(open_at)
    return unmatched


#: Letters of other scripts that look like Latin ones, before case folding ...
_UPPER_LOOKALIKES: Final = str.maketrans({
    # Cyrillic
    "А": "a", "В": "b", "Е": "e", "К": "k", "М": "m", "Н": "h", "О": "o", "Р": "p",
    "С": "c", "Т": "t", "Х": "x", "У": "y", "Ѕ": "s", "І": "l", "Ј": "j", "Ԛ": "q",
    "Ԝ": "w", "Ү": "y", "Ӏ": "l",
    # Greek
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "l", "Κ": "k", "Μ": "m",
    "Ν": "n", "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x",
    # Latin capital I looks like small l in most sans-serif fonts
    "I": "l",
})
#: ... and after it.
_LOWER_LOOKALIKES: Final = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s",
    "і": "i", "ј": "j", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ү": "y",
    "ο": "o", "α": "a", "ν": "v", "ρ": "p", "ι": "i", "κ": "k", "υ": "u", "χ": "x",
    "ɡ": "g", "ı": "i", "0": "o", "1": "l", "|": "l",
})


#: Characters text may hold that show nothing (so names differing by them look alike).
_SHOWS_NOTHING: Final = ALLOWED_FORMAT | _ranges(
    (0x034F, 0x034F),  # combining grapheme joiner
    (0xFE00, 0xFE0F), (0xE0100, 0xE01EF),  # variation selectors
    (0x115F, 0x1160), (0x3164, 0x3164), (0xFFA0, 0xFFA0),  # Hangul fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
)


def shows_something(text: str) -> bool:
    """Whether ``text`` (stripped, and allowed by :func:`text_problem`) has a character
    that shows: one that is not white space and not in the set :func:`name_key` ignores."""
    if text.isascii():
        return bool(text)  # stripped, and without controls: every character shows
    return bool(name_key(text))


def name_key(name: str) -> str:
    """What a display name looks like, for telling whether two members use the same.

    Two names with the same key are easy to mistake for each other on a screen:
    compatibility forms (NFKC: full-width letters, ligatures), case, spaces,
    characters that show nothing (ZWJ, direction marks and isolates, tags,
    variation selectors, Hangul fillers) and the common Cyrillic, Greek and digit
    lookalikes of Latin letters are ignored. This is not the whole of Unicode's
    confusables (UTS #39); the key fingerprint shown beside every name is the
    real check.
    """
    text = unicodedata.normalize("NFKC", name).translate(_UPPER_LOOKALIKES).casefold()
    return "".join(
        char for char in text.translate(_LOWER_LOOKALIKES)
        if ord(char) not in _SHOWS_NOTHING and not char.isspace()
    )


def plural(count: int, noun: str) -> str:
    """``1 need``, ``2 needs``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
