"""A relay key in a file, so that the processes of a cluster present one identity.

``p2paid relay key export > relay.key`` writes one line, ``p2paid-relay-key:`` and the
private key in hex; ``p2paid relay --key-file relay.key`` reads it. The file is a
secret (whoever holds it can pose as the relay): it must be readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from p2paid.core.identity import NodeKey
from p2paid.errors import UsageError, ValidationError

__all__ = ["encode_key", "read_key_file"]

_PREFIX: Final = "p2paid-relay-key:"


def encode_key(key: NodeKey) -> str:
    """The key file's one line (a secret)."""
    return _PREFIX + key.private_bytes().hex()


def read_key_file(path: str | os.PathLike[str]) -> NodeKey:
    """The relay key in ``path``.

    Raises:
        UsageError: the file is missing, readable by others, or holds no relay key.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the key file {file}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"the key file {file} is readable by others: "
                         f"chmod 600 {file} (it is the relay's secret key)")
    if not text.startswith(_PREFIX):
        raise UsageError(f"{file} is not a relay key file (make one with "
                         "'p2paid relay key export > relay.key')")
    try:
        return NodeKey(bytes.fromhex(text[len(_PREFIX):]))
    except (ValueError, ValidationError) as exc:
        raise UsageError(f"{file} holds a damaged relay key") from exc
