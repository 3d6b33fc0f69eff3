"""Running the ``p2paid`` command in tests: as a subprocess (exactly as a user does),
or in this process through :func:`p2paid.cli.main.main` where that is equivalent (it
is the same code; an exception that escapes it is what a user would see as a
traceback), which keeps walks over every subcommand fast."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from p2paid.cli.main import build_parser, main

TIMEOUT = 60


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The suite's environment, with HOME (and so the default data dir) in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("P2PAID_DATA_DIR", "PAGER",
                                                            "P2PAID_PAGER")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "home" / ".local" / "share")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2paid", *argv], capture_output=True,
                          text=True, env=dict(env), timeout=TIMEOUT, check=False)


def run_parallel(argvs: Sequence[Sequence[str]], env: Mapping[str, str]
                 ) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once; results in the order given."""
    procs = [(argv, subprocess.Popen([sys.executable, "-m", "p2paid", *argv], env=dict(env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
             for argv in argvs]
    out = []
    for argv, p in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(list(argv), p.returncode, stdout, stderr))
    return out


class Service:
    """A long-running process (``p2paid run``, ``p2paid relay``, an example), its
    stdout and stderr in one log file, which :meth:`wait_for` reads as it grows."""

    def __init__(self, command: Sequence[str], log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"})

    @classmethod
    def p2paid(cls, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
               ) -> Service:
        return cls([sys.executable, "-m", "p2paid", *argv], log, env)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` in the output, once it is there (fails if the
        process ends first, or after :data:`TIMEOUT` seconds)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            assert self.proc.poll() is None, f"ended before {pattern!r}:\n{self.output}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {TIMEOUT} s:\n{self.output}")

    def interrupt(self) -> int:
        """Ctrl-C (SIGINT); the exit status once it has stopped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


def in_process(capsys: pytest.CaptureFixture[str], argv: Sequence[str]
               ) -> tuple[int, str, str]:
    """``main(argv)``: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def command_paths(parser: argparse.ArgumentParser | None = None,
                  prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the parser tree: ``("board", "create")``, ..."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = (*prefix, name)
                yield path
                yield from command_paths(sub, path)


def parser_at(path: Sequence[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser
