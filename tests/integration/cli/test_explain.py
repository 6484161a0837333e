"""`tulle explain` against a running control plane, and the same requests through real proxies:
the trace must say what the proxies do (route reached, 403 from the named policy).

A control plane with routes on Service `api` (a header match to `api-v2`, an `/admin` rule, a
weighted split), a DENY AuthorizationPolicy on `/admin*` for `api`; three proxies subscribed
to it (the caller `web-0` and the servers `api-0`, `api2-0` in front of echo origins).  The CLI
runs as a real process with a read-only token.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.controlplane.test_routing import echo
from tests.support.cli import tulle
from tests.support.controlplane import apply, auth, eventually, running_control_plane, subscribe
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import WorkloadInfo

V1 = "mesh.tulle.dev/v1alpha1"
GW = "gateway.networking.k8s.io/v1"
POLICY = "policy.tulle.dev/v1alpha1"


def workload(name: str, port: int, target: int, outbound: int = 0, **labels: str
             ) -> dict[str, Any]:
    account = name.partition("-")[0]
    spec: dict[str, Any] = {"address": "127.0.0.1", "serviceAccount": account,
                            "outboundPort": outbound or free_port(),
                            "ports": [{"name": "http", "port": port, "targetPort": target}]}
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": "shop", "labels": labels}, "spec": spec}


def service(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"name": "canary",
                       "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                       "backendRefs": [{"name": "api-v2", "port": 80}]},
                      {"name": "admin",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                       "backendRefs": [{"name": "api", "port": 80}]},
                      {"name": "split",
                       "backendRefs": [{"name": "api", "port": 80, "weight": 80},
                                       {"name": "api-v2", "port": 80, "weight": 20}]}]}}
DENY_ADMIN = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
              "metadata": {"name": "no-admin", "namespace": "shop"},
              "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                       "action": "DENY",
                       # rule 0 names a port no workload has (RulesMatchable=False): left
                       # out on the proxies, yet the trace numbers rules as written
                       "rules": [{"to": [{"ports": [1], "paths": ["/x"]}]},
                                 {"to": [{"paths": ["/admin*"]}]}]}}


class Mesh:
    def __init__(self, api: str, reader: str, outbound: int,
                 session: aiohttp.ClientSession) -> None:
        self.api = api
        self.reader = reader
        self.outbound = outbound
        self.session = session

    async def send(self, path: str, host: str = "api", **headers: str) -> tuple[int, str]:
        """The request through the caller's proxy: (status, who answered or the body)."""
        async with self.session.get(f"http://127.0.0.1:{self.outbound}{path}",
                                    headers={"Host": host, **headers}) as r:
            if r.content_type == "application/json":
                return r.status, str((await r.json())["name"])
            return r.status, await r.text()

    async def explain(self, *args: str) -> tuple[int, str, str]:
        return await tulle(self.api, "explain", "--from", "shop/web-0", *args,
                           token=self.reader)


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, *extra: dict[str, Any]) -> AsyncIterator[Mesh]:
    outbound = free_port()
    async with echo("v1") as v1, echo("v2") as v2, running_control_plane() as cp:
        status, body = await apply(
            cp.api_url, workload("web-0", free_port(), 9, outbound, app="web"),
            workload("api-0", free_port(), v1, app="api"),
            workload("api2-0", free_port(), v2, app="api2"),
            service("api", "api"), service("api-v2", "api2"), ROUTE, DENY_ADMIN, *extra)
        assert status == 200, body
        proxies = [await subscribe([cp.stream_port], WorkloadInfo(
            name=n, namespace="shop", address="127.0.0.1", service_account=n.partition("-")[0]),
            cache_dir=tmp_path) for n in ("web-0", "api-0", "api2-0")]
        try:
            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.post(
                    f"{cp.api_url}/api/v1/api-tokens", json={"role": "read-only"}) as r:
                assert r.status == 201, await r.text()
                reader = str((await r.json())["token"])
            async with aiohttp.ClientSession() as session:
                m = Mesh(cp.api_url, reader, outbound, session)
                await eventually(lambda: _answers(m), timeout=10)
                yield m
        finally:
            for p in proxies:
                await p.stop()


async def _answers(m: Mesh) -> bool:
    try:
        return (await m.send("/admin/x"))[0] == 403 and (
            await m.send("/", **{"x-canary": "yes"}))[0] == 200
    except aiohttp.ClientError:
        return False


async def test_the_trace_names_the_rule_and_the_policy_and_the_proxies_agree(
        tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        # a header match: the trace's route, backend and workload are who answers
        code, out, err = await m.explain("--to", "api", "--path", "/items",
                                         "--header", "x-canary=yes", "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["outbound"]["route"].endswith("/canary")
        hop = doc["hops"][0]["endpoints"][0]
        assert (hop["workload"], hop["result"]) == ("shop/api2-0", "forwarded")
        assert doc["source"]["configSource"] == "acked"
        assert await m.send("/items", **{"x-canary": "yes"}) == (200, "v2")

        # a DENY policy: the trace names it and the rule; the proxy answers 403 with that body
        code, out, err = await m.explain("--to", "api", "--path", "/admin/users", "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["outbound"]["route"].endswith("/admin")
        assert doc["outbound"]["notTaken"] == []
        a = doc["hops"][0]["endpoints"][0]["authorization"]
        assert (a["policy"], a["action"], a["rule"], a["allowed"]) == (
            "shop/no-admin", "DENY", 1, False)
        assert doc["outcome"]["status"] == 403
        assert await m.send("/admin/users") == (403, a["body"])

        # the weighted split: the /admin and header rules come first in precedence (longer
        # prefix, then more headers) and did not hold; whoever
        # answers is one of the traced, forwarded backends
        code, out, err = await m.explain("--to", "api.shop", "--path", "/items", "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        out_ = doc["outbound"]
        assert out_["route"].endswith("/split")
        assert [s["why"] for s in out_["notTaken"]] == [
            "path PathPrefix '/admin' does not match",
            "header x-canary Exact 'yes' does not hold"]
        assert [(b["weight"], b["percent"]) for b in out_["backends"]] == [(80, 80.0),
                                                                           (20, 20.0)]
        forwarded = {ep["workload"] for h in doc["hops"] for ep in h["endpoints"]
                     if ep["result"] == "forwarded"}
        assert forwarded == {"shop/api-0", "shop/api2-0"}
        answered = {(await m.send("/items"))[1] for _ in range(20)}
        assert answered <= {"v1", "v2"} and answered

        # the text form: readable, names rule and policy, echoes no header value
        code, out, err = await m.explain("--to", "api", "--path", "/admin/x",
                                         "--header", "x-canary=s3cret-value")
        assert code == 0, err
        assert "s3cret-value" not in out
        assert "authorization: DENY by shop/no-admin rule 1 (DENY)" in out
        assert "outcome: 403 by shop/api-0" in out


async def test_bad_input_exits_2_with_the_option_named(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        for args, want in [
            (("--to", "nothing.shop"), "--to: no virtual host"),
            (("--to", "api.shop:81"), "--to: no Service port answers to 'api.shop:81'"),
            (("--to", "api", "--header", "novalue"), "--header: 'novalue' is not NAME=VALUE"),
            (("--to", "api", "--method", "BREW"), "--method: 'BREW' is not one of"),
        ]:
            code, out, err = await m.explain(*args)
            assert code == 2, (args, out, err)
            assert want in err, (args, err)
        code, _, err = await tulle(m.api, "explain", "--from", "shop/ghost", "--to", "api",
                                   token=m.reader)
        assert code == 2 and "--from: no proxy snapshot for workload shop/ghost" in err


V2_ROUTE = {"apiVersion": GW, "kind": "HTTPRoute",
            "metadata": {"name": "api-v2", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api-v2",
                                     "port": 80}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                                    "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                                "backendRefs": [{"name": "api-v2", "port": 80}]},
                               {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                                "filters": [{"type": "RequestRedirect", "requestRedirect": {
                                    "statusCode": 301, "path": {
                                        "type": "ReplacePrefixMatch",
                                        "replacePrefixMatch": "/new"}}}]},
                               {"backendRefs": [{"name": "api-v2", "port": 80}]}]}}
V2_DENY = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
           "metadata": {"name": "v2-no-items", "namespace": "shop"},
           "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api-v2"},
                    "action": "DENY", "rules": [{"to": [{"paths": ["/items"]}]}]}}
V2_FAULT = {"apiVersion": POLICY, "kind": "FaultInjectionPolicy",
            "metadata": {"name": "v2-teapot", "namespace": "shop"},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api-v2"},
                     "abort": {"httpStatus": 418, "percent": 100},
                     "match": {"headers": [{"name": "x-fault", "value": "yes"}]}}}


async def test_rewrites_redirects_and_faults_are_traced_as_the_proxies_answer(
        tmp_path: Path) -> None:
    async with mesh(tmp_path, V2_ROUTE, V2_DENY, V2_FAULT) as m:
        async def both(*args: str) -> tuple[dict[str, Any], str]:
            code, out, err = await m.explain("--to", "api-v2", *args, "-o", "json")
            assert code == 0, err
            code, text, err = await m.explain("--to", "api-v2", *args)
            assert code == 0, err
            return json.loads(out), text

        async def answered() -> bool:
            return (await m.send("/x", "api-v2", **{"x-fault": "yes"}))[0] == 418

        await eventually(answered, timeout=10)
        # the rewrite sends /items: the destination's DENY on /items refuses it
        doc, text = await both("--path", "/v2/items")
        assert doc["hops"][0]["request"] == {"path": "/items"}
        assert doc["outcome"]["status"] == 403
        assert await m.send("/v2/items", "api-v2") == (403, doc["hops"][0]["endpoints"][0][
            "authorization"]["body"])
        assert "the caller's proxy sends: path /items" in text
        # a redirect is the caller's proxy's own answer
        doc, _ = await both("--path", "/old/a?q=1")
        async with m.session.get(f"http://127.0.0.1:{m.outbound}/old/a?q=1",
                                 headers={"Host": "api-v2"}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (
                doc["outcome"]["status"], doc["outcome"]["location"]) == (
                301, "http://api-v2/new/a?q=1")
        # the fault's abort is the answer with its header, and nothing without it
        doc, text = await both("--path", "/x", "--header", "x-fault=yes")
        assert (doc["outcome"]["status"], await m.send("/x", "api-v2", **{"x-fault": "yes"})) \
            == (418, (418, "fault filter abort\n"))
        assert "fault shop/v2-teapot: the request matches the fault" in text
        doc, _ = await both("--path", "/x")
        assert doc["outcome"]["status"] is None
        assert await m.send("/x", "api-v2") == (200, "v2")
