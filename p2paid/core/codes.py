"""The fixed vocabularies of the protocol and its logs, as string enums.

Each member *is* its string (``enum.StrEnum``), so what goes on the wire, into logs and
into stored state is byte for byte what it was when these were bare strings; code
compares members, never free text.
"""

from __future__ import annotations

import enum

__all__ = ["CloseReason", "DialSource", "RefusedCode", "Role", "SyncEventKind"]


class Role(enum.StrEnum):
    """What a side says it is in its Hello (SPEC 11.2)."""

    #: a member's node: boards named by tag between nodes
    NODE = "node"
    #: a relay: holds no secrets, boards named by id
    RELAY = "relay"


class DialSource(enum.StrEnum):
    """Where a node learnt an address to dial."""

    #: ``--peer`` / :meth:`~p2paid.node.node.Node.connect`
    CONFIGURED = "configured"
    #: found on the local network
    MDNS = "mdns"
    #: a relay of the node's relay plan
    RELAY = "relay"


class SyncEventKind(enum.StrEnum):
    """What a :class:`~p2paid.core.replication.SyncEvent` reports."""

    #: a board is shared with the peer and the vectors are being exchanged
    LINKED = "linked"
    #: a board is shared and the digests were equal: nothing to exchange
    IN_SYNC = "in-sync"
    #: a batch from the peer was verified and stored (``count`` new envelopes)
    RECEIVED = "received"
    #: the peer refused something (``detail`` says what)
    REFUSED = "refused"
    #: the peer proved that an author forked (``count`` is the seq, ``detail`` the author)
    FORK = "fork"


class CloseReason(enum.StrEnum):
    """Every reason a side gives in ``Close(reason)`` (SPEC 11.2, 11.3, 14.3).

    The envelope and decoding errors of :mod:`p2paid.errors` carry these values as
    their ``close_reason`` (``errors`` sits below this module, so it spells them out;
    ``tests/test_codes.py`` checks that they match).
    """

    #: the connection ended normally (shutdown, or the peer hung up)
    BYE = "bye"
    #: a second connection to the same peer; the one kept is SPEC 11.3's
    DUPLICATE = "duplicate"
    #: a node dialled itself
    SELF = "connected to itself"
    #: the node's set of boards changed: reconnect at once so the Hello lists it
    BOARDS_CHANGED = "boards changed"
    #: the two sides share no board (the slot is freed for others)
    NOTHING_SHARED = "no shared boards"
    #: prefix of the reason given after the peer's own Close: ``"peer closed: <its reason>"``
    PEER_CLOSED = "peer closed"
    #: every connection slot is taken
    FULL = "full"
    #: the per-address cap for strangers is reached
    ADDRESS_FULL = "too many connections from your address"
    #: a known peer took this stranger's slot
    EVICTED = "evicted for a known peer"
    #: the peer sent nothing for IDLE_TIMEOUT
    IDLE = "idle"
    #: the peer sent more Pings than allowed
    FLOOD = "flood"
    #: the peer sent no Hello within HELLO_TIMEOUT of the handshake
    NO_HELLO = "no hello"
    #: a relay serves only token holders
    TOKEN_REQUIRED = "token-required"
    #: a relay that serves only token holders does not know this one
    TOKEN_INVALID = "token-invalid"
    #: the responder's node key is not the one the dialler expected
    WRONG_KEY = "wrong-key"
    #: the peer's fork evidence proves nothing
    BAD_EVIDENCE = "bad-evidence"
    #: the stream broke under us
    CONNECTION_LOST = "connection lost"
    #: a local failure (the disk is full, say) ended this connection
    LOCAL_ERROR = "local error"
    #: the peer broke the protocol (the default of RemoteProtocolError)
    PROTOCOL_ERROR = "protocol-error"
    #: bytes that do not decode (a message, or an envelope of a batch)
    MALFORMED = "malformed"
    #: a frame, message or envelope over its cap
    TOO_LARGE = "too-large"
    #: a decoding limit was exceeded
    LIMIT = "limit"
    #: the Noise handshake failed
    HANDSHAKE = "handshake"
    #: a transport frame failed authentication
    DECRYPT = "decrypt"
    #: an envelope of a batch has a bad signature
    BAD_SIGNATURE = "bad-signature"
    #: an envelope of a batch is for another board than the batch
    WRONG_BOARD = "wrong-board"

    @classmethod
    def parse(cls, text: str | None) -> CloseReason | None:
        """The member a peer's free-text reason names, if any."""
        try:
            return None if text is None else cls(text)
        except ValueError:
            return None


class RefusedCode(enum.StrEnum):
    """Codes of ``Refused`` notices (SPEC 12.3, 14.2, 14.3): the connection stays up."""

    #: the relay has no room for more of the board (no Ack for the batch)
    BOARD_FULL = "board-full"
    #: the relay does not carry the board
    NOT_ALLOWED = "not-allowed"
    #: the client's quota for new boards is used up (no Ack for the batch)
    QUOTA = "quota"
    #: the relay reads this client more slowly from now on
    RATE_LIMITED = "rate-limited"
    #: an open relay does not know the token; it serves the client without it
    TOKEN_INVALID = "token-invalid"
    #: a node was asked to carry a board by id
    NOT_A_RELAY = "not-a-relay"
