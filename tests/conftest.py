"""Shared fixtures: fresh data dirs, a hypothesis profile sized for CI, and the
guards every test runs under (no leaked threads; no multicast on the machine's own
network, in this process or in any Python process a test starts: see
``guard_site/p2paid_test_guard.py``)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

GUARD_SITE = Path(__file__).with_name("guard_site")
sys.path.insert(0, str(GUARD_SITE))
import p2paid_test_guard as multicast_guard  # noqa: E402
from pgfix import new_pg_url, pg_cluster, pg_url  # noqa: E402, F401  (PostgreSQL fixtures)

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots", metavar="DIR", default=None,
        help="save the browser tests' screenshots in DIR (default: a temporary folder); "
             "the README's come from --screenshots docs/screenshots")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty directory to use as a p2paid data dir."""
    return tmp_path / "node"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (zeroconf, to_thread workers excepted)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon
    ]
    assert not leaked, f"test leaked threads: {leaked}"


@pytest.fixture(scope="session", autouse=True)
def _multicast_guard_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the multicast guard here and, through ``PYTHONPATH``, in every Python
    child process (which inherit ``os.environ``); returns the log of refusals."""
    log = tmp_path_factory.mktemp("multicast-guard") / "refused.log"
    log.touch()
    os.environ[multicast_guard.ENV_LOG] = str(log)
    os.environ[multicast_guard.ENV_NETNS] = multicast_guard.netns_id() or ""
    paths = [str(GUARD_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    multicast_guard.install(str(log))
    return log


@pytest.fixture(autouse=True)
def _no_multicast_outside_test_namespaces(_multicast_guard_log: Path) -> Iterator[None]:
    """Fail a test during which this process, or a Python process it started outside a
    network namespace of its own, tried to join a multicast group or send multicast
    (mDNS on the machine's interfaces): tests talk to 127.0.0.1 or to namespaces they
    made, so nodes and examples run with mDNS off there."""
    start = _multicast_guard_log.stat().st_size
    yield
    with _multicast_guard_log.open(encoding="utf-8") as log:
        log.seek(start)
        refused = log.read()
    assert not refused, (
        "multicast outside a test network namespace (run nodes and examples with mDNS "
        f"off, or inside tests/netns.py namespaces):\n{refused}")
