"""Grapheme clusters and display width (``p2paid.cli.width``), against an oracle.

The oracle is the ``regex`` module's ``\\X`` (extended grapheme clusters after
UAX #29, kept current with Unicode): on strings drawn from scripts where
``p2paid.cli.width`` means to follow the standard exactly, both must cut the same
way. The Myanmar tailoring (vowel signs AA and visarga, the stacker U+1039) is
checked by examples instead, where it differs from the standard on purpose.
"""

from __future__ import annotations

import regex
from hypothesis import given
from hypothesis import strategies as st

from p2paid.cli.width import ELLIPSIS, display_width, graphemes, ljust, truncate

#: Characters where the segmentation follows UAX #29 as the oracle does: Latin with
#: combining accents, emoji (ZWJ, skin tones, VS16, flags, tag sequences), Hangul
#: jamo and syllables, CJK, Devanagari conjuncts, Thai SARA AM, an Arabic prepended
#: mark, Myanmar without the tailored characters, controls. The Devanagari virama
#: comes only after a consonant ("\u0915\u094d"): alone at the start of a string,
#: the oracle joins it to a following consonant, which rule GB9c does not.
ALPHABET = [
    *"ab \t\r\n\u0301\u0308\u200c\u200d\ufe0f",
    *"\U0001F469\U0001F467\u2764\U0001F44D\U0001F3FD\U0001F1E9\U0001F1EA",
    *"\U0001F3F4\U000E0067\U000E007F",
    *"\u1100\u1161\u11a8\uac00\uac01\u65e5\uff21",
    *"\u0915\u0937\u093f\u093c", "\u0915\u094d", "\u0937\u094d\u094d",
    *"\u1019\u103c\u103a\u102f\u1014",
    *"\u0e01\u0e33\u0600\u0628",
]
TEXT = st.lists(st.sampled_from(ALPHABET), max_size=16).map("".join)
#: The same, on one line, with the characters of the Myanmar tailoring added.
LINE = st.lists(st.sampled_from([c for c in ALPHABET if c not in "\t\r\n"]
                                + ["\u102c", "\u1039", "\u1038"]),
                max_size=16).map("".join)


@given(TEXT)
def test_clusters_match_the_unicode_oracle(text: str) -> None:
    assert graphemes(text) == regex.findall(r"\X", text)


@given(LINE, st.integers(min_value=1, max_value=12))
def test_truncation_keeps_whole_clusters_within_the_width(text: str, width: int) -> None:
    cut = truncate(text, width)
    assert display_width(cut) <= width
    if cut == text:
        assert display_width(text) <= width
        return
    assert cut.endswith(ELLIPSIS)
    kept = cut[: -len(ELLIPSIS)]
    clusters = graphemes(text)
    assert kept == "".join(clusters[: len(graphemes(kept))]), (text, cut)


def test_examples_of_clusters_and_widths() -> None:
    family = "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"
    assert graphemes(family + "x") == [family, "x"]
    assert display_width(family) == 2
    assert graphemes("\U0001F1E9\U0001F1EA\U0001F1EB") == ["\U0001F1E9\U0001F1EA", "\U0001F1EB"]
    assert display_width("\u2764\ufe0f") == 2  # a text symbol shown as emoji
    assert display_width("\u65e5\u672c\u8a9e") == 6  # CJK: two cells each
    assert display_width("e\u0301") == 1
    assert display_width("\u1100\u1161\u11a8") == 2  # one Hangul syllable from jamo
    assert display_width("plain") == 5
    assert display_width("\U0001F44D\U0001F3FD") == 2  # a skin tone: one glyph
    assert display_width("မြန်မာ") == 5  # spacing vowel signs take their cell


def test_myanmar_syllables_are_never_cut() -> None:
    """The tailoring: ``မာ`` (consonant + vowel sign AA) and stacked consonants stay
    whole, where the standard's legacy rules would cut them."""
    assert graphemes("မြန်မာ") == ["မြ", "န်", "မာ"]
    assert graphemes("သင်္ဘော") == ["သ", "င်္ဘော"]  # ship: the kinzi rides on ba
    kinzi = "\u1004\u103a\u1039\u1002"  # kinzi over ga: one stack
    assert graphemes(kinzi) == [kinzi]
    stacked = "\u1019\u1039\u1018"  # ma with bha stacked below
    assert graphemes(stacked) == [stacked]
    syllables = ["မြ", "န်", "မာ", "နို", "င်", "ငံ"]
    assert graphemes("".join(syllables)) == syllables
    for width in range(1, 8):
        kept = truncate("".join(syllables), width).removesuffix(ELLIPSIS)
        assert kept in {"".join(syllables[:n]) for n in range(len(syllables) + 1)}, width


def test_truncate_and_pad_line_up_wide_text() -> None:
    texts = ("Water", "日本語のテキスト", "👍🏽👍🏽👍🏽👍🏽👍🏽")
    cells = [ljust(truncate(t, 8), 8) for t in texts]
    assert [display_width(c) for c in cells] == [8, 8, 8]
    assert cells[1] == "日本語… " and cells[2] == "👍🏽👍🏽👍🏽… "
