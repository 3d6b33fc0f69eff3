"""A relay that a member publishes is a suggestion for everyone else (issue 7, finding 9).

A hostile member who joined a board as "Ana" publishes two relay hints in its own
section: a real relay (``tests/relay_helpers.py``) and a plain listening socket that
records every connection. The victim's running node (127.0.0.1, mDNS off, no
listener) must dial neither: ``p2paid relay list``, run as a separate process on
its data dir, shows both as suggested, by whom; after ``p2paid relay accept`` the
node syncs through the accepted relay, and still never touches the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from node_helpers import LOCALHOST, make_member, start_node, titles, wait_until
from relay_helpers import start_relay

from p2paid.board.store import open_store
from p2paid.core.identity import short_fingerprint
from p2paid.core.relayaddr import RelayAddress
from p2paid.node.relays import RELAY_REFRESH_INTERVAL

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def _tripwire(nursery: trio.Nursery) -> tuple[int, list[str]]:
    """A TCP listener on 127.0.0.1 that records (and closes) every connection."""
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    port: int = listeners[0].socket.getsockname()[1]
    accepted: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(str(stream.socket.getpeername()))
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return port, accepted


async def _cli(tmp_path: Path, data_dir: Path, *args: str) -> str:
    """``p2paid --data-dir DIR ...`` in a subprocess; its stdout (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
    env.update(HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")
    done = await trio.run_process(
        [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), *args],
        capture_stdout=True, capture_stderr=True, check=False, env=env)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.decode()


async def test_a_suggested_relay_is_dialled_only_after_it_is_accepted(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay")
            trap_port, trapped = await _tripwire(nursery)
            trap = str(RelayAddress(LOCALHOST, trap_port, bytes(range(32))))
            invite = make_member(tmp_path / "a", None, "Ana")
            # Chen chose the relay himself (his node's config) and posts through it.
            make_member(tmp_path / "c", invite, "Chen")
            with open_store(tmp_path / "c") as store:
                store.add_relay(relay.address)
            # The hostile member joins as "Ana" and suggests both addresses.
            with open_store(tmp_path / "h") as store:
                hostile = store.join(invite, display_name="Ana")
                hostile.publish_relays([relay.address, trap])
                hostile_key = short_fingerprint(hostile.author)
                bundle = tmp_path / "hostile.p2paid"
                store.export_bundle(bundle)

            c = await start_node(nursery, tmp_path / "c", listen=False)
            await c.node.board().post_need("Insulin, cold chain")
            await wait_until(lambda: relay.relay.status()["connections"] == 1
                             and relay.relay.replica.stats.stored >= 2)
            a = await start_node(nursery, tmp_path / "a", listen=False)
            board = a.node.board()
            # The hostile's envelopes reach Ana's data dir as a bundle, imported by
            # another process while her node runs.
            with open_store(tmp_path / "a") as other:
                assert other.import_bundle(bundle).accepted >= 1
            await wait_until(lambda: len(board.board.suggested_relays()) == 2)
            a.node.refresh_relays()
            assert not [t for t in a.node.dialer.targets.values() if t.source == "relay"]
            await trio.sleep(RELAY_REFRESH_INTERVAL + 1)  # the node re-plans meanwhile
            assert trapped == []
            assert relay.relay.status()["connections"] == 1  # Chen only
            assert a.node.peers() == [] and "Insulin, cold chain" not in titles(board)

            listed = json.loads(await _cli(tmp_path, tmp_path / "a", "relay", "list", "--json"))
            suggested = {r["relay"]: r for r in listed if r["source"] == "suggested"}
            assert set(suggested) == {relay.address, trap}
            assert not [r for r in listed if r["source"] != "suggested"]
            for row in suggested.values():
                [by] = row["suggested_by"]
                assert (by["name"], by["fingerprint"][:9], by["name_shared"]) == (
                    "Ana", hostile_key, True)
                assert row["boards"] == [board.id.hex()] and row["board_name"] == "Aid"
            text = await _cli(tmp_path, tmp_path / "a", "relay", "list")
            assert f"suggested by Ana ({hostile_key}, name shared)" in text

            out = await _cli(tmp_path, tmp_path / "a", "relay", "accept", relay.address)
            assert f"board 'Aid' now syncs through {relay.address}" in out
            await wait_until(lambda: "Insulin, cold chain" in titles(board))
            assert {p.node_id for p in a.node.peers()} == {relay.key.hex()}
            await a.node.wait_in_sync()
            assert trapped == []
            nursery.cancel_scope.cancel()


def test_accept_reject_and_remove_from_the_command_line(tmp_path: Path) -> None:
    """``relay accept`` of an address nobody suggests is one clear error; ``reject``
    moves a suggestion out of the list of suggestions (it stays listed as rejected);
    ``accept`` after ``reject`` uses it; ``remove --board`` stops using it."""
    env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
    env.update(HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "p2paid", "--data-dir",
                               str(tmp_path / "a"), *args], capture_output=True, text=True,
                              env=env, timeout=60)
        assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
        return done

    suggested = str(RelayAddress(LOCALHOST, 9, bytes(range(32))))
    invite = make_member(tmp_path / "a", None, "Ana")
    with open_store(tmp_path / "h") as store:
        store.join(invite, display_name="Bo").publish_relays([suggested])
        store.export_bundle(tmp_path / "h.p2paid")
    cli("bundle", "import", str(tmp_path / "h.p2paid"))

    nobody = str(RelayAddress(LOCALHOST, 10, bytes(32)))
    failed = cli("relay", "accept", nobody, ok=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("p2paid: no member") and failed.stderr.count("\n") == 1

    def sources() -> dict[str, str]:
        return {r["relay"]: r["source"] for r in json.loads(cli("relay", "list", "--json").stdout)}

    assert sources() == {suggested: "suggested"}
    cli("relay", "reject", suggested)
    assert sources() == {suggested: "rejected"}
    assert "rejected by you" in cli("relay", "list").stdout
    cli("relay", "accept", suggested, "--board", "Aid")
    assert sources() == {suggested: "board"}
    assert "stopped using" in cli("relay", "remove", suggested, "--board", "Aid").stdout
    assert sources() == {suggested: "suggested"}
