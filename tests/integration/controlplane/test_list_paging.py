"""Paged lists (ADR 0120) through a real control plane: `limit` and `continue` on
`GET /api/v1/resources/{type}` as Kubernetes pages them, the refusals naming the parameter, and
`tulle get` (a real subprocess) reading a list in pages and showing every object once."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from tests.support.cli import tulle
from tests.support.controlplane import apply, auth, running_control_plane

V1 = "mesh.tulle.dev/v1alpha1"


def svc(name: str, namespace: str = "shop", **labels: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}}


NAMES = [f"s{i:02d}" for i in range(7)]


async def test_a_list_in_pages_of_limit_with_a_continue_token() -> None:
    async with running_control_plane() as cp, aiohttp.ClientSession(
            headers=auth(cp.api_url)) as s:
        status, body = await apply(cp.api_url, *(svc(n, tier="odd" if i % 2 else "even")
                                                 for i, n in enumerate(NAMES)),
                                   svc("other", namespace="elsewhere"))
        assert status == 200, body
        url = f"{cp.api_url}/api/v1/resources/services"

        async def get(**params: Any) -> tuple[int, dict[str, Any]]:
            async with s.get(url, params={k: str(v) for k, v in params.items()}) as r:
                return r.status, await r.json()

        async def all_pages(**params: Any) -> list[list[str]]:
            out: list[list[str]] = []
            for _ in range(20):  # bounded: 8 objects
                status, doc = await get(**params)
                assert status == 200, doc
                assert doc["kind"] == "ServiceList" and int(doc["metadata"]["resourceVersion"])
                out.append([i["metadata"]["name"] for i in doc["items"]])
                token = doc["metadata"].get("continue")
                if token is None:
                    return out
                params["continue"] = token
            raise AssertionError(out)

        assert await all_pages(namespace="shop", limit=3) == [NAMES[:3], NAMES[3:6], NAMES[6:]]
        assert await all_pages(namespace="shop", limit=7) == [NAMES]
        assert await all_pages(namespace="shop", limit=2, labelSelector="tier=odd") == [
            ["s01", "s03"], ["s05"]]
        # Without `limit` the whole list, as before.
        status, doc = await get(namespace="shop")
        assert [i["metadata"]["name"] for i in doc["items"]] == NAMES
        assert "continue" not in doc["metadata"]
        # Refusals name the parameter; a token is good only for the query it came from.
        status, first = await get(namespace="shop", limit=2)
        token = first["metadata"]["continue"]
        for params, why in (
                ({"namespace": "shop", "limit": 0}, "limit: must be between 1 and 10,000"),
                ({"namespace": "shop", "limit": 10_001}, "limit: must be between 1 and 10,000"),
                ({"namespace": "shop", "continue": "%%%"}, "continue: not a token"),
                ({"namespace": "shop", "continue": "e30"}, "continue: not a token"),
                ({"namespace": "elsewhere", "continue": token}, "continue: the token is for"),
                ({"namespace": "shop", "labelSelector": "tier=odd", "continue": token},
                 "continue: the token is for")):
            status, doc = await get(**params)
            assert status == 400 and why in doc["error"], (params, doc)
        async with s.get(f"{cp.api_url}/api/v1/resources/httproutes",
                         params={"namespace": "shop", "continue": token}) as r:
            assert r.status == 400 and "another list" in (await r.json())["error"]


async def test_tulle_get_reads_a_list_in_pages_and_shows_every_object_once() -> None:
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, *(svc(n) for n in NAMES))
        assert status == 200, body
        for chunk in ("2", "0", "500"):
            code, out, err = await tulle(cp.api_url, "get", "svc", "-n", "shop", "-o", "json",
                                         "--chunk-size", chunk)
            assert code == 0, err
            assert [i["metadata"]["name"] for i in json.loads(out)["items"]] == NAMES, chunk
        code, out, err = await tulle(cp.api_url, "get", "svc", "-n", "shop", "--chunk-size", "3")
        assert code == 0, err
        assert [line.split()[1] for line in out.splitlines()[1:]] == NAMES
        code, out, err = await tulle(cp.api_url, "get", "svc", "--chunk-size", "-1")
        assert code == 2 and "--chunk-size" in err


async def test_the_proxies_list_in_pages_and_tulle_get_proxies_reads_them_all() -> None:
    """`/api/v1/proxies` lists every workload the control plane compiled for; with `limit`
    it pages the same way (by namespace and name), and takes `namespace` itself."""
    from tests.support.controlplane import eventually
    from tests.support.resources import workload

    async with running_control_plane() as cp, aiohttp.ClientSession(
            headers=auth(cp.api_url)) as s:
        wls = [workload(f"w{i}", 8000 + i, 9000 + i, 15001, ns="shop") for i in range(5)]
        status, body = await apply(cp.api_url, *wls,
                                   workload("x0", 8100, 9100, 15001, ns="zoo"))
        assert status == 200, body
        url = f"{cp.api_url}/api/v1/proxies"

        async def get(**params: Any) -> dict[str, Any]:
            async with s.get(url, params={k: str(v) for k, v in params.items()}) as r:
                doc: dict[str, Any] = await r.json()
                assert r.status == 200, doc
                return doc

        async def six() -> bool:
            return len((await get())["items"]) == 6
        await eventually(six, timeout=10)
        pages: list[list[str]] = []
        params: dict[str, Any] = {"limit": 4}
        for _ in range(10):  # bounded
            doc = await get(**params)
            assert "stream" in doc
            pages.append([f"{p['namespace']}/{p['name']}" for p in doc["items"]])
            token = (doc.get("metadata") or {}).get("continue")
            if token is None:
                break
            params["continue"] = token
        assert pages == [["shop/w0", "shop/w1", "shop/w2", "shop/w3"], ["shop/w4", "zoo/x0"]]
        doc = await get(namespace="zoo")
        assert [p["name"] for p in doc["items"]] == ["x0"]
        async with s.get(url, params={"namespace": "zoo", "continue": params["continue"]}) as r:
            assert r.status == 400 and "continue" in (await r.json())["error"]
        code, out, err = await tulle(cp.api_url, "get", "proxies", "-A", "--all",
                                     "--chunk-size", "2", "-o", "json")
        assert code == 0, err
        assert [p["name"] for p in json.loads(out)["items"]] == [
            "w0", "w1", "w2", "w3", "w4", "x0"]
        code, out, err = await tulle(cp.api_url, "get", "proxies", "-n", "zoo", "--all",
                                     "--chunk-size", "2", "-o", "json")
        assert code == 0, err
        assert [p["name"] for p in json.loads(out)["items"]] == ["x0"]
