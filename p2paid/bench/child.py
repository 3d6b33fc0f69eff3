"""Benchmark child processes: ``python -m p2paid.bench.<module>``, spoken to in JSON lines.

A child reads commands (one JSON object a line) on stdin and writes results (one JSON
object a line) on stdout; closing its stdin asks it to finish.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any, final

__all__ = ["Child", "rss_mib", "say"]


@final
class Child:
    """One child process running ``python -m p2paid.bench.<module> ARGS``.

    Args:
        module: the module's name in :mod:`p2paid.bench` (``sync_node``, say).
        quiet: discard the child's log (stderr), e.g. a victim of an attack.
    """

    def __init__(self, module: str, *args: str, quiet: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"p2paid.bench.{module}", *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL if quiet else None)

    def send(self, value: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(value) + "\n")
        self.proc.stdin.flush()

    def read(self, until: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """The next result for which ``until`` holds (the others are skipped).

        Raises:
            RuntimeError: the child exited first.
        """
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("benchmark child exited early")
            value: dict[str, Any] = json.loads(line)
            if until(value):
                return value

    def stop(self) -> dict[str, Any]:
        """Close its stdin and wait for its final ``stats`` line."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        result = self.read(lambda v: "stats" in v)
        self.proc.wait(timeout=30)
        return result


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (Linux), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def say(value: dict[str, Any]) -> None:
    """Write one result line (in a child)."""
    print(json.dumps(value), flush=True)
