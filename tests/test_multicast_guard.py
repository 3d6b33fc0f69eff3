"""The suite's multicast guard (``guard_site/p2paid_test_guard.py``) does its job.

Every attempt made here is harmless even if the guard were broken: the group is
joined on the loopback interface only, a UDP ``connect`` sends nothing, and the
datagram is sent with a multicast TTL of 0 and loopback off (it leaves no host).
Refusals made on purpose are recorded to a log of the test's own, so that the
autouse fixture (which fails any test whose refusals reach the suite's log) stays
quiet.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import p2paid_test_guard as guard
import pytest
from netns import LinkedNamespaces, linked_namespaces, netns_unavailable

GROUP = "224.0.0.251"
#: Joins the mDNS group on the loopback interface, then prints what happened.
CHILD = f"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
mreq = struct.pack("4s4s", socket.inet_aton({GROUP!r}), socket.inet_aton("127.0.0.1"))
try:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
except PermissionError as exc:
    print("refused:", exc)
else:
    print("joined")
"""


def _lo_membership() -> bytes:
    return struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1"))


@pytest.fixture
def own_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "refused.log"
    log.touch()
    with guard.recording_to(str(log)):
        yield log


def test_joining_a_group_in_this_process_is_refused_and_recorded(own_log: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(guard.MulticastRefused, match="IP_ADD_MEMBERSHIP"):
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _lo_membership())
        with pytest.raises(guard.MulticastRefused, match="connect"):
            s.connect((GROUP, 5353))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)  # allowed, harmless
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        with pytest.raises(guard.MulticastRefused, match="sendto"):
            s.sendto(b"x", (GROUP, 5353))
    lines = own_log.read_text().splitlines()
    assert len(lines) == 3, lines
    assert all(f"pid {os.getpid()} " in line for line in lines), lines


def test_unicast_on_loopback_is_left_alone(own_log: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.sendto(b"hello", rx.getsockname())
        assert rx.recv(16) == b"hello"
        tx.connect(rx.getsockname())
    assert own_log.read_text() == ""


def _child(log: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the suite's environment (PYTHONPATH carries the guard), but
    recording to ``log``."""
    env = {**os.environ, guard.ENV_LOG: str(log)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_a_child_python_process_is_guarded_too(tmp_path: Path) -> None:
    """What caught ``examples/matchmaker_bot.py`` joining 224.0.0.251 with mDNS on."""
    log = tmp_path / "child.log"
    done = _child(log, [sys.executable, "-c", CHILD])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:"), done.stdout
    [line] = log.read_text().splitlines()
    assert "setsockopt(IP_ADD_MEMBERSHIP)" in line and f"pid {os.getpid()} " not in line


def test_a_child_in_a_test_namespace_may_use_multicast(tmp_path: Path) -> None:
    """Inside a namespace a test made (as the mDNS tests run their nodes), the guard
    stands aside: multicast there reaches only the test's own veth link."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")
    log = tmp_path / "netns.log"
    ns: LinkedNamespaces
    with linked_namespaces() as ns:
        done = _child(log, LinkedNamespaces.exec_argv(ns.a, [sys.executable, "-c", CHILD]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "joined", done.stdout
    assert not log.exists() or log.read_text() == ""
