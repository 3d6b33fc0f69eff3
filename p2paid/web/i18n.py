"""The web interface's languages: gettext catalogs and the choice of one per request.

Every ``locale/<tag>/LC_MESSAGES/messages.po`` under this package is a language
(English, the language of the source strings, needs none): adding one is adding that
file. Catalogs are compiled in memory when first loaded (Babel's ``read_po`` and
``write_mo``), so an installed package needs no build step and no generated ``.mo``
file can drift from its ``.po``; fuzzy and empty entries stay English.

A request's language is the ``lang`` cookie the picker sets, if it names a shipped
language, else the best match of the browser's ``Accept-Language`` (q-values, region
subtags falling back to the language: ``ar-EG`` is ``ar``), else English.
"""

from __future__ import annotations

import functools
import gettext
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from starlette.requests import Request

__all__ = [
    "COOKIE",
    "DEFAULT",
    "LOCALE_DIR",
    "N_",
    "Language",
    "Languages",
    "language_of",
    "load_languages",
    "parse_accept_language",
    "pgettext_noop",
]

LOCALE_DIR: Final = Path(__file__).parent / "locale"
#: The language of the source strings, and the fallback.
DEFAULT: Final = "en"
#: The cookie the language picker sets.
COOKIE: Final = "lang"
#: A catalog's header comment says ``# Reviewed: no`` until a fluent speaker has read it.
_REVIEWED: Final = re.compile(r"^#?\s*Reviewed:\s*(yes|no)\b", re.IGNORECASE | re.MULTILINE)
_TAG: Final = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$|^\*$")
#: At most this many entries of an Accept-Language header are read.
_MAX_RANGES: Final = 32


@final
@dataclass(frozen=True, slots=True)
class Language:
    """One language of the interface."""

    tag: str  #: BCP 47 tag, as in ``<html lang>`` and the cookie: ``ar``, ``pt-BR``
    name: str  #: its own name for itself: ``العربية``
    direction: str  #: ``ltr`` or ``rtl``
    translations: gettext.NullTranslations
    reviewed: bool  #: a fluent speaker has reviewed the catalog (English: the source)


def parse_accept_language(header: str) -> list[tuple[str, float]]:
    """The language ranges of an ``Accept-Language`` header, best first (ties keep their
    order), lowercased; malformed entries and ``q=0`` are dropped."""
    ranges: list[tuple[str, float]] = []
    for part in header.split(",")[:_MAX_RANGES]:
        tag, *params = (p.strip() for p in part.split(";"))
        if not _TAG.match(tag):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
        if 0 < q <= 1:
            ranges.append((tag.lower(), q))
    ranges.sort(key=lambda r: -r[1])
    return ranges


@final
class Languages:
    """The shipped languages, English first, and the choice of one for a request."""

    def __init__(self, languages: Mapping[str, Language]) -> None:
        self._by_tag = {tag.lower(): lang for tag, lang in languages.items()}
        if DEFAULT not in self._by_tag:
            self._by_tag[DEFAULT] = _english()

    def __iter__(self) -> Iterator[Language]:
        yield self._by_tag[DEFAULT]
        yield from sorted((v for k, v in self._by_tag.items() if k != DEFAULT),
                          key=lambda lang: lang.tag)

    def __len__(self) -> int:
        return len(self._by_tag)

    def get(self, tag: str | None) -> Language | None:
        return self._by_tag.get(tag.lower()) if tag else None

    def choose(self, cookie: str | None, accept_language: str | None) -> Language:
        """The cookie's language, else the header's best, else English."""
        return self.get(cookie) or self.negotiate(accept_language or "")

    def negotiate(self, accept_language: str) -> Language:
        """The best shipped language for an ``Accept-Language`` header (RFC 4647
        lookup: ``zh-hant-tw`` tries ``zh-hant``, then ``zh``); ``*`` or nothing
        shipped is English."""
        for tag, _q in parse_accept_language(accept_language):
            if tag == "*":
                break
            parts = tag.split("-")
            for n in range(len(parts), 0, -1):
                found = self._by_tag.get("-".join(parts[:n]))
                if found:
                    return found
        return self._by_tag[DEFAULT]


def _english() -> Language:
    return Language(DEFAULT, "English", "ltr", gettext.NullTranslations(), reviewed=True)


def compile_po(po: Path) -> tuple[Translations, bool]:
    """The catalog of a ``.po`` file, compiled in memory, and whether it is reviewed."""
    with po.open("rb") as f:
        catalog = read_po(f)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    reviewed = _REVIEWED.search(catalog.header_comment or "")
    return Translations(buffer), bool(reviewed and reviewed.group(1).lower() == "yes")


def _language(tag: str, po: Path) -> Language:
    translations, reviewed = compile_po(po)
    locale = Locale.parse(tag, sep="-")
    name = locale.get_display_name(locale) or tag
    return Language(tag, name[:1].upper() + name[1:], locale.text_direction, translations,
                    reviewed)


@functools.cache
def load_languages(locale_dir: Path = LOCALE_DIR) -> Languages:
    """Every language with a catalog in ``locale_dir`` (``pt_BR`` is tag ``pt-BR``)."""
    found: dict[str, Language] = {}
    for po in sorted(locale_dir.glob("*/LC_MESSAGES/messages.po")):
        tag = po.parent.parent.name.replace("_", "-")
        found[tag] = _language(tag, po)
    return Languages(found)


def N_(message: str) -> str:
    """Mark ``message`` for translation without translating it (translate it later
    with the request's catalog)."""
    return message


def pgettext_noop(context: str, message: str) -> tuple[str, str]:
    """Mark ``message`` in ``context`` for translation; translate it later with
    ``translations.pgettext(*marked)``."""
    return context, message


def language_of(request: Request, languages: Languages | None = None) -> Language:
    """The language of a request: the picker's cookie, else ``Accept-Language``."""
    return (languages or load_languages()).choose(request.cookies.get(COOKIE),
                                                  request.headers.get("accept-language"))
