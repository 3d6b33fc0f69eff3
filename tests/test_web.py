"""The web interface: pages served from a running node, escaping, paging, the Host
check and the security headers; through the ASGI app and through a real socket."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2paid.board.model import ItemKind, Urgency
from p2paid.board.store import open_store
from p2paid.node.node import Node, open_node
from p2paid.web import create_app, serve_web
from p2paid.web.hosts import HostAllowList, host_name
from p2paid.web.pages import PAGE_SIZE, BoardQuery
from p2paid.web.webstore import WebStore

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


@asynccontextmanager
async def running(data_dir: Path, *, pair: bool = True
                  ) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    """A node on ``data_dir`` (its one board) and a client for its web app: a phone
    paired through the real pairing pages, unless ``pair`` is False."""
    async with open_node(data_dir, listen=None, mdns=False) as node:
        web = WebStore(data_dir)
        app = create_app(node, web=web)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            if pair:
                await pair_phone(client, web, node.board().id, "Chidi")
            yield node, client
        web.close()


async def pair_phone(client: httpx.AsyncClient, web: WebStore, board_id: bytes,
                     name: str) -> None:
    """Pair ``client`` as a phone would: open the invite link, send the form."""
    token, _ = web.create_invite(board_id)
    page = await client.get(f"/pair/{token}")
    assert page.status_code == 200, page.text
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    done = await client.post(f"/pair/{token}", data={"nonce": nonce.group(1), "name": name})
    assert done.status_code == 303, done.text


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "the page has no form"
    return found.group(1)


def _board(data_dir: Path, name: str = "Riverside") -> str:
    with open_store(data_dir) as store:
        return store.create_board(name, display_name="Amina").id.hex()


def _pledge_as_another_member(data_dir: Path, item_id: str, note: str,
                              quantity: int | None = None) -> None:
    """Bashir, another member, pledges on ``item_id``; his pledge reaches ``data_dir``
    by bundle (before its node starts)."""
    other, there, back = (data_dir.parent / n for n in ("bashir", "a.bundle", "b.bundle"))
    with open_store(data_dir) as store:
        invite = store.board().invite()
        store.export_bundle(there)
    with open_store(other) as store:
        store.join(invite, display_name="Bashir")
        store.import_bundle(there)
        store.board().claim(item_id, quantity=quantity, note=note)
        store.export_bundle(back)
    with open_store(data_dir) as store:
        store.import_bundle(back)


async def test_the_boards_page_lists_boards_and_escapes_their_names(tmp_path: Path) -> None:
    _board(tmp_path, HOSTILE)
    async with running(tmp_path) as (_node, client):
        page = await client.get("/", follow_redirects=True)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in page.text and "onerror=alert" not in page.text.replace(
        "&lt;img src=x onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text


async def test_hostile_titles_and_details_are_shown_not_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "amina"
    board_hex = _board(data_dir)
    with open_store(data_dir) as store:
        need = store.board().post_need(HOSTILE, details=HOSTILE, location=HOSTILE)
    _pledge_as_another_member(data_dir, need.id, HOSTILE)
    async with running(data_dir) as (_node, client):
        for path in (f"/b/{board_hex}", f"/b/{board_hex}/i/{need.id}"):
            page = await client.get(path)
            assert page.status_code == 200
            assert "<script>" not in page.text and "<img" not in page.text
            assert "&lt;script&gt;" in page.text


async def test_a_big_board_is_paged_most_urgent_first(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with open_store(tmp_path) as store:
        board = store.board()
        with board.group():
            for i in range(100):
                board.post_need(f"need {i:03}", urgency="low" if i else "critical")
            board.post_offer("spare tent")
    async with running(tmp_path) as (_node, client):
        first = await client.get(f"/b/{board_hex}")
        assert first.status_code == 200
        assert first.text.count('class="item ') == PAGE_SIZE
        assert first.text.index("need 000") < first.text.index("need 099")  # critical first
        assert "101 of 101 items" in first.text and "page 1 of 4" in first.text
        last = await client.get(f"/b/{board_hex}", params={"page": "4"})
        assert last.text.count('class="item ') == 101 - 3 * PAGE_SIZE
        beyond = await client.get(f"/b/{board_hex}", params={"page": "99"})
        assert "page 4 of 4" in beyond.text  # clamped, not an error
        offers = await client.get(f"/b/{board_hex}", params={"kind": "offer"})
        assert offers.text.count('class="item ') == 1 and "spare tent" in offers.text
        found = await client.get(f"/b/{board_hex}", params={"q": "NEED 05"})
        assert found.text.count('class="item ') == 10
        odd = await client.get(f"/b/{board_hex}", params={"kind": "x", "page": "-1",
                                                         "urgency": "<b>"})
        assert odd.status_code == 200 and "101 of 101 items" in odd.text


async def test_an_item_page_shows_pledges_with_fingerprints(tmp_path: Path) -> None:
    data_dir = tmp_path / "amina"
    board_hex = _board(data_dir)
    with open_store(data_dir) as store:
        need = store.board().post_need("Drinking water", quantity=40, unit="litres",
                                       urgency="high")
    _pledge_as_another_member(data_dir, need.id, "by noon", quantity=10)
    async with running(data_dir) as (node, client):
        page = await client.get(f"/b/{board_hex}/i/{need.id}")
        bashir = next(m for m in node.board().members() if m.name == "Bashir")
    assert page.status_code == 200
    assert "30 of 40 litres" in page.text and "by noon" in page.text and "Bashir" in page.text
    assert bashir.fingerprint.split("-")[0] in page.text


@pytest.mark.parametrize("path", ["/b/zz", "/b/" + "0" * 64, "/nowhere",
                                  "/b/{board}/i/" + "f" * 32, "/b/{board}/i/../.."])
async def test_unknown_pages_are_404(tmp_path: Path, path: str) -> None:
    board_hex = _board(tmp_path)
    async with running(tmp_path) as (_node, client):
        page = await client.get(path.replace("{board}", board_hex))
    assert page.status_code == 404 and "Not found" in page.text


async def test_every_response_carries_the_security_headers(tmp_path: Path) -> None:
    _board(tmp_path)
    async with running(tmp_path) as (_node, client):
        for path in ("/", "/static/style.css", "/nowhere"):
            response = await client.get(path)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(("host", "answered"), [
    ("127.0.0.1", True), ("localhost:8080", True), ("192.168.4.1:8080", True),
    ("[fe80::1]:8080", True), ("evil.example", False), ("evil.example:8080", False),
    ("192.168.4.1.nip.io", False), ("", False), ("a b", False),
])
async def test_only_the_node_s_own_hosts_are_answered(tmp_path: Path, host: str,
                                                      answered: bool) -> None:
    """A DNS-rebinding page reaches the node under its own name: refused (421)."""
    _board(tmp_path)
    async with running(tmp_path) as (_node, client):
        response = await client.get("/", headers={"host": host})
    assert (response.status_code in (200, 303)) is answered  # (303: to the phone's board)
    if not answered:
        assert response.status_code == 421


async def test_served_over_a_real_socket_in_the_node_s_nursery(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with trio.fail_after(20):
        async with open_node(tmp_path, listen=None, mdns=False) as node, \
                trio.open_nursery() as nursery:
            web = WebStore(tmp_path)
            host, port = await nursery.start(partial(serve_web, node, "127.0.0.1", 0, web=web))
            await node.board().post_need("Insulin, cold chain", urgency="critical")
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                await pair_phone(client, web, node.board().id, "Chidi")
                page = await client.get(f"/b/{board_hex}")
                css = await client.get("/static/style.css")
            assert page.status_code == 200 and "Insulin, cold chain" in page.text
            assert css.status_code == 200 and "text/css" in css.headers["content-type"]
            nursery.cancel_scope.cancel()
            web.close()


def test_board_query_reads_a_query_string_leniently() -> None:
    query = BoardQuery.parse({"kind": "need", "urgency": "critical", "status": "any",
                              "q": "  clean   water ", "page": "3"})
    assert query.kind is ItemKind.NEED and query.urgency is Urgency.CRITICAL
    assert query.status is None and query.search == "clean water" and query.page == 3
    assert BoardQuery.parse(query.to_params()) == query
    assert BoardQuery.parse({"page": "0"}).page == 1
    assert BoardQuery.parse({"page": "9" * 50}).page == 1
    assert BoardQuery.parse({}).status == "open"


@given(st.text(max_size=60))
def test_host_headers_never_crash_the_check(header: str) -> None:
    allow = HostAllowList(["board.camp"])
    assert allow.allows(header) in (True, False)
    host = host_name(header)
    assert host is None or ((host == host.lower() and ":" not in host.strip("[]"))
                            or host.count(":") >= 2)


def test_names_are_checked_even_when_any_address_is_allowed() -> None:
    allow = HostAllowList(["Board.Camp."], any_address=True)
    assert allow.allows("board.camp:80") and allow.allows("10.0.0.7")
    assert not allow.allows("other.camp") and not allow.allows("10.0.0.7.evil.example")
    strict = HostAllowList(["10.0.0.7"], any_address=False)
    assert strict.allows("10.0.0.7:8080") and not strict.allows("10.0.0.8")
    assert strict.allows("[::1]:8080")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (as a group's own would be)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "web.crt", folder / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_with_the_group_s_certificate_and_secure_cookies(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    board_hex = _board(data_dir)
    cert, key = _self_signed(tmp_path)
    with trio.fail_after(20):
        async with open_node(data_dir, listen=None, mdns=False) as node, \
                trio.open_nursery() as nursery:
            web = WebStore(data_dir)
            host, port = await nursery.start(partial(
                serve_web, node, "127.0.0.1", 0, web=web, certfile=str(cert),
                keyfile=str(key)))
            trusted = ssl.create_default_context(cafile=str(cert))
            async with httpx.AsyncClient(base_url=f"https://{host}:{port}",
                                         verify=trusted) as client:
                token, _ = web.create_invite(node.board().id)
                page = await client.get(f"/pair/{token}")
                nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
                assert nonce
                done = await client.post(f"/pair/{token}", data={"nonce": nonce.group(1)})
                cookie = done.headers["set-cookie"]
                assert "secure" in cookie.lower() and "httponly" in cookie.lower()
                assert (await client.get(f"/b/{board_hex}")).status_code == 200
            nursery.cancel_scope.cancel()
            web.close()
