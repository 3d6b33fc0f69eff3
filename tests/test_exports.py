"""The public surface: what ``import p2paid`` offers, and that it is sealed where it should be."""

from __future__ import annotations

import inspect

import p2paid
from p2paid import errors


def test_all_names_exist() -> None:
    for name in p2paid.__all__:
        assert hasattr(p2paid, name), name


def test_every_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, p2paid.P2paidError), name


def test_public_concrete_classes_are_final() -> None:
    """Classes users get but should not subclass are @final (trio's habit)."""
    for name in ("Board", "Store", "Node", "AsyncBoard", "Item", "Claim", "Invite",
                 "BoardEvent", "PeerInfo", "ImportReport", "ReceiveReport"):
        cls = getattr(p2paid, name)
        assert inspect.isclass(cls)
        assert getattr(cls, "__final__", False), f"{name} is not @final"
