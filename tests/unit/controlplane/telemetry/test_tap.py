"""The control plane's tap broker (ADR 0056): which proxies a watch taps, renewals, stop on
close, proxies joining late, bounded queues, records only from the proxies asked."""

from __future__ import annotations

import pytest

from tulle.controlplane.telemetry.tap import QUEUE, TapBroker, TapError, TapTarget
from tulle.proxyconfig.stream import Message, TapEvents, TapStart, TapStop, WorkloadInfo
from tulle.proxyconfig.tap import TapRecord


class Session:
    def __init__(self) -> None:
        self.closed = False
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


def wl(name: str, ns: str = "shop") -> WorkloadInfo:
    return WorkloadInfo(name=name, namespace=ns)


def rec(workload: str, path: str = "/") -> TapRecord:
    return TapRecord(ts_ms=1, direction="inbound", workload=workload, method="GET", path=path)


async def test_a_workload_watch_taps_the_proxies_fronting_it_by_name_or_group_label() -> None:
    labels = {("shop", "web-7f9c"): {"app": "web"}}
    b = TapBroker(labels=lambda ns, n: labels.get((ns, n), {}))
    web, web2, api, node = Session(), Session(), Session(), Session()
    b.attach(web, [wl("web-7f9c")], ["tap"])
    b.attach(web2, [wl("web")], ["tap"])
    b.attach(api, [wl("api-0")], ["tap"])
    b.attach(node, [wl("db-0"), wl("web", "other")], ["tap"])
    w = b.open(TapTarget("Workload", "shop", "web"), method="get", rate=1000)
    assert set(w.sessions.values()) == {"shop/web-7f9c", "shop/web"}
    (start,) = web.sent
    assert isinstance(start, TapStart)
    assert (start.match.workload, start.match.method, start.rate) == ("shop/web-7f9c", "GET",
                                                                      100.0)
    assert api.sent == [] and node.sent == []
    b.close(w)
    assert isinstance(web.sent[-1], TapStop) and isinstance(web2.sent[-1], TapStop)
    assert b.watches == {}


async def test_a_service_watch_taps_every_capable_proxy_and_late_joiners() -> None:
    b = TapBroker()
    a, old = Session(), Session()
    b.attach(a, [wl("a-0")], ["tap"])
    b.attach(old, [wl("old-0")], [])  # no feature: never sent a tap
    w = b.open(TapTarget("Service", "shop", "api"), status_min=500, status_max=599)
    late = Session()
    b.attach(late, [wl("late-0")], ["tap"])
    assert old.sent == []
    for s in (a, late):
        (msg,) = s.sent
        assert isinstance(msg, TapStart) and msg.match.service == "shop/api"
        assert (msg.match.status_min, msg.match.status_max) == (500, 599)
    b.renew(w)
    assert len(a.sent) == 2 and isinstance(a.sent[1], TapStart)
    b.detach(late)
    assert w.queue.get_nowait() == {"type": "proxy-gone", "proxy": "shop/late-0"}


async def test_records_come_only_from_asked_proxies_for_their_own_workloads() -> None:
    b = TapBroker()
    a, other = Session(), Session()
    b.attach(a, [wl("a-0")], ["tap"])
    w = b.open(TapTarget("Workload", "shop", "a-0"))
    b.take(other, TapEvents(id=w.id, records=[rec("shop/a-0")]))  # never asked
    b.take(a, TapEvents(id=w.id, records=[rec("shop/b-0"), rec("shop/a-0", "/ok")],
                        dropped=4))
    b.take(a, TapEvents(id="nope", records=[rec("shop/a-0")]))
    assert b.refused == 2
    items = [w.queue.get_nowait() for _ in range(w.queue.qsize())]
    assert [i["type"] for i in items] == ["request", "dropped"]
    assert items[0]["path"] == "/ok" and items[0]["proxy"] == "shop/a-0"
    assert items[1]["count"] == 4
    b.take(a, TapEvents(id=w.id, ended="refused: full"))
    assert w.queue.get_nowait()["type"] == "ended" and a not in w.sessions


async def test_watches_are_capped_and_a_slow_watcher_loses_items_not_memory() -> None:
    b = TapBroker(max_watches=2)
    a = Session()
    b.attach(a, [wl("a-0")], ["tap"])
    w = b.open(TapTarget("Workload", "shop", "a-0"))
    b.open(TapTarget("Workload", "shop", "a-0"))
    with pytest.raises(TapError) as exc:
        b.open(TapTarget("Workload", "shop", "a-0"))
    assert exc.value.status == 429
    for _ in range(QUEUE + 50):
        b.take(a, TapEvents(id=w.id, records=[rec("shop/a-0")]))
    assert w.queue.qsize() == QUEUE and w.dropped == 50
    b.close(w)
    b.close(w)  # twice: harmless
    b.open(TapTarget("Workload", "shop", "a-0"))  # a slot again


async def test_a_closed_session_is_not_written_to() -> None:
    b = TapBroker()
    a = Session()
    b.attach(a, [wl("a-0")], ["tap"])
    w = b.open(TapTarget("Workload", "shop", "a-0"))
    a.closed = True
    b.close(w)
    assert len(a.sent) == 1


async def test_with_snapshots_a_service_tap_goes_to_the_proxies_that_can_see_it() -> None:
    from tulle.proxyconfig.model import Cluster, Metadata, Node, ProxyConfig

    configs = {
        ("shop", "caller-0"): ProxyConfig(version="1", node=Node(name="caller-0", namespace="shop"),
                                          clusters=[Cluster(name="c", metadata=Metadata(
                                              service="api", namespace="shop"))]),
        ("shop", "api-0"): ProxyConfig(version="1", node=Node(name="api-0", namespace="shop",
                                                              service="api")),
        ("shop", "other-0"): ProxyConfig(version="1", node=Node(name="other-0", namespace="shop")),
    }
    b = TapBroker(snapshots=configs.get)
    sessions = {name: Session() for name in ("caller-0", "api-0", "other-0", "new-0")}
    for name, s in sessions.items():
        b.attach(s, [wl(name)], ["tap"])
    w = b.open(TapTarget("Service", "shop", "api"))
    assert set(w.sessions.values()) == {"shop/caller-0", "shop/api-0", "shop/new-0"}  # new: no
    assert sessions["other-0"].sent == []                      # snapshot yet, asked anyway
    configs[("shop", "other-0")] = configs[("shop", "caller-0")]  # it came to call api
    b.renew(w)
    assert "shop/other-0" in w.sessions.values()


async def test_a_proxy_that_refused_a_tap_is_not_asked_again_at_renewal() -> None:
    b = TapBroker()
    a = Session()
    b.attach(a, [wl("a-0")], ["tap"])
    w = b.open(TapTarget("Workload", "shop", "a-0"))
    b.take(a, TapEvents(id=w.id, ended="refused: this proxy runs 8 taps already"))
    b.renew(w)
    assert len(a.sent) == 1 and a not in w.sessions
