"""Helpers for the browser tests: a node's web interface served from a background
thread, a demo board to look at, and a headless Chromium that passes for a phone.

The server runs its own ``trio.run`` in a thread, so that a test's synchronous
Playwright calls (which block the calling thread) never block the server.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Final, final

import trio
from playwright.sync_api import Browser, BrowserContext, Playwright

from p2paid.board.store import open_store
from p2paid.node.node import open_node
from p2paid.web import serve_web
from p2paid.web.limits import WebLimits

__all__ = [
    "CHROMIUM",
    "HOSTILE",
    "PHONE_WIDTH",
    "DemoBoard",
    "WebThread",
    "chromium_path",
    "launch_chromium",
    "phone_context",
    "seed_big_board",
    "seed_demo_board",
]

#: Debian's Chromium (``apt install chromium``); Playwright never downloads one here.
CHROMIUM: Final = Path("/usr/bin/chromium")
PHONE_WIDTH: Final = 360
PHONE_HEIGHT: Final = 740
MOBILE_USER_AGENT: Final = ("Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 "
                            "(KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36")
HOSTILE: Final = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
#: A hang guard for the server thread, not a timing assertion.
STARTUP_TIMEOUT: Final = 120.0
#: Chromium resolves no name (nothing but 127.0.0.1 is ever dialled) and uses no proxy.
_OFFLINE_ARGS: Final = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--no-proxy-server")


def chromium_path() -> Path | None:
    """Where Chromium is installed, or None."""
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def launch_chromium(playwright: Playwright, executable: Path) -> Browser:
    """Headless Chromium; without its sandbox as root (Chromium refuses to start
    sandboxed as root)."""
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      chromium_sandbox=os.geteuid() != 0,
                                      args=list(_OFFLINE_ARGS))


def phone_context(browser: Browser, *, javascript: bool = True) -> BrowserContext:
    """A context that looks like a small Android phone: 360x740 CSS px at 2x, touch."""
    return browser.new_context(
        viewport={"width": PHONE_WIDTH, "height": PHONE_HEIGHT}, device_scale_factor=2,
        is_mobile=True, has_touch=True, user_agent=MOBILE_USER_AGENT,
        java_script_enabled=javascript, locale="en-GB", service_workers="block")


@final
@dataclass(frozen=True, slots=True)
class DemoBoard:
    """What :func:`seed_demo_board` made."""

    board: str  #: the board's id, hex
    pledged: str  #: the need Bashir pledged on ("Drinking water")
    hostile: str  #: a need whose title, details and location are markup
    items: int
    offers: int  #: open offers


def seed_demo_board(data_dir: Path, *, fillers: int = 30) -> DemoBoard:
    """A board as a camp's coordinator sees it: a few real needs and offers of every
    urgency, one hostile item, one too long to wrap nicely, and ``fillers`` low-urgency
    needs so that it takes more than one page; Bashir, a second member, pledges on the
    drinking water (his pledge arrives by bundle, before any node starts)."""
    other = data_dir.parent / f"{data_dir.name}-bashir"
    there, back = data_dir.parent / "to-bashir.bundle", data_dir.parent / "from-bashir.bundle"
    with open_store(data_dir) as store:
        board = store.create_board("Riverside mutual aid", display_name="Amina")
        with board.group():
            water = board.post_need("Drinking water", quantity=40, unit="litres",
                                    category="water", location="north camp",
                                    urgency="critical", details="For the families by the gate.")
            board.post_need("Insulin, cold chain", category="medical", urgency="critical",
                            location="clinic tent")
            board.post_need("Baby formula (stage 1)", quantity=12, unit="tins", category="food",
                            urgency="high")
            board.post_need("Tents for 3 families", quantity=3, category="shelter",
                            urgency="high", location="east field")
            board.post_need("مترجم عربي للعيادة", category="information", urgency="normal")
            board.post_need("Phone chargers, USB-C and micro-USB " + "x" * 80,
                            category="other", location="https://example.org/" + "a" * 60)
            hostile = board.post_need(HOSTILE, details=HOSTILE, location=HOSTILE)
            offers = [board.post_offer("Van with driver, Tuesdays", category="transport"),
                      board.post_offer("Hot meals for 50, evenings", category="food",
                                       quantity=50, unit="meals"),
                      board.post_offer("Spare sleeping bags", category="shelter", quantity=8)]
            for i in range(fillers):
                board.post_need(f"Volunteer shift {i + 1:02}", category="other", urgency="low")
        invite = board.invite()
        store.export_bundle(there)
    with open_store(other) as store:
        store.join(invite, display_name="Bashir")
        store.import_bundle(there)
        store.board().claim(water.id, quantity=10, note="by noon, from the well")
        store.export_bundle(back)
    with open_store(data_dir) as store:
        store.import_bundle(back)
    return DemoBoard(board.id.hex(), water.id, hostile.id, items=10 + fillers,
                     offers=len(offers))


def seed_big_board(data_dir: Path, items: int) -> str:
    """A board of ``items`` needs (a tenth of them critical) and its id, hex."""
    with open_store(data_dir) as store:
        board = store.create_board("Big camp", display_name="Amina")
        with board.group():
            for i in range(items):
                board.post_need(f"Need number {i:05} for the camp", category="food",
                                quantity=i % 50 + 1, unit="kg", location="sector 4",
                                urgency="critical" if i % 10 == 0 else "normal")
        board.save_snapshot()
        return board.id.hex()


@final
class WebThread:
    """A node on ``data_dir`` serving its web interface on 127.0.0.1 (a free port), in
    a trio loop of its own in a background thread, from ``with`` to its end."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="web-server", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.node_address: tuple[str, int] = ("", 0)

    def __enter__(self) -> WebThread:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise RuntimeError("the web server did not start")
        if self._error is not None:
            raise RuntimeError("the web server did not start") from self._error
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._scope is not None and self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(STARTUP_TIMEOUT)
        assert not self._thread.is_alive(), "the web server did not stop"
        if self._error is not None and kind is None:
            raise RuntimeError("the web server failed") from self._error

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported by __enter__ or __exit__
            self._error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        with trio.CancelScope() as scope:
            async with open_node(self._data_dir, listen=("127.0.0.1", 0), mdns=False) as node, \
                    trio.open_nursery() as nursery:
                # (every test pairs a phone from 127.0.0.1: no pairing limit here)
                host, port = await nursery.start(partial(
                    serve_web, node, "127.0.0.1", 0,
                    limits=WebLimits(pairing_per_minute=6000, pairing_burst=1000)))
                self.url = f"http://{host}:{port}"
                assert node.listen_address is not None
                self.node_address = node.listen_address  # (peers sync with it here)
                self._token = trio.lowlevel.current_trio_token()
                self._scope = scope
                self._ready.set()
