"""One host validator for every address p2paid parses (SPEC 3.2 and 14.1): relay
addresses, invite relay hints, ``--peer`` / ``--listen`` / ``--public``.

Hosts that trio's resolver cannot even encode (``a..b``, a 64-character label) once
stopped every member's node; they must now be refused where they are parsed, with a
clear one-line error of the project's tree.
"""

from __future__ import annotations

import base64
import hashlib
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2paid.core.hosts import HostError, address_key, normalize_host
from p2paid.core.invite import Invite
from p2paid.core.relayaddr import RelayAddress, decode_token, encode_token, key_checksum
from p2paid.errors import InviteError, UsageError
from p2paid.net.tcp import parse_address

KEY = bytes(range(32))
KEY_TEXT = base64.b32encode(KEY).decode().rstrip("=").lower()  # the old form: no checksum
CHECKED_KEY_TEXT = base64.b32encode(KEY + key_checksum(KEY)).decode().rstrip("=").lower()

BAD_HOSTS = {
    "empty label": "a..b",
    "label of 64 characters": "a" * 64 + ".example",
    "space": "bad host",
    "empty": "",
    "leading hyphen": "-relay.example",
    "trailing hyphen": "relay-.example",
    "underscore": "re_lay.example",
    "all-numeric last label": "1.2.3",
    "octal-looking IPv4": "010.0.0.1",
    "name over 253 characters": ".".join(["a" * 60] * 5),
    "slash": "relay.example/x",
    "at sign": "user@relay.example",
    "IPv6 zone": "fe80::1%eth0",
    "not IPv6": "1:2:3",
    "brackets around IPv4": "[10.0.0.1]",
    "control character": "relay\x00.example",
    "dot alone": ".",
}


@pytest.mark.parametrize("host", list(BAD_HOSTS.values()), ids=list(BAD_HOSTS))
def test_bad_hosts_are_refused_everywhere(host: str) -> None:
    """The same hosts are refused by the validator, in relay addresses, in invite hints
    and in HOST:PORT, each with a one-line error of the project's tree."""
    with pytest.raises(HostError) as info:
        normalize_host(host)
    assert "\n" not in str(info.value)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    with pytest.raises(InviteError):
        RelayAddress.parse(f"p2paid-relay://{shown}:7447/{KEY_TEXT}")
    with pytest.raises(InviteError):
        RelayAddress(host, 7447, KEY)
    with pytest.raises(UsageError):
        parse_address(f"{shown}:7446")


@pytest.mark.parametrize(("host", "normal"), [
    ("relay.example", "relay.example"),
    ("Relay.Example.", "relay.example"),
    ("b\u00fccher.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
    ("localhost", "localhost"),
    ("10.0.0.9", "10.0.0.9"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("[::1]", "::1"),
    ("x-1.example", "x-1.example"),
    ("1.2.3.example", "1.2.3.example"),
])
def test_valid_hosts_are_normalised(host: str, normal: str) -> None:
    assert normalize_host(host) == normal


def test_a_name_of_exactly_253_characters_is_a_host() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253 and normalize_host(name) == name
    with pytest.raises(HostError):
        normalize_host(name + "b")


@given(st.text(max_size=300))
def test_any_text_is_a_host_or_a_host_error(text: str) -> None:
    try:
        host = normalize_host(text)
    except HostError:
        return
    assert normalize_host(host) == host  # the normal form is stable
    assert host.isascii() and " " not in host


def test_parse_address_forms() -> None:
    assert parse_address("10.0.0.5:7446") == ("10.0.0.5", 7446)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address("[::1]", 7446) == ("::1", 7446)
    assert parse_address("Node.Example", 7446) == ("node.example", 7446)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("host", "host:", "host:x", "host:70000", "[::1", "[::1]x", "a..b:1",
                "host:+1", "host:\u0661"):
        with pytest.raises(UsageError):
            parse_address(bad)


def test_ipv6_without_brackets_is_refused_with_the_way_to_write_it() -> None:
    """``::1:0`` could be ``::1`` port 0 or the address ``::1:0``: say how to write it."""
    for text, hint in (("::1:0", "[::1]:0 or [::1:0]:PORT"), ("::1", "[::1]:PORT"),
                       ("::::", "e.g. [::1]:7446"),
                       ("fe80::1:7446", "[fe80::1]:7446 or [fe80::1:7446]:PORT")):
        with pytest.raises(UsageError, match="write an IPv6 address in brackets") as caught:
            parse_address(text, 7446)
        assert str(caught.value).endswith(hint), (text, caught.value)


def test_address_key_groups_ipv6_by_64_and_maps_ipv4() -> None:
    assert address_key("203.0.113.5") == "203.0.113.5"
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1")
    assert address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::5") != address_key("2001:db8:1:2::5")
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("?") == "?"


# ---------------------------------------------------------------------- relay addresses


def test_relay_address_with_token_round_trips_and_old_form_still_parses() -> None:
    token = os.urandom(20)
    plain = RelayAddress.parse(f"p2paid-relay://relay.example:7447/{KEY_TEXT}")
    assert plain.token is None and not plain.checked
    with_token = plain.with_token(token)
    text = str(with_token)
    assert text == (f"p2paid-relay://relay.example:7447/{CHECKED_KEY_TEXT}"
                    f"?token={encode_token(token)}")
    assert RelayAddress.parse(text) == with_token and RelayAddress.parse(text).checked
    assert RelayAddress.parse(text.replace("token=", "token=").upper().replace(
        "P2PAID-RELAY://", "p2paid-relay://")).token == token
    assert with_token.without_token_text() == str(plain)
    assert encode_token(token) not in repr(with_token)  # repr never shows a secret
    v6 = RelayAddress("2001:db8::1", 7447, KEY, token)
    assert RelayAddress.parse(str(v6)) == v6


@pytest.mark.parametrize("suffix", ["?token=", "?token=!!", "?tok=abc", "?token=aa&x=1",
                                    "?token=" + "a" * 200, "?token=abc#frag"])
def test_bad_relay_tokens_are_refused(suffix: str) -> None:
    with pytest.raises(InviteError):
        RelayAddress.parse(f"p2paid-relay://relay.example:7447/{KEY_TEXT}{suffix}")


def test_token_text_codec() -> None:
    token = os.urandom(64)
    assert decode_token(encode_token(token)) == token
    with pytest.raises(InviteError):
        decode_token(encode_token(os.urandom(65)))
    with pytest.raises(InviteError):
        decode_token("")


@pytest.mark.parametrize("address", [
    f"p2paid-relay://2001:db8::1:7447/{KEY_TEXT}",  # IPv6 without brackets
    f"p2paid-relay://[2001:db8::1]/{KEY_TEXT}",  # no port
    f"p2paid-relay://[2001:db8::1]:/{KEY_TEXT}",
    f"p2paid-relay://relay.example:7447/{KEY_TEXT[:-1]}",  # key too short
    f"p2paid-relay://relay.example:7447/{KEY_TEXT}=",
    f"p2paid-relay://relay.example:0/{KEY_TEXT}",
])
def test_malformed_relay_addresses(address: str) -> None:
    with pytest.raises(InviteError):
        RelayAddress.parse(address)


# ---------------------------------------------------------------------- invites


def _hand_made_invite(relays: list[object]) -> str:
    body = b"\x01" + msgpack.packb([os.urandom(32), "Camp", relays], use_bin_type=True)
    check = hashlib.sha256(b"p2paid invite\x00" + body).digest()[:4]
    return "p2paid:" + base64.b32encode(body + check).decode().rstrip("=").lower()


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example", "bad host"])
def test_an_invite_with_a_bad_relay_hint_is_refused_with_a_clear_error(host: str) -> None:
    """A hostile or damaged invite whose relay hint does not parse is refused at once
    (nothing is joined), naming the hint; it can never crash a node later."""
    good = str(RelayAddress("relay.example", 7447, KEY))
    uri = _hand_made_invite([good, f"p2paid-relay://{host}:7447/{KEY_TEXT}"])
    with pytest.raises(InviteError) as info:
        Invite.from_uri(uri)
    assert "relay hint 2" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InviteError):
        Invite(os.urandom(32), "Camp", (f"p2paid-relay://{host}:7447/{KEY_TEXT}",))


def test_invite_hints_are_normalised() -> None:
    invite = Invite.from_uri(_hand_made_invite(
        [f"  p2paid-relay://Relay.Example.:7447/{KEY_TEXT.upper()}"]))
    assert invite.relays == (f"p2paid-relay://relay.example:7447/{CHECKED_KEY_TEXT}",)


def test_oversized_invites_and_containers_are_refused() -> None:
    with pytest.raises(InviteError, match="longer than"):
        Invite.from_uri("p2paid:" + "a" * 9000)
    # An array header claiming a million entries is refused by the unpacker's limits.
    body = b"\x01\x93\xc4\x20" + bytes(32) + b"\xa1x\xdd\x00\x0f\x42\x40"
    check = hashlib.sha256(b"p2paid invite\x00" + body).digest()[:4]
    uri = "p2paid:" + base64.b32encode(body + check).decode().rstrip("=").lower()
    with pytest.raises(InviteError, match="malformed"):
        Invite.from_uri(uri)


@given(st.text(max_size=200))
def test_any_text_after_the_scheme_is_a_relay_address_or_an_invite_error(text: str) -> None:
    try:
        address = RelayAddress.parse("p2paid-relay://" + text)
    except InviteError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert RelayAddress.parse(str(address)) == address


@given(st.text(max_size=80))
def test_any_text_is_host_port_or_a_usage_error(text: str) -> None:
    try:
        host, port = parse_address(text, 7446)
    except UsageError:
        return
    assert normalize_host(host) == host and 0 <= port <= 65535
