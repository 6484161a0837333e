"""Attack review A2 (ADR 0060): the API's new doors, asked with a raw socket as an outsider
(no token) and as a read-only insider -- the dashboard's static files (traversal, encodings,
methods, headers), the operator-experience reads (`check`, `version`, `api-resources`), and a
tap asked with forged filters.  What held is pinned here."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from tests.support.controlplane import auth, running_control_plane

from tulle.controlplane.main import ControlPlane


async def raw(cp: ControlPlane, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = cp.api_url.removeprefix("http://").rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    try:
        w.write(request)
        data = await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(target: str, *, method: str = "GET", token: str = "") -> bytes:
    extra = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()


OUTSIDER_TARGETS = [
    "/dashboard/../api/v1/proxies", "/dashboard/%2e%2e/api/v1/proxies",
    "/dashboard/..%2fapi/v1/proxies", "/dashboard//app.js", "//dashboard/app.js",
    "/dashboard/app.js/", "/dashboard/app.js%00", "/dashboard/vendor/README.md",
    "/dashboard/vendor/../../controlplane/main.py", "/dashboard/%61pp.js/../../openapi.json",
    "/openapi.json", "/docs", "/api/v1/check", "/api/v1/version", "/api/v1/api-resources",
    "/api/v1/topology", "/api/v1/services/shop/api/attached", "/api/v1/tap?kind=svc&name=a",
    "/api/v1/stat", "/api/v1/proxies", "/api/v1/nothing-here",
]


async def test_an_outsider_gets_401_and_nothing_else() -> None:
    async with running_control_plane() as cp:
        for target in OUTSIDER_TARGETS:
            status, headers, body = await raw(cp, get(target))
            assert status == 401, (target, status, body[:200])
            assert headers["www-authenticate"].startswith("Bearer")
            assert json.loads(body)["error"].startswith("unauthorized")


async def test_the_static_files_answer_only_what_they_are_and_always_locked_down() -> None:
    async with running_control_plane() as cp:
        for target in ("/dashboard/", "/dashboard/index.html", "/dashboard/app.js",
                       "/dashboard/style.css", "/dashboard/vendor/LICENSE-dagre",
                       "/dashboard/app.js?token=x#y"):
            status, headers, _ = await raw(cp, get(target))
            assert status == 200, target
            assert headers["x-content-type-options"] == "nosniff"
            assert "default-src 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
        # Other methods on an open path do nothing (405), a HEAD or POST cannot write.
        for method in ("POST", "PUT", "DELETE"):
            status, _, _ = await raw(cp, get("/dashboard/app.js", method=method))
            assert status == 405, method
        # The page never puts the token in a URL it requests; it reads it from the fragment.
        _, _, page = await raw(cp, get("/dashboard/app.js"))
        assert b"window.location.hash" in page and b"?token=" not in page


async def test_a_read_only_insider_reads_but_cannot_write_or_mint() -> None:
    async with running_control_plane() as cp, aiohttp.ClientSession(
            headers=auth(cp.api_url)) as s:
        async with s.post(f"{cp.api_url}/api/v1/api-tokens",
                          json={"role": "read-only", "name": "viewer"}) as r:
            reader = (await r.json())["token"]
        for target in ("/api/v1/check", "/api/v1/version", "/api/v1/api-resources"):
            status, _, body = await raw(cp, get(target, token=reader))
            assert status == 200, (target, body[:200])
            assert reader.encode() not in body
        for target, method in (("/api/v1/api-tokens", "GET"), ("/api/v1/tokens", "GET"),
                               ("/api/v1/check", "POST")):
            status, _, _ = await raw(cp, get(target, method=method, token=reader))
            assert status == 403, target


FORGED_FILTERS = [
    ("kind=svc&name=a&path=" + "x" * 2000, "path"),
    ("kind=svc&name=a&path=/%0aforged", "path"),
    ("kind=svc&name=a&authority=a%1b%5b2J", "authority"),
    ("kind=svc&name=" + "n" * 5000, "name"),
    ("kind=svc&name=a&rate=nan", "rate"),
    ("kind=svc&name=a&rate=-1", "rate"),
    ("kind=svc&name=a&duration=inf", "duration"),
    ("kind=svc&name=a&duration=1e400", "duration"),
    ("kind=svc&name=a&status=0-9999", "status"),
    ("kind=svc&name=a&direction=sideways", "direction"),
    ("kind=" + "k" * 3000 + "&name=a", "kind"),
]


async def test_forged_tap_filters_are_refused_with_the_field() -> None:
    async with running_control_plane() as cp:
        for query, field in FORGED_FILTERS:
            status, _, body = await raw(cp, get(f"/api/v1/tap?{query}", token=cp.admin_token))
            assert status in (400, 422), (query[:80], status, body[:200])
            text = body.decode()
            assert field in text and len(body) < 2000 and "\x1b" not in text
        assert cp.push is not None and cp.push.taps is not None
        assert not cp.push.taps.watches
