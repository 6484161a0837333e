"""Session tokens: what round-trips, and every hostile value that must decode to nothing."""

from __future__ import annotations

import base64
import struct

from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.filters.session_token import (
    TOKEN_CHARS,
    cookie_value,
    decode,
    encode,
    endpoint_id,
)

NOW = 1_800_000_000.0
EP = endpoint_id("svc-a", "10.0.0.1:8080")


def test_a_token_round_trips_and_hides_the_address() -> None:
    tok = encode(EP, int(NOW) + 60, int(NOW) + 3600)
    assert len(tok) == TOKEN_CHARS
    assert b"10.0.0.1" not in base64.urlsafe_b64decode(tok + b"=")
    got = decode(tok, NOW)
    assert got is not None
    assert (got.endpoint, got.idle_expiry, got.absolute_expiry) == (
        EP, int(NOW) + 60, int(NOW) + 3600)
    assert decode(encode(EP, 0, 0), NOW) is not None  # no expiry at all


def test_ids_differ_by_cluster_and_endpoint() -> None:
    assert endpoint_id("svc-b", "10.0.0.1:8080") != EP  # another cluster's endpoint
    assert endpoint_id("svc-a", "10.0.0.1:8081") != EP
    assert endpoint_id("svc-a", "10.0.0.1:8080") == EP  # the same in every process


def test_expired_tokens_decode_to_nothing() -> None:
    assert decode(encode(EP, int(NOW), 0), NOW) is None  # idle expiry reached
    assert decode(encode(EP, 0, int(NOW) - 1), NOW) is None  # absolute expiry passed
    assert decode(encode(EP, int(NOW) + 10, int(NOW) - 1), NOW) is None  # either one ends it


def test_hostile_values_decode_to_nothing() -> None:
    good = encode(EP, 0, 0)
    for bad in (b"", b"garbage", good[:-1], good + b"A", b"A" * 10_000, good[:-1] + b"=",
                good[:-1] + b"+", good[:-1] + b"/", b"\x00" * TOKEN_CHARS,
                "é".encode() * 11 + b"A", b"%" * TOKEN_CHARS):
        assert decode(bad, NOW) is None, bad
    other_version = base64.urlsafe_b64encode(struct.pack(">B8sII", 2, EP, 0, 0)).rstrip(b"=")
    assert decode(other_version, NOW) is None
    # The last character's two unused bits: set, it would be a second spelling of the token.
    assert good[-1:] == b"A" and decode(good[:-1] + b"B", NOW) is None


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_not_without_raising(value: bytes) -> None:
    decode(value, NOW)


def test_cookie_values() -> None:
    assert cookie_value(b"a=1; tulle-session=XYZ; b=2", b"tulle-session") == b"XYZ"
    assert cookie_value(b'tulle-session="XYZ"', b"tulle-session") == b"XYZ"
    assert cookie_value(b"tulle-session-x=1;tulle-session=2", b"tulle-session") == b"2"
    assert cookie_value(b"Tulle-Session=1", b"tulle-session") is None  # names are exact
    assert cookie_value(b"tulle-session", b"tulle-session") is None
    assert cookie_value(b"", b"tulle-session") is None
    assert cookie_value(b"a=1; tulle-session=1; tulle-session=2", b"tulle-session") == b"1"
