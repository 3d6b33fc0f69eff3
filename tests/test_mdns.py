"""LAN discovery for real: ``p2paid run`` in two network namespaces joined by a veth pair.

Each test builds its own pair of namespaces (see ``netns.py``), runs one node in
each with ``ip netns exec ... python -m p2paid run --listen 0.0.0.0:0`` and no
``--peer``, so mDNS (python-zeroconf over 224.0.0.251 on the veth link) is the
only way they can find each other. Posts are made with the CLI on a node's data
dir while the node runs (it picks up CLI writes within about a second) and read
back with ``list --json`` on the other data dir. Every wait has a deadline; nodes
are stopped with SIGTERM and must exit 0. Skipped, with the reason, where
namespaces cannot be made (not root, no iproute2, no CAP_SYS_ADMIN/netns).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netns import LinkedNamespaces, linked_namespaces, netns_unavailable

pytestmark = pytest.mark.netns

CLI_TIMEOUT = 30
#: How long a post may take to reach the other node by mDNS discovery + sync.
SYNC_TIMEOUT = 20.0
#: How long nodes without discovery are given to (wrongly) find each other.
NO_SYNC_WAIT = 5.0
#: A node must exit within this long of SIGTERM.
STOP_TIMEOUT = 5.0
#: A started node must publish its runtime status within this long.
START_TIMEOUT = 15.0
POLL = 0.25
FOUND = "found a node on the local network"


@pytest.fixture
def ns() -> Iterator[LinkedNamespaces]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"mDNS tests need network namespaces: {reason}")
    with linked_namespaces() as linked:
        yield linked


# ---------------------------------------------------------------------------- processes


@dataclass
class NodeProcess:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """Runs CLI commands and nodes for one test; stops whatever is left at teardown."""

    tmp_path: Path
    ns: LinkedNamespaces
    env: dict[str, str]
    nodes: list[NodeProcess] = field(default_factory=list)

    def cli(self, data_dir: Path, *argv: str, netns: str | None = None) -> str:
        cmd = [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), *argv]
        if netns is not None:
            cmd = self.ns.exec_argv(netns, cmd)
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                              cwd=self.tmp_path, timeout=CLI_TIMEOUT)
        assert done.returncode == 0, (
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def cli_json(self, data_dir: Path, *argv: str) -> Any:
        return json.loads(self.cli(data_dir, *argv, "--json"))

    def two_members(self) -> tuple[Path, Path]:
        """Data dir A with a new board, data dir B that joined it by invite."""
        a, b = self.tmp_path / "A", self.tmp_path / "B"
        self.cli(a, "init")
        self.cli(b, "init")
        invite = self.cli_json(a, "board", "create", "Riverside mutual aid")["invite"]
        assert invite.startswith("p2paid:")
        self.cli(b, "board", "join", invite)
        return a, b

    def titles(self, data_dir: Path) -> set[str]:
        return {item["title"] for item in self.cli_json(data_dir, "list")}

    def peers(self, data_dir: Path) -> list[dict[str, Any]]:
        status = self.cli_json(data_dir, "status")
        if not status["node"]["running"]:
            return []
        return list(self.cli_json(data_dir, "peers"))

    def start(self, netns: str, data_dir: Path, *flags: str) -> NodeProcess:
        name = data_dir.name
        log_path = self.tmp_path / f"node-{name}.log"
        cmd = self.ns.exec_argv(netns, [
            sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "run",
            "--listen", "0.0.0.0:0", *flags])
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.tmp_path,
                                    env=self.env)
        node = NodeProcess(name, data_dir, proc, log_path)
        self.nodes.append(node)
        return node

    def wait_running(self, *nodes: NodeProcess) -> None:
        for node in nodes:
            data_dir = node.data_dir

            def running(data_dir: Path = data_dir) -> bool:
                return bool(self.cli_json(data_dir, "status")["node"]["running"])

            self.wait_for(running, START_TIMEOUT, f"node {node.name} to start")

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    pytest.fail(f"node {node.name} exited ({node.proc.returncode}) while "
                                f"waiting for {what}\n{self.logs()}")
            if predicate():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
            time.sleep(POLL)

    def stop(self, *nodes: NodeProcess) -> None:
        """SIGTERM each node; each must exit with status 0 within STOP_TIMEOUT."""
        for node in nodes:
            node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                code = node.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"node {node.name} still running {STOP_TIMEOUT:.0f} s after "
                            f"SIGTERM\n{self.logs()}")
            assert code == 0, f"node {node.name} exited with {code}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- node {n.name} log:\n{n.log()}" for n in self.nodes)

    def cleanup(self) -> None:
        """Whatever a failed test left running: SIGTERM, then SIGKILL, by pid."""
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def cluster(ns: LinkedNamespaces, tmp_path: Path) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
    env.update({"HOME": str(tmp_path / "home"),
                "XDG_DATA_HOME": str(tmp_path / "home" / ".local" / "share"),
                "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"})
    c = Cluster(tmp_path, ns, env)
    try:
        yield c
    finally:
        c.cleanup()  # before ``ns`` deletes the namespaces


# ---------------------------------------------------------------------------- tests


def test_nodes_find_each_other_by_mdns_and_sync_both_ways(cluster: Cluster) -> None:
    ns = cluster.ns
    a, b = cluster.two_members()
    node_a = cluster.start(ns.a, a)
    node_b = cluster.start(ns.b, b)

    cluster.cli(a, "need", "add", "Water", "--quantity", "40", "--unit", "litres",
                "--location", "north camp", netns=ns.a)
    cluster.wait_for(lambda: "Water" in cluster.titles(b), SYNC_TIMEOUT,
                     "A's need to reach B")
    cluster.cli(b, "need", "add", "Blankets", netns=ns.b)
    cluster.wait_for(lambda: "Blankets" in cluster.titles(a), SYNC_TIMEOUT,
                     "B's need to reach A")

    # They met over the veth link, on the addresses mDNS announced.
    cluster.wait_for(lambda: cluster.peers(b), 10, "B to publish its peer")
    [peer] = cluster.peers(b)
    assert peer["address"].rsplit(":", 1)[0] == ns.addr_a, peer
    assert FOUND in node_a.log() and FOUND in node_b.log(), cluster.logs()

    cluster.stop(node_a, node_b)


def test_browse_only_node_finds_advertiser(cluster: Cluster) -> None:
    ns = cluster.ns
    a, b = cluster.two_members()
    node_a = cluster.start(ns.a, a)  # advertises and browses
    node_b = cluster.start(ns.b, b, "--no-advertise")  # browses only

    cluster.cli(a, "need", "add", "Insulin", "--category", "medical", netns=ns.a)
    cluster.wait_for(lambda: "Insulin" in cluster.titles(b), SYNC_TIMEOUT,
                     "A's need to reach browse-only B")
    cluster.cli(b, "offer", "add", "Van with driver", netns=ns.b)
    cluster.wait_for(lambda: "Van with driver" in cluster.titles(a), SYNC_TIMEOUT,
                     "browse-only B's offer to reach A")

    # B dialled A; A, browsing too, never saw B announced.
    cluster.wait_for(lambda: cluster.peers(a) and cluster.peers(b), 10,
                     "both nodes to publish their peer")
    [seen_by_a] = cluster.peers(a)
    [seen_by_b] = cluster.peers(b)
    assert seen_by_b["direction"] == "out" and seen_by_a["direction"] == "in", (
        seen_by_a, seen_by_b)
    assert seen_by_b["address"].rsplit(":", 1)[0] == ns.addr_a, seen_by_b
    assert FOUND in node_b.log(), cluster.logs()
    assert FOUND not in node_a.log(), f"--no-advertise node was found\n{cluster.logs()}"

    cluster.stop(node_a, node_b)


def test_no_mdns_nodes_do_not_find_each_other(cluster: Cluster) -> None:
    ns = cluster.ns
    a, b = cluster.two_members()
    node_a = cluster.start(ns.a, a, "--no-mdns")
    node_b = cluster.start(ns.b, b, "--no-mdns")
    cluster.wait_running(node_a, node_b)

    cluster.cli(a, "need", "add", "Water", netns=ns.a)
    cluster.cli(b, "need", "add", "Blankets", netns=ns.b)
    time.sleep(NO_SYNC_WAIT)

    assert cluster.titles(a) == {"Water"}, cluster.logs()
    assert cluster.titles(b) == {"Blankets"}, cluster.logs()
    assert cluster.peers(a) == [] and cluster.peers(b) == [], cluster.logs()
    assert FOUND not in node_a.log() + node_b.log(), cluster.logs()
    cluster.stop(node_a, node_b)


# ---------------------------------------------------------------------------- multi-homed


#: Addresses on A's second interface, none reachable from B. python-zeroconf orders the
#: A records it announces and caches through sets of records whose hash covers the
#: random instance name, so which address a peer sees first is random per run: with
#: this many decoys, a peer that dials only one address misses A's shared address in
#: 15 runs out of 16.
UNREACHABLE = [f"10.99.{i}.1/24" for i in range(1, 16)]


def test_browse_only_node_reaches_multihomed_advertiser(cluster: Cluster) -> None:
    """A has a second interface (think docker0, a VPN, a second NIC) whose addresses B
    cannot reach. A announces all of its addresses; B must still reach A on the one
    they share. Fails (almost always: see UNREACHABLE) while
    ``p2paid.net.mdns._resolve`` keeps only the first address it resolves."""
    ns = cluster.ns
    ns.add_other_interface(ns.a, UNREACHABLE)
    a, b = cluster.two_members()
    node_a = cluster.start(ns.a, a)
    node_b = cluster.start(ns.b, b, "--no-advertise")  # so only B can do the dialling

    cluster.cli(a, "need", "add", "Water", netns=ns.a)
    cluster.wait_for(lambda: "Water" in cluster.titles(b), SYNC_TIMEOUT,
                     f"A's need to reach browse-only B via A's {ns.addr_a} (A also "
                     f"announces {len(UNREACHABLE)} addresses B has no route to)")
    cluster.stop(node_a, node_b)
