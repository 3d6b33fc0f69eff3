"""One node or one relay per data dir, and never one on the other's.

Two nodes on one data dir would share a node key. ``open_node`` and ``serve_relay``
hold the data dir's lock while they run, so library users are protected as well as
the CLI; the CLI's other commands (``list``, ``status``, ``need add``, ...) keep
working beside a running node. A data dir ``run`` creates is logged, so a mistyped
``--data-dir`` does not pass unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from cli_helpers import Service, cli_env, run

import p2paid
from p2paid.errors import UsageError
from p2paid.relay.server import RelayOptions, serve_relay
from p2paid.storage.lock import DataDirBusyError

LOCAL = ("127.0.0.1", 0)
RUN = ["run", "--no-mdns", "--listen", "127.0.0.1:0"]
RELAY = ["relay", "--listen", "127.0.0.1:0"]


# ---------------------------------------------------------------------------- library


async def test_a_second_node_on_a_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    async with p2paid.open_node(data_dir, listen=LOCAL, mdns=False):
        with pytest.raises(DataDirBusyError) as caught:
            async with p2paid.open_node(data_dir, listen=LOCAL, mdns=False):
                pytest.fail("two nodes run on one data dir")
        assert caught.value.pid == os.getpid()
        assert f"a p2paid node (pid {os.getpid()}) is already running on {data_dir}" in str(
            caught.value)
        with p2paid.open_store(data_dir) as store:  # the store itself stays open to others
            store.create_board("Camp")
    async with p2paid.open_node(data_dir, listen=LOCAL, mdns=False) as node:  # free again
        assert [b.name for b in node.boards()] == ["Camp"]


async def test_a_node_given_an_open_store_takes_the_lock_too(tmp_path: Path) -> None:
    with p2paid.open_store(tmp_path / "n") as store:
        async with p2paid.open_node(store=store, listen=LOCAL, mdns=False):
            with pytest.raises(DataDirBusyError):
                async with p2paid.open_node(tmp_path / "n", listen=LOCAL, mdns=False):
                    pass


async def test_a_relay_and_a_node_refuse_each_others_data_dirs(tmp_path: Path) -> None:
    relay_dir, node_dir = tmp_path / "r", tmp_path / "n"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_relay, relay_dir, RelayOptions(listen=LOCAL))
        with pytest.raises(DataDirBusyError, match=r"a p2paid relay \(pid \d+\) is already"):
            await serve_relay(relay_dir, RelayOptions(listen=LOCAL))
        with pytest.raises(UsageError, match="is a relay's data dir"):
            async with p2paid.open_node(relay_dir, listen=LOCAL, mdns=False):
                pass
        nursery.cancel_scope.cancel()
    with pytest.raises(UsageError, match="is a relay's data dir"):  # running or not
        p2paid.open_store(relay_dir)
    with p2paid.open_store(node_dir) as store:
        store.node_key  # noqa: B018 - an 'init'ed data dir: a key, no board yet
    with pytest.raises(UsageError, match="is a node's data dir"):
        await serve_relay(node_dir, RelayOptions(listen=LOCAL))


# ---------------------------------------------------------------------------- the CLI


def _one_line(done_stderr: str) -> str:
    lines = done_stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done_stderr, done_stderr
    return lines[0]


def test_a_second_run_is_refused_and_the_other_commands_work_beside_it(
        tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    data_dir = tmp_path / "node"
    d = ["--data-dir", str(data_dir)]
    for argv in (["init"], ["board", "create", "Camp"]):
        assert run([*argv, *d], env).returncode == 0
    first = Service.p2paid([*RUN, *d], tmp_path / "first.log", env)
    try:
        first.wait_for(r"listening on 127\.0\.0\.1:\d+")
        assert "created a new data dir" not in first.output  # it was there already
        second = run([*RUN, *d], env)
        assert second.returncode == 1
        assert _one_line(second.stderr) == (
            f"p2paid: a p2paid node (pid {first.proc.pid}) is already running on "
            f"{data_dir}; stop it first, or give this one another --data-dir")
        relay = run([*RELAY, *d], env)
        assert relay.returncode == 1
        assert _one_line(relay.stderr) == (f"p2paid: {data_dir} is a node's data dir; give "
                                           "the relay its own (--data-dir DIR)")
        for argv in (["need", "add", "Water"], ["list"], ["status"]):
            done = run([*argv, *d], env)
            assert done.returncode == 0, (argv, done.stderr)
        assert "running, listening on 127.0.0.1:" in done.stdout
        first.wait_for(r"Camp: anonymous \(\S+\) posted need 'Water'")  # picked up
    finally:
        assert first.interrupt() == 0, first.output


def test_run_on_a_mistyped_data_dir_says_it_created_one(tmp_path: Path) -> None:
    typo = tmp_path / "nodee"
    node = Service.p2paid([*RUN, "--data-dir", str(typo)], tmp_path / "node.log",
                          cli_env(tmp_path))
    try:
        node.wait_for(r"listening on 127\.0\.0\.1:\d+")
        [line] = [x for x in node.output.splitlines() if "data dir" in x and "created" in x]
        assert line.endswith(f" created a new data dir at {typo}")
    finally:
        assert node.interrupt() == 0, node.output


def test_run_on_a_relays_data_dir_and_a_second_relay_are_refused(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    relay_dir = tmp_path / "relay"
    d = ["--data-dir", str(relay_dir)]
    relay = Service.p2paid([*RELAY, *d], tmp_path / "relay.log", env)
    try:
        relay.wait_for(r"relay address: \S+")
        second = run([*RELAY, *d], env)
        assert second.returncode == 1
        assert _one_line(second.stderr) == (
            f"p2paid: a p2paid relay (pid {relay.proc.pid}) is already running on "
            f"{relay_dir}; stop it first, or give this one another --data-dir")
        node = run([*RUN, *d], env)
        assert node.returncode == 1
        assert _one_line(node.stderr) == (f"p2paid: {relay_dir} is a relay's data dir; give "
                                          "the node its own (--data-dir DIR)")
        status = run(["relay", "status", *d], env)  # read-only beside the running relay
        assert status.returncode == 0 and "running" in status.stdout, status.stderr
    finally:
        assert relay.interrupt() == 0, relay.output
