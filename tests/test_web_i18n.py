"""The web interface's languages: Accept-Language negotiation, the picker's cookie,
right-to-left pages, catalogs complete and well-formed, escaping in every language."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from test_web import pair_phone

from p2paid.board.store import open_store
from p2paid.node.node import open_node
from p2paid.web import create_app
from p2paid.web.i18n import LOCALE_DIR, compile_po, load_languages, parse_accept_language
from p2paid.web.labels import LABELS
from p2paid.web.webstore import WebStore
from p2paid.web.zawgyi import looks_like_zawgyi

WEB = LOCALE_DIR.parent
SHIPPED = {"en", "ar", "my", "fr", "es", "uk"}
CATALOGS = sorted(LOCALE_DIR.glob("*/LC_MESSAGES/messages.po"))
HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
#: A message as the tests compare them: (msgid, or singular and plural; context).
Msg = tuple[str | tuple[str, ...], str | None]


@asynccontextmanager
async def client_of(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the node's web app, paired as a phone (``/`` redirects it to its
    board)."""
    async with open_node(data_dir, listen=None, mdns=False) as node:
        with WebStore(data_dir) as web:
            transport = httpx.ASGITransport(app=create_app(node, web=web))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") \
                    as client:
                await pair_phone(client, web, node.board().id, "Chidi")
                yield client


def _board(data_dir: Path, name: str = "Riverside") -> str:
    with open_store(data_dir) as store:
        return store.create_board(name, display_name="Amina").id.hex()


def _html_tag(page: str) -> str:
    found = re.search(r"<html[^>]*>", page)
    assert found, page[:200]
    return found.group(0)


# -- negotiation ---------------------------------------------------------------------

def test_accept_language_is_read_best_first() -> None:
    assert parse_accept_language("fr;q=0.5, ar-EG, en;q=0.9, de;q=0, x y, uk;q=abc") == [
        ("ar-eg", 1.0), ("en", 0.9), ("fr", 0.5)]
    assert parse_accept_language("es;q=0.8, it;q=0.8") == [("es", 0.8), ("it", 0.8)]
    assert parse_accept_language("") == [] and parse_accept_language(",,;") == []


@pytest.mark.parametrize(("header", "chosen"), [
    ("ar-EG,ar;q=0.9", "ar"),  # a region subtag maps to its language
    ("ar-EG", "ar"), ("my-MM", "my"), ("es-419", "es"), ("UK-ua", "uk"),
    ("de-DE, de;q=0.9, fr;q=0.4, en;q=0.3", "fr"),  # the best one that ships
    ("en;q=0.2, uk;q=0.9", "uk"),  # q-values, not order
    ("fr;q=0, es;q=0.1", "es"),  # q=0 means "not this one"
    ("de, it", "en"), ("", "en"), ("*", "en"), ("de, *;q=0.5, fr;q=0.1", "en"),
    ("<script>", "en"), ("fr;q=2", "en"),
])
def test_the_best_shipped_language_is_chosen(header: str, chosen: str) -> None:
    assert load_languages().negotiate(header).tag == chosen


def test_the_picker_s_cookie_wins_unless_it_names_no_shipped_language() -> None:
    languages = load_languages()
    assert languages.choose("fr", "ar-EG").tag == "fr"
    assert languages.choose("xx", "ar-EG").tag == "ar"
    assert languages.choose(None, None).tag == "en"


def test_the_shipped_languages_and_their_directions() -> None:
    languages = {lang.tag: lang for lang in load_languages()}
    assert set(languages) == SHIPPED
    assert next(iter(load_languages())).tag == "en"  # English first in the picker
    assert {t for t, lang in languages.items() if lang.direction == "rtl"} == {"ar"}
    assert languages["ar"].name == "العربية" and languages["my"].name == "မြန်မာ"
    assert languages["fr"].name == "Français" and languages["uk"].name == "Українська"
    assert {t for t, lang in languages.items() if not lang.reviewed} == SHIPPED - {"en"}


def test_a_new_po_file_is_a_new_language(tmp_path: Path) -> None:
    """Adding a language is one file: the loader finds it, names it and negotiates it."""
    for tag in ("de", "pt_BR", "fa"):
        target = tmp_path / tag / "LC_MESSAGES" / "messages.po"
        target.parent.mkdir(parents=True)
        shutil.copy(LOCALE_DIR / "fr" / "LC_MESSAGES" / "messages.po", target)
    languages = load_languages(tmp_path)
    assert [lang.tag for lang in languages] == ["en", "de", "fa", "pt-BR"]
    assert languages.negotiate("de-AT").name == "Deutsch"
    assert languages.negotiate("pt-br").tag == "pt-BR" and languages.negotiate("pt").tag == "en"
    assert languages.negotiate("fa-IR").direction == "rtl"  # from CLDR, no setting


# -- pages -----------------------------------------------------------------------------

async def test_a_page_is_in_the_browser_s_language(tmp_path: Path) -> None:
    _board(tmp_path)
    async with client_of(tmp_path) as client:
        english = await client.get("/", follow_redirects=True)
        arabic = await client.get("/", follow_redirects=True,
                                  headers={"accept-language": "ar-EG,en;q=0.5"})
        french = await client.get("/", follow_redirects=True, headers={"accept-language": "fr-CA"})
        unknown = await client.get("/", follow_redirects=True,
                                   headers={"accept-language": "de-DE,de;q=0.9"})
    languages = load_languages()
    show = {tag: languages.choose(tag, None).translations.gettext("Show")
            for tag in ("en", "ar", "fr")}
    assert _html_tag(english.text) == '<html lang="en" dir="ltr">'
    assert f">{show['en']}<" in english.text and english.headers["content-language"] == "en"
    assert _html_tag(arabic.text) == '<html lang="ar" dir="rtl">'
    assert f">{show['ar']}<" in arabic.text and arabic.headers["content-language"] == "ar"
    assert show["ar"] != "Show" and show["fr"] != "Show"
    assert _html_tag(french.text) == '<html lang="fr" dir="ltr">'
    assert f">{show['fr']}<" in french.text
    assert _html_tag(unknown.text) == '<html lang="en" dir="ltr">'
    assert "accept-language" in arabic.headers["vary"].lower()
    assert "cookie" in arabic.headers["vary"].lower()


async def test_plural_forms_follow_the_language(tmp_path: Path) -> None:
    _board(tmp_path)
    with open_store(tmp_path) as store:
        store.board().post_need("Water")
        store.board().post_need("Tents")
        store.board().post_offer("Van")
    async with client_of(tmp_path) as client:
        en = await client.get("/", follow_redirects=True)
        ar = await client.get("/", follow_redirects=True, headers={"accept-language": "ar"})
        uk = await client.get("/", follow_redirects=True, headers={"accept-language": "uk"})
    assert "2 needs · 1 offer" in en.text
    assert "2 احتياجان · 1 عرض" in ar.text  # Arabic's dual
    assert "2 потреби · 1 пропозиція" in uk.text


async def test_the_picker_remembers_the_choice_in_a_cookie(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with client_of(tmp_path) as client:
        chosen = await client.post("/language", data={"lang": "uk", "next": f"/b/{board_hex}"},
                                   headers={"accept-language": "ar"})
        assert chosen.status_code == 303 and chosen.headers["location"] == f"/b/{board_hex}"
        cookie = chosen.headers["set-cookie"]
        assert cookie.startswith("lang=uk;")
        attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")}
        assert attributes["path"] == "Path=/"
        assert attributes["samesite"].lower() == "samesite=strict"
        assert "max-age" in attributes and "httponly" not in attributes
        # the client now sends the cookie: it wins over the header
        page = await client.get(f"/b/{board_hex}", headers={"accept-language": "ar-EG"})
        assert _html_tag(page.text) == '<html lang="uk" dir="ltr">'
        assert 'value="uk" lang="uk" dir="ltr" selected' in page.text
        again = await client.post("/language", data={"lang": "ar", "next": "/nowhere?x=1"})
        assert again.headers["location"] == "/nowhere?x=1"
        missing = await client.get("/nowhere")
        assert missing.status_code == 404 and _html_tag(missing.text) == (
            '<html lang="ar" dir="rtl">')


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "https://evil.example",
                                    "evil", "", "/a\r\nSet-Cookie: x=1"])
async def test_the_picker_sends_back_only_to_this_site(tmp_path: Path, target: str) -> None:
    _board(tmp_path)
    async with client_of(tmp_path) as client:
        chosen = await client.post("/language", data={"lang": "fr", "next": target})
    assert chosen.status_code == 303 and chosen.headers["location"] == "/"


async def test_the_picker_refuses_a_language_that_does_not_ship(tmp_path: Path) -> None:
    _board(tmp_path)
    async with client_of(tmp_path) as client:
        refused = await client.post("/language", data={"lang": "xx", "next": "/"})
        get = await client.get("/language")
    assert refused.status_code == 400 and "set-cookie" not in refused.headers
    assert get.status_code == 405


async def test_every_page_has_the_picker_as_a_plain_form(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with open_store(tmp_path) as store:
        need = store.board().post_need("Water", quantity=4, unit="jerrycans")
    async with client_of(tmp_path) as client:
        for path in (f"/b/{board_hex}", f"/b/{board_hex}/i/{need.id}", "/nowhere"):
            page = await client.get(path, headers={"accept-language": "my"})
            assert '<form method="post" action="/language">' in page.text
            assert f'name="next" value="{path}"' in page.text
            for tag in SHIPPED:
                assert f'<option value="{tag}" lang="{tag}"' in page.text
            # works without JavaScript: the only script is live updates' (optional)
            without_live = page.text.replace('<script src="/static/live.js" defer></script>', "")
            assert "<script" not in without_live


async def test_escaping_stays_on_in_every_language(tmp_path: Path) -> None:
    data_dir = tmp_path / "amina"
    board_hex = _board(data_dir, HOSTILE)
    with open_store(data_dir) as store:
        need = store.board().post_need(HOSTILE, details=HOSTILE, location=HOSTILE,
                                       quantity=3, unit="<script>u</script>")
    async with client_of(data_dir) as client:
        for tag in sorted(SHIPPED):
            for path in (f"/b/{board_hex}", f"/b/{board_hex}/i/{need.id}",
                         f"/b/{board_hex}?q=%3Cscript%3E"):
                page = await client.get(path, headers={"accept-language": tag})
                assert page.status_code == 200
                assert "<script>" not in page.text and "<img" not in page.text, (tag, path)
                assert "&lt;script&gt;" in page.text, (tag, path)


async def test_unreviewed_translations_say_so(tmp_path: Path) -> None:
    _board(tmp_path)
    async with client_of(tmp_path) as client:
        en = await client.get("/", follow_redirects=True)
        es = await client.get("/", follow_redirects=True, headers={"accept-language": "es"})
    assert "revisado" in es.text and "fluent speaker" not in en.text


# -- catalogs --------------------------------------------------------------------------

def _source_messages() -> set[Msg]:
    """Every (msgid, context) in the web interface's code and templates, as
    ``pybabel extract -F p2paid/web/babel.cfg -k pgettext_noop:1c,2`` finds them."""
    with (WEB / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]
    keywords = {**DEFAULT_KEYWORDS, "pgettext_noop": ((1, "c"), 2)}
    return {(message if isinstance(message, str) else tuple(message), context)
            for _file, _line, message, _comments, context
            in extract_from_dir(WEB, method_map, options_map, keywords=keywords)}


def _catalog_messages(path: Path) -> set[Msg]:
    with path.open("rb") as f:
        return {(m.id if isinstance(m.id, str) else tuple(m.id), m.context)
                for m in read_po(f) if m.id}


def test_the_template_catalog_is_up_to_date() -> None:
    """A new string in a template or in Python is in messages.pot (run pybabel extract)."""
    assert _source_messages() == _catalog_messages(LOCALE_DIR / "messages.pot")
    labelled = {(value, context) for context, value in LABELS}
    assert labelled <= _source_messages()


def test_every_language_ships_a_catalog() -> None:
    assert {p.parent.parent.name for p in CATALOGS} == SHIPPED - {"en"}


@pytest.mark.parametrize("po", CATALOGS, ids=lambda p: p.parent.parent.name)
def test_every_catalog_compiles_and_covers_every_message(po: Path) -> None:
    translations, _reviewed = compile_po(po)
    assert translations.info()["language"] == po.parent.parent.name
    with po.open("rb") as f:
        catalog = read_po(f)
    assert _catalog_messages(po) == _source_messages()
    for message in catalog:
        if not message.id:
            continue
        assert not message.fuzzy, message.id
        ids = [message.id] if isinstance(message.id, str) else list(message.id)
        strings = ([message.string] if isinstance(message.string, str)
                   else list(message.string or ()))
        assert len(strings) == (catalog.num_plurals if message.pluralizable else 1)
        assert all(strings), f"{po}: no translation of {message.id!r}"
        wanted = set(_PLACEHOLDER.findall(ids[-1]))
        for string in strings:
            found = set(_PLACEHOLDER.findall(string))
            # every placeholder of a message is kept; a plural form may leave out the
            # number ("one need") but never invent a placeholder
            assert found == wanted or (message.pluralizable and found < wanted), (
                f"{po}: {message.id!r} -> {string!r}")
            string % dict.fromkeys(wanted, 1)  # formats, as the pages will (no stray %)
        assert not any(problem for problem in message.check(catalog)), message.id


def test_burmese_is_unicode_not_zawgyi() -> None:
    with (LOCALE_DIR / "my" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        strings = [m.string for m in read_po(f) if m.id]
    flat = [s for string in strings
            for s in ([string] if isinstance(string, str) else list(string or ()))]
    assert flat and not any(looks_like_zawgyi(s) for s in flat)


def test_the_catalogs_are_package_data() -> None:
    """``pip install .`` carries every catalog (compiled at start, no build step)."""
    with (WEB.parent.parent / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["p2paid"]
    package = WEB.parent
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    for path in [*LOCALE_DIR.rglob("*.po"), LOCALE_DIR / "messages.pot", WEB / "babel.cfg"]:
        assert path in shipped, path


def test_the_stylesheet_mirrors_for_right_to_left() -> None:
    """Only logical properties (inline/block), so that dir="rtl" mirrors every page."""
    css = (WEB / "static" / "style.css").read_text()
    physical = re.findall(r"[\w-]*\b(?:left|right)\b[\w-]*\s*:|:\s*(?:left|right)\b"
                          r"|\b(?:margin|padding)\s*:\s*[^;\s]+(?:\s+[^;\s}]+){2,}", css)
    assert physical == []
    assert "padding-inline" in css and "margin-inline" in css
