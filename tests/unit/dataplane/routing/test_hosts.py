"""The host index: a patched index holds what one built from scratch holds."""

from __future__ import annotations

import msgspec

from tulle.dataplane.routing.hosts import HostIndex
from tulle.dataplane.routing.router import CompiledHost
from tulle.dataplane.routing.table import HostEntry
from tulle.proxyconfig.model import VirtualHost


def entry(name: str, *domains: str) -> HostEntry:
    vh = msgspec.convert({"name": name, "domains": list(domains)}, VirtualHost)
    return HostEntry(vh, CompiledHost(name, []), [])


def view(index: HostIndex) -> tuple[object, ...]:
    """What lookups read, by host name (the suffix/prefix lists longest first)."""
    return ({d: h.name for d, h in index.exact.items()},
            [(s, h.name) for s, h in index.suffix], [(p, h.name) for p, h in index.prefix],
            None if index.any is None else index.any.name, index.contested)


def test_domains_are_sorted_by_kind_lower_case_and_once() -> None:
    e = entry("h", "A.ns", "a.ns", "*.Example.com", "api.*", "*")
    assert e.exact == ("a.ns",) and e.suffix == (".example.com",) and e.prefix == ("api.",)
    assert e.any and e.domains == ("a.ns", "*.example.com", "api.*", "*")


def test_a_patch_swaps_the_changed_hosts_domains() -> None:
    a, b, c = entry("a", "a.ns", "*.a.ns"), entry("b", "b.ns", "b.*"), entry("c", "*")
    index = HostIndex.build([a, b, c])
    b2 = entry("b2", "b.ns", "*.bb.ns", "bb.*")
    patched = index.patched([a, b2, c], [b], [b2])
    assert view(patched) == view(HostIndex.build([a, b2, c]))
    assert patched.exact["a.ns"] is a.host and index.exact["b.ns"] is b.host  # old one intact
    assert [s for s, _ in patched.suffix] == [".bb.ns", ".a.ns"]  # longest first
    gone = patched.patched([a, b2], [c], [])
    assert gone.any is None and view(gone) == view(HostIndex.build([a, b2]))


def test_a_contested_domain_rebuilds_in_table_order() -> None:
    one, two = entry("one", "dup.ns", "*"), entry("two", "dup.ns", "*", "two.ns")
    index = HostIndex.build([one, two])
    assert index.contested == frozenset({"dup.ns", "*"}) and index.exact["dup.ns"] is one.host
    without = index.patched([two], [one], [])
    assert without.exact["dup.ns"] is two.host and without.any is two.host
    assert not without.contested
    # An added host that claims a domain already held makes it contested: built in order.
    zero = entry("zero", "two.ns")
    again = without.patched([zero, two], [], [zero])
    assert again.exact["two.ns"] is zero.host and again.contested == frozenset({"two.ns"})
    wild, wild2 = entry("wild", "*.x.ns"), entry("wild2", "*.x.ns")
    both = HostIndex.build([wild]).patched([wild, wild2], [], [wild2])
    assert both.contested == frozenset({"*.x.ns"}) and both.suffix[0][1] is wild.host
