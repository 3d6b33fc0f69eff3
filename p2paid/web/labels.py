"""The words shown for the board's fixed values: kinds, categories, urgencies, statuses.

The board stores these as English identifiers (``need``, ``water``); the pages show them
in the reader's language through :func:`label`, with the value's kind as the gettext
context (``"status"`` / ``"open"``), so that translators can tell the words apart.
"""

from __future__ import annotations

import gettext
from typing import Final

from p2paid.web.i18n import pgettext_noop

__all__ = ["LABELS", "label"]

#: Every (context, value) the pages translate.
LABELS: Final = frozenset({
    pgettext_noop("kind", "need"), pgettext_noop("kind", "offer"),
    pgettext_noop("kinds", "needs"), pgettext_noop("kinds", "offers"),
    pgettext_noop("category", "water"), pgettext_noop("category", "food"),
    pgettext_noop("category", "shelter"), pgettext_noop("category", "medical"),
    pgettext_noop("category", "hygiene"), pgettext_noop("category", "transport"),
    pgettext_noop("category", "money"), pgettext_noop("category", "information"),
    pgettext_noop("category", "other"),
    pgettext_noop("urgency", "low"), pgettext_noop("urgency", "normal"),
    pgettext_noop("urgency", "high"), pgettext_noop("urgency", "critical"),
    pgettext_noop("status", "open"), pgettext_noop("status", "expired"),
    pgettext_noop("status", "fulfilled"), pgettext_noop("status", "withdrawn"),
})


def label(translations: gettext.NullTranslations, context: str, value: str) -> str:
    """``value`` (a kind, category, urgency or status of ``context``) in the catalog's
    language; a value the pages do not know is shown as it is."""
    if (context, value) not in LABELS:
        return value
    return translations.pgettext(context, value)
