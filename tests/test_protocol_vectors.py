"""The implementation reproduces the protocol vectors byte for byte (protocol/SPEC.md 11-12,
16): every message type, board tags, vector digests, refusal codes, sync sessions and one
whole connection. ``protocol/vectors/make_protocol_vectors.py`` writes them; tests only
read them."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import p2paid
from p2paid import Store
from p2paid.core import noise
from p2paid.core.envelope import Envelope
from p2paid.core.feed import FeedHead, ForkProof
from p2paid.core.invite import Invite, derive_board_keys
from p2paid.core.messages import check_head, decode_message, encode_message
from p2paid.core.replication import Replica, SyncSession, board_tag, vector_digest
from p2paid.core.wire import (
    NEED_DATA,
    Ack,
    Close,
    Envelopes,
    Evidence,
    HandshakeComplete,
    Hello,
    HelloBoard,
    Message,
    MessageReceived,
    Ping,
    Pong,
    Refused,
    SecureChannel,
    Vector,
)
from p2paid.errors import DecodeError, FrameTooLargeError, RemoteProtocolError
from p2paid.node.replica import StoreReplica
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.relay.server import open_relay_db

VECTORS = Path(__file__).parents[1] / "protocol" / "vectors"


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return loaded


MESSAGES = _load("messages.json")
TAGS = _load("tags.json")
DIGESTS = _load("digests.json")
REFUSALS = _load("refusals.json")
SESSIONS = _load("sessions.json")
TRANSCRIPT = _load("transcript.json")
KEYS = _load("keys.json")
h = bytes.fromhex
SECRET = h(REFUSALS["board_secret"])
BOARD = derive_board_keys(SECRET)
HH = h(TAGS["handshake_hash"])
RAW = {name: h(e["hex"]) for name, e in REFUSALS["envelopes"].items()}
AUTHORS = {letter: h(hex_id) for letter, hex_id in REFUSALS["authors"].items()}


def message_from_json(m: dict[str, Any]) -> Message:
    """A message given as JSON in the vectors (bytes in hex)."""
    kind = m["type"]
    if kind == "Hello":
        token = None if m["token"] is None else h(m["token"])
        return Hello(m["version"], m["role"], m["by_id"], tuple(
            HelloBoard(h(b["key"]), h(b["digest"])) for b in m["boards"]), token)
    if kind == "Vector":
        return Vector(m["board"], tuple((h(e["author"]), e["seq"], h(e["tag"]))
                                        for e in m["entries"]))
    if kind == "Envelopes":
        return Envelopes(m["board"], m["batch"], tuple(h(e) for e in m["envelopes"]))
    if kind == "Ack":
        return Ack(m["board"], m["batch"])
    if kind == "Ping":
        return Ping(m["nonce"])
    if kind == "Pong":
        return Pong(m["nonce"])
    if kind == "Refused":
        return Refused(h(m["board"]), m["code"], m["text"])
    if kind == "Close":
        return Close(m["reason"])
    assert kind == "Evidence"
    first, second = (h(e) for e in m["envelopes"])
    return Evidence(m["board"], (first, second))


def _ids(cases: Sequence[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


# --------------------------------------------------------------------- messages.json


@pytest.mark.parametrize("v", MESSAGES["encode"], ids=_ids(MESSAGES["encode"]))
def test_message_encodes_to_its_exact_bytes(v: dict[str, Any]) -> None:
    message = message_from_json(v["message"])
    body = encode_message(message)
    assert body.hex() == v["hex"]
    assert (struct.pack(">I", len(body)) + body).hex() == v["stream"]
    assert decode_message(h(v["hex"])) == message


@pytest.mark.parametrize("v", MESSAGES["decode"], ids=_ids(MESSAGES["decode"]))
def test_message_in_another_valid_form_decodes(v: dict[str, Any]) -> None:
    assert decode_message(h(v["hex"])) == message_from_json(v["message"])


@pytest.mark.parametrize("v", MESSAGES["refuse"], ids=_ids(MESSAGES["refuse"]))
def test_invalid_message_is_refused_with_its_close_reason(v: dict[str, Any]) -> None:
    kind = FrameTooLargeError if v["error"] == "too-large" else DecodeError
    with pytest.raises(kind) as info:
        decode_message(h(v["hex"]))
    assert info.value.close_reason == v["error"]


@pytest.mark.parametrize("v", MESSAGES["heads"], ids=_ids(MESSAGES["heads"]))
def test_message_start_is_checked_before_the_rest_arrives(v: dict[str, Any]) -> None:
    if v["error"] is None:
        check_head(h(v["head"]), v["length"])
        return
    with pytest.raises(RemoteProtocolError) as info:
        check_head(h(v["head"]), v["length"])
    assert info.value.close_reason == v["error"]


def test_every_message_type_has_an_encoding_vector() -> None:
    kinds = {v["message"]["type"] for v in MESSAGES["encode"]}
    assert kinds == {"Hello", "Vector", "Envelopes", "Ack", "Ping", "Pong", "Refused",
                     "Close", "Evidence"}


# --------------------------------------------------------------------- tags and digests


@pytest.mark.parametrize("v", TAGS["tags"], ids=[f"{t['board']}-{t['role']}" for t in
                                                TAGS["tags"]])
def test_board_tag(v: dict[str, Any]) -> None:
    assert h(v["mac_input"]) == f"p2paid/1 {v['role']}".encode() + HH
    assert board_tag(h(v["tag_key"]), v["role"] == "initiator", HH).hex() == v["tag"]


def test_tag_keys_are_those_of_the_invites() -> None:
    keys = {f"board-{i + 1}": b["tag_key"] for i, b in enumerate(KEYS["boards"])}
    assert all(keys[t["board"]] == t["tag_key"] for t in TAGS["tags"])


@pytest.mark.parametrize("v", DIGESTS["digests"], ids=_ids(DIGESTS["digests"]))
def test_vector_digest(v: dict[str, Any]) -> None:
    heads = {h(e["author"]): FeedHead(e["seq"], h(e["hash"])) for e in v["heads"]}
    assert vector_digest(h(v["key_hex"]), HH, heads).hex() == v["digest"]
    key = BOARD.tag_key if v["key"] == "tag_key" else BOARD.board_id
    assert key.hex() == v["key_hex"]


# --------------------------------------------------------------------- refusals.json


def _by_letter(mapping: Any) -> dict[str, int]:
    letters = {author: letter for letter, author in AUTHORS.items()}
    return {letters[a]: s for a, s in sorted(mapping.items()) if s}


def _refused(offer: Sequence[str], rejected: Sequence[tuple[bytes | None, str]]
             ) -> list[list[str]]:
    """[name, code] of each refusal (an undecodable envelope has no bytes to name it by:
    it is the offered one that does not decode)."""
    names = {RAW[n]: n for n in offer}
    undecodable = [n for n in offer if not _decodes(RAW[n])]
    return sorted([names[raw] if raw is not None else undecodable.pop(0), code]
                  for raw, code in rejected)


def _decodes(raw: bytes) -> bool:
    try:
        Envelope.decode(raw)
    except RemoteProtocolError:
        return False
    return True


def _join(path: Path) -> Store:
    store = p2paid.open_store(path)
    store.join(Invite(SECRET, "Riverside mutual aid"))
    return store


@pytest.mark.parametrize("case", REFUSALS["cases"], ids=_ids(REFUSALS["cases"]))
def test_member_refuses_with_the_code_of_the_vector(case: dict[str, Any], tmp_path: Path
                                                    ) -> None:
    path = tmp_path / "node"
    store = _join(path)
    try:
        board = store.board()
        for name in case["holds"]:
            assert board.receive([RAW[name]]).accepted == 1
        for step in case["steps"]:
            if step["restart"]:
                store.close()
                store = p2paid.open_store(path, create=False)
                board = store.board()
            report = board.receive([RAW[n] for n in step["offer"]])
            rejected = [(None if r.envelope is None else r.envelope.raw, r.error.code)
                        for r in report.rejected]
            assert _refused(step["offer"], rejected) == sorted(step["refused"])
            assert _by_letter(board.version_vector()) == step["vector"]
            assert _by_letter(board.forked) == step["forked"]
    finally:
        store.close()


@pytest.mark.parametrize("case", REFUSALS["cases"], ids=_ids(REFUSALS["cases"]))
def test_relay_refuses_with_the_code_of_the_vector(case: dict[str, Any], tmp_path: Path
                                                   ) -> None:
    db = open_relay_db(tmp_path / "relay")
    try:
        relay = RelayReplica.open(db, RelayLimits())
        for name in case["holds"]:
            assert relay.receive(BOARD.board_id, [RAW[name]]).stored == 1
        for step in case["steps"]:
            want = step.get("relay", step)
            result = relay.receive(BOARD.board_id, [RAW[n] for n in step["offer"]])
            assert sorted(e.code for e in result.rejected) == sorted(
                code for _, code in want["refused"])
            assert _by_letter(relay.vector(BOARD.board_id)) == want["vector"]
            assert _by_letter(relay.forked(BOARD.board_id)) == want["forked"]
    finally:
        db.close()


@pytest.mark.parametrize("case", REFUSALS["cases"], ids=_ids(REFUSALS["cases"]))
def test_session_drops_the_peer_only_for_its_own_faults(case: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """A node peer sends the last step's envelopes as one batch: the member's session
    closes with the vector's reason (the sender's fault) or replies (the author's)."""
    path = tmp_path / "node"
    store = _join(path)
    try:
        board = store.board()
        for name in case["holds"]:
            board.receive([RAW[name]])
        for step in case["steps"][:-1]:
            board.receive([RAW[n] for n in step["offer"]])
        if case["steps"][-1]["restart"]:
            store.close()
            store = p2paid.open_store(path, create=False)
        session = SyncSession(StoreReplica(store), initiator=False, handshake_hash=HH)
        session.start()
        peer_tag = board_tag(BOARD.tag_key, True, HH)
        [vector] = session.handle(Hello(1, "node", False, (HelloBoard(peer_tag, bytes(16)),)))
        assert isinstance(vector, Vector)
        session.handle(Vector(0, ()))
        offer = Envelopes(0, 0, tuple(RAW[n] for n in case["steps"][-1]["offer"]))
        if "close" in case["session"]:
            with pytest.raises(RemoteProtocolError) as info:
                session.handle_whole(offer)
            assert info.value.close_reason == case["session"]["close"]
        else:
            reply = session.handle_whole(offer)
            assert [type(m).__name__ for m in reply] == case["session"]["reply"]
    finally:
        store.close()


def test_every_envelope_refusal_code_has_a_vector() -> None:
    codes = {code for case in REFUSALS["cases"] for step in case["steps"]
             for _, code in step["refused"]}
    assert codes == {"malformed", "too-large", "bad-signature", "wrong-board",
                     "broken-chain", "fork", "forked", "decrypt", "change-mismatch",
                     "ownership", "bad-deps", "bad-op", "invalid-change"}


def test_fork_proof_is_valid() -> None:
    proof = REFUSALS["fork_proof"]
    checked = ForkProof.check(BOARD.board_id, Envelope.decode(h(proof["first"])),
                              Envelope.decode(h(proof["second"])))
    assert checked.seq == 2 and checked.author == AUTHORS["a"]
    [evidence] = [v for v in MESSAGES["encode"] if v["name"] == "evidence"]
    assert evidence["message"]["envelopes"] == [proof["first"], proof["second"]]


# --------------------------------------------------------------------- sessions.json


@contextmanager
def _local_replica(local: dict[str, Any], root: Path) -> Iterator[Replica]:
    if local["role"] == "node":
        store = _join(root / "node")
        try:
            board = store.board()
            for name in local["holds"]:
                board.receive([RAW[name]])
            yield StoreReplica(store)
        finally:
            store.close()
        return
    allowed = local.get("allowed_boards")
    limits = RelayLimits(
        allowed_boards=None if allowed is None else frozenset(h(x) for x in allowed),
        max_board_bytes=local.get("max_board_bytes", RelayLimits().max_board_bytes))
    db = open_relay_db(root / "relay")
    try:
        relay = RelayReplica.open(db, limits)
        for name in local["holds"]:
            assert relay.receive(BOARD.board_id, [RAW[name]]).stored == 1
        yield relay
    finally:
        db.close()


def _comparable(messages: Sequence[Message]) -> list[object]:
    """A Refused's text is free: compare its board and code only."""
    return [(m.board, m.code) if isinstance(m, Refused) else m for m in messages]


def _wanted(wires: Sequence[dict[str, Any]]) -> list[Message]:
    out = []
    for w in wires:
        message = message_from_json(w["message"])
        assert encode_message(message).hex() == w["hex"]
        out.append(message)
    return out


@pytest.mark.parametrize("v", SESSIONS["sessions"], ids=_ids(SESSIONS["sessions"]))
def test_session_follows_the_vector(v: dict[str, Any], tmp_path: Path) -> None:
    local = v["local"]
    with _local_replica(local, tmp_path) as replica:
        session = SyncSession(replica, initiator=local["initiator"], handshake_hash=HH,
                              to_relay=local["to_relay"])
        assert _comparable(session.start()) == _comparable(_wanted(v["start"]))
        for step in v["steps"]:
            [received] = _wanted([step["receive"]])
            assert decode_message(h(step["receive"]["hex"])) == received
            if "close" in step and step["close"] != "no shared boards":
                with pytest.raises(RemoteProtocolError) as info:
                    session.handle_whole(received)
                assert info.value.close_reason == step["close"]
                return
            sent = session.handle_whole(received)
            if "close" in step:  # the connection's rule (SPEC 11.3)
                assert session.greeted and not session.shared_boards
                return
            assert session.shared_boards or not session.greeted
            assert _comparable(sent) == _comparable(_wanted(step["send"]))
            for message, w in zip(sent, step["send"], strict=True):
                if not isinstance(message, Refused):
                    assert encode_message(message).hex() == w["hex"]


# --------------------------------------------------------------------- transcript.json


class _Side:
    def __init__(self, channel: SecureChannel, store: Store, initiator: bool) -> None:
        self.channel = channel
        self.store = store
        self.initiator = initiator
        self.session: SyncSession | None = None
        self.wrote = bytearray()

    def handle_events(self) -> None:
        while (event := self.channel.next_event()) is not NEED_DATA:
            if isinstance(event, HandshakeComplete):
                self.session = SyncSession(StoreReplica(self.store), initiator=self.initiator,
                                           handshake_hash=event.handshake_hash)
                out = self.session.start()
            else:
                assert isinstance(event, MessageReceived) and self.session is not None
                out = self.session.handle_whole(event.message)
            for message in out:
                self.channel.send(message)


def test_whole_connection_is_byte_for_byte_the_transcript(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real channels and sessions, with the transcript's static and (for this test
    only) ephemeral keys, write exactly the transcript's frames."""
    t = TRANSCRIPT
    ephemerals = [X25519PrivateKey.from_private_bytes(h(t[f"{role}_ephemeral"]))
                  for role in ("initiator", "responder")]

    class _FixedEphemerals:
        @staticmethod
        def generate() -> X25519PrivateKey:
            return ephemerals.pop(0)

    monkeypatch.setattr(noise, "X25519PrivateKey", _FixedEphemerals)
    stores = []
    sides = []
    for role in ("initiator", "responder"):
        store = _join(tmp_path / role)
        stores.append(store)
        for name in t[f"{role}_holds"]:
            store.board().receive([RAW[name]])
        key = X25519PrivateKey.from_private_bytes(h(t[f"{role}_static"]))
        sides.append(_Side(SecureChannel(role == "initiator", key), store,
                           role == "initiator"))
    try:
        moved = True
        while moved:
            moved = False
            for sender, receiver in (sides, sides[::-1]):
                data = sender.channel.data_to_send()
                if data:
                    moved = True
                    sender.wrote += data
                    receiver.channel.receive_data(data)
                    receiver.handle_events()
        for side, role in zip(sides, ("initiator", "responder"), strict=True):
            frames = t[f"{role}_frames"]
            assert side.wrote.hex() == "".join(f["frame"] for f in frames)
            assert side.channel.handshake_hash == h(t["handshake_hash"]) == HH
            assert side.channel.remote_static == h(t[
                "responder_id" if role == "initiator" else "initiator_id"])
            for frame in frames[1 if role == "responder" else 2:]:
                body = encode_message(message_from_json(frame["message"]))
                assert body.hex() == frame["body"]
                assert frame["plaintext"] == (struct.pack(">I", len(body)) + body).hex()
        assert stores[1].board().version_vector() == {AUTHORS["a"]: 2}
    finally:
        for store in stores:
            store.close()
