"""A request's query string is split once however many query conditions a host tries.

Each query condition used to split the whole query itself: a 64 KiB query of 16,000
parameters cost 8 ms per condition (15 ms with escaped names), so a host with a dozen
query-matched rules spent ~0.1-0.2 s of event loop on one request that matched none of them.
Counted here (deterministically) by how often the query is split, not by timing."""

from __future__ import annotations

import pytest
from tests.unit.dataplane.routing.test_router import at, router

from tulle.dataplane.routing import match


def test_twenty_query_conditions_split_a_hostile_query_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted by the one escaped name at the query's end: each split decodes it once.  (The
    # decoder is patched, not `parse_query`: the compiled module calls its own functions
    # directly, ADR 0052, but imports the decoder at each escape it meets, ADR 0068.)
    import urllib.parse

    splits = 0
    real = urllib.parse.unquote_to_bytes

    def counting(s: bytes) -> bytes:
        nonlocal splits
        splits += 1
        return real(s)

    monkeypatch.setattr(urllib.parse, "unquote_to_bytes", counting)
    r = router([{"name": "any", "rules": [
        {"matches": [{"path": {"value": "/"}, "query_params": [{"name": f"p{i}", "value": "x"}]}],
         "backends": [{"cluster": f"c{i}"}]} for i in range(20)] + [
        {"backends": [{"cluster": "default"}]}]}])
    query = b"a=1&" * 16000 + b"%70%31=y"  # p1 (escaped) with the wrong value
    for _ in range(3):
        route = r.route(at("h", "/x?" + query.decode()))
        assert route is not None and route.clusters == ("default",)
    assert splits == 3  # once per request, not once per condition (20)
    route = r.route(at("h", "/x?p7=x&p7=y"))
    assert route is not None and route.clusters == ("c7",)


def test_first_values_as_before() -> None:
    q = b"a=1&b=%32&a=3&%61=4&c&=e&d=x+y&e=%zz"
    assert [match.first_query_value(q, n) for n in (b"a", b"b", b"c", b"d", b"e", b"", b"z")] \
        == [b"1", b"2", b"", b"x+y", b"%zz", b"e", None]
