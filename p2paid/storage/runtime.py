"""What a running node or relay publishes in its data dir, for ``status`` and ``peers``.

The process rewrites one JSON object every :data:`STATUS_INTERVAL` seconds and
clears it when it stops; a reader trusts it only while it is fresh, so a process
that was killed is not shown as running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["STATUS_INTERVAL", "encode_runtime", "fresh_runtime"]

#: Seconds between two writes of the status.
STATUS_INTERVAL: Final = 2.0
#: A status older than this was left by a process that no longer runs.
STALE_AFTER: Final = 3 * STATUS_INTERVAL + 5


def encode_runtime(status: Mapping[str, Any]) -> bytes:
    """The stored form of ``status``, stamped with the time it was written."""
    return json.dumps({**status, "updated": time.time()}).encode()


def fresh_runtime(raw: bytes | None, now: float | None = None) -> dict[str, Any] | None:
    """The status in ``raw`` if a process wrote it lately; None if none runs (nothing
    written, cleared, stale, or not a status at all)."""
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(status, dict) or not status:
        return None
    updated = status.get("updated")
    if not isinstance(updated, int | float):
        return None
    if (time.time() if now is None else now) - updated > STALE_AFTER:
        return None
    return status
