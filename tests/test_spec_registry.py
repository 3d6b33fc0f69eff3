"""protocol/SPEC.md's registry (section 16) and message table (11.2) hold what the code
does: every refusal code the code can give is registered, every Close reason it derives
from an error is registered, the Refused codes that stall a link are exactly those the
registry says, and every message type's size limit is the one in the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from replication_helpers import FeedWriter, MemoryReplica, board_keys

from p2paid import errors
from p2paid.core.messages import check_head
from p2paid.core.replication import SyncSession, board_tag
from p2paid.core.wire import Envelopes, Hello, HelloBoard, Refused, Vector
from p2paid.errors import EnvelopeError, RemoteProtocolError

ROOT = Path(__file__).parents[1]
SPEC = (ROOT / "protocol" / "SPEC.md").read_text()
VECTORS = ROOT / "protocol" / "vectors"


def _section(title: str) -> str:
    start = SPEC.index(f"### {title}")
    end = SPEC.find("\n### ", start + 4)
    return SPEC[start:] if end < 0 else SPEC[start:end]


def _table(title: str) -> list[list[str]]:
    """The rows of the first table of a section, cells stripped."""
    rows = [line for line in _section(title).splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]
            if not set(row) <= {"|", "-", " "}]


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, cell
    return match.group(1)


REFUSAL_CODES = {_code(row[0]) for row in _table("16.1 Envelope refusal codes")}
CLOSE_REASONS = {_code(row[0]) for row in _table("16.2 Close reasons")}
REFUSED = {_code(row[0]): row[4] for row in _table("16.3 Refused codes")}
#: Reasons of errors that never reach a peer (16.2, informative): there is no channel.
NOT_ON_THE_WIRE = {"handshake", "bad-bundle"}


def _subclasses(cls: type[RemoteProtocolError]) -> list[type[RemoteProtocolError]]:
    out: list[type[RemoteProtocolError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _envelope_codes() -> set[str]:
    return {sub.code for sub in _subclasses(EnvelopeError) if issubclass(sub, EnvelopeError)}


def test_every_envelope_refusal_code_is_registered() -> None:
    assert _envelope_codes() == REFUSAL_CODES


def test_every_close_reason_an_error_carries_is_registered() -> None:
    """Errors other than envelope refusals close with their reason; of the envelope
    refusals, exactly the sender's faults do (16.1), with the refusal code."""
    reasons = {sub.default_reason for sub in _subclasses(RemoteProtocolError)
               if not issubclass(sub, EnvelopeError)}
    reasons.add(RemoteProtocolError.default_reason)
    assert reasons - NOT_ON_THE_WIRE <= CLOSE_REASONS
    senders = {_code(row[0]) for row in _table("16.1 Envelope refusal codes")
               if row[3] == "sender's"}
    assert senders == {"malformed", "too-large", "wrong-board", "bad-signature"}
    assert senders <= CLOSE_REASONS
    # An author's fault never closes a connection. (Close("decrypt") is a transport frame
    # that failed authentication, 10.5: another thing than an envelope's `decrypt`.)
    authors = REFUSAL_CODES - senders
    assert authors & CLOSE_REASONS == {"decrypt"}
    assert "not an envelope's" in _section("16.2 Close reasons")
    assert all(f"`{r}`" in _section("16.2 Close reasons") for r in NOT_ON_THE_WIRE - {
        "bad-bundle"})
    assert errors.BundleError.default_reason == "bad-bundle"  # bundles have no peer


def test_every_close_reason_in_the_vectors_is_registered() -> None:
    sessions = json.loads((VECTORS / "sessions.json").read_text())
    refusals = json.loads((VECTORS / "refusals.json").read_text())
    messages = json.loads((VECTORS / "messages.json").read_text())
    used = {step["close"] for s in sessions["sessions"] for step in s["steps"]
            if "close" in step}
    used |= {c["session"]["close"] for c in refusals["cases"] if "close" in c["session"]}
    used |= {v["error"] for v in messages["refuse"]}
    assert used <= CLOSE_REASONS


BOARD = board_keys(0)
H = bytes(range(32))


@pytest.mark.parametrize("code", sorted(REFUSED), ids=sorted(REFUSED))
def test_exactly_the_registered_refused_codes_stall_a_link(code: str) -> None:
    """A node that received ``Refused(board, code)`` sends the board's envelopes on the
    peer's Vector unless the registry says the code stalls the link."""
    replica = MemoryReplica("node")
    replica.add_board(BOARD)
    replica.write(BOARD.board_id, FeedWriter(BOARD).many(2))
    session = SyncSession(replica, initiator=False, handshake_hash=H)
    session.start()
    peer = HelloBoard(board_tag(BOARD.tag_key, True, H), bytes(16))
    [vector] = session.handle(Hello(1, "node", False, (peer,)))
    assert isinstance(vector, Vector)
    assert session.handle(Refused(BOARD.board_id, code, "")) == []
    sent = session.handle(Vector(0, ()))
    assert REFUSED[code] in ("yes", "no")
    assert (sent == []) == (REFUSED[code] == "yes")
    assert all(isinstance(m, Envelopes) for m in sent)


def test_an_unknown_refused_code_is_a_notice() -> None:
    replica = MemoryReplica("node")
    replica.add_board(BOARD)
    replica.write(BOARD.board_id, FeedWriter(BOARD).many(1))
    session = SyncSession(replica, initiator=False, handshake_hash=H)
    session.start()
    session.handle(Hello(1, "node", False, (
        HelloBoard(board_tag(BOARD.tag_key, True, H), bytes(16)),)))
    assert session.handle(Refused(BOARD.board_id, "some-later-code", "")) == []
    assert [type(m) for m in session.handle(Vector(0, ()))] == [Envelopes]


MESSAGE_SIZES = {row[1]: int(row[-1].replace(",", "")) for row in _table("11.2 Messages")}
TYPES = {"Hello": 1, "Vector": 2, "Envelopes": 3, "Ack": 4, "Ping": 5, "Pong": 6,
         "Refused": 7, "Close": 8, "Evidence": 9}


@pytest.mark.parametrize("name", sorted(TYPES), ids=sorted(TYPES))
def test_largest_message_of_each_type_is_the_one_in_the_table(name: str) -> None:
    head = bytes([0x9F, TYPES[name]])  # an array of 15 fields, cut short after the type
    limit = MESSAGE_SIZES[name]
    check_head(head, limit)
    with pytest.raises(errors.FrameTooLargeError):
        check_head(head, limit + 1)
