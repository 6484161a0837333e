"""The overload guard's monitors, states and admission, with injected resource readers.

Scripts of a pressure going up and down: which state each sample leads to, what the accept
limit becomes, what is logged and counted, and how a listener handle admits connections.
"""

from __future__ import annotations

import logging
import os
import socket

import msgspec
import pytest

from tulle.dataplane.listeners.context import Connection
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.overload import (
    NORMAL,
    REJECT,
    STOP,
    UNLIMITED,
    OverloadGuard,
    count_fds,
)
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.model import Listener, Overload, Settings


class Resources:
    """What the monitors read; tests move the values."""

    def __init__(self, fds: int = 10, fd_limit: int = 100, rss: int = 0) -> None:
        self.fds = fds
        self.limit = fd_limit
        self.rss = rss


def make_guard(res: Resources, metrics: ProxyMetrics | None = None,
               **overload: object) -> OverloadGuard:
    g = OverloadGuard(metrics, read_rss=lambda: res.rss, count_fds=lambda: res.fds,
                      fd_limit=lambda: res.limit)
    max_connections = int(overload.pop("max_connections", 0))  # type: ignore[call-overload]
    g.configure(Settings(max_connections=max_connections,
                         overload=msgspec.convert(overload, Overload)))
    return g


def state(metrics: ProxyMetrics) -> float:
    return metrics.overload_state.labels().value


def test_memory_pressure_walks_the_states_with_hysteresis(
        caplog: pytest.LogCaptureFixture) -> None:
    res = Resources(rss=50)
    m = ProxyMetrics()
    g = make_guard(res, m, file_descriptors=False, max_rss_bytes=100, reject_requests_percent=80,
                   stop_accepting_percent=90, hysteresis_percent=10)
    assert (g.state, g.rejecting, g.accept_limit) == (NORMAL, False, UNLIMITED)
    caplog.set_level(logging.WARNING, "tulle.proxy")

    res.rss = 80
    g.sample()
    assert (g.state, g.rejecting, state(m)) == (REJECT, True, REJECT)
    assert g.accept_limit == UNLIMITED  # rejecting requests, still accepting connections
    res.rss = 95
    g.sample()
    assert (g.state, g.accept_limit, state(m)) == (STOP, 0, STOP)
    assert m.overload_pressure.labels("memory").value == 0.95

    res.rss = 85  # below stop_accepting_percent, not by the hysteresis: stays
    g.sample()
    assert g.state == STOP
    res.rss = 79  # 0.79 < 0.9 - 0.1: down to reject (0.79 >= 0.8 - 0.1)
    g.sample()
    assert (g.state, g.accept_limit) == (REJECT, UNLIMITED)
    res.rss = 71
    g.sample()
    assert g.state == REJECT
    res.rss = 69
    g.sample()
    assert (g.state, g.rejecting, state(m)) == (NORMAL, False, NORMAL)
    g.sample()

    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("overload:")]
    assert [c.split(" (")[0] for c in changes] == [
        "overload: normal -> reject_requests", "overload: reject_requests -> stop_accepting",
        "overload: stop_accepting -> reject_requests", "overload: reject_requests -> normal"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_jump_goes_straight_to_the_highest_state_and_back() -> None:
    res = Resources(rss=10)
    g = make_guard(res, file_descriptors=False, max_rss_bytes=100)
    res.rss = 200  # above the limit
    g.sample()
    assert g.state == STOP
    res.rss = 10
    g.sample()
    assert g.state == NORMAL


def test_memory_monitor_off_by_default_and_fd_monitor_on() -> None:
    res = Resources(fds=99, fd_limit=100, rss=10**12)
    g = make_guard(res, file_descriptors=False)
    assert g.state == NORMAL and g.mem_pressure == 0.0  # no limit: RSS is not even read
    g = make_guard(res)
    assert g.state == STOP and g.fd_pressure == 0.99


def test_unlimited_rlimit_turns_the_fd_monitor_off() -> None:
    res = Resources(fds=10**6, fd_limit=0)
    g = make_guard(res)
    assert (g.state, g.accept_limit, g.fd_pressure) == (NORMAL, UNLIMITED, 0.0)


def test_descriptor_estimate_between_samples_stops_accepting() -> None:
    """Sampled: 50 of 100 descriptors.  Each admitted connection adds one to the estimate; the
    connection that would reach 95 is refused without waiting for the next sample."""
    res = Resources(fds=50, fd_limit=100)
    g = make_guard(res)  # reject at 0.9, stop at 0.95
    assert g.accept_limit == 45 and g.watch_at == 40
    admitted = 0
    for _ in range(100):
        if g.active >= g.accept_limit:
            assert g.refusal() == "overload"
            break
        g.active += 1
        admitted += 1
        if g.active >= g.watch_at:
            g.estimate()
        if admitted == 39:
            assert g.state == NORMAL
        if admitted == 40:
            assert g.state == REJECT and g.rejecting  # 90 of 100 estimated
    assert admitted == 45
    assert (g.state, g.accept_limit) == (STOP, 0)
    # Clients go away; the next sample sees the real count and the guard recovers.
    g.active = 0
    res.fds = 50
    g.sample()
    assert (g.state, g.accept_limit) == (NORMAL, 45)


def test_process_cap() -> None:
    g = make_guard(Resources(fds=5, fd_limit=0), max_connections=3)
    assert g.accept_limit == 3
    g.active = 3
    assert g.refusal() == "process_limit"
    assert g.state == NORMAL


def test_rlimit_is_reread_at_every_sample() -> None:
    res = Resources(fds=40, fd_limit=1000)
    g = make_guard(res)
    assert g.state == NORMAL
    res.limit = 42  # prlimit lowered it under the running process
    g.sample()
    assert g.state == STOP


# -- admission by a listener handle ----------------------------------------------------


class Conn(Connection):
    pass


def handle_for(guard: OverloadGuard, metrics: ProxyMetrics, max_connections: int = 0,
               name: str = "l") -> ListenerHandle:
    lc = Listener(name=name, port=0, cluster="c", max_connections=max_connections)
    ctx = ListenerContext(lc, Settings(), {}, {}, metrics)
    return ListenerHandle(name, ctx, m_active=metrics.connections_active.labels(name),
                          m_total=metrics.connections_total.labels(name), guard=guard)


def overflow(m: ProxyMetrics, listener: str, reason: str) -> int:
    return int(m.connections_overflow.labels(listener, reason).value)


def test_listener_cap_refuses_and_counts_and_a_close_makes_room() -> None:
    m = ProxyMetrics()
    g = make_guard(Resources(fd_limit=0))
    h = handle_for(g, m, max_connections=2)
    a, b, c = Conn(), Conn(), Conn()
    assert h.connection_opened(a) and h.connection_opened(b)
    assert not h.connection_opened(c)
    assert c not in h.connections and g.active == 2
    assert overflow(m, "l", "listener_limit") == 1
    assert m.connections_active.labels("l").value == 2
    assert m.connections_total.labels("l").value == 2
    h.connection_closed(c)  # the refused connection's close is not counted
    assert g.active == 2
    h.connection_closed(a)
    assert h.connection_opened(c) and g.active == 2


def test_process_cap_spans_listeners() -> None:
    m = ProxyMetrics()
    g = make_guard(Resources(fd_limit=0), max_connections=2)
    h1, h2 = handle_for(g, m, name="one"), handle_for(g, m, name="two")
    assert h1.connection_opened(Conn()) and h2.connection_opened(Conn())
    assert not h2.connection_opened(Conn())
    assert overflow(m, "two", "process_limit") == 1


def test_handover_is_the_same_connection_and_never_refused() -> None:
    """Detection hands the accepted connection to its driver: no second admission, even when
    the listener filled up or the guard stopped accepting meanwhile."""
    m = ProxyMetrics()
    res = Resources(fds=10, fd_limit=100)
    g = make_guard(res)
    h = handle_for(g, m, max_connections=1)
    detect, driver = Conn(), Conn()
    assert h.connection_opened(detect)
    res.fds = 99
    g.sample()
    assert g.state == STOP
    h.hand_over(detect)
    assert h.connection_opened(driver)
    assert h.connections == {driver} and g.active == 1
    assert m.connections_total.labels("l").value == 1
    assert not h.connection_opened(Conn())  # a new one is refused, by the listener cap first
    assert overflow(m, "l", "listener_limit") == 1
    h.connection_closed(driver)
    assert g.active == 0 and not h.connections


def _listed() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


def test_count_fds_counts_real_descriptors_as_they_open_and_close() -> None:
    before = count_fds()
    assert before == _listed()
    socks = [socket.socket() for _ in range(300)]
    try:
        assert count_fds() == before + 300 == _listed()
        for s in socks[:100]:
            s.close()
        assert count_fds() == before + 200 == _listed()
    finally:
        for s in socks:
            s.close()
    assert count_fds() == before


def test_count_fds_lists_the_directory_where_the_kernel_gives_no_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 6.2 report /proc/self/fd with size 0: the count is then the listing's
    (the same number, the listing's own descriptor left out), never 0 descriptors."""
    real_stat = os.stat
    seen: list[str] = []

    def sizeless(path: str) -> os.stat_result:
        seen.append(path)
        st = real_stat(path)
        return os.stat_result((*st[:6], 0, *st[7:]))

    monkeypatch.setattr(os, "stat", sizeless)
    socks = [socket.socket() for _ in range(50)]
    try:
        assert count_fds() == _listed() >= 50
    finally:
        for s in socks:
            s.close()
    assert seen == ["/proc/self/fd"]


def test_count_fds_is_zero_where_there_is_no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(path: str) -> os.stat_result:
        raise FileNotFoundError(path)

    monkeypatch.setattr(os, "stat", missing)
    assert count_fds() == 0
