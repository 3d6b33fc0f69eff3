#!/usr/bin/env python3
"""Regenerate the p2paid/1 protocol vectors: messages, tags, digests, refusals,
sessions and a byte-exact connection transcript.

    python protocol/vectors/make_protocol_vectors.py

Every input is fixed (keys are SHA-256 of a label, nonces are fixed bytes, Ed25519
signatures are deterministic), so a re-run writes byte-identical files. The
expected outputs are written here by hand from protocol/SPEC.md (message bytes
with msgpack itself, tags and digests with hmac/hashlib, refusal codes and
session replies as literals), and the script then checks that the reference
implementation agrees before writing anything: a file is a statement of the spec,
not a snapshot of the code. Tests (tests/test_protocol_vectors.py) only read them.

The hostile changes are written byte by byte with tests/amcraft.py (the Automerge
change format by hand), which is why this script puts tests/ on the path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from amcraft import (  # noqa: E402
    COUNTER,
    MAKE_MAP,
    SET,
    CraftedFeed,
    CraftedOp,
    change_chunk,
    int_value,
)

import p2paid  # noqa: E402
from p2paid.core.envelope import Envelope, seal_envelope  # noqa: E402
from p2paid.core.feed import FeedHead  # noqa: E402
from p2paid.core.identity import AuthorKey  # noqa: E402
from p2paid.core.invite import Invite, derive_board_keys  # noqa: E402
from p2paid.core.messages import check_head, decode_message, encode_message  # noqa: E402
from p2paid.core.noise import HandshakeState  # noqa: E402
from p2paid.core.replication import SyncSession, board_tag, vector_digest  # noqa: E402
from p2paid.core.wire import (  # noqa: E402
    Ack,
    Close,
    Envelopes,
    Evidence,
    Hello,
    HelloBoard,
    Ping,
    Pong,
    Refused,
    Vector,
)
from p2paid.errors import RemoteProtocolError  # noqa: E402
from p2paid.node.replica import StoreReplica  # noqa: E402
from p2paid.relay.replica import RelayLimits, RelayReplica  # noqa: E402
from p2paid.relay.server import open_relay_db  # noqa: E402

PROLOGUE = b"p2paid/1"
FEED = json.loads((HERE / "envelopes.json").read_text())


def fixed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def write(name: str, doc: dict[str, Any]) -> None:
    (HERE / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


h = bytes.fromhex
B1 = derive_board_keys(fixed("board-1"))
B2 = derive_board_keys(fixed("board-2"))
A = AuthorKey(fixed("author-a"))
B = AuthorKey(fixed("author-b"))
A1, A2 = (h(v["envelope"]) for v in FEED["feed"])


# ---------------------------------------------------------------------- the transcript
#
# The handshake hash of a real p2paid handshake (empty payloads, fixed static and
# ephemeral keys) is the ``h`` that every tag, digest and session vector uses.

NODE_KEYS = {role: X25519PrivateKey.from_private_bytes(fixed(f"p2paid/vector node {role}"))
             for role in ("initiator", "responder")}
EPHEMERALS = {role: X25519PrivateKey.from_private_bytes(fixed(f"p2paid/vector ephemeral {role}"))
              for role in ("initiator", "responder")}


def _private_hex(key: X25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption()).hex()


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def handshake() -> tuple[list[bytes], bytes, Any, Any]:
    """The three XX messages, ``h``, and both transports (initiator's, responder's)."""
    init = HandshakeState(True, NODE_KEYS["initiator"], PROLOGUE, EPHEMERALS["initiator"])
    resp = HandshakeState(False, NODE_KEYS["responder"], PROLOGUE, EPHEMERALS["responder"])
    messages = []
    for writer, reader in ((init, resp), (resp, init), (init, resp)):
        message = writer.write_message(b"")
        assert reader.read_message(message) == b""
        messages.append(message)
    ti, tr = init.to_transport(), resp.to_transport()
    assert ti.handshake_hash == tr.handshake_hash
    return messages, ti.handshake_hash, ti, tr


HANDSHAKE, HH, _, _ = handshake()


# ---------------------------------------------------------------------- by the spec

def spec_tag(tag_key: bytes, initiator: bool, hh: bytes = HH) -> bytes:
    """SPEC 12.1: HMAC-SHA256(tag_key, label || h)."""
    label = b"p2paid/1 initiator" if initiator else b"p2paid/1 responder"
    return hmac.new(tag_key, label + hh, hashlib.sha256).digest()


def spec_digest_input(hh: bytes, heads: Sequence[tuple[bytes, int, bytes]]) -> bytes:
    """SPEC 12.1: what the digest MAC covers."""
    out = b"p2paid/1 digest\x00" + hh
    for author, seq, head_hash in sorted(heads):
        if seq > 0:
            out += author + seq.to_bytes(8, "big") + head_hash
    return out


def spec_digest(key: bytes, hh: bytes, heads: Sequence[tuple[bytes, int, bytes]]) -> bytes:
    return hmac.new(key, spec_digest_input(hh, heads), hashlib.sha256).digest()[:16]


def env_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- envelopes

def seal(key: AuthorKey, seq: int, prev: bytes, change: bytes, label: str, *,
         board: Any = B1, cipher_keys: Any = None) -> bytes:
    cipher = ChaCha20Poly1305((cipher_keys or board).content_key)
    return seal_envelope(board_id=board.board_id, cipher=cipher, author_key=key, seq=seq,
                         prev=prev, change=change, nonce=fixed(f"p2paid/vector nonce {label}")[:12]
                         ).raw


def b_feed() -> CraftedFeed:
    return CraftedFeed(B1.board_id, B1.content_key, B)


def _flip(raw: bytes, pos: int) -> bytes:
    out = bytearray(raw)
    out[pos] ^= 0x01
    return bytes(out)


def hostile_envelopes() -> dict[str, tuple[str, bytes]]:
    """name -> (what it is, envelope bytes): author-b's feed, honest and hostile."""
    out: dict[str, tuple[str, bytes]] = {
        "a1": ("author-a's seq 1 (envelopes.json)", A1),
        "a2": ("author-a's seq 2 (envelopes.json)", A2),
    }
    a2_change = h(FEED["feed"][1]["change"])
    out["a2-fork"] = ("author-a's seq 2 again: the same change sealed with another nonce, "
                      "validly signed (a fork)",
                      seal(A, 2, env_hash(A1), a2_change, "a2-fork"))
    out["a3-forked"] = ("author-a's seq 3 after its seq 2 fork-version (a2-fork)",
                        seal(A, 3, env_hash(out["a2-fork"][1]), a2_change, "a3-forked"))
    out["a2-bad-sig"] = ("a2 with one bit of its signature flipped",
                         _flip(A2, len(A2) - 1))

    feed = b_feed()
    first = feed.chunk(feed.first())
    b1 = seal(B, 1, bytes(32), first, "b1")
    out["b1"] = ("author-b's honest first change: its section (v = 1) and a needs map", b1)
    feed.advance(b1)
    need = feed.chunk(feed.need_ops("0123456789abcdef0123456789abcdef", "Tents",
                                    now=1_900_000_000_000))
    out["b2"] = ("author-b's honest seq 2: a need", seal(B, 2, env_hash(b1), need, "b2"))
    out["b2-bad-prev"] = ("author-b's seq 2, validly signed, whose prev is not b1's hash",
                          seal(B, 2, fixed("not b1"), need, "b2-bad-prev"))
    out["b1-fork"] = ("author-b's seq 1 in a second, validly signed version",
                      seal(B, 1, bytes(32), first, "b1-fork"))
    out["b1-bad-sig"] = ("b1 with one bit of its signature flipped", _flip(b1, len(b1) - 1))
    out["b1-other-board"] = ("b1's change sealed for board-2", seal(
        B, 1, bytes(32), first, "b1-other-board", board=B2))
    out["b1-wrong-key"] = ("b1's change sealed for board-1 under board-2's content key",
                           seal(B, 1, bytes(32), first, "b1-wrong-key", cipher_keys=B2))
    out["b1-truncated"] = ("b1 cut to its first 120 bytes", b1[:120])
    out["b1-version-2"] = ("b1 with version byte 2", b"\x02" + b1[1:])
    out["b1-short-ciphertext"] = ("b1 with its ciphertext_len one too large",
                                  b1[:117] + struct.pack(">I", len(b1) - 184) + b1[121:])
    out["b1-seq-0"] = ("b1 with seq 0", b1[:65] + bytes(8) + b1[73:])
    out["too-large"] = ("an envelope of 65722 bytes, one over the cap",
                        b1[:117] + struct.pack(">I", 65537) + bytes(65537) + bytes(64))

    def hostile(name: str, what: str, chunk: bytes, seq: int = 1,
                prev: bytes = bytes(32)) -> None:
        out[name] = (what, seal(B, seq, prev, chunk, name))

    hostile("b1-claims-seq-2", "author-b's envelope seq 1 whose change says seq 2",
            change_chunk(actor=B.public, seq=2, start_op=1, ops=feed.first()))
    hostile("b1-carries-a1", "author-b's envelope seq 1 carrying author-a's change a1",
            h(FEED["feed"][0]["change"]))
    hostile("b1-not-canonical", "b1's ops with every column written as literal runs only",
            change_chunk(actor=B.public, seq=1, start_op=1, ops=feed.first(),
                         canonical=False))
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = bomb.compress(bytes(262_145)) + bomb.flush()
    hostile("b1-bomb", "a compressed change (type 2) whose body inflates to 262145 bytes",
            first[:8] + b"\x02" + _uleb(len(packed)) + packed)
    hostile("b1-ownership", "author-b's first change naming author-a in its actor table",
            change_chunk(actor=B.public, seq=1, start_op=1, ops=feed.first(),
                         other_actors=[A.public]))
    hostile("b1-start-op-2", "author-b's first change starting at op 2",
            change_chunk(actor=B.public, seq=1, start_op=2, ops=feed.first()))
    hostile("b2-no-deps", "author-b's seq 2 with no dependencies",
            change_chunk(actor=B.public, seq=2, start_op=4, ops=[
                CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 2)])]),
            seq=2, prev=env_hash(b1))
    hostile("b2-reuses-op-ids", "author-b's seq 2 starting at op 1 again (op ids reused)",
            change_chunk(actor=B.public, seq=2, start_op=1, deps=[feed.last_hash], ops=[
                CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 2)])]),
            seq=2, prev=env_hash(b1))
    hostile("b1-counter", "author-b's first change putting a Counter value",
            change_chunk(actor=B.public, seq=1, start_op=1, ops=[
                *feed.first(), CraftedOp(SET, (0, 1), "n", (COUNTER, b"\x05"))]))
    hostile("b1-root-key", "author-b's first change making its section at author-a's key",
            change_chunk(actor=B.public, seq=1, start_op=1, ops=[
                CraftedOp(MAKE_MAP, None, A.public.hex()), *feed.first()[1:]]))
    hostile("b2-no-pred", "author-b's seq 2 overwriting its 'v' without naming the op there",
            change_chunk(actor=B.public, seq=2, start_op=4, deps=[feed.last_hash], ops=[
                CraftedOp(SET, (0, 1), "v", int_value(2))]),
            seq=2, prev=env_hash(b1))
    hostile("b2-on-bad", "author-b's seq 2 chained to b1-counter",
            change_chunk(actor=B.public, seq=2, start_op=5, deps=[
                hashlib.sha256(b"\x01" + _body(out["b1-counter"][1])).digest()], ops=[
                CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 2)])]),
            seq=2, prev=env_hash(out["b1-counter"][1]))
    return out


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _body(raw: bytes) -> bytes:
    """The uncompressed change body (and its uLEB length) inside an envelope of board-1,
    as hashed for the change hash: ``uLEB(len) || body``."""
    env = Envelope.decode(raw)
    ad = b"p2paid/1 content\x00" + env.board_id + env.author + env.seq.to_bytes(8, "big")
    change = ChaCha20Poly1305(B1.content_key).decrypt(env.nonce, env.ciphertext, ad)
    return change[9:]


ENVELOPES = hostile_envelopes()
RAW = {name: raw for name, (_, raw) in ENVELOPES.items()}


# ---------------------------------------------------------------------- stores

@contextmanager
def member(holds: Sequence[str]) -> Iterator[tuple[Any, Any]]:
    """A node's store that joined board-1 and received ``holds`` in order."""
    with tempfile.TemporaryDirectory() as tmp:
        store = p2paid.open_store(Path(tmp) / "node")
        try:
            board = store.join(Invite(fixed("board-1"), "Riverside mutual aid"))
            for name in holds:
                report = board.receive([RAW[name]])
                assert report.accepted == 1 or name.endswith("fork"), (name, report)
            yield store, board
        finally:
            store.close()


@contextmanager
def relay(holds: Sequence[str], limits: RelayLimits | None = None) -> Iterator[RelayReplica]:
    with tempfile.TemporaryDirectory() as tmp:
        db = open_relay_db(Path(tmp) / "relay")
        try:
            replica = RelayReplica.open(db, limits or RelayLimits())
            for name in holds:
                result = replica.receive(B1.board_id, [RAW[name]])
                assert result.stored == 1 or name.endswith("fork"), (name, result)
            yield replica
        finally:
            db.close()


# ---------------------------------------------------------------------- message JSON

def message_json(message: Any) -> dict[str, Any]:
    """A message as JSON: its type name and its fields, bytes in hex."""
    out: dict[str, Any] = {"type": type(message).__name__}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        if name == "boards":
            value = [{"key": b.key.hex(), "digest": b.digest.hex()} for b in value]
        elif name == "entries":
            value = [{"author": a.hex(), "seq": s, "tag": t.hex()} for a, s, t in value]
        elif name == "envelopes":
            value = [e.hex() for e in value]
        elif isinstance(value, bytes):
            value = value.hex()
        out[name] = value
    return out


def _fields(message: dict[str, Any]) -> list[Any]:
    """The msgpack fields of a message given as JSON, per SPEC 11.2 (not p2paid's encoder)."""
    kind = message["type"]
    if kind == "Hello":
        fields = [message["version"], message["role"], message["by_id"],
                  [[h(b["key"]), h(b["digest"])] for b in message["boards"]]]
        if message["token"] is not None:
            fields.append(h(message["token"]))
        return [1, *fields]
    if kind == "Vector":
        return [2, message["board"], [[h(e["author"]), e["seq"], h(e["tag"])] if e["tag"]
                                      else [h(e["author"]), e["seq"]]
                                      for e in message["entries"]]]
    if kind == "Envelopes":
        return [3, message["board"], message["batch"], [h(e) for e in message["envelopes"]]]
    if kind == "Ack":
        return [4, message["board"], message["batch"]]
    if kind in ("Ping", "Pong"):
        return [5 if kind == "Ping" else 6, message["nonce"]]
    if kind == "Refused":
        return [7, h(message["board"]), message["code"], message["text"]]
    if kind == "Close":
        return [8, message["reason"]]
    assert kind == "Evidence"
    return [9, message["board"], [h(e) for e in message["envelopes"]]]


def spec_body(message: Any) -> bytes:
    """The body of ``message`` by SPEC 11.2 (msgpack, shortest forms); checked against
    p2paid's own encoder."""
    body = packb(_fields(message_json(message)))
    assert encode_message(message) == body, message
    assert decode_message(body) == message
    return body


def wire(message: Any) -> dict[str, Any]:
    return {"message": message_json(message), "hex": spec_body(message).hex()}


def heads_of(names: Sequence[str]) -> list[tuple[bytes, int, bytes]]:
    """(author, seq, hash) of the newest of each author among ``names`` (a feed)."""
    newest: dict[bytes, tuple[int, bytes]] = {}
    for name in names:
        env = Envelope.decode(RAW[name])
        if env.seq > newest.get(env.author, (0, b""))[0]:
            newest[env.author] = (env.seq, env.hash)
    return [(a, s, x) for a, (s, x) in sorted(newest.items())]


def tag8(name: str) -> bytes:
    return env_hash(RAW[name])[:8]


# ---------------------------------------------------------------------- messages.json

def messages() -> None:
    digest_a = spec_digest(B1.tag_key, HH, heads_of(["a1", "a2"]))
    tag_i = spec_tag(B1.tag_key, True)
    token = fixed("token")[:20]
    sixteen = tuple(HelloBoard(fixed(f"board key {i}"), fixed(f"digest {i}")[:16])
                    for i in range(16))
    a, b = A.public, B.public
    encode = [
        ("hello-node", "A node's Hello listing board-1 by its initiator tag (tags.json), "
         "with the digest of author-a's feed at seq 2 (digests.json)",
         Hello(1, "node", False, (HelloBoard(tag_i, digest_a),))),
        ("hello-node-no-boards", "A node's Hello listing no board",
         Hello(1, "node", False, ())),
        ("hello-16-boards", "16 boards: the boards array takes the array 16 form (0xdc)",
         Hello(1, "node", False, sixteen)),
        ("hello-to-relay-with-token", "A node's Hello to a relay: boards by id, and a "
         "20-byte access token as the optional fifth field",
         Hello(1, "node", True, (HelloBoard(B1.board_id, digest_a),), token)),
        ("hello-relay", "A relay's answer: the boards it carries, by id",
         Hello(1, "relay", True, (HelloBoard(B1.board_id, spec_digest(
             B1.board_id, HH, [])),))),
        ("vector-with-tags", "author-a at seq 2 with the first 8 bytes of a2's hash, and "
         "author-b at seq 1",
         Vector(0, ((a, 2, tag8("a2")), (b, 1, tag8("b1"))))),
        ("vector-without-tags", "Entries of two fields, [author, seq], as older senders "
         "write them (decoded with an empty tag)", Vector(1, ((a, 2, b""),))),
        ("vector-empty", "A Vector of a board the sender holds nothing of",
         Vector(0, ())),
        ("vector-wide-integers", "board 128 (uint 8), seq 2^32 (uint 64)",
         Vector(128, ((a, 2**32, tag8("a2")),))),
        ("envelopes", "Batch 0 of board 0: author-a's two envelopes (envelopes.json)",
         Envelopes(0, 0, (A1, A2))),
        ("envelopes-wide-batch", "Batch 65536 (uint 32) of board 255 (uint 8)",
         Envelopes(255, 65536, (A1,))),
        ("ack", "Ack of batch 0 of board 0", Ack(0, 0)),
        ("ack-wide", "Ack of batch 2^32 (uint 64) of board 256 (uint 16)", Ack(256, 2**32)),
        ("ping", "Ping 127 (the largest positive fixint)", Ping(127)),
        ("ping-wide", "Ping 2^32 - 1 (uint 32)", Ping(2**32 - 1)),
        ("pong-wide", "Pong 2^64 - 1 (uint 64)", Pong(2**64 - 1)),
        ("refused-board", "A relay's refusal of a batch of board-1 (instead of the Ack)",
         Refused(B1.board_id, "board-full", "this relay has no room for more of this board")),
        ("refused-connection", "A notice about the whole connection (empty board)",
         Refused(b"", "rate-limited", "this relay reads at most 1048576 bytes/s")),
        ("close-short", "Close with a reason of at most 31 bytes (fixstr)", Close("no hello")),
        ("close-str8", "Close with a reason of 32 to 255 bytes (str 8)",
         Close("too many connections from your address")),
        ("evidence", "The fork proof of refusals.json (a2 and a2-fork) on board 0",
         Evidence(0, (A2, RAW["a2-fork"]))),
    ]
    decode = [
        ("ack-uint64-fields", "Integers in a wider form than needed are accepted",
         bytes([0x93, 0x04, 0xCF]) + (0).to_bytes(8, "big") + bytes([0xCD, 0x00, 0x07]),
         Ack(0, 7)),
        ("ack-int8-positive", "A non-negative integer in a signed form (int 8)",
         bytes([0x93, 0x04, 0xD0, 0x05, 0x00]), Ack(5, 0)),
        ("ack-array16", "The message array in the array 16 form",
         bytes([0xDC, 0x00, 0x03, 0x04, 0x00, 0x01]), Ack(0, 1)),
        ("close-str8-short", "A short str in the str 8 form",
         bytes([0x92, 0x08, 0xD9, 0x03]) + b"bye", Close("bye")),
        ("ping-trailing-fields", "Fields after the known ones are skipped, whatever they "
         "hold (here nil, a map and a nested array)",
         packb([5, 9, None, {"later": [1, 2]}, [[True]]]), Ping(9)),
        ("hello-token-and-more", "A Hello with a token and a sixth field",
         packb([1, 1, "node", True, [], b"tok", "later"]), Hello(1, "node", True, (), b"tok")),
        ("hello-future-version", "version 2 decodes (a session refuses only version 0, "
         "see sessions.json)", packb([1, 2, "node", False, []]), Hello(2, "node", False, ())),
        ("vector-mixed-entries", "Entries with and without a tag in one Vector",
         packb([2, 0, [[a, 2, tag8("a2")], [b, 1]]]),
         Vector(0, ((a, 2, tag8("a2")), (b, 1, b"")))),
        ("envelopes-empty", "A batch of no envelopes decodes (it is never sent)",
         packb([3, 0, 0, []]), Envelopes(0, 0, ())),
        ("refused-bin16-board", "A bin in the bin 16 form", bytes([0x94, 0x07, 0xC5, 0, 32])
         + B1.board_id + packb("quota") + packb(""), Refused(B1.board_id, "quota", "")),
    ]
    refuse = [
        ("map", "A map instead of an array", packb({"type": 4}), "malformed"),
        ("empty-array", "An empty array", packb([]), "malformed"),
        ("unknown-type", "Type 10", packb([10, 0]), "malformed"),
        ("type-uint8", "The type as uint 8 instead of a positive fixint",
         bytes([0x93, 0xCC, 0x04, 0x00, 0x00]), "malformed"),
        ("type-zero", "Type 0", packb([0, 0]), "malformed"),
        ("missing-field", "An Ack without its batch", packb([4, 0]), "malformed"),
        ("negative-integer", "A negative batch number", packb([4, 0, -1]), "malformed"),
        ("nil-field", "nil where a number belongs", packb([4, 0, None]), "malformed"),
        ("float-field", "A float where a number belongs", packb([4, 0, 1.0]), "malformed"),
        ("bool-as-int", "A number where a bool belongs (by_id)",
         packb([1, 1, "node", 0, []]), "malformed"),
        ("bin-for-str", "bin where a str belongs", packb([8, b"bye"]), "malformed"),
        ("str-for-bin", "str where bin belongs (an envelope)",
         packb([3, 0, 0, ["not bytes"]]), "malformed"),
        ("bad-utf8", "A str that is not UTF-8", bytes([0x92, 0x08, 0xA2, 0xC3, 0x28]),
         "malformed"),
        ("hello-key-31", "A Hello board key of 31 bytes",
         packb([1, 1, "node", False, [[bytes(31), bytes(16)]]]), "malformed"),
        ("hello-entry-3", "A Hello board entry of three elements (nested arrays take no "
         "extra elements)", packb([1, 1, "node", False, [[bytes(32), bytes(16), 0]]]),
         "malformed"),
        ("hello-role-17", "A role of 17 characters", packb([1, 1, "r" * 17, False, []]),
         "malformed"),
        ("hello-token-65", "A token of 65 bytes", packb([1, 1, "node", True, [], bytes(65)]),
         "malformed"),
        ("hello-1025-boards", "A boards array declaring 1025 entries (refused at its header)",
         bytes([0x95, 0x01, 0x01, 0xA4]) + b"node" + bytes([0xC2, 0xDC, 0x04, 0x01]),
         "malformed"),
        ("vector-tag-7", "A Vector tag of 7 bytes", packb([2, 0, [[a, 1, bytes(7)]]]),
         "malformed"),
        ("vector-entry-1", "A Vector entry of one element", packb([2, 0, [[a]]]), "malformed"),
        ("vector-entry-4", "A Vector entry of four elements",
         packb([2, 0, [[a, 1, bytes(8), 0]]]), "malformed"),
        ("vector-16001-entries", "An entries array declaring 16,001 entries",
         bytes([0x93, 0x02, 0x00, 0xDC]) + (16_001).to_bytes(2, "big"), "malformed"),
        ("envelopes-10001", "An envelopes array declaring 10,001 entries",
         bytes([0x94, 0x03, 0x00, 0x00, 0xDC]) + (10_001).to_bytes(2, "big"), "malformed"),
        ("envelope-65722", "An envelope declared 65722 bytes long (refused at its header)",
         bytes([0x94, 0x03, 0x00, 0x00, 0x91, 0xC6]) + (65_722).to_bytes(4, "big"),
         "too-large"),
        ("evidence-one", "Evidence with one envelope", packb([9, 0, [A1]]), "malformed"),
        ("evidence-three", "Evidence with three envelopes", packb([9, 0, [A1, A2, A1]]),
         "malformed"),
        ("refused-board-16", "A Refused board of 16 bytes", packb([7, bytes(16), "x", ""]),
         "malformed"),
        ("refused-code-65", "A Refused code of 65 characters",
         packb([7, b"", "c" * 65, ""]), "malformed"),
        ("close-201", "A Close reason of 201 characters", packb([8, "r" * 201]), "malformed"),
        ("trailing-bytes", "A byte after the message's array", packb([4, 0, 0]) + b"\x00",
         "malformed"),
        ("reserved-byte", "The reserved byte 0xc1 in a skipped field",
         bytes([0x93, 0x05, 0x00, 0xC1]), "malformed"),
        ("skip-4097-values", "A trailing array of 4,096 numbers: 4,097 values skipped",
         packb([5, 0, [0] * 4096]), "malformed"),
        ("skip-16-arrays-deep", "A trailing field of 16 nested arrays",
         packb([5, 0, _nested(17)]), "malformed"),
        ("cut-short", "A body that ends inside a value", packb([4, 0, 300])[:-1],
         "malformed"),
    ]
    decode.append(("skip-15-arrays-deep", "A trailing field of 15 nested arrays is skipped",
                   packb([5, 0, _nested(16)]), Ping(0)))
    decode.append(("skip-4096-values", "A trailing array of 4,095 numbers: 4,096 values "
                   "skipped", packb([5, 0, [0] * 4095]), Ping(0)))
    heads = [
        ("ack-over-16384", "An Ack whose length prefix says 16,385 bytes: over its type's "
         "limit, refused from its first bytes", 16_385, packb([4, 0, 0]), "too-large"),
        ("evidence-over-262144", "An Evidence message of 262,145 bytes", 262_145,
         bytes([0x93, 0x09, 0x00]), "too-large"),
        ("vector-1mib", "A Vector of 1,048,576 bytes is within its limit (the start is "
         "valid so far)", 1_048_576, bytes([0x93, 0x02, 0x00, 0xDD]), None),
        ("map-head", "A map, refused from its first byte whatever its length", 100,
         bytes([0x81]), "malformed"),
        ("unknown-type-head", "An unknown type, refused from its first two bytes", 100,
         bytes([0x92, 0x0A]), "malformed"),
    ]
    write("messages.json", {
        "description": "The nine message types of p2paid/1 (protocol/SPEC.md section 11.2). "
                       "'encode': a message (fields as JSON, bytes in hex) and its exact "
                       "body: msgpack with every value in its shortest form; 'stream' adds "
                       "the 4-byte length prefix of section 11.1. A writer MUST produce "
                       "these bytes; a reader MUST decode them to the message. 'decode': "
                       "bodies in other valid forms (wider integers, trailing fields) and "
                       "the message they decode to. 'refuse': bodies a reader MUST refuse, "
                       "with the Close reason (section 16.2): 'malformed' or 'too-large'. "
                       "'heads': a length prefix and the first bytes of a body, checked "
                       "before the rest arrives (section 11.2, decoding limits); error "
                       "null means valid so far. Board keys, digests and tags are those of "
                       "tags.json and digests.json; envelopes those of envelopes.json and "
                       "refusals.json.",
        "encode": [{"name": n, "description": d, **wire(m),
                    "stream": (struct.pack(">I", len(spec_body(m))) + spec_body(m)).hex()}
                   for n, d, m in encode],
        "decode": [_decode_case(n, d, body, m) for n, d, body, m in decode],
        "refuse": [_refuse_case(n, d, body, e) for n, d, body, e in refuse],
        "heads": [_head_case(n, d, length, head, e) for n, d, length, head, e in heads],
    })


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return value


def _decode_case(name: str, what: str, body: bytes, message: Any) -> dict[str, Any]:
    assert decode_message(body) == message, name
    return {"name": name, "description": what, "hex": body.hex(),
            "message": message_json(message)}


def _error_code(call: Callable[[], object]) -> str | None:
    try:
        call()
    except RemoteProtocolError as exc:
        return exc.close_reason
    return None


def _refuse_case(name: str, what: str, body: bytes, error: str) -> dict[str, Any]:
    assert _error_code(lambda: decode_message(body)) == error, name
    return {"name": name, "description": what, "hex": body.hex(), "error": error}


def _head_case(name: str, what: str, length: int, head: bytes,
               error: str | None) -> dict[str, Any]:
    assert _error_code(lambda: check_head(head, length)) == error, name
    return {"name": name, "description": what, "length": length, "head": head.hex(),
            "error": error}


# ---------------------------------------------------------------------- tags.json

def tags() -> None:
    out = []
    for label, keys in (("board-1", B1), ("board-2", B2)):
        for initiator in (True, False):
            tag = spec_tag(keys.tag_key, initiator)
            assert board_tag(keys.tag_key, initiator, HH) == tag
            role = "initiator" if initiator else "responder"
            out.append({"board": label, "tag_key": keys.tag_key.hex(), "role": role,
                        "mac_input": (f"p2paid/1 {role}".encode() + HH).hex(),
                        "tag": tag.hex()})
    write("tags.json", {
        "description": "Board tags of a Hello between nodes (protocol/SPEC.md 12.1): "
                       "HMAC-SHA256(tag_key, label || h) for the tag keys of keys.json, "
                       "with h the handshake hash of transcript.json. A side lists its "
                       "boards with its own label and recognises the peer's with the "
                       "peer's label.",
        "handshake_hash": HH.hex(), "tags": out,
    })


# ---------------------------------------------------------------------- digests.json

def digests() -> None:
    a, b = A.public, B.public
    z = fixed("author-z (sorts after a and b)")
    zz = b"\xff" + z[1:]
    cases: list[tuple[str, str, bytes, str, list[tuple[bytes, int, bytes]]]] = [
        ("empty", "No feed held (a new board at a relay, a member who has posted nothing)",
         B1.tag_key, "tag_key", []),
        ("empty-by-id", "The same, keyed by board_id (to and from a relay)",
         B1.board_id, "board_id", []),
        ("one-author", "author-a at seq 2 (the feed of envelopes.json)", B1.tag_key,
         "tag_key", heads_of(["a1", "a2"])),
        ("one-author-by-id", "author-a at seq 2, keyed by board_id", B1.board_id,
         "board_id", heads_of(["a1", "a2"])),
        ("forked-version", "author-a at seq 2, but a2-fork's hash: another version of the "
         "same length has another digest", B1.tag_key, "tag_key",
         heads_of(["a1", "a2-fork"])),
        ("two-authors", "author-a at 2 and author-b at 1, in the order given here (the MAC "
         "sorts them by author)", B1.tag_key, "tag_key",
         [*heads_of(["b1"]), *heads_of(["a1", "a2"])]),
        ("sorted-bytewise", "Authors are sorted as byte strings: 0xff... after everything",
         B1.tag_key, "tag_key", [(zz, 7, fixed("head zz")), (z, 2**40, fixed("head z")),
                                 (a, 1, env_hash(A1))]),
        ("seq-zero-skipped", "An author at seq 0 adds nothing (same digest as one-author)",
         B1.tag_key, "tag_key", [*heads_of(["a1", "a2"]), (b, 0, bytes(32))]),
    ]
    out = []
    for name, what, key, key_name, heads in cases:
        digest = spec_digest(key, HH, heads)
        assert vector_digest(key, HH, {x: FeedHead(s, y) for x, s, y in heads}) == digest, name
        out.append({"name": name, "description": what, "key": key_name,
                    "key_hex": key.hex(),
                    "heads": [{"author": x.hex(), "seq": s, "hash": y.hex()}
                              for x, s, y in heads],
                    "mac_input": spec_digest_input(HH, heads).hex(), "digest": digest.hex()})
    assert out[-1]["digest"] == out[2]["digest"]
    write("digests.json", {
        "description": "Vector digests of a Hello (protocol/SPEC.md 12.1): "
                       "HMAC-SHA256(key, 'p2paid/1 digest' || 0x00 || h || for each author "
                       "with seq > 0, sorted by author: author || seq(8) || hash)[:16], key "
                       "= tag_key between nodes and board_id with relays (keys.json, "
                       "board-1), h of transcript.json, hash = the head envelope's hash.",
        "handshake_hash": HH.hex(), "digests": out,
    })


# ---------------------------------------------------------------------- refusals.json
#
# Each case: a member (a node's store that joined board-1) and a relay first hold
# ``holds``; each step then offers envelopes as one batch (after a restart, if it
# says so). ``refused`` lists [envelope, code] (SPEC 16.1); ``vector`` and
# ``forked`` what the replica holds afterwards; ``relay`` is given where a relay
# differs (it cannot read changes). ``session``: what a member's sync session does
# when a node peer sends the last step's envelopes as one Envelopes batch: close the
# connection with the reason given (the peer's fault), or reply (the author's fault,
# or nothing wrong).

Step = dict[str, Any]


def step(offer: list[str], refused: Sequence[tuple[str, str]] = (), *, vector: dict[str, int],
         forked: dict[str, int] | None = None, restart: bool = False,
         relay: dict[str, Any] | None = None) -> Step:
    out: Step = {"restart": restart, "offer": offer,
                 "refused": [list(r) for r in refused], "vector": vector,
                 "forked": forked or {}}
    if relay is not None:
        out["relay"] = relay
    return out


AB = {"a": A.public, "b": B.public}
V2 = {"a": 2}


def refusal_cases() -> list[dict[str, Any]]:
    def case(name: str, what: str, steps: list[Step], session: dict[str, Any],
             holds: Sequence[str] = ("a1", "a2")) -> dict[str, Any]:
        return {"name": name, "description": what, "holds": list(holds), "steps": steps,
                "session": session}

    ack: dict[str, Any] = {"reply": ["Ack"]}
    ack_evidence: dict[str, Any] = {"reply": ["Ack", "Evidence"]}

    def close(reason: str) -> dict[str, Any]:
        return {"close": reason}

    def blind(vector: dict[str, int]) -> dict[str, Any]:
        """A relay stores what a member refuses for its content."""
        return {"refused": [], "vector": vector, "forked": {}}

    one = [
        ("malformed-truncated", "b1-truncated", "malformed"),
        ("malformed-version", "b1-version-2", "malformed"),
        ("malformed-length", "b1-short-ciphertext", "malformed"),
        ("malformed-seq-0", "b1-seq-0", "malformed"),
        ("too-large", "too-large", "too-large"),
        ("bad-signature", "b1-bad-sig", "bad-signature"),
        ("bad-signature-held-seq", "a2-bad-sig", "bad-signature"),
        ("wrong-board", "b1-other-board", "wrong-board"),
    ]
    cases = [case(name, f"{ENVELOPES[env][0]}: the sender's fault", [
        step([env], [(env, code)], vector=V2)], close(code)) for name, env, code in one]
    content = [
        ("decrypt", "b1-wrong-key", "decrypt"),
        ("change-mismatch-seq", "b1-claims-seq-2", "change-mismatch"),
        ("change-mismatch-not-canonical", "b1-not-canonical", "change-mismatch"),
        ("change-mismatch-bomb", "b1-bomb", "change-mismatch"),
        ("ownership", "b1-ownership", "ownership"),
        ("bad-deps-start-op", "b1-start-op-2", "bad-deps"),
        ("bad-op-counter", "b1-counter", "bad-op"),
        ("bad-op-root-key", "b1-root-key", "bad-op"),
    ]
    cases += [case(name, f"{ENVELOPES[env][0]}: the author's fault; a relay stores it", [
        step([env], [(env, code)], vector=V2, relay=blind({"a": 2, "b": 1}))], ack)
        for name, env, code in content]
    cases += [
        case("accepted", "author-b's honest feed is stored", [
            step(["b1", "b2"], vector={"a": 2, "b": 2})], ack),
        case("duplicate", "An envelope held already is a duplicate, not a refusal", [
            step(["a1"], vector=V2)], ack),
        case("gap", "An envelope beyond a gap is neither stored nor refused (a member holds "
             "it in memory until the gap fills)", [step(["b2"], vector=V2)], ack),
        case("broken-chain", "A validly signed envelope whose prev does not link: the "
             "author's fault", [step(["b1", "b2-bad-prev"], [("b2-bad-prev", "broken-chain")],
                                     vector={"a": 2, "b": 1})], ack),
        case("follows-refused", "What chains to a refused change is refused with it "
             "(broken-chain); a relay stores both", [
                 step(["b1-counter", "b2-on-bad"], [("b1-counter", "bad-op"),
                                                    ("b2-on-bad", "broken-chain")],
                      vector=V2, relay=blind({"a": 2, "b": 2}))], ack),
        case("bad-deps-no-deps", "author-b's seq 2 without its dependency", [
            step(["b1", "b2-no-deps"], [("b2-no-deps", "bad-deps")], vector={"a": 2, "b": 1},
                 relay=blind({"a": 2, "b": 2}))], ack),
        case("bad-deps-op-ids-reused", "author-b's seq 2 reusing the op ids of its seq 1", [
            step(["b1", "b2-reuses-op-ids"], [("b2-reuses-op-ids", "bad-deps")],
                 vector={"a": 2, "b": 1}, relay=blind({"a": 2, "b": 2}))], ack),
        case("bad-op-predecessor", "author-b's seq 2 overwriting a key without naming the op "
             "there", [step(["b1", "b2-no-pred"], [("b2-no-pred", "bad-op")],
                            vector={"a": 2, "b": 1}, relay=blind({"a": 2, "b": 2}))], ack),
        case("fork", "A second validly signed version of a held seq proves a fork: the "
             "author's feed ends before it, everywhere, and the proof goes to the peer", [
                 step(["a2-fork"], [("a2-fork", "fork")], vector={"a": 1},
                      forked={"a": 2})], ack_evidence),
        case("fork-in-one-batch", "Two validly signed versions of one seq in one batch", [
            step(["b1", "b1-fork"], [("b1", "fork"), ("b1-fork", "fork")], vector=V2,
                 forked={"b": 1})], ack_evidence),
        case("forked", "After a proven fork, the author's envelopes at and beyond it are "
             "refused, the version held before included", [
                 step(["a2-fork"], [("a2-fork", "fork")], vector={"a": 1}, forked={"a": 2}),
                 step(["a2", "a3-forked"], [("a2", "forked"), ("a3-forked", "forked")],
                      vector={"a": 1}, forked={"a": 2})], ack_evidence),
        case("change-mismatch-resealed", "author-b reseals author-a's change in its own "
             "envelope: refused, and remembered only by b's envelope, so a's own copy is "
             "accepted, also after a restart", [
                 step(["b1-carries-a1"], [("b1-carries-a1", "change-mismatch")], vector={},
                      relay=blind({"b": 1})),
                 step(["a1", "a2"], vector=V2, restart=True,
                      relay=blind({"a": 2, "b": 1}))], ack, holds=()),
        case("invalid-change", "An envelope refused before for its content is refused "
             "again by its remembered hash, without being opened (invalid-change); a relay "
             "holds it already (a duplicate)", [
                 step(["b1-counter"], [("b1-counter", "bad-op")], vector=V2,
                      relay=blind({"a": 2, "b": 1})),
                 step(["b1-counter"], [("b1-counter", "invalid-change")], vector=V2,
                      restart=True, relay=blind({"a": 2, "b": 1}))], ack),
    ]
    for c in cases:
        _check_refusal_case(c)
    return cases


def _named(offer: Sequence[str], rejections: Sequence[tuple[bytes | None, str]]
           ) -> list[list[str]]:
    names = {RAW[n]: n for n in offer}
    undecodable = [n for n in offer if _decodes(RAW[n]) is None]
    out = []
    for raw, code in rejections:
        out.append([names[raw] if raw is not None else undecodable.pop(0), code])
    return sorted(out)


def _decodes(raw: bytes) -> Envelope | None:
    try:
        return Envelope.decode(raw)
    except RemoteProtocolError:
        return None


def _by_letter(mapping: Any) -> dict[str, int]:
    letters = {v: k for k, v in AB.items()}
    return {letters[a]: s for a, s in sorted(mapping.items()) if s}


def _check_refusal_case(c: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node"
        store = p2paid.open_store(path)
        try:
            board = store.join(Invite(fixed("board-1"), "Riverside mutual aid"))
            for name in c["holds"]:
                assert board.receive([RAW[name]]).accepted == 1
            for s in c["steps"]:
                if s["restart"]:
                    store.close()
                    store = p2paid.open_store(path, create=False)
                    board = store.board()
                report = board.receive([RAW[n] for n in s["offer"]])
                got = _named(s["offer"], [(None if r.envelope is None else r.envelope.raw,
                                          r.error.code) for r in report.rejected])
                assert got == sorted(s["refused"]), (c["name"], got)
                assert _by_letter(board.version_vector()) == s["vector"], c["name"]
                assert _by_letter(board.forked) == s["forked"], c["name"]
            assert _session_outcome(store, c["steps"][-1]["offer"]) == c["session"], c["name"]
        finally:
            store.close()
    with relay(c["holds"]) as rel:
        for s in c["steps"]:
            want = s.get("relay", s)
            result = rel.receive(B1.board_id, [RAW[n] for n in s["offer"]])
            assert sorted(e.code for e in result.rejected) == sorted(
                code for _, code in want["refused"]), (c["name"], result.rejected)
            assert _by_letter(rel.vector(B1.board_id)) == want["vector"], c["name"]
            assert _by_letter(rel.forked(B1.board_id)) == want["forked"], c["name"]


def _session_outcome(store: Any, offer: Sequence[str]) -> dict[str, Any]:
    """What a member's session does with ``offer`` from a node peer (the initiator)."""
    session = SyncSession(StoreReplica(store), initiator=False, handshake_hash=HH)
    session.start()
    (vector,) = session.handle(Hello(1, "node", False, (
        HelloBoard(spec_tag(B1.tag_key, True), bytes(16)),)))
    assert isinstance(vector, Vector)
    session.handle(Vector(0, ()))
    try:
        reply = session.handle_whole(Envelopes(0, 0, tuple(RAW[n] for n in offer)))
    except RemoteProtocolError as exc:
        return {"close": exc.close_reason}
    return {"reply": [type(m).__name__ for m in reply]}


def refusals() -> None:
    write("refusals.json", {
        "description": "Envelopes refused, and why (protocol/SPEC.md sections 4.4, 4.5, 5, "
                       "7 and 16.1), on board-1 of keys.json. 'envelopes': author-a's feed "
                       "of envelopes.json, author-b's feed made by hand (its changes "
                       "written byte by byte: tests/amcraft.py) and hostile variants, each "
                       "with what it is. 'cases': a member and a relay first hold 'holds'; "
                       "each step offers envelopes as one batch (after a restart if "
                       "'restart'); 'refused' lists [envelope, code], 'vector' and 'forked' "
                       "(author -> seq, authors named as in 'authors') what the replica "
                       "holds afterwards, 'relay' what a relay does where it differs (it "
                       "cannot read changes). 'session': what a member's sync session does "
                       "when a node peer sends the last step's envelopes in one Envelopes "
                       "batch: 'close' with that reason (the sender's fault) or 'reply' "
                       "with those messages (the author's fault, or nothing wrong).",
        "board_secret": fixed("board-1").hex(),
        "authors": {k: v.hex() for k, v in AB.items()},
        "author_seeds": {"a": fixed("author-a").hex(), "b": fixed("author-b").hex()},
        "envelopes": {name: {"description": what, "hex": raw.hex()}
                      for name, (what, raw) in ENVELOPES.items()},
        "cases": refusal_cases(),
        "fork_proof": {"description": "a2 and a2-fork: two validly signed envelopes of "
                                      "author-a at seq 2 of board-1 (section 4.5)",
                       "first": A2.hex(), "second": RAW["a2-fork"].hex()},
    })


# ---------------------------------------------------------------------- sessions.json
#
# One side of a connection (``local``) after the handshake of transcript.json, fed
# the peer's messages one at a time. ``start``: what it sends first. Each step:
# what it sends in reply (exactly these bodies; of a Refused only board and code
# are fixed, its text is free), or the reason it closes the connection with. The
# close "no shared boards" is the connection rule of SPEC 11.3 (both Hellos are in
# and no board is shared); every other close is a protocol error of the peer.


#: The Hello version of the reference implementation's own side: 2, it takes checkpoints
#: (SPEC 8a, 12.3); the peers in these scenarios speak version 1, so none is sent.
OURS = 2


def _d(names: Sequence[str], key: bytes = B1.tag_key) -> bytes:
    return spec_digest(key, HH, heads_of(names))


def sessions() -> None:
    a, b = A.public, B.public
    tag_i, tag_r = spec_tag(B1.tag_key, True), spec_tag(B1.tag_key, False)
    our_hello = Hello(OURS, "node", False, (HelloBoard(tag_r, _d(["a1", "a2"])),))
    our_vector = Vector(0, ((a, 2, tag8("a2")),))

    def peer_hello(digest: bytes, *extra: HelloBoard) -> Hello:
        return Hello(1, "node", False, (*extra, HelloBoard(tag_i, digest)))

    bad = "protocol-error"
    node = {"role": "node", "initiator": False, "to_relay": False, "holds": ["a1", "a2"]}
    scenarios: list[tuple[str, str, dict[str, Any], list[Any], list[tuple[Any, Any]]]] = [
        ("behind", "The peer holds nothing of board-1 and lists an unknown board first, so "
         "board-1 is its index 1 and our index 0: we send our Vector, then on the peer's "
         "(empty) Vector the envelopes it lacks as batch 0, which it acknowledges; a second "
         "Ack names a batch never sent", node, [our_hello], [
             (peer_hello(_d([]), HelloBoard(fixed("a board we do not know"), bytes(16))),
              [our_vector]),
             (Vector(1, ()), [Envelopes(0, 0, (A1, A2))]),
             (Ack(1, 0), []),
             (Ack(1, 0), bad)]),
        ("in-sync", "Equal digests: the board is in sync, no Vector is exchanged; a Vector "
         "for it is a protocol error", node, [our_hello], [
             (peer_hello(_d(["a1", "a2"])), []),
             (Vector(0, ()), bad)]),
        ("peer-ahead", "The peer holds author-b's feed too: we send nothing, and acknowledge "
         "each of its batches by its number", node, [our_hello], [
             (peer_hello(_d(["a1", "a2", "b1"])), [our_vector]),
             (Vector(0, ((a, 2, tag8("a2")), (b, 1, tag8("b1")))), []),
             (Envelopes(0, 0, (RAW["b1"],)), [Ack(0, 0)]),
             (Envelopes(0, 7, (RAW["b2"],)), [Ack(0, 7)])]),
        ("other-version", "The peer's tag for author-a's seq 2 is not ours: we send it "
         "author-a's whole feed (the peer then proves the fork)", node, [our_hello], [
             (peer_hello(_d(["a1", "a2-fork"])), [our_vector]),
             (Vector(0, ((a, 2, tag8("a2-fork")),)), [Envelopes(0, 0, (A1, A2))])]),
        ("before-hello", "Before the peer's Hello: Ping, Pong and Refused are handled; "
         "anything else is a protocol error", node, [our_hello], [
             (Ping(7), [Pong(7)]),
             (Pong(3), []),
             (Refused(b"", "token-invalid", "unknown token"), []),
             (Vector(0, ()), bad)]),
        ("second-hello", "A second Hello", node, [our_hello], [
            (peer_hello(_d([])), [our_vector]),
            (peer_hello(_d([])), bad)]),
        ("hello-by-id", "A Hello naming boards by id on a connection between nodes", node,
         [our_hello], [(Hello(1, "node", True, (HelloBoard(B1.board_id, bytes(16)),)), bad)]),
        ("hello-version-0", "A Hello of version 0", node, [our_hello], [
            (Hello(0, "node", False, ()), bad)]),
        ("hello-listed-twice", "A Hello listing one key twice", node, [our_hello], [
            (Hello(1, "node", False, (HelloBoard(tag_i, bytes(16)),) * 2), bad)]),
        ("hello-echo", "The peer echoes our own tag: nothing is shared", node, [our_hello], [
            (Hello(1, "node", False, (HelloBoard(tag_r, _d(["a1", "a2"])),)),
             "no shared boards")]),
        ("envelopes-before-vector", "Envelopes of a board whose Vector has not come", node,
         [our_hello], [(peer_hello(_d([])), [our_vector]),
                       (Envelopes(0, 0, (RAW["b1"],)), bad)]),
        ("ack-never-sent", "An Ack when no batch is unacknowledged", node, [our_hello], [
            (peer_hello(_d(["a1", "a2", "b1"])), [our_vector]),
            (Vector(0, ((a, 2, tag8("a2")), (b, 1, tag8("b1")))), []),
            (Ack(0, 0), bad)]),
        ("unshared-index", "A message naming a board index the peer's Hello did not list",
         node, [our_hello], [(peer_hello(_d([])), [our_vector]), (Vector(1, ()), bad)]),
        ("stalled", "After a stalling Refused (board-full, not-allowed, quota) nothing more "
         "of that board is sent on the connection", node, [our_hello], [
             (peer_hello(_d([])), [our_vector]),
             (Refused(B1.board_id, "board-full", "no room"), []),
             (Vector(0, ()), [])]),
        ("evidence-same-envelope", "Evidence of one envelope twice", node, [our_hello], [
            (peer_hello(_d([])), [our_vector]), (Evidence(0, (A1, A1)), "bad-evidence")]),
        ("evidence-two-seqs", "Evidence of two seqs", node, [our_hello], [
            (peer_hello(_d([])), [our_vector]), (Evidence(0, (A1, A2)), "bad-evidence")]),
        ("evidence-bad-signature", "Evidence with a forged envelope", node, [our_hello], [
            (peer_hello(_d([])), [our_vector]),
            (Evidence(0, (A2, RAW["a2-bad-sig"])), "bad-evidence")]),
        ("evidence-other-board", "Evidence of envelopes of another board", node, [our_hello],
         [(peer_hello(_d([])), [our_vector]),
          (Evidence(0, (RAW["b1-other-board"], RAW["b1-other-board"])), "wrong-board")]),
        ("evidence-truncated", "Evidence with an envelope shorter than its header", node,
         [our_hello], [(peer_hello(_d([])), [our_vector]),
                       (Evidence(0, (RAW["b1-truncated"], A1)), "malformed")]),
        ("envelope-other-board", "An envelope of another board in a batch", node,
         [our_hello], [(peer_hello(_d([])), [our_vector]), (Vector(0, ()), [
             Envelopes(0, 0, (A1, A2))]),
             (Envelopes(0, 0, (RAW["b1-other-board"],)), "wrong-board")]),
        ("envelope-forged", "A forged envelope in a batch", node, [our_hello], [
            (peer_hello(_d([])), [our_vector]),
            (Vector(0, ()), [Envelopes(0, 0, (A1, A2))]),
            (Envelopes(0, 0, (RAW["b1-bad-sig"],)), "bad-signature")]),
        ("evidence-received", "The peer proves author-a's fork: we keep the proof, refuse "
         "author-a's envelopes from seq 2 (forked) and do not send the proof back", node,
         [our_hello], [
             (peer_hello(_d(["a1", "a2-fork"])), [our_vector]),
             (Vector(0, ((a, 2, tag8("a2-fork")),)), [Envelopes(0, 0, (A1, A2))]),
             (Evidence(0, (RAW["a2-fork"], A2)), []),
             (Envelopes(0, 0, (RAW["a2-fork"],)), [Ack(0, 0)])]),
        ("evidence-sent", "We hold a proof of author-a's fork at seq 2 and the peer's Vector "
         "shows it holds author-a's seq 2: we send the proof (once), not the envelopes",
         {**node, "holds": ["a1", "a2", "a2-fork"]},
         [Hello(OURS, "node", False, (HelloBoard(tag_r, _d(["a1"])),))], [
             (peer_hello(_d(["a1", "a2"])), [Vector(0, ((a, 1, tag8("a1")),))]),
             (Vector(0, ((a, 2, tag8("a2")),)), [Evidence(0, (A2, RAW["a2-fork"]))]),
             (Envelopes(0, 0, (A2,)), [Ack(0, 0)])]),
        ("initiator", "The dialling side lists board-1 by its initiator tag and recognises "
         "the responder's tag", {**node, "initiator": True},
         [Hello(OURS, "node", False, (HelloBoard(tag_i, _d(["a1", "a2"])),))], [
             (Hello(1, "node", False, (HelloBoard(tag_r, _d([])),)), [our_vector])]),
        ("to-relay", "A node that dialled a relay names boards by id; a quota refusal "
         "instead of an Ack stops it sending that board",
         {"role": "node", "initiator": True, "to_relay": True, "holds": ["a1", "a2"]},
         [Hello(OURS, "node", True, (HelloBoard(B1.board_id, _d(["a1", "a2"], B1.board_id)),))],
         [(Hello(1, "relay", True, (HelloBoard(B1.board_id, _d([], B1.board_id)),)),
           [our_vector]),
          (Vector(0, ()), [Envelopes(0, 0, (A1, A2))]),
          (Refused(B1.board_id, "quota", "over quota"), []),
          (Ack(0, 0), [])]),
        ("relay-answers", "A relay speaks only after the client's Hello: it answers with the "
         "boards it carries, a not-allowed Refused for the others, and its Vector",
         {"role": "relay", "initiator": False, "to_relay": False, "holds": ["a1", "a2"],
          "allowed_boards": [B1.board_id.hex()]}, [], [
             (Hello(1, "node", True, (HelloBoard(B2.board_id, bytes(16)),
                                      HelloBoard(B1.board_id, _d([], B1.board_id)))),
              [Hello(OURS, "relay", True, (HelloBoard(B1.board_id, _d(["a1", "a2"],
                                                                   B1.board_id)),)),
               Refused(B2.board_id, "not-allowed", ""), our_vector]),
             (Vector(1, ()), [Envelopes(0, 0, (A1, A2))]),
             (Ack(1, 0), [])]),
        ("relay-full", "A full relay answers a batch with board-full instead of the Ack",
         {"role": "relay", "initiator": False, "to_relay": False, "holds": ["a1", "a2"],
          "max_board_bytes": len(A1) + len(A2) + 100}, [], [
             (Hello(1, "node", True, (HelloBoard(B1.board_id, _d(
                 ["a1", "a2", "b1"], B1.board_id)),)),
              [Hello(OURS, "relay", True, (HelloBoard(B1.board_id, _d(["a1", "a2"],
                                                                   B1.board_id)),)),
               our_vector]),
             (Vector(0, ((a, 2, tag8("a2")), (b, 1, tag8("b1")))), []),
             (Envelopes(0, 0, (RAW["b1"],)), [Refused(B1.board_id, "board-full", "")])]),
        ("relay-by-tag", "A client Hello naming boards by tag, to a relay", {
            "role": "relay", "initiator": False, "to_relay": False, "holds": []}, [], [
                (peer_hello(_d([])), bad)]),
    ]
    out = []
    for name, what, local, start, steps in scenarios:
        _check_session(name, local, start, steps)
        out.append({
            "name": name, "description": what, "local": local,
            "start": [wire(m) for m in start],
            "steps": [{"receive": wire(m), **({"close": reply} if isinstance(reply, str)
                                              else {"send": [wire(x) for x in reply]})}
                      for m, reply in steps]})
    write("sessions.json", {
        "description": "A sync session, one side at a time (protocol/SPEC.md section 12 and "
                       "its state table, 12.0). 'local' is the side under test: a node "
                       "(its store joined board-1 of keys.json) or a relay, which holds "
                       "'holds' (refusals.json) and, as in transcript.json, has handshake "
                       "hash h = tags.json handshake_hash; 'initiator' says whether it "
                       "dialled. 'start': what it sends first. Each step gives a message of "
                       "the peer and either what the local side sends in reply, exactly "
                       "(but a Refused's text, which is free), or the reason it closes the "
                       "connection with (section 16.2; 'no shared boards' is the rule of "
                       "section 11.3, every other reason a fault of the peer).",
        "handshake_hash": HH.hex(), "sessions": out,
    })


def _same(sent: Sequence[Any], want: Sequence[Any]) -> bool:
    def key(m: Any) -> Any:
        return (m.board, m.code) if isinstance(m, Refused) else m

    return [key(m) for m in sent] == [key(m) for m in want]


def _check_session(name: str, local: dict[str, Any], start: list[Any],
                   steps: list[tuple[Any, Any]]) -> None:
    with _local_replica(local) as replica:
        session = SyncSession(replica, initiator=local["initiator"], handshake_hash=HH,
                              to_relay=local["to_relay"])
        assert _same(session.start(), start), name
        for message, reply in steps:
            try:
                sent = session.handle_whole(message)
            except RemoteProtocolError as exc:
                assert exc.close_reason == reply, (name, message, exc)
                return
            if session.greeted and not session.shared_boards:
                assert reply == "no shared boards", name
                return
            assert _same(sent, reply), (name, message, sent)


@contextmanager
def _local_replica(local: dict[str, Any]) -> Iterator[Any]:
    if local["role"] == "node":
        with member(local["holds"]) as (store, _):
            yield StoreReplica(store)
        return
    allowed = local.get("allowed_boards")
    limits = RelayLimits(
        allowed_boards=None if allowed is None else frozenset(h(x) for x in allowed),
        max_board_bytes=local.get("max_board_bytes", RelayLimits().max_board_bytes))
    with relay(local["holds"], limits) as rel:
        yield rel


# ---------------------------------------------------------------------- transcript.json

def transcript() -> None:
    """Two nodes on board-1, the dialler holding author-a's feed and the other nothing:
    every byte each sends, from the handshake to the Ack."""
    hs, hh, ti, tr = handshake()
    tag_i, tag_r = spec_tag(B1.tag_key, True, hh), spec_tag(B1.tag_key, False, hh)
    a = A.public
    flow_i = [Hello(OURS, "node", False, (HelloBoard(tag_i, _d(["a1", "a2"])),)),
              Vector(0, ((a, 2, tag8("a2")),)),
              Envelopes(0, 0, (A1, A2))]
    flow_r = [Hello(OURS, "node", False, (HelloBoard(tag_r, _d([])),)),
              Vector(0, ()),
              Ack(0, 0)]

    def frames(transport: Any, flow: list[Any]) -> list[dict[str, Any]]:
        out = []
        for message in flow:
            body = spec_body(message)
            plaintext = struct.pack(">I", len(body)) + body
            assert len(plaintext) <= 65519
            noise = transport.encrypt(plaintext)
            out.append({"message": message_json(message), "body": body.hex(),
                        "plaintext": plaintext.hex(),
                        "frame": (struct.pack(">H", len(noise)) + noise).hex()})
        return out

    def hs_frame(message: bytes, what: str) -> dict[str, Any]:
        return {"handshake": what, "frame": (struct.pack(">H", len(message)) + message).hex()}

    write("transcript.json", {
        "description": "One whole connection, byte for byte (protocol/SPEC.md sections 10 "
                       "to 12): the initiator, a node holding author-a's feed of board-1 "
                       "(envelopes.json), dials the responder, a node that joined board-1 "
                       "and holds nothing. Static and ephemeral X25519 keys are fixed "
                       "(private keys in hex; never fix an ephemeral outside a test). "
                       "Each side's frames are in the order it sends them: the handshake "
                       "messages with empty payloads, then one transport frame per "
                       "message (a 4-byte length and the msgpack body, encrypted; nonces "
                       "count from 0 per direction after Split).",
        "prologue": PROLOGUE.hex(),
        "initiator_static": _private_hex(NODE_KEYS["initiator"]),
        "initiator_ephemeral": _private_hex(EPHEMERALS["initiator"]),
        "responder_static": _private_hex(NODE_KEYS["responder"]),
        "responder_ephemeral": _private_hex(EPHEMERALS["responder"]),
        "initiator_id": _public(NODE_KEYS["initiator"]).hex(),
        "responder_id": _public(NODE_KEYS["responder"]).hex(),
        "handshake_hash": hh.hex(),
        "initiator_holds": ["a1", "a2"], "responder_holds": [],
        "initiator_frames": [hs_frame(hs[0], "message 1"), hs_frame(hs[2], "message 3"),
                             *frames(ti, flow_i)],
        "responder_frames": [hs_frame(hs[1], "message 2"), *frames(tr, flow_r)],
    })


if __name__ == "__main__":
    transcript()
    tags()
    digests()
    messages()
    refusals()
    sessions()
    print("wrote messages.json, tags.json, digests.json, refusals.json, sessions.json, "
          "transcript.json")
