"""Codecs under hypothesis: invites, envelopes, change headers and bundles.

Two kinds of property: a round trip returns exactly what went in, and garbage
(random or mutated real bytes) only ever raises the codec's own error class -
never another exception, never a hang, never a large allocation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import time
import tracemalloc
import unicodedata
import zlib
from functools import cache
from pathlib import Path

import pytest
from automerge.core import ROOT, Document, ObjType, ScalarType
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from p2paid.automerge.chunk import MAX_CHANGE_BYTES, ChangeHeader, parse_change
from p2paid.board.bundle import BUNDLE_MAGIC, read_bundle, write_bundle
from p2paid.core.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    open_envelope,
    seal_envelope,
)
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import MAX_BOARD_NAME, MAX_RELAY_ADDRESS, MAX_RELAY_HINTS, Invite
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.text import text_problem
from p2paid.errors import (
    BundleError,
    ChangeMismatchError,
    EnvelopeError,
    InviteError,
    LocalProtocolError,
    P2paidError,
)

MAGIC = bytes.fromhex("856f4a83")
KEY = AuthorKey.generate()
CIPHER = ChaCha20Poly1305(os.urandom(32))
BOARD_ID = os.urandom(32)
FAST = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ---------------------------------------------------------------------------- invites

_printable = st.characters(exclude_categories=["Cc", "Cs"])


def _valid_name(name: str) -> bool:
    clean = unicodedata.normalize("NFC", name).strip()
    return 0 < len(clean) <= MAX_BOARD_NAME and text_problem(clean) is None


names = st.text(_printable, min_size=1, max_size=MAX_BOARD_NAME).filter(_valid_name)
_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_labels, min_size=1, max_size=4).map(".".join).filter(
        lambda h: not h.split(".")[-1].isdigit()),
    st.ip_addresses().map(str),
)
#: Relay hints as invites carry them: valid relay addresses, in normal form.
relays = st.lists(
    st.builds(lambda host, port, key, token: str(RelayAddress(host, port, key, token)),
              _hosts, st.integers(1, 65535), st.binary(min_size=32, max_size=32),
              st.none() | st.binary(min_size=1, max_size=64)).filter(
        lambda text: len(text) <= MAX_RELAY_ADDRESS),
    max_size=MAX_RELAY_HINTS,
).map(tuple)
_LONG_HINT = str(RelayAddress("r" * 63 + "." + "s" * 63 + ".example", 7447, bytes(32),
                              bytes(32)))


@FAST
@given(secret=st.binary(min_size=32, max_size=32), name=names, hints=relays)
@example(secret=bytes(32), name="Café Solidarité ☕ 互助",
         hints=(str(RelayAddress("2001:db8::1", 7070, bytes(32))),))
@example(secret=b"\xff" * 32, name="x" * MAX_BOARD_NAME, hints=(_LONG_HINT,) * 8)
def test_invite_round_trip(secret: bytes, name: str, hints: tuple[str, ...]) -> None:
    """to_uri/from_uri returns the same invite; the URI is 'p2paid:' + lowercase base32,
    and the upper-cased form (QR alphanumeric mode) parses to the same invite."""
    invite = Invite(secret, name, hints)
    uri = invite.to_uri()
    assert uri.startswith("p2paid:")
    assert set(uri[7:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert Invite.from_uri(uri) == invite
    assert Invite.from_uri(uri.upper()) == invite
    assert Invite.from_uri(uri).keys.board_id == invite.keys.board_id


@FAST
@given(st.text(max_size=300))
@example("")
@example("====")
@example("aaaaaaaa" * 3)
@example("\u0130\u00df\U0001f600")
def test_random_text_after_scheme_only_raises_invite_error(text: str) -> None:
    """Any text after 'p2paid:' parses or raises InviteError, nothing else."""
    try:
        Invite.from_uri("p2paid:" + text)
    except InviteError as exc:
        assert str(exc)


@FAST
@given(st.binary(max_size=200), st.sampled_from([0, 1, 2, 255]))
@example(b"\x91" * 5000, 1)
@example(b"\x93\xc4\x20" + bytes(32) + b"\xa1x\x99", 1)
@example(b"\x93\xc4\x20" + bytes(32) + b"\xa1x\x91\x01", 1)
@example(b"\x93\xc4\x20" + bytes(32) + b"\xa2\xff\xfe\x90", 1)
@example(b"\x81\x01\x02", 1)
def test_checksummed_garbage_only_raises_invite_error(payload: bytes, version: int) -> None:
    """With a correct checksum (so parsing reaches msgpack and the field checks), any
    payload parses or raises InviteError."""
    body = bytes([version]) + payload
    check = hashlib.sha256(b"p2paid invite\x00" + body).digest()[:4]
    uri = "p2paid:" + base64.b32encode(body + check).decode().rstrip("=").lower()
    try:
        Invite.from_uri(uri)
    except InviteError as exc:
        assert str(exc)


# ---------------------------------------------------------------------------- envelopes


@FAST
@given(
    change=st.binary(max_size=3000),
    seq=st.integers(1, 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
)
def test_envelope_round_trip(change: bytes, seq: int, prev: bytes, nonce: bytes) -> None:
    """seal -> raw -> decode gives equal fields and the same hash (SHA-256 of raw);
    the signature verifies and the change decrypts back."""
    env = seal_envelope(board_id=BOARD_ID, cipher=CIPHER, author_key=KEY, seq=seq, prev=prev,
                        change=change, nonce=nonce)
    back = Envelope.decode(env.raw)
    assert back == env
    assert (back.raw, back.hash, back.sig) == (env.raw, env.hash, env.sig)
    assert back.hash == hashlib.sha256(env.raw).digest()
    assert (back.board_id, back.author, back.seq, back.prev, back.nonce) == (
        BOARD_ID, KEY.public, seq, prev, nonce)
    back.verify_signature()
    assert open_envelope(back, CIPHER) == change
    assert Envelope.decode(bytearray(env.raw)).hash == env.hash  # type: ignore[arg-type]


@FAST
@given(st.binary(max_size=400))
@example(b"")
@example(b"\x01" + bytes(200))
@example(b"\x01" + bytes(180) + b"\xff\xff\xff\xff" + bytes(64))
def test_envelope_decode_random_bytes(data: bytes) -> None:
    """Envelope.decode of random bytes only raises EnvelopeError subclasses."""
    try:
        Envelope.decode(data)
    except EnvelopeError as exc:
        assert exc.code and str(exc)


@cache
def _sample_envelope() -> Envelope:
    return seal_envelope(board_id=BOARD_ID, cipher=CIPHER, author_key=KEY, seq=7,
                         prev=os.urandom(32), change=os.urandom(100))


@FAST
@given(st.data())
def test_mutated_envelope_never_passes(data: st.DataObject) -> None:
    """Any single-byte change, truncation or extension of a real envelope either fails
    to decode (EnvelopeError) or fails its signature check (SignatureError)."""
    raw = bytearray(_sample_envelope().raw)
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=50))
    with pytest.raises(EnvelopeError):
        Envelope.decode(bytes(raw)).verify_signature()


def test_decode_oversize_is_checked_first() -> None:
    """A huge input is refused by length before anything else is looked at."""
    start = time.perf_counter()
    with pytest.raises(EnvelopeError, match="exceeds"):
        Envelope.decode(bytes(MAX_ENVELOPE_BYTES + 1))
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 0), ("seq", 2**63), ("seq", 2**64), ("prev", b"short"), ("board_id", b"x" * 33)],
    ids=["seq-0", "seq-2^63", "seq-2^64", "prev-5-bytes", "board_id-33-bytes"],
)
def test_seal_refuses_what_decode_refuses(field: str, value: object) -> None:
    """seal_envelope must refuse (LocalProtocolError) arguments that would give an
    envelope decode refuses, or an Envelope object whose fields differ from its bytes.

    LIBRARY BUG (envelope.seal_envelope): no argument checks. seq 0 or 2**63 seals
    fine but never decodes; seq 2**64 raises OverflowError (not a P2paidError); a
    5-byte ``prev`` is silently zero-padded and a 33-byte ``board_id`` silently cut
    by struct '32s', so ``env.prev``/``env.board_id`` differ from what ``env.raw`` says.
    """
    kwargs: dict[str, object] = {"seq": 1, "prev": bytes(32), "board_id": BOARD_ID}
    kwargs[field] = value
    try:
        env = seal_envelope(cipher=CIPHER, author_key=KEY, change=b"c", **kwargs)  # type: ignore[arg-type]
    except LocalProtocolError:
        return
    except Exception as exc:
        pytest.fail(f"seal_envelope({field}={value!r}) raised {exc!r}, not LocalProtocolError")
    try:
        decoded: object = Envelope.decode(env.raw)
    except EnvelopeError as exc:
        decoded = exc
    pytest.fail(f"seal_envelope({field}={value!r}) sealed an envelope; decode gives {decoded!r}"
                f"; env.{field} = {getattr(env, field)!r}")


# ---------------------------------------------------------------------------- change headers


def _body_header(actor: bytes, seq: int = 1, deps: tuple[bytes, ...] = (),
                 others: tuple[bytes, ...] = ()) -> bytes:
    """A type-1 change body header written from the Automerge format (test's own encoder)."""
    out = uleb(len(deps)) + b"".join(deps) + uleb(len(actor)) + actor + uleb(seq) + uleb(1)
    out += uleb(0) + uleb(0) + uleb(len(others))
    for other in others:
        out += uleb(len(other)) + other
    return out


def _chunk(body: bytes, *, compress: bool = False, checksum: bytes | None = None) -> bytes:
    if checksum is None:
        checksum = hashlib.sha256(b"\x01" + uleb(len(body)) + body).digest()[:4]
    if compress:
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = co.compress(body) + co.flush()
        return MAGIC + checksum + b"\x02" + uleb(len(payload)) + payload
    return MAGIC + checksum + b"\x01" + uleb(len(body)) + body


@cache
def _real_changes() -> tuple[bytes, ...]:
    """A few real changes: small, compressed (large), with deps and with other actors."""
    a, b = os.urandom(32), os.urandom(32)
    doc = Document(actor_id=a)
    with doc.transaction() as tx:
        sec = tx.put_object(ROOT, a.hex(), ObjType.Map)
        tx.put(sec, "v", ScalarType.Int, 1)
    with doc.transaction() as tx:
        for i in range(60):
            tx.put(sec, f"k{i}", ScalarType.Str, "drinking water, north camp " * 3)
    other = Document.load(doc.save())
    other.set_actor(b)
    with other.transaction() as tx:
        tx.put(sec, "v", ScalarType.Int, 2)
    doc.merge(other)
    with doc.transaction() as tx:
        tx.put(sec, "after-merge", ScalarType.Str, "x")
    return tuple(bytes(c.bytes) for c in doc.get_changes([]))


def test_real_changes_cover_the_interesting_shapes() -> None:
    """The corpus used below has a compressed change, a 2-dep change and another actor."""
    headers = [parse_change(c) for c in _real_changes()]
    assert any(c[8] == 2 for c in _real_changes())
    assert any(len(h.deps) == 2 for h in headers)
    assert any(h.other_actors for h in headers)


@FAST
@given(st.binary(max_size=500))
@example(b"")
@example(MAGIC)
@example(MAGIC + bytes(4) + b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
@example(MAGIC + bytes(4) + b"\x02\x00")
@example(MAGIC + bytes(4) + b"\x00\x00")
def test_parse_change_random_bytes(data: bytes) -> None:
    """parse_change of random bytes only raises ChangeMismatchError."""
    with pytest.raises(ChangeMismatchError):
        parse_change(data)
    with pytest.raises(ChangeMismatchError):
        parse_change(MAGIC + data)


@FAST
@given(st.binary(max_size=600), st.booleans())
@example(b"", False)
@example(b"\x80" * 12, False)
@example(b"\x81\x08" + bytes(40), False)
@example(uleb(2000) + bytes(10), True)
@example(b"\x00\x20" + bytes(32) + b"\x01\x01\x7f\x00\x01\x40" + bytes(64), False)
def test_parse_change_checksummed_garbage(body: bytes, compress: bool) -> None:
    """With a correct checksum (so the header parser runs on the random body), type 1 and
    type 2 chunks parse or raise ChangeMismatchError - nothing else."""
    try:
        header = parse_change(_chunk(body, compress=compress))
    except ChangeMismatchError:
        return
    assert isinstance(header, ChangeHeader)
    assert header.hash == hashlib.sha256(b"\x01" + uleb(len(body)) + body).digest()


@FAST
@given(st.data())
def test_parse_change_mutated_real_changes(data: st.DataObject) -> None:
    """Real change bytes with a flipped byte, a cut or extra bytes: ChangeMismatchError
    (or, for a mutation Automerge would also accept, a header) - nothing else."""
    chunk = bytearray(data.draw(st.sampled_from(_real_changes())))
    how = data.draw(st.sampled_from(["flip", "cut", "extend", "insert"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(chunk) - 1))
        chunk[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        chunk = chunk[: data.draw(st.integers(0, len(chunk) - 1))]
    elif how == "extend":
        chunk += data.draw(st.binary(min_size=1, max_size=20))
    else:
        at = data.draw(st.integers(0, len(chunk)))
        chunk[at:at] = data.draw(st.binary(min_size=1, max_size=5))
    try:
        header = parse_change(bytes(chunk))
    except ChangeMismatchError:
        return
    # Only a mutation that leaves the checked content intact may pass (e.g. a padding
    # bit of the final deflate byte): then the header must be one of the originals.
    assert header in {parse_change(c) for c in _real_changes()}, bytes(chunk).hex()


def test_deflate_bomb_is_refused_quickly() -> None:
    """A type-2 chunk whose body inflates to 64 MiB is refused fast, without expanding
    it: under 0.5 s and well under 64 MiB of memory."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = co.compress(bytes(64 * 1024 * 1024)) + co.flush()
    assert len(bomb) < 100_000
    chunk = MAGIC + bytes(4) + b"\x02" + uleb(len(bomb)) + bomb
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ChangeMismatchError, match="inflates beyond"):
            parse_change(chunk)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 4 * MAX_CHANGE_BYTES


def test_size_cap_boundary() -> None:
    """A change body of exactly MAX_CHANGE_BYTES parses (compressed or not); one byte
    more is refused either way."""
    actor = os.urandom(32)
    head = _body_header(actor, seq=3)
    exact = head + bytes(MAX_CHANGE_BYTES - len(head))
    for compress in (False, True):
        h = parse_change(_chunk(exact, compress=compress))
        assert (h.actor, h.seq) == (actor, 3)
        with pytest.raises(ChangeMismatchError):
            parse_change(_chunk(exact + b"\x00", compress=compress))


def test_compressed_chunk_with_trailing_or_truncated_deflate() -> None:
    """Deflate data with bytes after its end, or cut before its end, is refused
    (checksum correct, so only the deflate framing is wrong)."""
    body = _body_header(os.urandom(32)) + b"\x00" + b"extra" * 100  # no columns, extra bytes
    check = hashlib.sha256(b"\x01" + uleb(len(body)) + body).digest()[:4]
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = co.compress(body) + co.flush()
    assert parse_change(MAGIC + check + b"\x02" + uleb(len(payload)) + payload).seq == 1
    for bad in (payload + b"\x00", payload[:-3], b""):
        with pytest.raises(ChangeMismatchError):
            parse_change(MAGIC + check + b"\x02" + uleb(len(bad)) + bad)


def _automerge_view(change: object) -> tuple[bytes, int, int, tuple[bytes, ...], bytes,
                                              tuple[bytes, ...]]:
    c: object = change
    return (
        bytes(c.hash),  # type: ignore[attr-defined]
        int(c.seq),  # type: ignore[attr-defined]
        int(c.start_op),  # type: ignore[attr-defined]
        tuple(sorted(bytes(d) for d in c.deps)),  # type: ignore[attr-defined]
        bytes(c.actor_id),  # type: ignore[attr-defined]
        tuple(bytes(a) for a in c.other_actor_ids),  # type: ignore[attr-defined]
    )


def _header_view(h: ChangeHeader) -> tuple[bytes, int, int, tuple[bytes, ...], bytes,
                                          tuple[bytes, ...]]:
    return (h.hash, h.seq, h.start_op, tuple(sorted(h.deps)), h.actor, h.other_actors)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.lists(st.tuples(st.text(min_size=1, max_size=8),
                               st.text(max_size=400) | st.integers(-(2**40), 2**40)),
                     min_size=1, max_size=12),
            st.booleans(),
        ),
        min_size=1, max_size=6,
    )
)
def test_parse_change_agrees_with_automerge(
    steps: list[tuple[str, list[tuple[str, str | int]], bool]],
) -> None:
    """For real changes from two actors editing one map (with merges, so deps > 1,
    other actors, and large compressed changes), parse_change reads the same hash, seq,
    start_op, deps, actor and other actors as Automerge itself."""
    actors = {"a": os.urandom(32), "b": os.urandom(32)}
    docs = {"a": Document(actor_id=actors["a"])}
    with docs["a"].transaction() as tx:
        shared = bytes(tx.put_object(ROOT, "shared", ObjType.Map))
    docs["b"] = Document.load(docs["a"].save())
    docs["b"].set_actor(actors["b"])
    for who, puts, merge in steps:
        doc = docs[who]
        with doc.transaction() as tx:
            for key, value in puts:
                if isinstance(value, int):
                    tx.put(shared, key, ScalarType.Int, value)
                else:
                    tx.put(shared, key, ScalarType.Str, value)
        if merge:
            docs["a" if who == "b" else "b"].merge(doc)
    docs["a"].merge(docs["b"])
    for change in docs["a"].get_changes([]):
        data = bytes(change.bytes)
        assert _header_view(parse_change(data)) == _automerge_view(change)


def test_parse_change_agrees_on_compressed_and_raw_forms() -> None:
    """A large change is compressed by Automerge (type 2); parse_change of it and of
    its uncompressed form (raw_bytes, type 1) agree with Automerge and each other."""
    doc = Document(actor_id=os.urandom(32))
    with doc.transaction() as tx:
        m = tx.put_object(ROOT, "m", ObjType.Map)
        for i in range(100):
            tx.put(m, f"k{i}", ScalarType.Str, "forty litres of drinking water " * 4)
    change = doc.get_last_local_change()
    assert change is not None
    compressed, raw = bytes(change.bytes), bytes(change.raw_bytes)
    assert compressed[8] == 2 and raw[8] == 1 and len(compressed) < len(raw)
    assert _header_view(parse_change(compressed)) == _automerge_view(change)
    assert parse_change(raw) == parse_change(compressed)


# ---------------------------------------------------------------------------- bundles


@FAST
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_bundle_round_trip(records: list[bytes]) -> None:
    """write_bundle then read_bundle yields exactly the records written, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.p2paid"
        assert write_bundle(path, iter(records)) == len(records)
        assert list(read_bundle(path)) == records
        assert not [p for p in Path(tmp).iterdir() if p.name != "b.p2paid"]  # no temp left


def test_bundle_round_trip_of_real_envelopes(tmp_path: Path) -> None:
    """Real envelopes survive a bundle and decode to the same hashes."""
    envs = [seal_envelope(board_id=BOARD_ID, cipher=CIPHER, author_key=KEY, seq=i,
                          prev=bytes(32), change=os.urandom(i * 10)) for i in range(1, 30)]
    path = tmp_path / "real.p2paid"
    write_bundle(path, (e.raw for e in envs))
    assert [Envelope.decode(r).hash for r in read_bundle(path)] == [e.hash for e in envs]


@FAST
@given(st.binary(max_size=600), st.booleans())
@example(b"", False)
@example(b"\x01\x00\x00\x00\x00\x00", True)
@example(b"\x01\x00\xff\xff\xff\xff", True)
@example(b"\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00" + bytes(8) + bytes(32), True)
def test_bundle_random_bytes_only_raise_bundle_error(data: bytes, with_magic: bool) -> None:
    """Random files (optionally behind the right magic, to reach the record parser)
    only raise BundleError from read_bundle, before yielding anything."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "junk.p2paid"
        path.write_bytes((BUNDLE_MAGIC if with_magic else b"") + data)
        try:
            records = list(read_bundle(path))
        except BundleError as exc:
            assert str(exc)
        else:  # only possible for a structurally perfect file
            assert isinstance(records, list)


@FAST
@given(st.data())
def test_bundle_any_mutation_is_detected(data: st.DataObject) -> None:
    """Any flipped byte, cut or extension of a valid bundle raises BundleError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.p2paid"
        write_bundle(path, [os.urandom(40), os.urandom(90)])
        raw = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if how == "flip":
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=40))
        path.write_bytes(bytes(raw))
        with pytest.raises(BundleError):
            list(read_bundle(path))


@pytest.mark.parametrize("record", [b"", bytes(MAX_ENVELOPE_BYTES + 1)],
                         ids=["empty-record", "oversized-record"])
def test_write_bundle_refuses_unreadable_records(tmp_path: Path, record: bytes) -> None:
    """write_bundle must not write a file its own reader refuses.

    LIBRARY BUG (bundle.write_bundle): an empty record is written as length 0, which
    the reader takes as the end marker, and a record over MAX_ENVELOPE_BYTES is written
    as is; both files then fail read_bundle. Expected: refuse at write time with a
    P2paidError (e.g. LocalProtocolError) and leave no file behind.
    """
    path = tmp_path / "x.p2paid"
    with pytest.raises(P2paidError):
        write_bundle(path, [b"ok", record])
    assert not path.exists()
