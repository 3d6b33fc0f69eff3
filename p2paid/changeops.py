"""Compatibility shim: op decoding now lives in :mod:`p2paid.changes`."""

from __future__ import annotations

from .changes import ACTION_MAKE_MAP, Op, parse_change

__all__ = ["ACTION_MAKE_MAP", "Op", "decode_ops"]


def decode_ops(chunk: bytes) -> list[Op]:
    """Every op of a change chunk (see :func:`p2paid.changes.parse_change`)."""
    return list(parse_change(chunk).ops)
