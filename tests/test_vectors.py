"""The code reproduces protocol/vectors/*.json byte for byte (the spec's vectors)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

import p2paid
from p2paid.automerge.chunk import parse_change
from p2paid.automerge.rules import check_change
from p2paid.board.bundle import read_bundle, write_bundle
from p2paid.board.document import section_object_id
from p2paid.core.envelope import Envelope, associated_data, open_envelope, seal_envelope
from p2paid.core.identity import AuthorKey, fingerprint
from p2paid.core.invite import Invite, derive_board_keys
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import InviteError

VECTORS = Path(__file__).parents[1] / "protocol" / "vectors"
KEYS = json.loads((VECTORS / "keys.json").read_text())
FEED = json.loads((VECTORS / "envelopes.json").read_text())
h = bytes.fromhex


@pytest.mark.parametrize("v", KEYS["boards"], ids=lambda v: v["name"])
def test_board_key_derivation_and_invite(v: dict[str, Any]) -> None:
    keys = derive_board_keys(h(v["secret"]))
    assert keys.board_id.hex() == v["board_id"]
    assert keys.content_key.hex() == v["content_key"]
    assert keys.tag_key.hex() == v["tag_key"]
    invite = Invite(h(v["secret"]), v["name"], tuple(v["relays"]))
    assert invite.to_uri() == v["invite"]
    assert Invite.from_uri(v["invite"]) == invite


@pytest.mark.parametrize("v", KEYS["relay_addresses"]["valid"], ids=lambda v: v["text"][:40])
def test_relay_address_forms(v: dict[str, Any]) -> None:
    address = RelayAddress.parse(v["text"])
    assert (address.host, address.port, address.key.hex()) == (v["host"], v["port"], v["key"])
    assert (None if address.token is None else address.token.hex()) == v["token"]
    assert address.checked is v["checked"]
    assert str(address) == v.get("written_as", v["text"])


@pytest.mark.parametrize("text", KEYS["relay_addresses"]["refused"])
def test_relay_address_typos_are_refused(text: str) -> None:
    with pytest.raises(InviteError):
        RelayAddress.parse(text)


@pytest.mark.parametrize("v", KEYS["authors"], ids=lambda v: v["public"][:8])
def test_author_keys_fingerprints_section_ids(v: dict[str, Any]) -> None:
    key = AuthorKey(h(v["seed"]))
    assert key.public.hex() == v["public"]
    assert fingerprint(key.public) == v["fingerprint"]
    assert section_object_id(key.public, 1).hex() == v["section_object_id_start_op_1"]
    assert section_object_id(key.public, 300).hex() == v["section_object_id_start_op_300"]


@pytest.mark.parametrize("v", FEED["feed"], ids=lambda v: f"seq{v['seq']}")
def test_envelope_seal_and_open(v: dict[str, Any]) -> None:
    keys = derive_board_keys(h(FEED["board_secret"]))
    cipher = ChaCha20Poly1305(keys.content_key)
    author = AuthorKey(h(FEED["author_seed"]))
    env = seal_envelope(board_id=keys.board_id, cipher=cipher, author_key=author, seq=v["seq"],
                        prev=h(v["prev"]), change=h(v["change"]), nonce=h(v["nonce"]))
    assert env.raw.hex() == v["envelope"]
    assert env.hash.hex() == v["envelope_hash"]
    assert env.sig.hex() == v["sig"]
    assert env.signing_input().hex() == v["signing_input"]
    assert associated_data(keys.board_id, author.public, v["seq"]).hex() == v["associated_data"]
    decoded = Envelope.decode(h(v["envelope"]))
    assert decoded == env
    decoded.verify_signature()
    change = open_envelope(decoded, cipher)
    assert change.hex() == v["change"]
    header = check_change(decoded, change)
    assert header.hash.hex() == v["change_hash"]
    assert header.start_op == v["change_start_op"]
    assert parse_change(change) == header


def test_feed_chain_links() -> None:
    feed = FEED["feed"]
    for before, after in itertools.pairwise(feed):
        assert after["prev"] == before["envelope_hash"]


def test_bundle_bytes(tmp_path: Path) -> None:
    envelopes = [h(v["envelope"]) for v in FEED["feed"]]
    path = tmp_path / "feed.p2paid"
    write_bundle(path, envelopes)
    assert path.read_bytes().hex() == FEED["bundle"]
    assert list(read_bundle(path)) == envelopes


def test_vector_feed_reads_as_a_need(tmp_path: Path) -> None:
    """The vector's changes are a valid board: a member who imports them sees the need."""
    path = tmp_path / "feed.p2paid"
    path.write_bytes(h(FEED["bundle"]))
    secret = h(FEED["board_secret"])
    with p2paid.open_store(tmp_path / "node") as store:
        board = store.join(Invite(secret, "Riverside mutual aid"))
        report = store.import_bundle(path)
        assert report.accepted == 2 and report.rejected == 0
        [need] = board.items()
        assert need.title == "Drinking water" and need.quantity == 40
        assert need.author_name == "Amina" and need.author == FEED["author"]
