"""Long output through a pager, as git does: only when stdout is a terminal.

The pager is ``$P2PAID_PAGER``, else ``$PAGER``, else ``less -FRX`` (``-F``: quit at
once if it fits on one screen; ``-R``: keep colours; ``-X``: leave the text on
screen). An empty value or ``cat`` means no pager; so does ``--no-pager``. A
pager that cannot be started is skipped: the text is printed as it is.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from typing import Final

__all__ = ["DEFAULT_PAGER", "pager_command", "show"]

DEFAULT_PAGER: Final = "less -FRX"


def pager_command() -> list[str] | None:
    """The pager to run for a terminal, as argv (None: print directly)."""
    text = os.environ.get("P2PAID_PAGER", os.environ.get("PAGER", DEFAULT_PAGER))
    try:
        argv = shlex.split(text)
    except ValueError:
        return None
    if not argv or argv == ["cat"] or shutil.which(argv[0]) is None:
        return None
    return argv


def show(text: str, *, use_pager: bool = True) -> None:
    """Print ``text`` (a newline is added), through the pager when stdout is a
    terminal and ``use_pager``."""
    argv = pager_command() if use_pager and sys.stdout.isatty() else None
    if argv is None:
        print(text)
        return
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")  # for PAGER=less, as git does
    sys.stdout.flush()
    data = (text + "\n").encode(sys.stdout.encoding or "utf-8", "replace")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)
    except OSError:
        print(text)
        return
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # the reader quit the pager early
        proc.stdin.write(data)
        proc.stdin.close()
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:
            continue  # Ctrl-C belongs to the pager (less handles it), as with git
