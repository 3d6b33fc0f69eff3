"""Pairing invites and phone sessions: counted, expiring, revocable, stored hashed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2paid.web.tokens import csrf_token, csrf_valid, new_token, token_hash
from p2paid.web.webstore import PairingError, WebStore

BOARD = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_invite_is_counted_and_then_used_up(tmp_path: Path) -> None:
    with WebStore(tmp_path) as web:
        token, row = web.create_invite(BOARD, uses=2)
        assert row.uses_left == 2 and web.redeem(token).uses_left == 1
        assert web.redeem(token).uses_left == 0
        with pytest.raises(PairingError, match="used up"):
            web.redeem(token)


def test_an_invite_expires_and_can_be_revoked(tmp_path: Path) -> None:
    clock = Clock()
    with WebStore(tmp_path, clock=clock) as web:
        token, _ = web.create_invite(BOARD, uses=5, expires_in=3600)
        clock.now += 3600
        with pytest.raises(PairingError, match="expired"):
            web.redeem(token)
        other, row = web.create_invite(BOARD, uses=5)
        assert web.revoke_invite(row.id) and not web.revoke_invite("nothing")
        with pytest.raises(PairingError, match="revoked"):
            web.redeem(other)
        with pytest.raises(PairingError, match="not known"):
            web.redeem(new_token())
        assert [i.revoked for i in web.invites()] == [False, True]


def test_tokens_are_stored_hashed_only(tmp_path: Path) -> None:
    with WebStore(tmp_path) as web:
        invite, _ = web.create_invite(BOARD)
        session = web.create_session("dev1", BOARD)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for token in (invite, session):
        assert token.encode() not in raw
    assert (tmp_path / "web.sqlite3").stat().st_mode & 0o077 == 0


def test_the_last_use_goes_to_one_phone_only(tmp_path: Path) -> None:
    """Eight phones (threads with their own connection) race for one use."""
    with WebStore(tmp_path) as web:
        token, _ = web.create_invite(BOARD, uses=1)
    won: list[bool] = []

    def phone() -> None:
        with WebStore(tmp_path) as mine:
            try:
                mine.redeem(token)
                won.append(True)
            except PairingError:
                won.append(False)

    threads = [threading.Thread(target=phone) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_sessions_end_one_by_one_or_per_device(tmp_path: Path) -> None:
    with WebStore(tmp_path) as web:
        a = web.create_session("dev1", BOARD)
        b = web.create_session("dev1", BOARD)
        c = web.create_session("dev2", BOARD)
        session = web.session(a)
        assert session is not None and session.device_id == "dev1"
        web.end_session(a)
        assert web.session(a) is None and web.session(b) is not None
        assert web.end_device("dev1") == 1
        assert web.session(b) is None and web.session(c) is not None
        assert web.session(None) is None and web.session("x" * 500) is None


def test_csrf_tokens_belong_to_their_session() -> None:
    session, other = new_token(), new_token()
    token = csrf_token(session)
    assert csrf_valid(session, token)
    assert not csrf_valid(other, token) and not csrf_valid(session, None)
    assert not csrf_valid(None, token) and not csrf_valid(session, token[:-1])
    assert token_hash(session) != token_hash(other)


@given(st.text(max_size=100), st.text(max_size=100))
def test_csrf_check_never_crashes(session: str, submitted: str) -> None:
    assert csrf_valid(session, submitted) in (True, False)


def test_a_limiter_allows_a_burst_then_its_rate() -> None:
    from p2paid.web.limits import Limiter

    limit = Limiter(per_minute=6, burst=3)
    assert [limit.allow("phone", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("other", 0.0)  # keys are apart
    assert not limit.allow("phone", 5.0) and limit.allow("phone", 10.0)


@given(st.lists(st.text(max_size=8), max_size=300))
def test_a_limiter_remembers_a_bounded_number_of_keys(keys: list[str]) -> None:
    from p2paid.web.limits import Limiter

    limit = Limiter(per_minute=60, burst=1, max_keys=16)
    for i, key in enumerate(keys):
        limit.allow(key, float(i))
    assert len(limit) <= 16
