"""The sans-I/O connection (``p2paid.core.connection``): its states, the events it hands
its driver, the answers it waits for, its timers (driven with explicit times, no clock)
and its ERROR state after a raise. No trio, no sockets: two SyncConnections and bytes
moved by hand, or the library's ConnectionPair."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from replication_helpers import FeedWriter, MemoryReplica, board_keys

import p2paid.core.connection as connection
from p2paid.core.codes import CloseReason, RefusedCode
from p2paid.core.connection import (
    NEED_DATA,
    PAUSED,
    TRANSITIONS,
    Authenticated,
    BatchReceived,
    ConnectionEnded,
    ConnectionState,
    HelloReceived,
    RawMessage,
    SyncConnection,
    Throttled,
)
from p2paid.core.pair import ConnectionPair
from p2paid.core.ratelimit import TokenBucket
from p2paid.core.replication import SyncEvent
from p2paid.core.wire import (
    Ack,
    Close,
    Envelopes,
    Hello,
    Message,
    MessageReceived,
    Ping,
    Pong,
    Refused,
    SecureChannel,
)
from p2paid.errors import HandshakeError, LocalProtocolError, RemoteProtocolError

BOARD = board_keys(20)
S = ConnectionState


def replica(envelopes: int = 0, *, role: str = "node") -> MemoryReplica:
    out = MemoryReplica(role)
    out.add_board(BOARD)
    if envelopes:
        out.write(BOARD.board_id, FeedWriter(BOARD).many(envelopes))
    out.take_changed()
    return out


def state(conn: SyncConnection) -> ConnectionState:
    return conn.state  # (a call: mypy would narrow the attribute across calls)


class Link:
    """Two SyncConnections, bytes moved by hand; the test answers every event."""

    def __init__(self, *, now: float = 100.0, rate_limit: int | None = None) -> None:
        self.now = now
        self.a = SyncConnection(True, X25519PrivateKey.generate(), now=now)
        self.b = SyncConnection(False, X25519PrivateKey.generate(), now=now,
                                rate_limit=rate_limit)

    def move(self, src: SyncConnection, dst: SyncConnection) -> bytes:
        data = src.data_to_send(self.now)
        if data:
            dst.receive_data(data, self.now)
        return data

    def events(self, conn: SyncConnection) -> list[object]:
        out: list[object] = []
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            out.append(event)
            if isinstance(event, ConnectionEnded):
                break
        return out

    def handshake(self) -> None:
        self.move(self.a, self.b)
        self.move(self.b, self.a)
        assert isinstance(self.events(self.a)[0], Authenticated)
        self.move(self.a, self.b)
        assert isinstance(self.events(self.b)[0], Authenticated)


def test_the_table_has_one_way_forward_from_each_state() -> None:
    """The table is the whole happy path: each state but the ends is left by exactly one
    regular input, and APPLYING returns to SYNCING."""
    sources = [state for state, _ in TRANSITIONS]
    assert sorted(s.value for s in sources) == sorted({s.value for s in sources})
    assert S.CLOSED not in sources and S.ERROR not in sources
    assert set(TRANSITIONS.values()) == {S.AUTHENTICATED, S.GREETING, S.CHECKING_HELLO,
                                         S.SYNCING, S.APPLYING}


def test_a_whole_connection_walks_the_states_and_waits_for_each_answer() -> None:
    """Handshake -> admitted -> the peer's Hello (held until accepted) -> a batch (held,
    not received, until the driver reports it) -> Ack -> a Close ends it."""
    link = Link()
    ra, rb = replica(5), replica()
    assert state(link.a) is S.HANDSHAKING
    link.handshake()
    assert state(link.a) is S.AUTHENTICATED and state(link.b) is S.AUTHENTICATED
    link.a.start(ra, link.now)
    link.b.start(rb, link.now)
    assert state(link.a) is S.GREETING
    link.move(link.a, link.b)
    (hello,) = link.events(link.b)
    assert isinstance(hello, HelloReceived) and state(link.b) is S.CHECKING_HELLO
    assert link.b.next_event() is PAUSED  # nothing happens until the host answers
    link.b.accept_hello()
    assert state(link.b) is S.SYNCING
    assert [type(e) for e in link.events(link.b)] == [SyncEvent]  # linked
    link.move(link.b, link.a)  # b's Hello and Vector
    assert isinstance(link.events(link.a)[0], HelloReceived)
    link.a.accept_hello()
    link.events(link.a)
    link.move(link.a, link.b)  # a's Vector, then its envelopes
    (batch,) = link.events(link.b)
    assert isinstance(batch, BatchReceived) and len(batch.envelopes) == 5
    assert state(link.b) is S.APPLYING and rb.receive_calls == 0  # not applied in there
    assert link.b.next_event() is PAUSED
    link.b.batch_done(batch.token, rb.receive(batch.board_id, batch.envelopes))
    assert state(link.b) is S.SYNCING
    assert [e.kind for e in link.events(link.b) if isinstance(e, SyncEvent)] == ["received"]
    sent = _decode(link.b.data_to_send(link.now), link.a)
    assert [type(m) for m in sent] == [Ack]
    link.a.close(CloseReason.BYE)
    assert state(link.a) is S.CLOSED
    link.move(link.a, link.b)
    assert link.events(link.b) == [ConnectionEnded("peer closed: bye")]
    assert state(link.b) is S.CLOSED and link.b.peer_close_reason == "bye"


def _decode(data: bytes, receiver: SyncConnection) -> list[Message]:
    """Deliver ``data`` to ``receiver``'s channel itself (past its session): the messages."""
    channel: SecureChannel = receiver.channel
    channel.receive_data(data)
    out = []
    while isinstance(event := channel.next_event(), MessageReceived):
        out.append(event.message)
    return out


def test_an_answer_out_of_turn_is_a_local_error_and_leaves_error() -> None:
    link = Link()
    link.handshake()
    with pytest.raises(LocalProtocolError):
        link.a.batch_done(1, replica().receive(BOARD.board_id, []))
    assert state(link.a) is S.ERROR
    with pytest.raises(LocalProtocolError):
        link.b.accept_hello()  # no Hello pending
    assert state(link.b) is S.ERROR


def test_after_a_raise_the_connection_is_inert_and_can_still_say_why() -> None:
    """Garbage from the peer: the raise leaves ERROR; then input is ignored, events say
    it ended with the error's reason, and close() queues that reason for the peer."""
    link = Link()
    link.handshake()
    link.a.start(replica(), link.now)
    link.b.start(replica(), link.now)
    link.a.data_to_send(link.now)
    frame = len(b"\x00" * 40).to_bytes(2, "big") + b"\x00" * 40  # fails authentication
    with pytest.raises(RemoteProtocolError) as caught:
        link.b.receive_data(frame, link.now)
    assert state(link.b) is S.ERROR
    assert link.b.close_reason == caught.value.close_reason
    link.b.receive_data(b"anything", link.now)  # ignored
    assert link.b.next_event() == ConnectionEnded(caught.value.close_reason)
    link.b.close()
    assert [m for m in _decode(link.b.data_to_send(link.now), link.a)
            if isinstance(m, Close)] == [Close(caught.value.close_reason)]


def test_a_failed_write_stops_every_later_write() -> None:
    link = Link()
    link.handshake()
    link.b.send_failed()
    assert state(link.b) is S.ERROR
    link.b.close(CloseReason.BYE)
    assert link.b.data_to_send(link.now) == b""


def test_before_a_session_starts_the_connection_is_a_plain_channel() -> None:
    """Tools and hostile peers: without start(), every message comes out as is."""
    link = Link()
    link.handshake()
    link.a.inject(Ping(7))
    link.a.inject(Hello(1, "node", False, ()))
    link.move(link.a, link.b)
    assert link.events(link.b) == [RawMessage(Ping(7)), RawMessage(Hello(1, "node", False, ()))]


def test_a_relay_refusing_the_hello_closes_with_its_reason() -> None:
    link = Link()
    link.handshake()
    link.a.start(replica(), link.now, to_relay=True)
    link.b.start(replica(role="relay"), link.now)
    link.move(link.a, link.b)
    assert isinstance(link.events(link.b)[0], HelloReceived)
    link.b.close(CloseReason.TOKEN_REQUIRED)
    assert state(link.b) is S.CLOSED
    assert _decode(link.b.data_to_send(link.now), link.a) == [Close("token-required")]


def test_no_shared_board_ends_the_exchange() -> None:
    link = Link()
    link.handshake()
    other = MemoryReplica("node")
    other.add_board(board_keys(21))
    link.a.start(replica(), link.now)
    link.b.start(other, link.now)
    link.move(link.a, link.b)
    link.events(link.b)
    link.b.accept_hello()
    assert link.events(link.b) == [ConnectionEnded(CloseReason.NOTHING_SHARED)]
    assert link.b.close_reason == "no shared boards"


def test_an_injected_batch_and_its_ack_stay_out_of_the_session() -> None:
    """A test peer's forged batch: the Ack that answers it never reaches the session
    (which would take it for the acknowledgement of a batch it never sent)."""
    pair = ConnectionPair(replica(), replica())
    pair.run()
    env = FeedWriter(BOARD).next()
    pair.inject(pair.a, Envelopes(0, 1_000_000, (env.raw,)))
    pair.run()
    assert Ack(0, 1_000_000) in pair.a.received
    assert pair.a.conn.state is S.SYNCING and pair.b.conn.state is S.SYNCING


# ---------------------------------------------------------------------- timers


def test_the_handshake_has_a_deadline() -> None:
    link = Link(now=50.0)
    assert link.b.next_deadline() == 50.0 + connection.HANDSHAKE_TIMEOUT
    link.b.tick(59.9)
    with pytest.raises(HandshakeError):
        link.b.tick(60.0)
    assert state(link.b) is S.ERROR


def test_the_peer_must_say_hello_in_time() -> None:
    link = Link()
    link.handshake()
    start = link.now + 1
    link.b.start(replica(), start)
    assert link.b.next_deadline() == start + connection.HELLO_TIMEOUT
    link.b.tick(start + connection.HELLO_TIMEOUT - 0.1)
    with pytest.raises(RemoteProtocolError) as caught:
        link.b.tick(start + connection.HELLO_TIMEOUT)
    assert caught.value.close_reason == CloseReason.NO_HELLO


def test_keepalive_pings_and_idle_peers_are_dropped() -> None:
    """A side that sent nothing for KEEPALIVE_INTERVAL pings; a peer silent for
    IDLE_TIMEOUT is dropped. Only the times passed in count."""
    pair = ConnectionPair(replica(), replica(), now=1000.0)
    pair.run()
    a = pair.a.conn
    sent_at = pair.now
    assert a.next_deadline() == sent_at + connection.KEEPALIVE_INTERVAL
    pair.tick(sent_at + connection.KEEPALIVE_INTERVAL - 0.1)
    assert pair.idle()
    pair.tick(sent_at + connection.KEEPALIVE_INTERVAL)
    assert pair.pending(0) and pair.pending(1)  # both ping
    pair.run()  # (and answer with a Pong)
    assert [type(m) for m in pair.a.received[-2:]] == [Ping, Pong]
    with pytest.raises(RemoteProtocolError) as caught:
        a.tick(pair.now + connection.IDLE_TIMEOUT)
    assert caught.value.close_reason == CloseReason.IDLE


def test_a_ping_flood_is_dropped() -> None:
    pair = ConnectionPair(replica(), replica())
    pair.run()
    for nonce in range(connection.MAX_PINGS):
        pair.inject(pair.a, Ping(nonce))
    pair.run()
    assert pair.b.conn.state is S.SYNCING
    pair.inject(pair.a, Ping(99))
    with pytest.raises(RemoteProtocolError) as caught:
        pair.run()
    assert caught.value.close_reason == CloseReason.FLOOD


def test_a_rate_limited_peer_is_told_once_and_read_more_slowly() -> None:
    """Past its burst, the reader is asked to wait (``read_delay``) in proportion to what
    was read beyond it; the driver and the peer are told once."""
    link = Link(rate_limit=1000)
    link.handshake()
    link.a.start(replica(), link.now)
    link.b.start(replica(), link.now)
    link.a.inject(Refused(b"", "x", "y" * 900))
    for _ in range(4):
        link.a.inject(Refused(b"", "x", "y" * 900))
    data = link.a.data_to_send(link.now)
    link.b.receive_data(data, link.now)
    assert link.b.read_delay == pytest.approx((len(data) - 4000) / 1000)
    assert isinstance(link.b.next_event(), Throttled)
    told = [m for m in _decode(link.b.data_to_send(link.now), link.a) if isinstance(m, Refused)]
    assert [m.code for m in told] == [RefusedCode.RATE_LIMITED]
    link.a.inject(Ping(1))
    link.b.receive_data(link.a.data_to_send(link.now), link.now + 10)
    assert link.b.read_delay == 0.0
    assert not any(isinstance(e, Throttled) for e in link.events(link.b))


def test_token_bucket() -> None:
    bucket = TokenBucket(100, now=0.0)
    assert bucket.take(400, 0.0) == 0.0  # the burst
    assert bucket.take(50, 0.0) == pytest.approx(0.5)
    assert bucket.take(0, 10.0) == 0.0
