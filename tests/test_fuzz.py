"""Bounded fuzzing of everything that reads bytes from outside.

Each target gets hypothesis-generated input: random bytes, mutations of valid input,
and for board changes, hand-built changes with random actions, value types, objects,
keys, preds and header fields, signed as a member's next envelope and *applied* to a
real board. A run fails on any exception outside the project's error tree, on any
Automerge panic that escapes (pyo3's PanicException is a BaseException), and on any
hang (a watchdog alarm per example). After each change is offered, the board must
still read, save and load again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from amcraft import CraftedFeed, CraftedOp, change_chunk, compress_chunk
from automerge.core import Document
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import p2paid
from p2paid.automerge.chunk import parse_change
from p2paid.board.bundle import read_bundle, write_bundle
from p2paid.core.envelope import Envelope
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import Invite
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.wire import NEED_DATA, SecureChannel, decode_message
from p2paid.errors import P2paidError

TMP_BASE = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
WATCHDOG_SECONDS = 10
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_T = TypeVar("_T")


class Hang(Exception):
    """The watchdog fired: a target ran far longer than any input should take."""


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS) -> Iterator[None]:
    def fire(_signum: int, _frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def only_own_errors(target: Callable[[], _T]) -> _T | None:
    """Run ``target``: a P2paidError is an answer; anything else fails the run."""
    with watchdog():
        try:
            return target()
        except P2paidError:
            return None
        except Exception as exc:
            pytest.fail(f"{type(exc).__name__} escaped: {exc!r}")
        except BaseException as exc:  # a Rust panic, or anything that kills a reader
            if isinstance(exc, KeyboardInterrupt | Hang):
                raise
            pytest.fail(f"{type(exc).__name__} escaped (a panic?): {exc!r}")


# --------------------------------------------------------------------- stateless decoders


@FUZZ
@given(st.binary(max_size=2000))
def test_envelope_decoder(data: bytes) -> None:
    only_own_errors(lambda: Envelope.decode(data))


@FUZZ
@given(st.binary(max_size=3000), st.booleans())
@example(b"\x85\x6f\x4a\x83" + bytes(4) + b"\x01\x05" + bytes(5), False)
def test_change_parser(data: bytes, magic: bool) -> None:
    chunk = bytes.fromhex("856f4a83") + data if magic else data
    only_own_errors(lambda: parse_change(chunk))


@FUZZ
@given(st.binary(max_size=3000))
def test_message_decoder(data: bytes) -> None:
    only_own_errors(lambda: decode_message(data))


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=6), st.booleans())
def test_secure_channel_from_both_ends(chunks: list[bytes], initiator: bool) -> None:
    channel = SecureChannel(initiator, X25519PrivateKey.generate())

    def feed() -> None:
        for chunk in chunks:
            channel.receive_data(chunk)
            while channel.next_event() is not NEED_DATA:
                pass

    only_own_errors(feed)


@FUZZ
@given(st.text(max_size=400) | st.binary(max_size=300).map(lambda b: "p2paid:" + b.hex()))
def test_invite_parser(text: str) -> None:
    only_own_errors(lambda: Invite.from_uri(text))


@FUZZ
@given(st.text(max_size=300))
@example("p2paid-relay://a..b:1/" + "a" * 52)
@example("p2paid-relay://" + "x" * 64 + ".org:1/" + "a" * 52)
def test_relay_address_parser(text: str) -> None:
    only_own_errors(lambda: RelayAddress.parse(text))
    only_own_errors(lambda: RelayAddress.parse("p2paid-relay://" + text))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2000), st.binary(max_size=20))
def test_bundle_reader(data: bytes, cut: int, junk: bytes) -> None:
    root = Path(tempfile.mkdtemp(dir=TMP_BASE))
    try:
        good = root / "good.p2paid"
        write_bundle(good, [data] if 0 < len(data) <= 60_000 else [b"x"])
        raw = good.read_bytes()
        for variant in (data, raw[:cut] + junk + raw[cut:], raw[:cut]):
            path = root / "b.p2paid"
            path.write_bytes(variant)
            only_own_errors(lambda p=path: list(read_bundle(p)))  # type: ignore[misc]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------- changes applied to a board

ACTIONS = st.sampled_from([0, 1, 3]) | st.integers(0, 20)
VALUES = st.one_of(
    st.tuples(st.just(4), st.integers(-(2**63), 2**63 - 1).map(
        lambda n: __import__("amcraft").sleb(n))),
    st.tuples(st.just(6), st.text(max_size=30).map(str.encode)),
    st.tuples(st.just(0), st.just(b"")),
    st.tuples(st.integers(0, 15), st.binary(max_size=10)),
)
OBJECTS = st.one_of(st.none(), st.tuples(st.just(0), st.integers(0, 14)),
                    st.tuples(st.integers(1, 2), st.integers(1, 5)))
KEYS = st.one_of(st.sampled_from(["title", "v", "needs", "x", "status", ""]),
                 st.text(max_size=70), st.none(),
                 st.tuples(st.integers(0, 1), st.integers(0, 8)))
OPS = st.builds(CraftedOp, action=ACTIONS, obj=OBJECTS, key=KEYS, value=VALUES,
                preds=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 14)), max_size=2),
                insert=st.booleans())


@contextlib.contextmanager
def one_board() -> Iterator[tuple[p2paid.Store, p2paid.Board, CraftedFeed, Path]]:
    root = Path(tempfile.mkdtemp(prefix="p2paid-fuzz-", dir=TMP_BASE))
    store = p2paid.open_store(root / "a")
    try:
        board = store.create_board("fuzz", display_name="Ana")
        board.post_need("Drinking water", quantity=40)
        with p2paid.open_store(root / "b") as b_store:
            joined = b_store.join(board.invite())
            key = AuthorKey(joined._author_key.private_bytes())
        feed = CraftedFeed(board.id, board.keys.content_key, key)
        first = feed.seal(feed.chunk(feed.first()))
        assert board.receive([first]).accepted == 1
        yield store, board, feed, root
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def _still_sound(board: p2paid.Board) -> None:
    """The board reads, and its saved form loads with the same heads."""
    titles = {i.title for i in board.items()}
    assert "Drinking water" in titles
    saved = board.export_automerge()
    assert sorted(bytes(h) for h in Document.load(saved).get_heads()) == board.document.heads()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.lists(OPS, min_size=1, max_size=6), st.booleans(),
                          st.sampled_from(["right", "right", "right", "start", "deps", "none"]),
                          st.booleans()),
                min_size=1, max_size=6))
def test_hand_built_member_changes_applied_to_a_board(
        changes: list[tuple[list[CraftedOp], bool, str, bool]]) -> None:
    """A member's hand-built changes, one after another, each applied to a real board
    (not just parsed): each is accepted or refused with the project's errors; nothing
    escapes; the board keeps reading and saving; a reopen sees the same board."""
    with one_board() as (store, board, feed, root):
        for ops, canonical, header, compressed in changes:
            if header == "start":
                kwargs: dict[str, Any] = {"start_op": feed.max_op + 2}
            elif header == "deps":
                kwargs = {"deps": [os.urandom(32)]}
            elif header == "none":
                kwargs = {"deps": []}
            else:
                kwargs = {}
            try:
                chunk = feed.chunk(ops, canonical=canonical, **kwargs)
            except (ValueError, AssertionError, TypeError):
                continue  # the crafting tool cannot write this one at all
            if compressed:
                chunk = compress_chunk(chunk)
            raw = feed.seal(chunk, advance=False)
            report = only_own_errors(lambda r=raw: board.receive([r]))  # type: ignore[misc]
            if report is not None and report.accepted:
                feed.advance(raw)  # it is part of B's feed now
            only_own_errors(lambda: _still_sound(board))
        before = [i.to_json(0) for i in board.items()]
        store.close()
        with p2paid.open_store(root / "a") as again:
            assert [i.to_json(0) for i in again.board().items()] == before
        store = p2paid.open_store(root / "a")  # (closed again by one_board)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(1, 3))
def test_random_change_bytes_sealed_by_a_member(payload: bytes, seq_offset: int) -> None:
    """Any bytes, signed and sealed by a member: refused or accepted, never a crash."""
    with one_board() as (_store, board, feed, _root):
        for chunk in (payload, bytes.fromhex("856f4a83") + payload,
                      change_chunk(actor=feed.actor, seq=feed.seq + seq_offset,
                                   start_op=feed.max_op + 1, deps=[feed.last_hash])):
            raw = feed.seal(chunk, advance=False)
            only_own_errors(lambda r=raw: board.receive([r]))  # type: ignore[misc]
            only_own_errors(lambda: _still_sound(board))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.binary(max_size=300), st.booleans())
def test_fork_evidence_from_outside(first: bytes, second: bytes, real_first: bool) -> None:
    with one_board() as (_store, board, _feed, _root):
        if real_first:
            first = next(iter(board.envelopes()))
        only_own_errors(lambda: board.record_fork(first, second))
        _still_sound(board)


_NEAR_KEYS = st.sampled_from(["a", "b", "title", "created", "n1", "n2", "needs"]) | st.text(
    min_size=1, max_size=64)
_NEAR_VALUES = (st.integers(-(2**63), 2**63 - 1).map(lambda n: ("int", n))
                | st.text(max_size=200).map(lambda t: ("str", t)))
_MUTATIONS = ["wrong pred", "missing pred", "foreign object", "bad type", "root", "insert"]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_member_changes_near_the_rules(data: st.DataObject) -> None:
    """A member's changes built to the rules (overwrites, deletes, nested maps, big
    values), some with one thing broken. Every change within the rules is accepted
    and the board then saves and loads again; every broken one is refused; nothing
    escapes either way."""
    from amcraft import DEL, MAKE_MAP, SET, int_value, str_value

    with one_board() as (_store, board, feed, _root):
        maps = {1, 3}
        slots = {(1, "v"): 2, (1, "needs"): 3}
        for _ in range(data.draw(st.integers(1, 8))):
            counter = feed.max_op + 1
            new_maps, new_slots = set(maps), dict(slots)
            ops: list[CraftedOp] = []
            for _ in range(data.draw(st.integers(1, 5))):
                obj = data.draw(st.sampled_from(sorted(new_maps)))
                key = data.draw(_NEAR_KEYS)
                current = new_slots.get((obj, key))
                if current in new_maps:
                    continue  # maps are never overwritten
                preds = [] if current is None else [(0, current)]
                kind = data.draw(st.sampled_from(["put", "put", "map", "del"]))
                if kind == "del" and current is not None:
                    ops.append(CraftedOp(DEL, (0, obj), key, preds=preds))
                    del new_slots[(obj, key)]
                elif kind == "map":
                    ops.append(CraftedOp(MAKE_MAP, (0, obj), key, preds=preds))
                    new_maps.add(counter)
                    new_slots[(obj, key)] = counter
                else:
                    _kind, value = data.draw(_NEAR_VALUES)
                    encoded = (int_value(value) if isinstance(value, int)
                               else str_value(str(value)))
                    ops.append(CraftedOp(SET, (0, obj), key, encoded, preds=preds))
                    new_slots[(obj, key)] = counter
                counter += 1
            if not ops:
                continue
            broken = data.draw(st.none() | st.sampled_from(_MUTATIONS))
            if broken is not None:
                i = data.draw(st.integers(0, len(ops) - 1))
                op = ops[i]
                if broken == "wrong pred":
                    op.preds = [(0, op.obj[1] if op.obj else 1)] if not op.preds else []
                elif broken == "missing pred" and op.preds:
                    op.preds = []
                elif broken == "foreign object":
                    op.obj = (0, counter + 50)
                elif broken == "bad type" and op.action == SET:
                    op.value = (data.draw(st.sampled_from([1, 2, 3, 5, 7, 8, 9, 10, 15])), b"")
                elif broken == "root":
                    op.obj = None
                elif broken == "insert":
                    op.insert = True
                else:
                    broken = None  # that mutation does not apply to this op
            chunk = feed.chunk(ops)
            raw = feed.seal(chunk, advance=False)
            report = only_own_errors(lambda r=raw: board.receive([r]))  # type: ignore[misc]
            assert report is not None
            if broken is None:
                assert report.accepted == 1, (ops, report.rejected)
                feed.advance(raw)
                maps, slots = new_maps, new_slots
            else:
                assert report.accepted == 0, (broken, ops)
            only_own_errors(lambda: _still_sound(board))
