"""The web interface in a real browser: Debian's Chromium, headless, as a 360 px phone,
with JavaScript on and off; skipped (with the reason) where Chromium is not installed.

How trio and Playwright meet: Playwright's sync API runs its own asyncio loop in the
calling thread and blocks it, so it cannot share a thread with a trio loop that must
keep answering. These tests are therefore plain synchronous functions (pytest-trio's
trio mode leaves those alone): the browser is driven from the test's thread, and the
node with its web server runs a ``trio.run`` of its own in a background thread
(:class:`browser_helpers.WebThread`), reached over a real socket on 127.0.0.1. The
server code is exactly the node's (``serve_web`` in the node's nursery), and no
Playwright object ever crosses threads, which Playwright does not allow.

Chromium resolves no host name and uses no proxy (see ``launch_chromium``): nothing
leaves 127.0.0.1. Screenshots go to ``--screenshots DIR``, or a temporary folder;
``python -m pytest tests/test_browser.py --screenshots docs/screenshots`` makes the
README's.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from browser_helpers import (
    HOSTILE,
    PHONE_WIDTH,
    DemoBoard,
    WebThread,
    chromium_path,
    launch_chromium,
    phone_context,
    seed_big_board,
    seed_demo_board,
)
from cli_helpers import Service, run
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from p2paid.board.store import open_store
from p2paid.web.pages import PAGE_SIZE
from p2paid.web.webstore import WebStore

#: The issue's budgets, printed beside the measures (not asserted).
FIRST_PAGE_BUDGET = 60 * 1024
ALL_ASSETS_BUDGET = 200 * 1024
#: Collects the page's CSP violations (an init script: Chromium runs it whatever the
#: page's CSP says).
_VIOLATIONS = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
               "e => window.__csp.push(e.effectiveDirective));")


@dataclass
class Site:
    url: str
    demo: DemoBoard
    data_dir: Path
    #: where the serving node accepts peers (live tests only)
    node_address: tuple[str, int] = ("", 0)

    def pair(self, page: Page, name: str = "Chidi") -> None:
        """Pair ``page``'s phone as a member would: open an invite link, tap Join."""
        with WebStore(self.data_dir) as web:
            token, _ = web.create_invite(bytes.fromhex(self.demo.board))
        page.goto(f"{self.url}/pair/{token}")
        page.fill("#name", name)
        page.locator("main button[type=submit]").click()
        page.wait_for_url(self.board_url)

    @property
    def board_url(self) -> str:
        return f"{self.url}/b/{self.demo.board}"

    def item_url(self, item: str) -> str:
        return f"{self.board_url}/i/{item}"


@dataclass
class Phone:
    """A page in a phone context, with what it raised: dialogs and console lines."""

    page: Page
    javascript: bool
    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def shoot(self, folder: Path, name: str) -> None:
        """The phone's first screen as ``name.png`` (JavaScript on only: one of each)."""
        if self.javascript:  # (written here: Playwright would use a thread of its own)
            (folder / f"{name}.png").write_bytes(self.page.screenshot())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt install chromium)")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The demo board served by a node (after ``browser``: no board when skipped)."""
    data_dir = tmp_path_factory.mktemp("browser") / "amina"
    demo = seed_demo_board(data_dir)
    with WebThread(data_dir) as web:
        yield Site(web.url, demo, data_dir)


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = request.config.getoption("--screenshots")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(params=[True, False], ids=["js", "no-js"])
def phone(request: pytest.FixtureRequest, browser: Browser, site: Site) -> Iterator[Phone]:
    """A phone paired with the demo board (JavaScript on, then off)."""
    context = phone_context(browser, javascript=request.param)
    context.add_init_script(_VIOLATIONS)
    page = context.new_page()
    phone = Phone(page, request.param)
    site.pair(page)

    def on_dialog(dialog: Dialog) -> None:
        phone.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        phone.console.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    yield phone
    context.close()


def _titles(page: Page) -> list[str]:
    return page.locator(".items strong").all_inner_texts()


def _assert_fits_the_phone(page: Page) -> None:
    """No sideways scrolling. (A mobile browser widens ``innerWidth`` to the content
    when it overflows, so the layout viewport's width is checked too.)"""
    scroll, inner, client = page.evaluate(
        "[document.documentElement.scrollWidth, innerWidth,"
        " document.documentElement.clientWidth]")
    assert scroll <= inner == client == PHONE_WIDTH, (
        f"{page.url}: {scroll} px wide in a {client} px viewport")


def test_every_page_fits_a_360px_phone(site: Site, phone: Phone, screenshots: Path) -> None:
    for url, name in ((site.url + "/", "boards"), (site.board_url, "board"),
                      (site.item_url(site.demo.pledged), "item"),
                      (site.item_url(site.demo.hostile), "hostile-item")):
        phone.page.goto(url)
        _assert_fits_the_phone(phone.page)
        phone.shoot(screenshots, name)


def test_links_and_buttons_are_big_enough_to_tap(site: Site, phone: Phone) -> None:
    phone.page.goto(site.board_url)
    targets = phone.page.locator(
        ".items a, .filters input, .filters select, .filters button, .pages a")
    assert targets.count() >= PAGE_SIZE + 6  # the items, the filters and "Older"
    for target in targets.all():
        box = target.bounding_box()
        assert box is not None and box["height"] >= 44, (
            f"{target.evaluate('e => e.outerHTML.slice(0, 80)')}: {box}")


def test_the_filters_show_only_offers(site: Site, phone: Phone, screenshots: Path) -> None:
    page = phone.page
    page.goto(site.board_url)
    assert "need" in page.locator(".items .kind").all_text_contents()
    page.locator("select[name=kind]").select_option("offer")
    page.get_by_role("button", name="Show").tap()
    page.wait_for_url(re.compile(r"[?&]kind=offer(&|$)"))
    kinds = page.locator(".items .kind").all_text_contents()
    assert kinds == ["offer"] * site.demo.offers
    expect(page.locator("p.meta")).to_contain_text(f"{site.demo.offers} of {site.demo.items}")
    expect(page.locator("select[name=kind]")).to_have_value("offer")
    phone.shoot(screenshots, "offers")


def test_paging_links_go_forth_and_back(site: Site, phone: Phone) -> None:
    page = phone.page
    page.goto(site.board_url)
    first = _titles(page)
    assert len(first) == PAGE_SIZE and first[0] in ("Drinking water", "Insulin, cold chain")
    expect(page.locator("p.meta")).to_contain_text("page 1 of 2")
    page.locator("a[rel=next]").tap()
    page.wait_for_url(re.compile(r"[?&]page=2(&|$)"))
    second = _titles(page)
    assert len(second) == site.demo.items - PAGE_SIZE and not set(first) & set(second)
    expect(page.locator("p.meta")).to_contain_text("page 2 of 2")
    assert page.locator("a[rel=next]").count() == 0
    page.locator("a[rel=prev]").tap()
    page.wait_for_url(re.compile(r"/b/[0-9a-f]{64}\?(?!.*page=)"))
    assert _titles(page) == first


def test_an_item_page_shows_its_pledges(site: Site, phone: Phone) -> None:
    page = phone.page
    page.goto(site.board_url)
    page.locator(".items a", has_text="Drinking water").tap()
    page.wait_for_url(f"**/i/{site.demo.pledged}")
    expect(page.locator("h1")).to_have_text("Drinking water")
    expect(page.locator("dl")).to_contain_text("30 of 40 litres")
    pledges = page.locator(".claims li")
    expect(pledges).to_have_count(1)
    expect(pledges).to_contain_text("Bashir")
    expect(pledges).to_contain_text("10 litres")
    expect(pledges).to_contain_text("by noon, from the well")
    expect(pledges.locator("code.fp")).to_have_text(re.compile(r"^[a-z2-7]{4}-[a-z2-7]{4}$"))


def test_hostile_titles_are_shown_as_text(site: Site, phone: Phone) -> None:
    page = phone.page
    for url in (site.board_url, site.item_url(site.demo.hostile)):
        page.goto(url)
        expect(page.get_by_text(HOSTILE).first).to_be_visible()
        assert page.locator("main script, main img").count() == 0
    page.goto(site.item_url(site.demo.hostile))
    expect(page.locator("h1")).to_have_text(HOSTILE)
    expect(page.locator(".details")).to_have_text(HOSTILE)
    assert phone.dialogs == []


@pytest.mark.parametrize("phone", [True], ids=["js"], indirect=True)
def test_the_csp_blocks_an_inline_script(site: Site, phone: Phone) -> None:
    """The served page with an inline script slipped in (as a bug in escaping would):
    the script does not run, and Chromium reports the CSP violation. Without the CSP
    header the same script runs, so the check can tell."""
    page = phone.page
    inline = b"<script>document.documentElement.dataset.ran = 'yes'</script></main>"

    def inject(route: Route, request: Request, *, keep_csp: bool) -> None:
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items()
                   if keep_csp or k != "content-security-policy"}
        route.fulfill(response=response, headers=headers,
                      body=response.body().replace(b"</main>", inline))

    for keep_csp, ran in ((True, None), (False, "yes")):
        page.unroute("**/*")
        page.route(f"{site.board_url}", lambda r, q, k=keep_csp: inject(r, q, keep_csp=k))
        page.goto(site.board_url)
        assert page.evaluate("document.documentElement.dataset.ran") == ran
        violations = page.evaluate("window.__csp")
        assert violations == (["script-src-elem"] if keep_csp else [])
    assert any("Content Security Policy" in line for line in phone.console)
    assert phone.dialogs == []


@pytest.mark.slow
def test_bytes_of_a_10000_item_board_for_the_record(
        browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints what a phone downloads for the first page of a 10,000-item board and for
    every asset it loads (the issue's goals: < 60 KB and < 200 KB); asserts only that
    the page is paged."""
    data_dir = tmp_path / "big"
    board = seed_big_board(data_dir, 10_000)
    context = phone_context(browser)
    sizes: dict[str, int] = {}

    def on_finished(request: Request) -> None:
        got = request.sizes()
        sizes[request.url] = got["responseHeadersSize"] + got["responseBodySize"]

    context.on("requestfinished", on_finished)
    try:
        with WebThread(data_dir) as web:
            page = context.new_page()
            Site(web.url, DemoBoard(board, "", "", 0, 0), data_dir).pair(page)
            sizes.clear()  # (what pairing loaded does not count)
            url = f"{web.url}/b/{board}"
            response = page.goto(url)
            assert response is not None and response.ok
            page.wait_for_load_state("networkidle")
            body = response.body()
            parts = page.evaluate("""() => Object.fromEntries(
                [['header', '.bar'], ['filters', 'form.filters'], ['items', 'ul.items'],
                 ['paging', 'nav.pages']].map(([k, s]) =>
                    [k, new TextEncoder().encode(document.querySelector(s).outerHTML).length]))""")
            count = page.locator(".items li").count()
    finally:
        context.close()
    assert count == PAGE_SIZE
    document = sizes[url]
    total = sum(sizes.values())
    with capsys.disabled():
        print(f"\n10,000-item board, first page over the wire: {document:,} B "
              f"(goal < {FIRST_PAGE_BUDGET:,}); body {len(body):,} B, "
              f"{len(gzip.compress(body)):,} B if gzipped; {len(body) // count:,} B an item"
              f" (parts: {parts})")
        for asset, size in sorted(sizes.items()):
            print(f"  {size:>8,} B  {asset.removeprefix(web.url)}")
        print(f"  {total:>8,} B  in all ({len(sizes)} requests; goal < {ALL_ASSETS_BUDGET:,})")


def test_a_member_posts_a_need_and_another_phone_pledges_on_it(
        site: Site, phone: Phone, browser: Browser, screenshots: Path) -> None:
    """The issue's flow on real pages: a phone paired from its invite link posts a
    need with the form; a second phone (another browser context, another member)
    pledges on it; the first sees the pledge, with the second's name, on its page."""
    page = phone.page
    title = f"Tarpaulins ({'js' if phone.javascript else 'no-js'})"
    page.goto(site.board_url)
    page.locator("details.post summary").tap()
    page.fill("#title", title)
    page.select_option("#category", "shelter")
    page.select_option("#urgency", "high")
    page.fill("#quantity", "12")
    page.locator("details.post button[type=submit]").tap()
    page.wait_for_url(re.compile(r"/i/[0-9a-f]{32}$"))
    expect(page.locator("h1")).to_have_text(title)
    item_url = page.url
    other = phone_context(browser, javascript=phone.javascript)
    try:
        second = other.new_page()
        site.pair(second, "Dana")
        second.goto(item_url)
        second.fill("#quantity", "5")
        second.locator("form[action$='/pledge'] button[type=submit]").tap()
        second.wait_for_url(item_url)
        expect(second.get_by_role("button", name="Cancel my pledge")).to_be_visible()
    finally:
        other.close()
    page.goto(item_url)
    expect(page.locator(".claims li")).to_contain_text("Dana")
    expect(page.locator("dl")).to_contain_text("7 of 12")
    phone.shoot(screenshots, "item-with-pledge")


def test_an_arabic_phone_gets_a_right_to_left_page(site: Site, browser: Browser,
                                                   screenshots: Path) -> None:
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
        has_touch=True, locale="ar-EG", extra_http_headers={"accept-language": "ar-EG,ar"})
    try:
        page = context.new_page()
        site.pair(page, "ليلى")
        page.goto(site.board_url)
        assert page.evaluate("document.documentElement.dir") == "rtl"
        assert page.evaluate("getComputedStyle(document.body).direction") == "rtl"
        _assert_fits_the_phone(page)
        (screenshots / "board-ar.png").write_bytes(page.screenshot())
    finally:
        context.close()


@pytest.fixture
def live_site(browser: Browser, tmp_path: Path) -> Iterator[Site]:
    """A board of its own for the live tests (they change it), served by a node."""
    data_dir = tmp_path / "amina"
    demo = seed_demo_board(data_dir, fillers=0)
    with WebThread(data_dir) as web:
        yield Site(web.url, demo, data_dir, web.node_address)


def _live_phone(browser: Browser, site: Site, name: str) -> Page:
    context = phone_context(browser)
    context.add_init_script(_VIOLATIONS)
    page = context.new_page()
    site.pair(page, name)
    return page


def _mark(page: Page) -> None:
    """Mark the loaded document: a reload would lose the mark."""
    page.evaluate("window.__here = true")
    page.wait_for_function("() => document.querySelector('[data-live]') !== null")


def _not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__here") is True, "the page was reloaded"
    assert page.evaluate("window.__csp") == []


def test_a_need_from_another_process_appears_without_reloading(
        browser: Browser, live_site: Site) -> None:
    page = _live_phone(browser, live_site, "Chidi")
    page.goto(live_site.board_url)
    _mark(page)
    page.locator("details.post summary").tap()
    page.fill("#title", "Half-typed")  # outside the live regions: never touched
    expect(page.locator("p.totals")).to_contain_text("7 needs")
    page.wait_for_function("() => !!window.EventSource")
    # the CLI on the node's data dir (as a coordinator at the laptop would post)
    cli = subprocess.run(
        [sys.executable, "-m", "p2paid", "--data-dir", str(live_site.data_dir), "need",
         "add", "Sandbags for the river bank", "--urgency", "critical"],
        capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    expect(page.locator(".items strong", has_text="Sandbags for the river bank")
           ).to_be_visible(timeout=10_000)
    expect(page.locator("p.totals")).to_contain_text("8 needs")
    expect(page.locator("#title")).to_have_value("Half-typed")
    _not_reloaded(page)
    page.context.close()


def test_a_pledge_from_another_phone_appears_on_the_item_page(
        browser: Browser, live_site: Site) -> None:
    watcher = _live_phone(browser, live_site, "Chidi")
    pledger = _live_phone(browser, live_site, "Dara")
    water = live_site.item_url(live_site.demo.pledged)
    watcher.goto(water)
    _mark(watcher)
    watcher.fill("#note", "I could bring some too")  # typing while the pledge comes
    expect(watcher.locator(".claims li")).to_have_count(1)
    pledger.goto(water)
    pledger.fill("#quantity", "5")
    pledger.get_by_role("button", name="Pledge").tap()
    pledger.wait_for_url(water)
    expect(watcher.locator(".claims li")).to_have_count(2, timeout=10_000)
    expect(watcher.locator(".claims")).to_contain_text("Dara")
    expect(watcher.locator("dl")).to_contain_text("25 of 40 litres")
    expect(watcher.locator("#note")).to_have_value("I could bring some too")
    _not_reloaded(watcher)
    watcher.context.close()
    pledger.context.close()


def test_a_need_posted_on_another_node_appears_without_reloading(
        browser: Browser, live_site: Site, tmp_path: Path) -> None:
    """The issue's flow: a post made with the CLI on another node (its own process and
    data dir, syncing with the serving node over 127.0.0.1) reaches the phone's open
    page by itself."""
    other = tmp_path / "other-node"
    with open_store(live_site.data_dir) as store:
        invite = store.board().invite()
    with open_store(other) as store:
        store.join(invite, display_name="Esi")
    host, port = live_site.node_address
    node = Service.p2paid(["run", "--no-mdns", "--listen", "127.0.0.1:0", "--peer",
                           f"{host}:{port}", "--data-dir", str(other)], tmp_path / "other.log")
    try:
        node.wait_for(r"synced \d+ new needs")  # (the first sync with the serving node)
        page = _live_phone(browser, live_site, "Chidi")
        page.goto(live_site.board_url)
        _mark(page)
        page.wait_for_function("() => !!window.EventSource")
        posted = run(["need", "add", "Boats for the flooded street", "--urgency", "critical",
                      "--data-dir", str(other)], os.environ)
        assert posted.returncode == 0, posted.stderr
        expect(page.locator(".items strong", has_text="Boats for the flooded street")
               ).to_be_visible(timeout=15_000)
        _not_reloaded(page)
        page.context.close()
    finally:
        node.kill()
