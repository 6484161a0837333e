"""Route header matches at the edges of what the proxy keeps of a request, through a real
proxy over HTTP/1.1 and h2c.

A match on `host` means the request's authority (HTTP/1 `Host`, HTTP/2 `:authority`): the
codecs keep it as the head's authority, not as a header field, so a `host` match used to
never match -- silently.  Framing and hop-by-hop fields (content-length, transfer-encoding,
connection, te, upgrade, ...) are the proxy's own and never reach routing: a match on them is
refused with its path instead of never matching.  A header the client nominates as hop-by-hop
(`Connection: x-canary`) is gone before routing, as it is for the upstream.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.integration.dataplane.test_route_matches import h1, mesh, stamped
from tests.support.h2peers import H2Client
from tests.support.proxy import RunningProxy, running_proxy

from tulle.proxyconfig import ConfigError, validate

RULES = [
    stamped("shop", {"path": {"value": "/echo"},
                     "headers": [{"name": "Host", "value": "shop.example"}]}),
    stamped("shop-re", {"path": {"value": "/echo"},
                        "headers": [{"type": "RegularExpression", "name": "host",
                                     "value": "(?i)api[0-9]*\\.example(:[0-9]+)?"}]}),
    stamped("canary", {"path": {"value": "/echo"},
                       "headers": [{"name": "x-canary", "value": "always"}]}),
    stamped("default", {"path": {"value": "/"}}),
]


async def h2_to(p: RunningProxy, authority: str) -> str:
    c = await H2Client.connect(p.port())
    try:
        sid, r = c.start("GET", "/echo", authority=authority)
        await asyncio.wait_for(r.done.wait(), 10)
    finally:
        c.close()
    assert r.status == 200, bytes(r.body)
    return str(json.loads(bytes(r.body))["headers"]["x-route"])


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_host_match_is_a_match_on_the_authority(origin: int, proto: str) -> None:
    async with running_proxy(mesh(origin, RULES)) as p:

        async def send(host: str) -> str:
            if proto == "h1":
                return await h1(p, "GET", "/echo", {"host": host})
            return await h2_to(p, host)

        assert await send("shop.example") == "shop"
        assert await send("API7.example:8080") == "shop-re"
        assert await send("other.example") == "default"


async def test_a_header_the_client_names_hop_by_hop_is_not_routed_on(origin: int) -> None:
    async with running_proxy(mesh(origin, RULES)) as p:
        assert await h1(p, "GET", "/echo", {"x-canary": "always"}) == "canary"
        assert await h1(p, "GET", "/echo", {"x-canary": "always",
                                            "connection": "x-canary"}) == "default"


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "connection",
                                  "keep-alive", "proxy-connection", "te", "upgrade",
                                  "http2-settings", "expect"])
def test_a_match_on_a_field_the_proxy_consumes_is_refused_with_its_path(name: str) -> None:
    cfg = mesh(1, [stamped("r", {"headers": [{"name": name, "value": "x"}]})])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    (e,) = err.value.errors
    assert e.path == "route_tables[0].virtual_hosts[0].rules[0].matches[0].headers[0].name"
    assert "never reaches routing" in str(e)
