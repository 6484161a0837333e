"""The one rule for what a SPIFFE ID is (SPIFFE ID spec, section 2; ADR 0097), shared by the
data plane's peer reader, the contract's `expected_spiffe_ids` and the control plane's CA."""

from __future__ import annotations

import pytest

from tulle.proxyconfig.spiffe_id import MAX_LENGTH, is_spiffe_id, is_svid_id

VALID = [
    "spiffe://mesh.local/ns/shop/sa/api",
    "spiffe://cluster.local/ns/tulle-system/sa/control-plane",
    "spiffe://example.org/a",
    "spiffe://td_with_underscore-and.dots/x",
    "spiffe://1.2.3.4/ns/x/sa/y",  # digits and dots are a trust domain's characters
    "spiffe://mesh.local/Path/With/UPPER/case_and-dots.v1",  # path letters of either case
    "spiffe://mesh.local/...",  # three dots is a segment, not a dot segment
    "spiffe://mesh.local/.hidden/..x",
    "spiffe://" + "a" * 255 + "/p",
    "spiffe://mesh.local/" + "p" * (MAX_LENGTH - len("spiffe://mesh.local/")),
]

INVALID = [
    "",
    "spiffe://",
    "spiffe:///ns/shop/sa/api",  # no trust domain
    "spiffe://mesh.local/ns/shop/sa/api/",  # trailing slash: an empty segment
    "spiffe://mesh.local//ns/shop/sa/api",  # an empty segment
    "spiffe://mesh.local/ns/shop/sa/%61pi",  # percent-encoding
    "spiffe://mesh.local/ns/shop/sa/x/../api",  # dot segments
    "spiffe://mesh.local/ns/./sa/api",
    "spiffe://mesh.local/ns/shop/sa/..",
    "spiffe://mesh.local/.",
    "spiffe://MESH.LOCAL/ns/shop/sa/api",  # uppercase trust domain
    "spiffe://Mesh.local/ns/shop/sa/api",
    "spiffe://mesh.local:443/ns/shop/sa/api",  # a port
    "spiffe://a@mesh.local/ns/shop/sa/api",  # userinfo
    "spiffe://mesh.local/ns/shop/sa/api?x=1",  # a query
    "spiffe://mesh.local/ns/shop/sa/api#frag",  # a fragment
    "spiffe://mesh.local/ns/shop/sa/api\n",  # a trailing newline (`$` would let it through)
    "spiffe://mesh.local/ns/shop/sa/a pi",
    "spiffe://mesh.local/ns/shop/sa/ápi",  # non-ASCII
    "spiffe://mésh.local/ns/shop/sa/api",
    "spiffe://mesh.local/ns/shop/sa/a~pi",  # unreserved in RFC 3986, not in SPIFFE
    "SPIFFE://mesh.local/ns/shop/sa/api",  # the scheme as the spec writes it
    "https://mesh.local/ns/shop/sa/api",
    "spiffe:mesh.local/ns/shop/sa/api",
    "spiffe://" + "a" * 256 + "/p",  # trust domain over 255
    "spiffe://mesh.local/" + "p" * (MAX_LENGTH - len("spiffe://mesh.local/") + 1),  # over 2048
]


@pytest.mark.parametrize("uri", VALID)
def test_a_valid_spiffe_id_with_a_path(uri: str) -> None:
    assert is_spiffe_id(uri)
    assert is_svid_id(uri)


@pytest.mark.parametrize("uri", INVALID)
def test_no_valid_spiffe_id(uri: str) -> None:
    assert not is_spiffe_id(uri)
    assert not is_svid_id(uri)


@pytest.mark.parametrize("uri", ["spiffe://mesh.local", "spiffe://example.org"])
def test_a_trust_domains_own_id_is_a_spiffe_id_but_no_leafs(uri: str) -> None:
    """X509-SVID section 3.1: a leaf's ID has a path; `spiffe://td` names the trust domain."""
    assert is_spiffe_id(uri)
    assert not is_svid_id(uri)
