"""Telling Zawgyi-encoded Burmese from Unicode Burmese, so that forms can warn.

Many phones in Myanmar still type Zawgyi, a font hack that reuses the Myanmar Unicode
code points for other glyphs: to everyone else's (Unicode) phone such text is
garbled, and search and sorting break. It cannot be told apart by its code points
alone, so Google's ``myanmartools`` model (a Markov chain over character pairs) gives
the probability that a string is Zawgyi. A form calls :func:`looks_like_zawgyi` on
what a member typed and, if true, shows ``translations.gettext(ZAWGYI_HINT)`` instead
of saving.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Final

from myanmartools import ZawgyiDetector

from p2paid.web.i18n import N_

__all__ = ["THRESHOLD", "ZAWGYI_HINT", "looks_like_zawgyi", "zawgyi_fields",
           "zawgyi_probability"]

#: At or above this probability, text is taken for Zawgyi (the cut-off of myanmar-tools'
#: own examples; real sentences score near 0 or near 1, short fragments in between).
THRESHOLD: Final = 0.95

#: Myanmar code points that mean the same in both encodings (consonants, independent
#: vowels, the vowels typed after their consonant in both, digits, punctuation): text of
#: these alone looks the same on every phone, so there is nothing to switch.
_SHARED: Final = frozenset(chr(c) for c in (*range(0x1000, 0x1031), 0x1032, 0x1036, 0x1037,
                                            0x1038, *range(0x1040, 0x104C)))
_MYANMAR: Final = range(0x1000, 0x10A0)

#: What a form tells a member whose text looks like Zawgyi (translate it per request).
ZAWGYI_HINT: Final = N_("This text looks like Zawgyi. Please switch your keyboard to "
                        "Unicode and type it again, so that everyone can read it.")


@functools.cache
def _detector() -> ZawgyiDetector:
    # myanmartools 1.2 reads its model with importlib.resources.open_binary, which
    # Python 3.11 and 3.12 call deprecated (3.13 took that back): harmless, so hushed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ZawgyiDetector()


def zawgyi_probability(text: str) -> float:
    """The probability (0 to 1) that ``text`` is Zawgyi; 0 for text without Burmese."""
    p = float(_detector().get_zawgyi_probability(text))
    return 0.0 if math.isinf(p) or math.isnan(p) else p


def looks_like_zawgyi(text: str) -> bool:
    """True if ``text`` is most likely Zawgyi-encoded Burmese that a Unicode phone would
    show differently (``ဘာသာစကား``, the same in both, never is)."""
    if all(c in _SHARED or ord(c) not in _MYANMAR for c in text):
        return False
    return zawgyi_probability(text) >= THRESHOLD


def zawgyi_fields(form: Mapping[str, str], names: Iterable[str] | None = None) -> list[str]:
    """The names of the fields of ``form`` (all, or ``names``) whose text looks like
    Zawgyi, in order, for a form to mark."""
    return [n for n in (form if names is None else names)
            if isinstance(form.get(n), str) and looks_like_zawgyi(form[n])]
