"""The whole p2paid exception tree.

Every error p2paid raises on purpose derives from :class:`P2paidError`. The tree
splits by *blame*, as h11 and wsproto do:

* :class:`UsageError` - the user asked for something that cannot be done (an
  unknown item id, a bad field value, a malformed invite). The CLI prints its
  message on one line and exits non-zero.
* :class:`LocalProtocolError` - our own caller misused an API. A bug: let it crash.
* :class:`RemoteProtocolError` - data that came from outside (a peer, a relay, a
  bundle file) is bad. Drop that peer or refuse that data; keep serving everyone
  else. ``close_reason`` is a short token suitable for telling the peer why.
* :class:`StorageError` - the local store is unusable (corrupt, locked, full).
* :class:`EventsLostError` - an ``events()`` subscriber fell too far behind and
  missed events; it should read the board again and subscribe again.

OS errors never leave the library bare: on paths the user gave (a data dir, a bundle,
an export file, a lock file) they come out as :class:`FileError`, naming the path; on an
address to listen on as :class:`ListenError`, naming the address; either keeps the
``OSError`` as ``__cause__``. ``open_node`` and ``serve_relay`` raise a single error as
itself, never in an ``ExceptionGroup`` of one (:mod:`p2paid.net.groups`).
"""

from __future__ import annotations

__all__ = [
    "AmbiguousIdError",
    "BundleError",
    "ChainError",
    "ChangeMismatchError",
    "CheckpointMismatchError",
    "DataDirBusyError",
    "DecodeError",
    "DecryptError",
    "DependencyError",
    "EnvelopeDecryptError",
    "EnvelopeError",
    "EventsLostError",
    "FileError",
    "ForbiddenOpError",
    "ForkError",
    "ForkedFeedError",
    "FrameTooLargeError",
    "HandshakeError",
    "HostError",
    "InvalidChangeError",
    "InviteError",
    "LimitExceededError",
    "ListenError",
    "LocalProtocolError",
    "MalformedEnvelopeError",
    "NotFoundError",
    "OversizedEnvelopeError",
    "OwnershipError",
    "P2paidError",
    "PassphraseError",
    "RemoteProtocolError",
    "RevokedDeviceError",
    "SignatureError",
    "StorageError",
    "UsageError",
    "ValidationError",
    "WrongBoardError",
]


class P2paidError(Exception):
    """Root of every error p2paid raises on purpose."""


# --------------------------------------------------------------------- user mistakes


class UsageError(P2paidError):
    """The request cannot be done as asked; the message says why in one line."""


class ValidationError(UsageError):
    """A field value is out of range, too long, or of the wrong kind."""


class NotFoundError(UsageError):
    """No board, item or key matches what was asked for."""


class RevokedDeviceError(UsageError):
    """A paired device was revoked: it can no longer write (its past posts stay)."""


class FileError(UsageError):
    """A file or folder the user named cannot be used: missing, not ours, read-only or
    on a full disk. The message names it and says what to do.

    Attributes:
        path: the file or folder.
        errno: the ``OSError``'s errno (the ``OSError`` itself is ``__cause__``).
    """

    def __init__(self, message: str, path: object = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class DataDirBusyError(UsageError):
    """Another process runs a node or relay on this data dir
    (:class:`p2paid.storage.lock.DataDirLock`).

    Attributes:
        pid: that process's id (None if it could not be read).
    """

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class PassphraseError(UsageError):
    """A protected data dir cannot be unlocked: no passphrase was given, it is wrong,
    the key file is missing or wrong, or the data dir's key was wiped. Nothing was
    changed."""


class ListenError(UsageError):
    """An address to listen on cannot be used: the port is in use or privileged, or the
    address is not one of this machine's. The message names it and says what to do.

    Attributes:
        address: ``(host, port)`` as asked for.
        errno: the ``OSError``'s errno (the ``OSError`` itself is ``__cause__``).
    """

    def __init__(self, message: str, address: tuple[str, int],
                 errno: int | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.errno = errno


class AmbiguousIdError(UsageError):
    """An abbreviated id matches more than one item."""


class InviteError(UsageError):
    """An invite or address URI is malformed."""


class HostError(UsageError):
    """A host is neither an IP address literal nor a valid DNS name."""


# --------------------------------------------------------------------- our bugs


class LocalProtocolError(P2paidError):
    """The caller used an API in a way it does not allow (a bug in the caller)."""


# --------------------------------------------------------------------- their faults


class RemoteProtocolError(P2paidError):
    """Data from outside (peer, relay, bundle) broke the protocol.

    Args:
        message: human-readable description.
        close_reason: short machine token to send the peer before hanging up.
    """

    default_reason = "protocol-error"

    def __init__(self, message: str, *, close_reason: str | None = None) -> None:
        super().__init__(message)
        self.close_reason = close_reason or self.default_reason


class DecodeError(RemoteProtocolError):
    """Bytes could not be decoded (truncated, wrong type, unknown version)."""

    default_reason = "malformed"


class FrameTooLargeError(RemoteProtocolError):
    """A frame or message exceeds its hard size cap."""

    default_reason = "too-large"


class LimitExceededError(RemoteProtocolError):
    """A peer exceeded a rate, storage or count limit."""

    default_reason = "limit"


class HandshakeError(RemoteProtocolError):
    """The Noise handshake failed (bad message, wrong key, timeout)."""

    default_reason = "handshake"


class DecryptError(RemoteProtocolError):
    """Authenticated decryption failed: the ciphertext or its associated data was altered."""

    default_reason = "decrypt"


class BundleError(RemoteProtocolError):
    """A bundle file is truncated, corrupt or of an unsupported version."""

    default_reason = "bad-bundle"


class EnvelopeError(RemoteProtocolError):
    """An envelope was refused. Subclasses name the reason; ``code`` is a stable token."""

    code = "invalid-envelope"
    default_reason = "invalid-envelope"
    #: hash of the refused Automerge change, when it was decrypted
    change_hash: bytes | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.default_reason = cls.code  # the peer is told exactly what was refused


class MalformedEnvelopeError(EnvelopeError, DecodeError):
    """The envelope bytes do not decode (truncated, unknown version, bad lengths)."""

    code = "malformed"
    default_reason = "malformed"


class OversizedEnvelopeError(EnvelopeError, FrameTooLargeError):
    """The envelope exceeds the size cap."""

    code = "too-large"
    default_reason = "too-large"


class SignatureError(EnvelopeError):
    """The envelope's Ed25519 signature does not verify."""

    code = "bad-signature"


class WrongBoardError(EnvelopeError):
    """The envelope belongs to a different board than the one it was offered for."""

    code = "wrong-board"


class ChainError(EnvelopeError):
    """The envelope's ``prev`` hash does not match the author's previous envelope."""

    code = "broken-chain"


class ForkError(EnvelopeError):
    """A second, different envelope for an ``(author, seq)`` already held."""

    code = "fork"


class ChangeMismatchError(EnvelopeError):
    """The decrypted change is malformed or names another actor or seq than its envelope."""

    code = "change-mismatch"


class OwnershipError(EnvelopeError):
    """The change touches objects owned by another member (its actor table is not empty)."""

    code = "ownership"


class DependencyError(EnvelopeError):
    """The change breaks the own-feed rule: its dependencies or op counters are not
    exactly those its author's previous change implies (SPEC 5)."""

    code = "bad-deps"


class ForbiddenOpError(EnvelopeError):
    """An op of the change is not one the board schema allows (a value type, action,
    object or predecessor that no honest member makes; SPEC 5)."""

    code = "bad-op"


class CheckpointMismatchError(EnvelopeError):
    """A checkpoint's content is not the history its head envelope depends on."""

    code = "bad-checkpoint"


class ForkedFeedError(EnvelopeError):
    """The envelope's author has a proven fork at or below its seq: the author's feed
    ends before the fork on every replica."""

    code = "forked"


class InvalidChangeError(EnvelopeError):
    """Automerge refused to apply the change (its ops are malformed or inconsistent)."""

    code = "invalid-change"


class EnvelopeDecryptError(EnvelopeError, DecryptError):
    """The envelope's ciphertext failed authentication with the board's content key."""

    code = "decrypt"


# --------------------------------------------------------------------- local storage


class StorageError(P2paidError):
    """The local store cannot be read or written (corrupt, locked, or full)."""


# --------------------------------------------------------------------- event streams


class EventsLostError(P2paidError):
    """A subscriber of a board's events fell more than its buffer behind: ``count``
    events after those it received were not delivered. The board itself is complete:
    read it again, and subscribe again for what follows."""

    def __init__(self, board_name: str, count: int, buffer: int | None) -> None:
        super().__init__(f"board {board_name!r}: {count:,} events were lost: this "
                         f"subscriber fell more than {buffer or 0:,} events behind")
        self.board_name = board_name
        self.count = count
