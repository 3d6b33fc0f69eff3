"""The sans-I/O core imports no trio, sockets or zeroconf (zeroconf's
test_circular_imports habit: each module in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "p2paid.errors", "p2paid.identity", "p2paid.invite", "p2paid.envelope", "p2paid.changes",
    "p2paid.feed", "p2paid.model", "p2paid.readmodel", "p2paid.document",
    "p2paid.store", "p2paid.ingest", "p2paid.board", "p2paid.bundle", "p2paid.local",
    "p2paid.noise", "p2paid.wire", "p2paid.replication", "p2paid.replica", "p2paid.hosts",
    "p2paid.relayaddr", "p2paid.strictpack", "p2paid.messages", "p2paid.peerbook",
    "p2paid.relaystate", "p2paid.text", "p2paid.relayplan", "p2paid.rules",
]
SHELL_ONLY = ("trio", "socket", "zeroconf", "asyncio")


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_framework(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {SHELL_ONLY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"
