"""The network filter chain, driven by scripted filters: continue, reject, stop and resume, the
stop bound, filters that raise, the declared order, and what `on_close` sees."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from tulle.dataplane.network.chain import NetworkChain, build_chain
from tulle.dataplane.network.filter import (
    CONTINUE,
    STOP,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Reject,
    Verdict,
)
from tulle.dataplane.telemetry.metrics import ProxyMetrics

FACTS = ConnectionFacts(listener="tcp-in", direction="inbound", peer=("10.1.2.3", 40000),
                        local=("127.0.0.1", 9000), original_destination=None)


@dataclass
class Scripted:
    """A filter (and its own factory) that answers `answer` and records what it was asked."""

    name: str
    answer: Verdict | Exception = CONTINUE
    observer: bool = False
    stop_timeout: float = 5.0
    log: list[str] = field(default_factory=list)
    control: Control | None = None
    closed: list[ConnectionRecord] = field(default_factory=list)
    raise_on_close: bool = False
    resume_inside: bool = False

    def create(self) -> Scripted:
        return self

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        self.log.append(f"{self.name}.connect")
        self.control = control
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.resume_inside:
            control.resume()
        return self.answer

    def on_close(self, record: ConnectionRecord) -> None:
        self.log.append(f"{self.name}.close")
        self.closed.append(record)
        if self.raise_on_close:
            raise RuntimeError("boom in on_close")


def chain_of(*filters: Scripted) -> tuple[NetworkChain, ProxyMetrics]:
    metrics = ProxyMetrics()
    return NetworkChain(filters, "tcp-in", metrics), metrics


def rejections(m: ProxyMetrics, name: str, reason: str) -> float:
    return m.network_filter_rejections.labels("tcp-in", name, reason).value


def errors(m: ProxyMetrics, name: str, hook: str) -> float:
    return m.network_filter_errors.labels("tcp-in", name, hook).value


def record() -> ConnectionRecord:
    r = ConnectionRecord(FACTS, "backend")
    r.close_reason = "eof"
    return r


async def test_every_filter_continues_then_the_connection_goes_on() -> None:
    log: list[str] = []
    a, b = Scripted("source_ip", log=log), Scripted("rate_limit", log=log)
    obs = Scripted("flow_log", observer=True, log=log)
    chain, _ = chain_of(a, b, obs)
    run = chain.connection(FACTS)
    assert await run.admit() is None
    rec = record()
    run.closed(rec)
    # Observers never see on_connect; every decider that saw the connection sees its close.
    assert log == ["source_ip.connect", "rate_limit.connect", "source_ip.close",
                   "rate_limit.close", "flow_log.close"]
    assert obs.closed[0] is rec and rec.rejected_by == "" and rec.reject_reason == ""


async def test_the_order_is_the_declared_one_whatever_the_config_order() -> None:
    log: list[str] = []
    chain, _ = chain_of(Scripted("flow_log", observer=True, log=log),
                        Scripted("rate_limit", log=log), Scripted("connection_limit", log=log),
                        Scripted("source_ip", log=log))
    assert [f.name for f in chain.deciders] == ["source_ip", "connection_limit", "rate_limit"]
    assert await chain.connection(FACTS).admit() is None
    assert log == ["source_ip.connect", "connection_limit.connect", "rate_limit.connect"]


async def test_a_reject_stops_the_chain_and_is_counted() -> None:
    log: list[str] = []
    a = Scripted("source_ip", answer=Reject("denied"), log=log)
    b = Scripted("rate_limit", log=log)
    obs = Scripted("flow_log", observer=True, log=log)
    chain, m = chain_of(a, b, obs)
    run = chain.connection(FACTS)
    assert await run.admit() == Reject("denied")
    rec = ConnectionRecord(FACTS, "backend")
    rec.close_reason = "rejected"
    run.closed(rec)
    assert log == ["source_ip.connect", "source_ip.close", "flow_log.close"]
    assert (rec.rejected_by, rec.reject_reason) == ("source_ip", "denied")
    assert rejections(m, "source_ip", "denied") == 1


async def test_stop_then_resume_continues_with_the_next_filter() -> None:
    log: list[str] = []
    a = Scripted("source_ip", answer=STOP, log=log)
    b = Scripted("rate_limit", log=log)
    chain, _ = chain_of(a, b)
    task = asyncio.create_task(chain.connection(FACTS).admit())
    await asyncio.sleep(0)
    assert not task.done() and log == ["source_ip.connect"]
    assert a.control is not None
    a.control.resume()
    assert await task is None
    assert log == ["source_ip.connect", "rate_limit.connect"]
    a.control.resume()  # a second call is ignored
    a.control.reject("late")


async def test_stop_then_reject_later() -> None:
    a = Scripted("source_ip", answer=STOP)
    chain, m = chain_of(a)
    task = asyncio.create_task(chain.connection(FACTS).admit())
    await asyncio.sleep(0)
    assert a.control is not None
    a.control.reject("external_deny")
    assert await task == Reject("external_deny")
    assert rejections(m, "source_ip", "external_deny") == 1


async def test_a_reject_after_a_resume_names_the_filter_that_rejected() -> None:
    a = Scripted("source_ip", answer=STOP)
    b = Scripted("rate_limit", answer=Reject("over_rate"))
    chain, m = chain_of(a, b)
    run = chain.connection(FACTS)
    task = asyncio.create_task(run.admit())
    await asyncio.sleep(0)
    assert a.control is not None
    a.control.resume()
    assert await task == Reject("over_rate")
    assert run.rejected_by == "rate_limit"
    assert rejections(m, "rate_limit", "over_rate") == 1
    assert rejections(m, "source_ip", "over_rate") == 0


async def test_a_resume_from_inside_on_connect_counts_as_continue() -> None:
    a = Scripted("source_ip", answer=STOP, resume_inside=True)
    b = Scripted("rate_limit")
    chain, _ = chain_of(a, b)
    assert await chain.connection(FACTS).admit() is None
    assert b.log == ["rate_limit.connect"]


async def test_a_stop_that_never_resumes_is_rejected_at_its_bound() -> None:
    a = Scripted("source_ip", answer=STOP, stop_timeout=0.01)
    b = Scripted("rate_limit")
    chain, m = chain_of(a, b)
    run = chain.connection(FACTS)
    assert await asyncio.wait_for(run.admit(), 2) == Reject("timeout")
    assert rejections(m, "source_ip", "timeout") == 1
    assert a.control is not None
    a.control.resume()  # too late: ignored
    assert b.log == []
    rec = record()
    run.closed(rec)
    assert a.closed == [rec]  # it saw the connection, so it sees the close (to cancel its call)


async def test_a_connection_aborted_while_a_filter_waits_runs_the_close_hooks() -> None:
    a = Scripted("source_ip", answer=STOP)
    b = Scripted("rate_limit")
    chain, _ = chain_of(a, b)
    run = chain.connection(FACTS)
    task = asyncio.create_task(run.admit())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run.closed(record())
    assert a.control is not None
    a.control.resume()  # after the end: ignored, the next filter never runs
    assert b.log == [] and len(a.closed) == 1


async def test_a_filter_that_raises_rejects_its_connection_and_is_counted() -> None:
    log: list[str] = []
    a = Scripted("source_ip", answer=RuntimeError("bug"), log=log)
    b = Scripted("rate_limit", log=log)
    chain, m = chain_of(a, b)
    run = chain.connection(FACTS)
    assert await run.admit() == Reject("filter_error")
    assert errors(m, "source_ip", "on_connect") == 1
    assert rejections(m, "source_ip", "filter_error") == 1
    assert log == ["source_ip.connect"]
    # The next connection is served as usual (the chain holds no broken state).
    a.answer = CONTINUE
    assert await chain.connection(FACTS).admit() is None


async def test_a_filter_answering_nonsense_is_a_filter_error() -> None:
    a = Scripted("source_ip", answer="yes please")  # type: ignore[arg-type]
    chain, m = chain_of(a)
    assert await chain.connection(FACTS).admit() == Reject("filter_error")
    assert errors(m, "source_ip", "on_connect") == 1


async def test_a_close_hook_that_raises_does_not_stop_the_others() -> None:
    a = Scripted("source_ip", raise_on_close=True)
    obs = Scripted("flow_log", observer=True, raise_on_close=True)
    obs2 = Scripted("flow_log", observer=True)
    chain, m = chain_of(a, obs, obs2)
    run = chain.connection(FACTS)
    assert await run.admit() is None
    run.closed(record())
    assert len(obs2.closed) == 1
    assert errors(m, "source_ip", "on_close") == 1
    assert errors(m, "flow_log", "on_close") == 1


def test_a_listener_without_network_filters_has_no_chain() -> None:
    assert build_chain([], "tcp-in", ProxyMetrics()) is None
