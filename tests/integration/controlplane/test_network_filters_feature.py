"""`network-filters` is a contract feature: a proxy that does not announce it is never sent
`listeners[].network_filters`, and its status says the section was withheld (never a silent
drop of what could be an authorization rule)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from tests.integration.controlplane.test_negotiation import RawProxy, proxies
from tests.support.controlplane import apply, control_plane_process, eventually, named_origin
from tests.support.proxy import free_port
from tests.support.resources import NS, workload

from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ack, Hello, Snapshot, WorkloadInfo, encode

WITHOUT = [f for f in SUPPORTED if f != "network-filters"]


async def test_a_proxy_without_network_filters_is_told_they_are_withheld(
        tmp_path: Path) -> None:
    async with named_origin("app") as app, control_plane_process("memory", tmp_path) as cp:
        status, body = await apply(cp.api, workload("l4-old", free_port(), app, free_port()),
                                   workload("l4-new", free_port(), app, free_port()))
        assert status == 200, body
        old = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="l4-old", namespace=NS), features=WITHOUT), cp.api)
        new = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="l4-new", namespace=NS), features=list(SUPPORTED)),
            cp.api)
        try:
            got_old, got_new = await old.next(), await new.next()
            assert isinstance(got_old, Snapshot) and isinstance(got_new, Snapshot)
            # (the listener's own field: under mesh mTLS a port's routing, network filters
            # included, is its filter chains', a section of the later `filter-chains`)
            old_listeners = msgspec.json.decode(bytes(got_old.config))["listeners"]
            new_listeners = msgspec.json.decode(bytes(got_new.config))["listeners"]
            assert old_listeners and all("network_filters" not in lc for lc in old_listeners)
            assert all("network_filters" in lc for lc in new_listeners)
            old.writer.write(encode(Ack(version=got_old.version)))
            new.writer.write(encode(Ack(version=got_new.version)))

            async def acked() -> bool:
                ps = await proxies(cp.api)
                return all(ps.get(n, {}).get("ackedVersion") for n in ("l4-old", "l4-new"))

            await eventually(acked, timeout=10)
            ps = await proxies(cp.api)
            assert ps["l4-old"]["withheld"] == [{"feature": "network-filters",
                                                 "paths": ["listeners[].network_filters"]}]
            assert ps["l4-new"]["withheld"] == []
        finally:
            old.close()
            new.close()
