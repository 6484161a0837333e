"""`tulle apply` against a real control-plane process warns of what it adds that a connected
proxy of an older build will not run (ADR 0125); `--strict` refuses it and stores nothing.

The older proxy is played as ADR 0122's tests play it: a stream client whose hello announces
what a real build from before `session-persistence` announced, admitted the supported way."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.integration.controlplane.test_negotiation import TULLE, RawProxy, proxies
from tests.integration.controlplane.test_version_skew import WITHOUT_STICKY, sticky_route
from tests.support.controlplane import (
    admin_token,
    apply,
    auth,
    control_plane_process,
    eventually,
    named_origin,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, permissive_mesh, route, service, workload

from tulle.proxyconfig.delta import Delta
from tulle.proxyconfig.stream import Ack, DeltaMsg, Hello, Snapshot, WorkloadInfo, encode


async def tulle(api: str, *args: str) -> tuple[int, str, str]:
    """`tulle ARGS` against `api`: its exit status, stdout and stderr."""
    env = {"TULLE_SERVER": api, "PATH": "/usr/bin:/bin", "TULLE_TOKEN": admin_token(api),
           **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "TULLE_PURE")}}
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def tulle_apply(api: str, path: Path, *flags: str) -> tuple[int, str, str]:
    """`tulle apply -f path`: its exit status, stdout and stderr."""
    return await tulle(api, "apply", "-f", str(path), *flags)


def file(tmp_path: Path, name: str, *docs: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path


async def stored(api: str, kind: str, name: str) -> bool:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/resources/{kind}/{name}", params={"namespace": NS}) as r:
        assert r.status in (200, 404), await r.text()
        return r.status == 200


async def test_apply_warns_of_a_feature_a_connected_older_proxy_lacks_and_strict_refuses(
        tmp_path: Path) -> None:
    async with named_origin("app") as app, control_plane_process("memory", tmp_path) as cp:
        status, body = await apply(
            cp.api, workload("old-0", free_port(), app, free_port(), app="web"),
            workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"), permissive_mesh())
        assert status == 200, body
        old = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="old-0", namespace=NS), features=WITHOUT_STICKY),
            cp.api)
        try:
            msg = await old.next()
            assert isinstance(msg, Snapshot), msg
            old.writer.write(encode(Ack(version=msg.version)))

            async def acked() -> bool:
                return bool((await proxies(cp.api))["old-0"]["ackedVersion"])
            await eventually(acked)

            # A route that reaches old-0 and needs nothing it lacks: no warning.
            rc, out, err = await tulle_apply(cp.api, file(tmp_path, "plain.yaml",
                                                          route("plain", ("/", "api"))))
            assert rc == 0 and "httproute/plain -n shop created" in out, err
            assert "Warning" not in err, err
            # Nothing of its config is left out yet: get and describe say nothing of it.
            rc, out, err = await tulle(cp.api, "get", "httproutes", "-n", NS)
            assert rc == 0 and "plain" in out and "Warning" not in err, (out, err)
            rc, out, err = await tulle(cp.api, "describe", "httproute", "plain", "-n", NS)
            assert rc == 0 and "Older proxies: 1 connected lacking features; this object " \
                "puts none of them in use" in out, (out, err)

            sticky = file(tmp_path, "sticky.yaml", service("api2", app="api"),
                          sticky_route("cart", "/cart"))
            line = ("session-persistence: not run by 1 connected proxy whose build lacks it "
                    "(shop/old-0): there, the filter entry is left out (the rule serves "
                    "without it)")
            # --strict: refused whole, naming the document; nothing stored.
            rc, out, err = await tulle_apply(cp.api, sticky, "--strict")
            assert rc == 1, (out, err)
            assert "nothing was applied (strict)" in err, err
            assert f"(HTTPRoute shop/cart): status: {line}" in err, err
            assert not await stored(cp.api, "httproute", "cart")
            assert not await stored(cp.api, "service", "api2")

            # Without it: stored, and the warning names the proxy and what it does instead.
            rc, out, err = await tulle_apply(cp.api, sticky)
            assert rc == 0, err
            assert f"Warning: httproute/cart -n shop: {line}" in err, err
            assert "service/api2" not in err, err  # (the Service adds no such use)
            assert await stored(cp.api, "httproute", "cart")

            # The existing status paths say it once old-0 runs it (ADR 0122).
            while True:  # (each push ACKed: one is in flight at a time)
                delta = await old.next()
                if not isinstance(delta, DeltaMsg):
                    continue  # (a StatsRequest)
                d = msgspec.json.decode(delta.delta, type=Delta)
                old.writer.write(encode(Ack(version=d.version)))
                if b"/cart" in bytes(delta.delta):
                    break

            async def in_use() -> bool:
                return bool((await proxies(cp.api))["old-0"]["withheldInUse"])
            await eventually(in_use)
            assert (await proxies(cp.api))["old-0"]["withheldInUse"] == ["session-persistence"]

            # Stored and not run everywhere: `get` says so (the API's Warning header) and
            # `describe` of the route says what and where (ADR 0131).
            rc, out, err = await tulle(cp.api, "get", "httproutes", "-n", NS)
            assert rc == 0 and "cart" in out, err
            assert ("Warning: 1 connected proxy of an older build leaves out config in use: "
                    "`tulle get proxies` names them") in err, err
            rc, out, err = await tulle(cp.api, "describe", "httproute", "cart", "-n", NS)
            assert rc == 0, err
            assert ("Older proxies: 1 connected lacking features; what they do not run of "
                    f"this object's config:\n  {line}\n") in out, out
            rc, out, err = await tulle(cp.api, "describe", "httproute", "plain", "-n", NS)
            assert rc == 0 and "this object puts none of them in use" in out, out
            # The question is behind the API's door like every read: no token, 401; an
            # unknown type or object, 404 naming it.
            skew = f"{cp.api}/api/v1/resources/httproute/cart/skew"
            async with aiohttp.ClientSession() as s, s.get(skew, params={"namespace": NS}) as r:
                assert r.status == 401, await r.text()
            async with aiohttp.ClientSession(headers=auth(cp.api)) as s:
                for url in (f"{cp.api}/api/v1/resources/nokind/cart/skew",
                            f"{cp.api}/api/v1/resources/httproute/nowhere/skew"):
                    async with s.get(url, params={"namespace": NS}) as r:
                        assert r.status == 404, await r.text()

            # The same again adds nothing: no warning.
            rc, out, err = await tulle_apply(cp.api, sticky)
            assert rc == 0 and "Warning" not in err, err
        finally:
            old.close()
