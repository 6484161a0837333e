"""Version skew found with real older builds (ADR 0122), replayed against a real control-plane
process by a stream client that announces what such a build announced.

The audit ran real proxies of older commits; CI cannot rely on the repository's history, so
these tests play the older build's side by hand: its hello (the features it lacks) and the
bytes it would have been sent, judged the way its decoder judges them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.integration.controlplane.test_negotiation import RawProxy, proxies, tulle
from tests.support.controlplane import apply, auth, control_plane_process, eventually, named_origin
from tests.support.proxy import free_port
from tests.support.resources import NS, permissive_mesh, service, workload

from tulle.proxyconfig.delta import Delta
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ack, DeltaMsg, Hello, Snapshot, WorkloadInfo, encode

WITHOUT_STICKY = [f for f in SUPPORTED if f != "session-persistence"]
"""What a proxy built before ADR 0058 announced (commit 7a807005 announced 40 features, this
one of them missing among its filters)."""


def sticky_route(name: str, *prefixes: str) -> dict[str, Any]:
    """An HTTPRoute on `api` whose rules keep a client on one endpoint by cookie."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                     "port": 80}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": p}}],
                                "sessionPersistence": {"sessionName": "sid"},
                                "backendRefs": [{"name": "api", "port": 80}]}
                               for p in prefixes]}}


def outbound_rules(config: dict[str, Any], host: str) -> list[dict[str, Any]]:
    (table,) = [t for t in config["route_tables"] if t["name"] == "outbound"]
    (vhost,) = [v for v in table["virtual_hosts"] if v["name"] == host]
    rules: list[dict[str, Any]] = vhost["rules"]
    return rules


async def test_a_filter_an_older_proxy_cannot_decode_is_withheld_not_nacked(
        tmp_path: Path) -> None:
    """A `SessionPersistence` filter was sent to a proxy that does not announce
    `session-persistence`: a real build from before it (7a807005) NACKed the snapshot with
    `filters[0].type: must be one of ...`, and every later one, so it took no change at all (a
    new Service never reached it).  The feature's `drops` are withheld like a field: the
    entry is left out (the rule serves, without affinity) and `get proxies` lists it."""
    async with named_origin("app") as app, control_plane_process("memory", tmp_path) as cp:
        status, body = await apply(
            cp.api, workload("old-0", free_port(), app, free_port(), app="web"),
            workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"), sticky_route("cart", "/cart"), permissive_mesh())
        assert status == 200, body
        old = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="old-0", namespace=NS), features=WITHOUT_STICKY),
            cp.api)
        try:
            msg = await old.next()
            assert isinstance(msg, Snapshot), msg
            assert b"SessionPersistence" not in bytes(msg.config)
            rules = outbound_rules(msgspec.json.decode(msg.config), "api.shop:80")
            cart = [r for r in rules if r["matches"][0]["path"]["value"] == "/cart"]
            assert len(cart) == 1 and cart[0].get("filters", []) == [], cart
            old.writer.write(encode(Ack(version=msg.version)))

            # A later change arrives as a delta, also without the filter: the proxy takes it.
            status, body = await apply(cp.api, service("api2", app="api"),
                                       sticky_route("cart", "/cart", "/basket"))
            assert status == 200, body
            seen = b""
            while b"api2.shop" not in seen:  # (the change may come in more than one push)
                delta = await old.next()
                if not isinstance(delta, DeltaMsg):
                    continue
                assert b"SessionPersistence" not in bytes(delta.delta)
                d = msgspec.json.decode(delta.delta, type=Delta)
                seen += bytes(delta.delta)
                old.writer.write(encode(Ack(version=d.version)))

            ps = await proxies(cp.api)
            assert {"feature": "session-persistence", "paths": []} in ps["old-0"]["withheld"]
            table = await tulle(cp.api, "get", "proxies")
            assert "session-persistence" in next(
                ln for ln in table.splitlines() if " old-0 " in ln)
        finally:
            old.close()


WITHOUT_TRUST_DOMAINS = [f for f in SUPPORTED if f not in (
    "authz-trust-domains", "listener-sources", "stats-grpc-status", "refused-destinations",
    "drain-propagation", "serving-ack", "dual-stack")]
"""What a real build of a7fee86c announced."""


def namespace_policy() -> dict[str, Any]:
    return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "api-callers", "namespace": NS},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                     "action": "ALLOW", "rules": [{"from": [{"namespaces": [NS]}]}]}}


async def check_findings(api: str) -> list[dict[str, str]]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/check") as r:
        assert r.status == 200, await r.text()
        found: list[dict[str, str]] = (await r.json())["findings"]
    return found


async def test_a_withheld_feature_its_config_uses_is_a_finding_not_just_a_name_in_a_list(
        tmp_path: Path) -> None:
    """A real a7fee86c sidecar ran an AuthorizationPolicy on `namespaces` without the
    trust-domain check (ADR 0096) while `tulle check` said "no findings": the withheld list
    named the feature for every older proxy whether or not anything used it.  Now the proxy's
    row says which withheld features its ACKed config uses, `get proxies` marks them and
    `tulle check` warns."""
    async with named_origin("app") as app, control_plane_process("memory", tmp_path) as cp:
        status, body = await apply(
            cp.api, workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"), permissive_mesh())
        assert status == 200, body
        old = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="api-0", namespace=NS),
            features=WITHOUT_TRUST_DOMAINS), cp.api)
        try:
            msg = await old.next()
            assert isinstance(msg, Snapshot), msg
            old.writer.write(encode(Ack(version=msg.version)))

            async def row() -> dict[str, Any]:
                return (await proxies(cp.api))["api-0"]
            await eventually(lambda: _acked(row, msg.version))
            assert "authz-trust-domains" in [w["feature"] for w in (await row())["withheld"]]
            assert (await row())["withheldInUse"] == []  # nothing uses it yet: no finding
            assert not [f for f in await check_findings(cp.api)
                        if f["code"] == "FeatureWithheld"]

            status, body = await apply(cp.api, namespace_policy())
            assert status == 200, body
            while True:
                delta = await old.next()
                if isinstance(delta, DeltaMsg):
                    break
            assert b"trust_domains" not in bytes(delta.delta)
            assert b'"namespaces":["shop"]' in bytes(delta.delta)  # the rule runs, laxer
            d = msgspec.json.decode(delta.delta, type=Delta)
            old.writer.write(encode(Ack(version=d.version)))
            await eventually(lambda: _acked(row, d.version))
            assert (await row())["withheldInUse"] == ["authz-trust-domains"]
            (finding,) = [f for f in await check_findings(cp.api)
                          if f["code"] == "FeatureWithheld"]
            assert finding["object"] == "proxy shop/api-0"
            assert finding["message"].startswith("its build lacks authz-trust-domains, which "
                                                 "its config uses")
            table = await tulle(cp.api, "get", "proxies")
            assert "authz-trust-domains*," in next(
                ln for ln in table.splitlines() if " api-0 " in ln)
            described = await tulle(cp.api, "describe", "workload", "api-0", "-n", NS)
            assert "trust_domains): used by its config, not in force" in described
        finally:
            old.close()


async def _acked(row: Any, version: str) -> bool:
    return bool((await row())["ackedVersion"] == version)
