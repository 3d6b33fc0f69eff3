"""Progress of long commands on stderr, and Ctrl-C between steps of them.

Progress shows only when stderr is a terminal, so that scripts and pipes see clean
output; ``P2PAID_PROGRESS=1`` shows it anyway (tests use that), ``P2PAID_PROGRESS=0``
never. It is one line, rewritten in place (``\\r``), cleared at the end::

    importing: 20,000 of 50,003 envelopes (40%)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType, TracebackType
from typing import Final, TextIO, final

__all__ = ["PROGRESS_ENV", "DeferredInterrupt", "ProgressLine"]

#: ``1`` shows progress even when stderr is not a terminal, ``0`` never shows it.
PROGRESS_ENV: Final = "P2PAID_PROGRESS"
#: Least seconds between two redraws.
REDRAW: Final = 0.1


def _wanted(stream: TextIO) -> bool:
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "yes", "always"):
        return True
    if forced in ("0", "no", "never"):
        return False
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


@final
class ProgressLine:
    """``label: DONE of TOTAL envelopes (P%)`` on ``stream`` (default stderr), if wanted.

    Args:
        label: what is going on, e.g. ``importing``.
    """

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream or sys.stderr
        self.enabled = _wanted(self._stream)
        self._drawn = 0.0
        self._shown = False

    def update(self, done: int, total: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW and done < total:
            return
        self._drawn = now
        percent = f" ({100 * done // total}%)" if total else ""
        self._stream.write(f"\r{self._label}: {done:,} of {total:,} envelopes{percent}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Remove the line (before the command prints its result)."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


@final
class DeferredInterrupt:
    """While active, a first Ctrl-C only sets :attr:`requested` (the command stops at
    its next safe point, by calling :meth:`check`); a second one interrupts at once.

    Args:
        notice: printed on stderr at the first Ctrl-C.
        progress: a progress line to clear before the notice.
    """

    def __init__(self, notice: str, progress: ProgressLine | None = None) -> None:
        self._notice = notice
        self._progress = progress
        self.requested = False
        self._previous: object = None

    def __enter__(self) -> DeferredInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._progress is not None:
            self._progress.clear()
        print(self._notice, file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt
