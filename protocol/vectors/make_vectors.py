#!/usr/bin/env python3
"""Regenerate the p2paid/1 data-format test vectors (everything except Noise).

All inputs are fixed (keys are SHA-256 of a label, nonces are fixed bytes), so a
re-run gives byte-identical files. Tests only *read* these files; run this
script only when the format deliberately changes, and say so in SPEC.md.

    python protocol/vectors/make_vectors.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import parse_change, sleb_bytes
from p2paid.automerge.docchunk import encode_document, inspect_document
from p2paid.board.bundle import write_bundle
from p2paid.board.document import section_object_id
from p2paid.core.checkpoint import associated_data as checkpoint_ad
from p2paid.core.checkpoint import seal_checkpoint
from p2paid.core.envelope import ZERO_HASH, Envelope, associated_data, seal_envelope
from p2paid.core.identity import AuthorKey, fingerprint
from p2paid.core.invite import Invite, derive_board_keys
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import InviteError

HERE = Path(__file__).parent



def _last_change(doc: Document) -> bytes:
    change = doc.get_last_local_change()
    assert change is not None, "a transaction made no change"
    return change.bytes

def fixed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def write(name: str, doc: dict[str, Any]) -> None:
    (HERE / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def keys_and_invites() -> None:
    vectors = []
    for label, name, relays in (
        ("board-1", "Riverside mutual aid", []),
        ("board-2", "Ríverside – ayuda mutua 🌊", [
            str(RelayAddress("relay.example", 7447, fixed("relay-key"))),
            str(RelayAddress("2001:db8::7", 7447, fixed("relay-key"), fixed("token")[:20])),
        ]),
    ):
        secret = fixed(label)
        k = derive_board_keys(secret)
        vectors.append({
            "secret": secret.hex(), "name": name, "relays": relays,
            "board_id": k.board_id.hex(), "content_key": k.content_key.hex(),
            "tag_key": k.tag_key.hex(), "invite": Invite(secret, name, tuple(relays)).to_uri(),
        })
    authors = []
    for label in ("author-a", "author-b"):
        key = AuthorKey(fixed(label))
        authors.append({"seed": fixed(label).hex(), "public": key.public.hex(),
                        "fingerprint": fingerprint(key.public),
                        "section_object_id_start_op_1": section_object_id(key.public, 1).hex(),
                        "section_object_id_start_op_300":
                            section_object_id(key.public, 300).hex()})
    write("keys.json", {
        "description": "HKDF board key derivation, invite URIs, author keys, fingerprints, "
                       "section object ids and relay addresses (protocol/SPEC.md sections "
                       "2-3, 6 and 14.1).",
        "boards": vectors, "authors": authors, "relay_addresses": relay_addresses(),
    })


def relay_addresses() -> dict[str, Any]:
    """Written forms (key + checksum), the old form without one, and refusals."""
    key = fixed("relay-key")
    check = hashlib.sha256(b"p2paid/1 relay key\x00" + key).digest()[:3]
    b32 = base64.b32encode(key + check).decode().rstrip("=").lower()
    old = base64.b32encode(key).decode().rstrip("=").lower()
    token = fixed("token")[:20]
    valid = []
    for host, shown, tok in (("relay.example", "relay.example", None),
                             ("2001:db8::7", "[2001:db8::7]", token)):
        text = f"p2paid-relay://{shown}:7447/{b32}"
        if tok is not None:
            text += "?token=" + base64.b32encode(tok).decode().rstrip("=").lower()
        address = RelayAddress.parse(text)
        assert str(address) == text and address.checked
        valid.append({"text": text, "host": host, "port": 7447, "key": key.hex(),
                      "token": None if tok is None else tok.hex(), "checked": True})
    legacy = f"p2paid-relay://relay.example:7447/{old}"
    assert not RelayAddress.parse(legacy).checked
    valid.append({"text": legacy, "host": "relay.example", "port": 7447, "key": key.hex(),
                  "token": None, "checked": False,
                  "written_as": f"p2paid-relay://relay.example:7447/{b32}"})
    typo = b32[:10] + ("a" if b32[10] != "a" else "b") + b32[11:]
    refused = [f"p2paid-relay://relay.example:7447/{typo}",
               f"p2paid-relay://relay.example:7447/{b32[:-1]}",
               f"p2paid-relay://relay.example:7447/{b32}aa"]
    for text in refused:
        try:
            RelayAddress.parse(text)
        except InviteError:
            continue
        raise AssertionError(f"{text} should be refused")
    return {"checksum": "SHA-256('p2paid/1 relay key' || 0x00 || key)[:3]",
            "valid": valid, "refused": refused}


def feed() -> None:
    secret = fixed("board-1")
    k = derive_board_keys(secret)
    cipher = ChaCha20Poly1305(k.content_key)
    author = AuthorKey(fixed("author-a"))
    doc = Document(actor_id=author.public)
    changes = []
    with doc.transaction() as tx:
        sec = tx.put_object(ROOT, author.public.hex(), ObjType.Map)
        tx.put(sec, "v", ScalarType.Int, 1)
        profile = tx.put_object(sec, "profile", ObjType.Map)
        tx.put(profile, "name", ScalarType.Str, "Amina")
    changes.append(_last_change(doc))
    with doc.transaction() as tx:
        needs = tx.put_object(sec, "needs", ObjType.Map)
        need = tx.put_object(needs, "00112233445566778899aabbccddeeff", ObjType.Map)
        for key, value in (("title", "Drinking water"), ("details", ""),
                           ("category", "water"), ("unit", "litres"),
                           ("location", "north camp"), ("urgency", "high"),
                           ("status", "open")):
            tx.put(need, key, ScalarType.Str, value)
        for key, num in (("quantity", 40), ("created", 1_800_000_000_000),
                         ("updated", 1_800_000_000_000), ("expires", 1_801_209_600_000)):
            tx.put(need, key, ScalarType.Int, num)
    changes.append(_last_change(doc))
    prev = ZERO_HASH
    entries = []
    envelopes = []
    for seq, change in enumerate(changes, start=1):
        nonce = fixed(f"nonce-{seq}")[:12]
        env = seal_envelope(board_id=k.board_id, cipher=cipher, author_key=author, seq=seq,
                            prev=prev, change=change, nonce=nonce)
        header = parse_change(change)
        entries.append({
            "seq": seq, "prev": prev.hex(), "nonce": nonce.hex(), "change": change.hex(),
            "change_hash": header.hash.hex(), "change_start_op": header.start_op,
            "associated_data": associated_data(k.board_id, author.public, seq).hex(),
            "signing_input": env.signing_input().hex(), "sig": env.sig.hex(),
            "envelope": env.raw.hex(), "envelope_hash": env.hash.hex(),
        })
        envelopes.append(env.raw)
        prev = env.hash
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.p2paid"
        write_bundle(path, envelopes)
        bundle = path.read_bytes()
    write("envelopes.json", {
        "description": "A two-envelope feed of one author on board-1 (keys.json): the "
                       "changes are real Automerge change chunks (the first creates the "
                       "author's section), sealed with fixed nonces; then the bundle file "
                       "holding both (protocol/SPEC.md sections 4, 5 and 8).",
        "board_secret": secret.hex(), "author_seed": fixed("author-a").hex(),
        "author": author.public.hex(), "feed": entries, "bundle": bundle.hex(),
    })


def _with_op_column(content: bytes, spec: int, data: bytes) -> bytes:
    """A document chunk like ``content`` (columns uncompressed) with one op column
    replaced, and a valid checksum."""
    chunk = inspect_document(content, 1 << 24)
    ops = [(s & ~0x08, data if s & ~0x08 == spec else d) for s, d in chunk.op_columns]
    return encode_document(chunk.actors, chunk.heads, chunk.change_columns, ops)


def checkpoints() -> None:
    """A checkpoint of envelopes.json's feed at seq 2, and checkpoints to refuse."""
    vectors = json.loads((HERE / "envelopes.json").read_text())
    secret = bytes.fromhex(vectors["board_secret"])
    k = derive_board_keys(secret)
    cipher = ChaCha20Poly1305(k.content_key)
    author = AuthorKey(bytes.fromhex(vectors["author_seed"]))
    first = bytes.fromhex(vectors["feed"][0]["change"])
    head = Envelope.decode(bytes.fromhex(vectors["feed"][1]["envelope"]))
    content = bytes(Document.load(first).save())
    nonce = fixed("checkpoint-nonce")[:12]
    cp = seal_checkpoint(cipher=cipher, author_key=author, head=head, content=content,
                         nonce=nonce)

    def resigned(body: bytes) -> str:
        """``body`` (everything before the signature) signed by the author again."""
        return (body + author.sign(b"p2paid/1 checkpoint\x00"
                                   + hashlib.sha256(body).digest())).hex()

    raw = cp.raw
    doc = Document(actor_id=author.public)
    with doc.transaction() as tx:  # another first change: a history the head does not know
        sec = tx.put_object(ROOT, author.public.hex(), ObjType.Map)
        tx.put(sec, "v", ScalarType.Int, 1)
    elsewhere = seal_checkpoint(cipher=cipher, author_key=author, head=head,
                                content=bytes(doc.save()), nonce=nonce)
    assert bytes(Document.load(content).save()) == content, "one history saves one way"
    refuse = [
        {"why": "one byte of the content altered: the checkpoint's signature fails",
         "code": "bad-signature", "by": "every replica",
         "checkpoint": (raw[:-80] + bytes([raw[-80] ^ 1]) + raw[-79:]).hex()},
        {"why": "version 2", "code": "malformed", "by": "every replica",
         "checkpoint": resigned(raw[:4] + b"\x02" + raw[5:-64])},
        {"why": "seq 3 with the envelope at seq 2 as head", "code": "malformed",
         "by": "every replica",
         "checkpoint": resigned(raw[:69] + (3).to_bytes(8, "big") + raw[77:-64])},
        {"why": "validly signed, but the content is another history than the head's",
         "code": "bad-checkpoint", "by": "members", "checkpoint": elsewhere.raw.hex()},
        {"why": "validly signed, but the content's op id column is one run of 2^40 ops "
                "(a few bytes that would make Automerge build a trillion ops; 8a.3 step 4)",
         "code": "change-mismatch", "by": "members",
         "checkpoint": seal_checkpoint(cipher=cipher, author_key=author, head=head,
                                       content=_with_op_column(
                                           content, 0x23, sleb_bytes(2**40) + sleb_bytes(1)),
                                       nonce=nonce).raw.hex()},
    ]
    write("checkpoints.json", {
        "description": "A checkpoint of envelopes.json's feed up to seq 2 (protocol/SPEC.md "
                       "8a): the content is Automerge's saved document of change 1, the head "
                       "is envelope 2; then checkpoints every replica or every member refuses.",
        "board_secret": secret.hex(), "author": author.public.hex(),
        "content": content.hex(), "nonce": nonce.hex(),
        "associated_data": checkpoint_ad(k.board_id, author.public, 2, head.raw).hex(),
        "signing_input": cp.signing_input().hex(), "checkpoint": raw.hex(),
        "checkpoint_hash": cp.hash.hex(), "refuse": refuse,
    })


if __name__ == "__main__":
    keys_and_invites()
    feed()
    checkpoints()
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.json"))))
