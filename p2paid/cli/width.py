"""Text as a terminal shows it: grapheme clusters and their display width.

Columns of ``p2paid list`` must line up whatever script a member writes in, and a
cut must never leave half a character on screen. So text is handled in *extended
grapheme clusters* (Unicode UAX #29: what a reader sees as one character, such as
an emoji ZWJ sequence, a flag, a letter with its accents, a Hangul syllable, an
Indic conjunct) and measured in terminal cells as ``wcwidth`` counts them (East
Asian Wide and Fullwidth characters take two, combining marks none, spacing marks
one), except that an emoji sequence counts as the one wide glyph terminals draw.

The rules of UAX #29 are implemented here from :mod:`unicodedata` (which has no
grapheme-break property), with two approximations and one tailoring:

* ``Extended_Pictographic`` (rule GB11, emoji ZWJ sequences) is approximated by the
  emoji blocks and the pictographic symbols of the BMP;
* ``SpacingMark`` is every spacing combining mark (gc=Mc), *including* the few the
  standard leaves out for legacy reasons; of those, Myanmar's matter: without this,
  ``မာ`` would be cut between the consonant and its vowel sign;
* tailoring: Myanmar's invisible stacker U+1039 joins the consonant after it (as
  rule GB9c does for the conjuncts of Devanagari, Bengali, Gujarati, Oriya, Telugu
  and Malayalam), so a stacked consonant or a kinzi is never cut from its base.
"""

from __future__ import annotations

import enum
import unicodedata
from typing import Final

__all__ = ["display_width", "graphemes", "ljust", "truncate"]

ELLIPSIS: Final = "…"


class _B(enum.Enum):
    """Grapheme_Cluster_Break values (UAX #29, table 2)."""

    CR = enum.auto()
    LF = enum.auto()
    CONTROL = enum.auto()
    EXTEND = enum.auto()
    ZWJ = enum.auto()
    RI = enum.auto()
    PREPEND = enum.auto()
    SPACING = enum.auto()
    L = enum.auto()
    V = enum.auto()
    T = enum.auto()
    LV = enum.auto()
    LVT = enum.auto()
    OTHER = enum.auto()


_ZWJ: Final = 0x200D
_VS16: Final = 0xFE0F
_MYANMAR_STACKER: Final = 0x1039
#: Spacing marks (gc=Mc) that are Grapheme_Extend (Other_Grapheme_Extend), so Extend.
_MC_EXTEND: Final = frozenset({
    0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57,
    0x0DCF, 0x0DDF, 0x1B35, 0x302E, 0x302F, 0x1D165, *range(0x1D16E, 0x1D173),
})
_PREPEND: Final = frozenset({
    *range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD,
    0x110CD, 0x111C2, 0x111C3, 0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A),
    0x11D46, 0x11F02,
})
#: Indic conjunct linkers (InCB=Linker, rule GB9c) and Myanmar's stacker (tailoring).
_LINKERS: Final = frozenset({0x094D, 0x09CD, 0x0ACD, 0x0B4D, 0x0C4D, 0x0D4D,
                             _MYANMAR_STACKER})
_CONSONANT_RANGES: Final = (
    (0x0915, 0x0939), (0x0958, 0x095F), (0x0978, 0x097F),  # Devanagari
    (0x0995, 0x09A8), (0x09AA, 0x09B0), (0x09B2, 0x09B2), (0x09B6, 0x09B9),
    (0x09DC, 0x09DD), (0x09DF, 0x09DF), (0x09F0, 0x09F1),  # Bengali
    (0x0A95, 0x0AA8), (0x0AAA, 0x0AB0), (0x0AB2, 0x0AB3), (0x0AB5, 0x0AB9),
    (0x0AF9, 0x0AF9),  # Gujarati
    (0x0B15, 0x0B28), (0x0B2A, 0x0B30), (0x0B32, 0x0B33), (0x0B35, 0x0B39),
    (0x0B5C, 0x0B5D), (0x0B5F, 0x0B5F), (0x0B71, 0x0B71),  # Oriya
    (0x0C15, 0x0C28), (0x0C2A, 0x0C39), (0x0C58, 0x0C5A),  # Telugu
    (0x0D15, 0x0D3A),  # Malayalam
    (0x1000, 0x102A),  # Myanmar consonants and independent vowels (tailoring)
)
#: Pictographic symbols of the BMP outside U+2600..27BF (Extended_Pictographic).
_BMP_PICTOGRAPHS: Final = frozenset({
    0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122, 0x2139, *range(0x2194, 0x219A), 0x21A9, 0x21AA,
    0x231A, 0x231B, 0x2328, 0x2388, 0x23CF, *range(0x23E9, 0x23F4), *range(0x23F8, 0x23FB),
    0x24C2, 0x25AA, 0x25AB, 0x25B6, 0x25C0, *range(0x25FB, 0x25FF), 0x2934, 0x2935,
    *range(0x2B05, 0x2B08), 0x2B1B, 0x2B1C, 0x2B50, 0x2B55, 0x3030, 0x303D, 0x3297, 0x3299,
})


def _break_class(cp: int) -> _B:
    if cp == 0x0D:
        return _B.CR
    if cp == 0x0A:
        return _B.LF
    if cp == _ZWJ:
        return _B.ZWJ
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _B.RI
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return _B.L
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return _B.V
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return _B.T
    if 0xAC00 <= cp <= 0xD7A3:
        return _B.LV if (cp - 0xAC00) % 28 == 0 else _B.LVT
    if cp in _PREPEND:
        return _B.PREPEND
    if (cp == 0x200C or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F
            or cp in _MC_EXTEND or cp in (0xFF9E, 0xFF9F)):
        return _B.EXTEND
    category = unicodedata.category(chr(cp))
    if category in ("Mn", "Me"):
        return _B.EXTEND
    if category == "Mc" or cp in (0x0E33, 0x0EB3):
        return _B.SPACING
    if category in ("Cc", "Zl", "Zp", "Cf"):
        return _B.CONTROL
    return _B.OTHER


def _pictographic(cp: int) -> bool:
    """Extended_Pictographic, approximately (see the module docstring)."""
    if 0x1F000 <= cp <= 0x1FAFF:
        return not (0x1F1E6 <= cp <= 0x1F1FF or 0x1F3FB <= cp <= 0x1F3FF)
    if 0x2600 <= cp <= 0x27BF:
        return unicodedata.category(chr(cp)) == "So"
    return 0x1FC00 <= cp <= 0x1FFFD or cp in _BMP_PICTOGRAPHS


def _consonant(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CONSONANT_RANGES)


def _incb_extend(cp: int) -> bool:
    """InCB=Extend (as of Unicode 16): Extend or ZWJ, but not ZWNJ or a linker."""
    return cp == _ZWJ or (_break_class(cp) is _B.EXTEND and cp != 0x200C
                          and cp not in _LINKERS)


class _Segmenter:
    """State carried across one string: the rules that look further back than one
    character (GB9c conjuncts, GB11 emoji ZWJ sequences, GB12/13 flag pairs)."""

    def __init__(self) -> None:
        self.conjunct = 0  # 0: none; 1: after a consonant; 2: ... and a linker since
        self.pictograph = 0  # 0: none; 1: after ExtPict Extend*; 2: ... then ZWJ
        self.ri_odd = False  # an odd number of regional indicators ends the cluster

    def joins(self, prev: _B, cur: _B, cp: int) -> bool:
        """Whether there is no break between the previous character and ``cp``."""
        conjunct, pictograph, ri_odd = self.conjunct, self.pictograph, self.ri_odd
        self._advance(cur, cp)
        if prev is _B.CR and cur is _B.LF:
            return True  # GB3
        if prev in (_B.CR, _B.LF, _B.CONTROL) or cur in (_B.CR, _B.LF, _B.CONTROL):
            return False  # GB4, GB5
        if prev is _B.L and cur in (_B.L, _B.V, _B.LV, _B.LVT):
            return True  # GB6
        if prev in (_B.LV, _B.V) and cur in (_B.V, _B.T):
            return True  # GB7
        if prev in (_B.LVT, _B.T) and cur is _B.T:
            return True  # GB8
        if cur in (_B.EXTEND, _B.ZWJ, _B.SPACING) or prev is _B.PREPEND:
            return True  # GB9, GB9a, GB9b
        if conjunct == 2 and _consonant(cp):
            return True  # GB9c (and the Myanmar tailoring)
        if pictograph == 2 and _pictographic(cp):
            return True  # GB11
        return prev is _B.RI and cur is _B.RI and ri_odd  # GB12, GB13

    def _advance(self, cur: _B, cp: int) -> None:
        if _consonant(cp):
            self.conjunct = 1
        elif cp in _LINKERS and self.conjunct:
            self.conjunct = 2
        elif not (_incb_extend(cp) and self.conjunct):
            self.conjunct = 0
        if _pictographic(cp):
            self.pictograph = 1
        elif cur is _B.ZWJ and self.pictograph == 1:
            self.pictograph = 2
        elif not (cur is _B.EXTEND and self.pictograph == 1):
            self.pictograph = 0
        self.ri_odd = cur is _B.RI and not self.ri_odd


def graphemes(text: str) -> list[str]:
    """``text`` split into extended grapheme clusters (see the module docstring)."""
    clusters: list[str] = []
    state = _Segmenter()
    prev: _B | None = None
    start = 0
    for i, ch in enumerate(text):
        cp = ord(ch)
        cur = _break_class(cp)
        if prev is None:
            state.joins(_B.CONTROL, cur, cp)  # only to advance the state
        elif not state.joins(prev, cur, cp):
            clusters.append(text[start:i])
            start = i
        prev = cur
    if text:
        clusters.append(text[start:])
    return clusters


def _char_width(ch: str) -> int:
    """Cells of one character as ``wcwidth`` counts them: 2 for East Asian Wide and
    Fullwidth, 0 for non-spacing and enclosing marks, format characters and the
    Hangul vowel and final jamo that join a syllable, else 1."""
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 2
    if unicodedata.category(ch) in ("Mn", "Me", "Cf") or 0x1160 <= ord(ch) <= 0x11FF:
        return 0
    return 1


def _cluster_width(cluster: str) -> int:
    """Cells of one cluster: an emoji sequence (a flag, a ZWJ sequence, a skin tone,
    a symbol with emoji presentation) is one wide glyph, 2; anything else takes what
    its characters take (so a spacing vowel sign, as in Burmese, takes its cell)."""
    first = ord(cluster[0])
    if 0x1F1E6 <= first <= 0x1F1FF and len(cluster) > 1:
        return 2
    if _pictographic(first) and len(cluster) > 1 and any(
            ord(ch) in (_ZWJ, _VS16) or 0x1F3FB <= ord(ch) <= 0x1F3FF for ch in cluster):
        return 2
    return sum(_char_width(ch) for ch in cluster)


def display_width(text: str) -> int:
    """How many terminal cells ``text`` takes (one line, no control characters)."""
    if text.isascii():
        return len(text)
    return sum(_cluster_width(g) for g in graphemes(text))


def truncate(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` cells, else as many whole grapheme clusters as
    fit followed by ``…`` (never half an emoji, a conjunct or a wide character)."""
    if display_width(text) <= width:
        return text
    kept: list[str] = []
    used = 0
    for cluster in graphemes(text):
        cells = _cluster_width(cluster)
        if used + cells > width - 1:
            break
        kept.append(cluster)
        used += cells
    return "".join(kept) + ELLIPSIS


def ljust(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` cells."""
    return text + " " * max(0, width - display_width(text))
