"""Is the trace honest about mTLS?  Two real proxies with mesh mTLS in ADR 0030's shape (the
client's cluster with an SVID, a trust bundle and expected SPIFFE IDs; the server's STRICT
filter chain), an identity-based DENY rule on the server, and the trace of each request next
to what the proxies really do with it: forwarded over mTLS with the client's identity, 403
from the named policy and rule, 503 for a server identity the client does not expect, refused
for a plaintext client against STRICT.  No key material appears in the trace.

Built from static configs (not the compiler), so it does not wait for the compiler's automatic
mTLS: the trace reads whatever the snapshots say.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import msgspec
from tests.support.ca import TestCA
from tests.support.controlplane import named_origin
from tests.support.proxy import RunningProxy, running_proxy

from tulle.cli.explain import build_request, explain
from tulle.cli.explain.render import render
from tulle.proxyconfig.model import ProxyConfig

SERVER_ID = "spiffe://mesh.local/ns/shop/sa/api"
CLIENT_ID = "spiffe://mesh.local/ns/shop/sa/web"
MTLS = {"identity": "svid", "trust_bundle": "mesh", "min_version": "1.3"}
DENY_WEB_ADMIN = {"type": "Authorization", "policies": [
    {"name": "shop/web-no-admin", "action": "DENY", "rules": [
        {"sources": [{"principals": ["spiffe://mesh.local/ns/shop/sa/other"]}]},
        {"sources": [{"principals": [CLIENT_ID]}], "operations": [{"paths": ["/admin*"]}]}]}]}


def server_config(ca: TestCA, app: int) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "node": {"name": "api-0", "namespace": "shop"},
        "listeners": [{"name": "inbound|app", "port": 0, "direction": "inbound",
                       "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                          "tls": MTLS, "route_table": "inbound"}]}],
        "route_tables": [{"name": "inbound", "virtual_hosts": [{"name": "inbound", "rules": [
            {"name": "inbound", "backends": [{"cluster": "app"}],
             "filters": [DENY_WEB_ADMIN]}]}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
        "identities": [ca.identity("svid", SERVER_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


def client_config(ca: TestCA, server_port: int, expected: str | None) -> dict[str, Any]:
    tls = {**MTLS, "expected_spiffe_ids": [expected]} if expected else None
    cluster: dict[str, Any] = {"name": "api", "endpoints": [
        {"address": "127.0.0.1", "port": server_port,
         "metadata": {"namespace": "shop", "workload": "api-0", "service": "api"}}]}
    if tls:
        cluster["tls"] = tls
    return {
        "admin": {"port": 0},
        "node": {"name": "web-0", "namespace": "shop"},
        "listeners": [{"name": "outbound", "port": 0, "route_table": "outbound"}],
        "route_tables": [{"name": "outbound", "virtual_hosts": [
            {"name": "api.shop:80", "domains": ["api", "api.shop"],
             "rules": [{"name": "api", "backends": [{"cluster": "api"}]}]}]}],
        "clusters": [cluster],
        "identities": [ca.identity("svid", CLIENT_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


class Pair:
    def __init__(self, client: RunningProxy, configs: dict[tuple[str, str], ProxyConfig]
                 ) -> None:
        self.client = client
        self.configs = configs

    def trace(self, path: str) -> dict[str, Any]:
        def lookup(ns: str, name: str) -> tuple[ProxyConfig, str] | None:
            cfg = self.configs.get((ns, name))
            return (cfg, "acked") if cfg is not None else None

        ids = {("shop", "api-0"): SERVER_ID, ("shop", "web-0"): CLIENT_ID}
        return explain(build_request("shop/web-0", "", "api", path, "GET", []), lookup,
                       lambda ns, name: ids[(ns, name)])

    async def send(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(
                self.client.url("outbound", path), headers={"Host": "api"}) as r:
            return r.status, await r.text()


@asynccontextmanager
async def pair(expected: str | None = SERVER_ID) -> AsyncIterator[Pair]:
    ca = TestCA()
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(named_origin("app"))
        raw_server = server_config(ca, app)
        server = await stack.enter_async_context(running_proxy(raw_server))
        port = server.port("inbound|app")
        raw_client = client_config(ca, port, expected)
        client = await stack.enter_async_context(running_proxy(raw_client))
        raw_server["listeners"][0]["port"] = port  # the snapshot as it runs
        configs = {("shop", "api-0"): msgspec.convert(raw_server, ProxyConfig),
                   ("shop", "web-0"): msgspec.convert(raw_client, ProxyConfig)}
        yield Pair(client, configs)


def _no_keys(doc: dict[str, Any]) -> None:
    for text in (json.dumps(doc), render(doc)):
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text


async def test_mtls_hop_identity_rule_and_policy_match_what_the_proxies_do() -> None:
    async with pair() as p:
        doc = p.trace("/hello")
        ep = doc["hops"][0]["endpoints"][0]
        assert (ep["client"]["mode"], ep["server"]["chain"], ep["mtls"]) == (
            "mTLS", "mtls", "mTLS")
        assert ep["server"]["accepts"] == "STRICT (mTLS only)"
        assert ep["peerIdentity"] == CLIENT_ID
        assert ep["result"] == "forwarded"
        status, body = await p.send("/hello")
        assert status == 200 and json.loads(body)["name"] == "app"

        doc = p.trace("/admin/users")
        a = doc["hops"][0]["endpoints"][0]["authorization"]
        assert (a["policy"], a["rule"], a["allowed"]) == ("shop/web-no-admin", 1, False)
        assert await p.send("/admin/users") == (403, a["body"])
        _no_keys(doc)


async def test_an_unexpected_server_identity_is_traced_as_the_client_refuses_it() -> None:
    async with pair("spiffe://mesh.local/ns/shop/sa/someone-else") as p:
        doc = p.trace("/hello")
        ep = doc["hops"][0]["endpoints"][0]
        assert (ep["result"], ep["status"]) == ("refused_by_client", 503)
        status, body = await p.send("/hello")
        assert status == 503 and "is not one expected" in body
        _no_keys(doc)


async def test_a_plaintext_client_against_strict_is_traced_as_refused() -> None:
    async with pair(None) as p:
        doc = p.trace("/hello")
        ep = doc["hops"][0]["endpoints"][0]
        assert ep["client"]["mode"] == "plaintext"
        assert (ep["result"], ep["server"]["chain"]) == ("refused_by_server", None)
        status, _ = await p.send("/hello")
        assert status in (502, 503)  # the server closed the connection: no chain takes it
