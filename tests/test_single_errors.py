"""One error out of ``open_node`` and ``serve_relay``, not an ExceptionGroup of one.

Real nodes and relays on 127.0.0.1: a bind error, an error of the node's own API and
an error raised by the caller inside the block each come out as themselves, so that
``except p2paid.P2paidError`` fires; KeyboardInterrupt and cancellation behave as
without a nursery; several errors at once stay a group.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import p2paid
from p2paid.errors import InviteError, ListenError, UsageError, ValidationError
from p2paid.net.groups import collapse_single_errors, unwrap
from p2paid.node.node import DEFAULT_PORT
from p2paid.relay.server import RelayOptions, serve_relay

LOCAL = ("127.0.0.1", 0)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_port_in_use_is_a_listen_error_out_of_open_node(tmp_path: Path,
                                                               held_port: int) -> None:
    with pytest.raises(p2paid.P2paidError) as caught:
        async with p2paid.open_node(tmp_path / "n", listen=("127.0.0.1", held_port),
                                    mdns=False):
            pytest.fail("the node started on a port in use")
    error = caught.value
    assert isinstance(error, ListenError) and error.address == ("127.0.0.1", held_port)
    assert isinstance(error.__cause__, OSError)
    assert str(error) == (f"port {held_port} on 127.0.0.1 is in use (another p2paid run?); "
                          "choose another with --listen HOST:PORT")


async def test_only_the_default_port_in_use_falls_back_to_a_free_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "p2paid")
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_PORT))
        except OSError:
            pytest.skip(f"port {DEFAULT_PORT} is in use by another program")
        sock.listen()
        async with p2paid.open_node(tmp_path / "n", listen=("127.0.0.1", DEFAULT_PORT),
                                    mdns=False) as node:
            assert node.listen_address is not None
            assert node.listen_address[1] not in (0, DEFAULT_PORT)
    assert (f"port {DEFAULT_PORT} on 127.0.0.1 is in use; listening on a free port "
            "instead") in caplog.messages
    caplog.clear()
    with pytest.raises(ListenError, match="'foo' is not an IP address"):  # no lookup, either
        async with p2paid.open_node(tmp_path / "n", listen=("foo", DEFAULT_PORT), mdns=False):
            pass
    assert not [m for m in caplog.messages if "in use" in m]


async def test_an_invite_error_from_join_comes_out_bare(tmp_path: Path) -> None:
    try:
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False) as node:
            await node.join("p2paid:not-an-invite")
    except p2paid.P2paidError as exc:
        assert isinstance(exc, InviteError)
    else:
        pytest.fail("join accepted a malformed invite")


async def test_a_validation_error_inside_the_block_comes_out_with_its_traceback(
        tmp_path: Path) -> None:
    async def post_nonsense(node: p2paid.Node) -> None:
        board = await node.create_board("Camp")
        await board.post_need("Water", quantity=-3)

    with pytest.raises(ValidationError) as caught:
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False) as node:
            await post_nonsense(node)
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert "post_nonsense" in frames  # where it was raised, not only where it came out
    assert not isinstance(caught.value.__context__, BaseExceptionGroup)


async def test_the_cause_of_an_error_from_the_block_is_kept(tmp_path: Path) -> None:
    root = KeyError("the real reason")
    with pytest.raises(UsageError) as caught:
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False):
            raise UsageError("wrapped") from root
    assert caught.value.__cause__ is root


async def test_cancelling_around_a_node_is_an_ordinary_cancel(tmp_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False):
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with trio.move_on_after(0.2) as timed:  # a timeout inside the block, too
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False):
            await trio.sleep_forever()
    assert timed.cancelled_caught


async def test_several_errors_at_once_stay_a_group(tmp_path: Path) -> None:
    async def fail(message: str) -> None:
        raise ValueError(message)

    with pytest.RaisesGroup(ValueError, ValueError):
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False), \
                trio.open_nursery() as nursery:
            nursery.start_soon(fail, "one")
            nursery.start_soon(fail, "two")


def test_keyboard_interrupt_inside_the_block_comes_out_bare(tmp_path: Path) -> None:
    async def main() -> None:
        async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    # the node let go of its data dir: another one starts on it
    trio.run(_open_and_close, tmp_path / "n")


async def _open_and_close(data_dir: Path) -> None:
    async with p2paid.open_node(data_dir, listen=LOCAL, mdns=False):
        pass


async def test_serve_relay_raises_bind_and_data_dir_errors_bare(tmp_path: Path,
                                                                held_port: int) -> None:
    options = RelayOptions(listen=("127.0.0.1", held_port))
    async with trio.open_nursery() as nursery:  # started as a service, as the CLI does
        with pytest.raises(ListenError, match=r"in use \(another p2paid relay\?\)"):
            await nursery.start(serve_relay, tmp_path / "r", options)
    with p2paid.open_store(tmp_path / "node") as store:
        store.create_board("Camp")
    with pytest.raises(UsageError, match="is a node's data dir"):
        await serve_relay(tmp_path / "node", RelayOptions(listen=LOCAL))
    with pytest.raises(ListenError, match=r"--metrics HOST:PORT"):
        await serve_relay(tmp_path / "r", RelayOptions(listen=LOCAL,
                                                       metrics=("127.0.0.1", held_port)))


def test_unwrap_takes_off_the_groups_of_one() -> None:
    leaf = ValueError("x")
    assert unwrap(ExceptionGroup("", [ExceptionGroup("", [leaf])])) is leaf
    several = ExceptionGroup("", [leaf, ValueError("y")])
    assert unwrap(several) is several
    assert unwrap(ExceptionGroup("", [ExceptionGroup("", [several])])) is several
    with pytest.raises(ValueError) as caught, collapse_single_errors():
        try:
            raise KeyError("before")
        except KeyError:
            raise ExceptionGroup("", [leaf]) from None
    assert caught.value is leaf
