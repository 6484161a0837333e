"""GRPCRoute method matches become one path regex: each side must keep its own meaning.

ADR 0101: a regular expression for the service or the method was pasted into
`/<service>/<method>` as written, so an alternation at its top level took the rest of the path
with it: `method: Get|List` compiled to `/shop.Cart/Get|List`, which matches `/shop.Cart/Get`
and the path `List`, never `/shop.Cart/List` (those calls silently went to another rule or
404), and `service: shop.Cart|.*` matched any path ending in `/Get`, any service's `Get`.  And
`^shop\\.Cart$` put its anchors in the middle of the path regex: it matched nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tulle.controlplane.compiler.matches import grpc_matches
from tulle.proxyconfig.regex import compile_safe


def routed(method: dict[str, Any], path: bytes) -> bool:
    problems: list[str] = []
    (m,) = grpc_matches([{"method": method}], "rules[0].matches", problems)
    assert problems == [] and m.path.type == "RegularExpression"
    return compile_safe(m.path.value).fullmatch(path) is not None


@pytest.mark.parametrize(("method", "taken", "not_taken"), [
    ({"type": "RegularExpression", "service": "shop\\.Cart", "method": "Get|List"},
     [b"/shop.Cart/Get", b"/shop.Cart/List"], [b"List", b"/shop.Cart/Put", b"/x/List"]),
    ({"type": "RegularExpression", "service": "shop\\.Cart|shop\\.Bag", "method": "Get"},
     [b"/shop.Cart/Get", b"/shop.Bag/Get"], [b"/shop.Cart", b"/shop.Admin/Get", b"/a/Get"]),
    ({"type": "RegularExpression", "service": "shop\\.Cart|.*", "method": "Get"},
     [b"/shop.Cart/Get", b"/shop.Admin/Get"], [b"/shop.Cart", b"/shop.Admin/Delete"]),
    ({"type": "RegularExpression", "method": "Get|List"},
     [b"/any.Svc/Get", b"/any.Svc/List"], [b"List", b"/a/b/List"]),
    # Anchors at the ends of a side are redundant (a side is matched whole) but, pasted into
    # the middle of the path regex, made it match nothing: accepted and never routed.
    ({"type": "RegularExpression", "service": "^shop\\.Cart$", "method": "^(Get|List)$"},
     [b"/shop.Cart/Get", b"/shop.Cart/List"], [b"/shop.Cart/Put"]),
    ({"type": "RegularExpression", "service": "^a|b$", "method": "Get\\$"},
     [b"/a/Get$", b"/b/Get$"], [b"/a/Get", b"/ab/Get$"]),
    ({"type": "RegularExpression", "service": "shop\\.v[0-9]+\\.Ratings"},
     [b"/shop.v1.Ratings/Get"], [b"/shop.v1.Ratings", b"/shop.vx.Ratings/Get"]),
])
def test_each_side_of_a_grpc_regex_match_means_what_it_says(
        method: dict[str, Any], taken: list[bytes], not_taken: list[bytes]) -> None:
    for path in taken:
        assert routed(method, path), path
    for path in not_taken:
        assert not routed(method, path), path
