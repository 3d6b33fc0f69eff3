"""The vocabularies of ``p2paid.core.codes``: their strings are the ones on the wire and in
logs, byte for byte, and the code names close reasons only through them."""

from __future__ import annotations

import ast
from pathlib import Path

import p2paid
import p2paid.errors as errors
from p2paid.core.codes import CloseReason, DialSource, RefusedCode, Role, SyncEventKind
from p2paid.core.replication import PEER_FAULTS, STALLING
from p2paid.core.wire import Close, Hello, HelloBoard, Message, Refused, encode_message

PACKAGE = Path(p2paid.__file__).parent


def test_the_strings_are_the_protocol_s() -> None:
    assert {str(r) for r in Role} == {"node", "relay"}
    assert {str(s) for s in DialSource} == {"configured", "mdns", "relay"}
    assert {str(k) for k in SyncEventKind} == {"linked", "in-sync", "received", "refused",
                                               "fork"}
    assert {"board-full", "not-allowed", "quota"} == STALLING
    assert all(len(r) <= 200 for r in CloseReason)  # Close carries at most 200 characters
    assert all(len(c) <= 64 for c in RefusedCode)  # a Refused code, at most 64


def test_members_encode_exactly_as_their_strings() -> None:
    board = HelloBoard(bytes(32), bytes(16))
    pairs: list[tuple[Message, Message]] = [
        (Close(CloseReason.BOARDS_CHANGED), Close("boards changed")),
        (Refused(b"", RefusedCode.RATE_LIMITED, "x"), Refused(b"", "rate-limited", "x")),
        (Hello(1, Role.RELAY, True, (board,)), Hello(1, "relay", True, (board,))),
    ]
    for enum_form, text_form in pairs:
        assert encode_message(enum_form) == encode_message(text_form)


def test_every_reason_a_peer_error_gives_is_a_close_reason() -> None:
    """errors.py (below core/) spells the reasons out; they must be members."""
    Peer = type[errors.RemoteProtocolError]

    def subclasses(cls: Peer) -> list[Peer]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(errors.RemoteProtocolError):
        if issubclass(cls, errors.EnvelopeError) and cls not in PEER_FAULTS:
            continue  # the author's fault: refused, never a reason to drop the sender
        if cls is errors.BundleError or cls is errors.EnvelopeError:
            continue  # bundles are files, not connections
        assert CloseReason.parse(cls.default_reason) is not None, cls
    for fault in PEER_FAULTS:
        assert CloseReason.parse(fault.code) is not None, fault


def _literal_close_reasons(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals given as a close reason: ``close("...")``, ``Close("...")``,
    ``close_reason="..."`` or ``x.close_reason = "..."``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else (
                node.func.id if isinstance(node.func, ast.Name) else "")
            args = node.args[:1] if name in ("close", "Close") else []
            args += [k.value for k in node.keywords if k.arg == "close_reason"]
            found += [(a.lineno, a.value) for a in args
                      if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "close_reason" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found.append((node.lineno, node.value.value))
    return found


def test_the_code_names_close_reasons_only_by_member() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":  # (below core/: checked above instead)
            continue
        for line, text in _literal_close_reasons(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r}")
    assert offenders == []
