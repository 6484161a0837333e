"""The CA's workload IDs read alike with the data plane's rule (ADR 0097): everything the CA
parses or formats is a SPIFFE ID a proxy takes as an identity, and no string the shared rule
refuses is a workload ID here."""

from __future__ import annotations

import pytest
from tests.unit.proxyconfig.test_spiffe_id import INVALID

from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.proxyconfig.spiffe_id import is_svid_id


@pytest.mark.parametrize("uri", [
    "spiffe://cluster.local/ns/shop/sa/web",
    "spiffe://mesh.local/ns/tulle-system/sa/control-plane",
    "spiffe://a.b-c.d/ns/x1/sa/v1.2",
])
def test_a_workload_id_round_trips_and_is_one_the_data_plane_reads(uri: str) -> None:
    sid = SpiffeId.parse(uri)
    assert sid.uri == uri
    assert is_svid_id(sid.uri)


@pytest.mark.parametrize("uri", INVALID)
def test_what_is_no_spiffe_id_is_no_workload_id(uri: str) -> None:
    with pytest.raises(ValueError):
        SpiffeId.parse(uri)


@pytest.mark.parametrize(("domain", "ns", "sa"), [
    ("mesh.local", "shop\n", "web"),  # `match` with `$` took a trailing newline
    ("mesh.local\n", "shop", "web"),
    ("MESH.local", "shop", "web"),
    ("mesh.local:443", "shop", "web"),
    ("mesh.local", "%73hop", "web"),
    ("mesh.local", "..", "web"),
    ("mesh.local", "shop", ""),
])
def test_the_parts_are_checked_as_strictly(domain: str, ns: str, sa: str) -> None:
    with pytest.raises(ValueError):
        SpiffeId(domain, ns, sa)
