"""``p2paid run --web`` and ``p2paid web ...`` end to end, as a coordinator uses them:
real processes, a phone pairing from the invite URL over a real socket."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from cli_helpers import Service, cli_env, run

from p2paid.board.store import open_store


def _pair(url: str, client: httpx.Client, name: str) -> httpx.Response:
    page = client.get(url)
    assert page.status_code == 200, page.text
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    return client.post(url, data={"nonce": nonce.group(1), "name": name})


def test_a_coordinator_serves_phones_invites_and_revokes_one(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    data = tmp_path / "node"
    with open_store(data) as store:
        board = store.create_board("Riverside", display_name="Amina")
    d = ["--data-dir", str(data)]
    node = Service.p2paid(["run", "--no-mdns", "--listen", "127.0.0.1:0",
                           "--web", "127.0.0.1:0", *d], tmp_path / "run.log", env)
    try:
        base = node.wait_for(r"web interface for members' phones at (http://\S+) ").group(1)
        made = run(["web", "invite", "--uses", "2", "-o", str(tmp_path / "poster.svg"),
                    "--json", *d], env)
        assert made.returncode == 0, made.stderr
        invite = json.loads(made.stdout)
        assert invite["url"].startswith(f"{base}/pair/")
        assert (tmp_path / "poster.svg").read_text().count(invite["url"]) == 1
        with httpx.Client(base_url=base) as phone:
            paired = _pair(invite["url"], phone, "Amal")
            assert paired.status_code == 303
            board_url = f"/b/{board.id.hex()}"
            page = phone.get(board_url)
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf
            posted = phone.post(f"{board_url}/post", data={
                "csrf": csrf.group(1), "kind": "need", "title": "Blankets"})
            assert posted.status_code == 303
            devices = run(["web", "devices", "--json", *d], env)
            [device] = json.loads(devices.stdout)
            assert device["name"] == "Amal" and device["posts"] == 1
            invites = run(["web", "invites", "--json", *d], env)
            assert json.loads(invites.stdout)[0]["uses_left"] == 1
            revoked = run(["web", "revoke", device["id"], *d], env)
            assert revoked.returncode == 0 and "revoked" in revoked.stdout
            assert phone.get(board_url).status_code == 404  # cut off at once
        listed = run(["list", *d], env)
        assert "Blankets" in listed.stdout  # its post stays
        assert node.interrupt() == 0
    finally:
        node.kill()


def test_a_web_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    env = cli_env(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = run(["run", "--no-mdns", "--listen", "127.0.0.1:0", "--web",
                    f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "node")], env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"p2paid: port {port} on 127.0.0.1 is in use (another program?); choose another "
        "with --web HOST:PORT")


def test_web_commands_refuse_mistakes_in_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    data = tmp_path / "node"
    with open_store(data) as store:
        store.create_board("Riverside")
    d = ["--data-dir", str(data)]
    cases = {
        ("web", "invite", *d): (1, "no node serves the web interface"),
        ("web", "invite", "--expires", "soon", *d): (2, "is not a duration"),
        ("web", "invite", "--uses", "0", *d): (2, "must be at least 1"),
        ("web", "invite", "--url", "http://10.0.0.1:8080", "-o", str(tmp_path / "p.jpg"),
         *d): (1, "a poster is"),
        ("web", "invite", "--revoke", "nothing", *d): (1, "no invite with id"),
        ("web", "revoke", "nothing", *d): (1, "no paired device"),
        ("web", "pair", *d): (2, "--as-me"),
    }
    for argv, (status, needle) in cases.items():
        done = run(argv, env)
        assert done.returncode == status, (argv, done.stderr)
        assert "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert needle in line, (argv, line)
