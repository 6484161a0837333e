"""Hellos refused after their credential checked out (the audit of the stream's admission),
against a real control plane on 127.0.0.1: a hello that proved its workload but says what it
may not change about it is logged and counted like every other refusal, and a refused hello
never burns the single-use bootstrap token it carried."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import aiohttp
import msgspec
import pytest
from tests.support.controlplane import (
    apply,
    auth,
    first_answer,
    issue_token,
    running_control_plane,
)

from tulle.controlplane.main import ControlPlane
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Certificate,
    Error,
    Hello,
    Message,
    WorkloadInfo,
)

NS = "shop"


def _workload(name: str, sa: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"address": "127.0.0.1", "serviceAccount": sa}}


async def _hello(port: int, hello: Hello) -> Message:
    return await first_answer(port, hello)


def _h(w: WorkloadInfo, **kw: Any) -> Hello:
    return Hello(workload=w, api_versions=[CONFIG_API_VERSION], **kw)


async def _stream_counters(cp: ControlPlane) -> dict[str, int]:
    """What `GET /api/v1/proxies` says the stream refused."""
    async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
            s.get(f"{cp.api_url}/api/v1/proxies") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
    return dict(body["stream"])


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "not admitted" in r.getMessage()]


async def test_a_refused_hello_of_a_proven_workload_is_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """The audit: with a valid certificate for shop/probe-1, a hello announcing another
    service account or address got its `Error`, but no log line and no counter said so."""
    caplog.set_level(logging.INFO)
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, _workload("probe-1", "probe"))
        assert status == 200, body
        w = WorkloadInfo(name="probe-1", namespace=NS)
        key = WorkloadKey()
        token = await issue_token(cp.api_url, w)
        cert = await _hello(cp.stream_port, _h(w, token=token, csr=key.csr(NS, "probe-1")))
        assert isinstance(cert, Certificate)
        before = await _stream_counters(cp)

        def proven(**info: Any) -> Hello:
            now = int(dt.datetime.now(dt.UTC).timestamp())
            return _h(WorkloadInfo(name="probe-1", namespace=NS, **info),
                      certificate=cert.cert_chain, proof_time=now,
                      proof=key.proof(NS, "probe-1", now))

        sent = [(proven(service_account="api"),
                 "serviceAccount 'api' is not the admitted identity's"),
                (proven(address="10.1.1.1"), "spec.address: a hello cannot change it")]
        for hello, why in sent:
            reply = await _hello(cp.stream_port, hello)
            assert isinstance(reply, Error) and why in reply.reason, reply
        lines = _refusals(caplog)
        assert len(lines) == 2, lines
        for line, (hello, why) in zip(lines, sent, strict=True):
            assert line.startswith("proxy shop/probe-1 from 127.0.0.1:") and why in line
            assert hello.proof not in line
        after = await _stream_counters(cp)
        assert after["badHellos"] == before["badHellos"] + 2
        assert after["unauthenticatedHellos"] == before["unauthenticatedHellos"]

        # A proxy retrying the same refusal is counted each time, logged once per 10 s.
        for _ in range(5):
            reply = await _hello(cp.stream_port, proven(address="10.1.1.1"))
            assert isinstance(reply, Error)
        assert len(_refusals(caplog)) == 2
        assert (await _stream_counters(cp))["badHellos"] == before["badHellos"] + 7
    assert token not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_a_refused_hello_leaves_its_token_for_the_corrected_one() -> None:
    """The audit: db-0 is declared at 127.0.0.1; a proxy started with `--address 127.0.0.2`
    was refused, and every retry after was refused as `already used`, forever."""
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, _workload("db-0", "db"))
        assert status == 200, body
        token = await issue_token(cp.api_url, WorkloadInfo(name="db-0", namespace=NS))
        csr = WorkloadKey().csr(NS, "db-0")
        wrong = WorkloadInfo(name="db-0", namespace=NS, address="127.0.0.2")
        for _ in range(2):  # a proxy retrying with the same token and the same mistake
            reply = await _hello(cp.stream_port, _h(wrong, token=token, csr=csr))
            assert isinstance(reply, Error), reply
            assert "spec.address: a hello cannot change it" in reply.reason
        right = WorkloadInfo(name="db-0", namespace=NS, address="127.0.0.1")
        reply = await _hello(cp.stream_port, _h(right, token=token, csr=csr))
        assert isinstance(reply, Certificate), reply
        # Spent by the admitted hello: refused from now on, whatever the hello says.
        for hello in (_h(right, token=token, csr=csr), _h(wrong, token=token, csr=csr)):
            reply = await _hello(cp.stream_port, hello)
            assert isinstance(reply, Error) and "already used (single-use)" in reply.reason


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_concurrent_hellos_with_one_token_admit_at_most_one(
        store: str, tmp_path: Any) -> None:
    url = "memory" if store == "memory" else f"sqlite:{tmp_path}/tulle.db"
    async with running_control_plane(url) as cp:
        w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
        token = await issue_token(cp.api_url, w)
        hellos = [_h(w, token=token, csr=WorkloadKey().csr(NS, "web-0")) for _ in range(8)]
        # One of them says what it may not: refused, it must neither win nor free the token
        # for a second winner.
        hellos.append(_h(msgspec.structs.replace(w, service_account="api"), token=token,
                         csr=WorkloadKey().csr(NS, "web-0")))
        replies = await asyncio.gather(*(_hello(cp.stream_port, h) for h in hellos))
        admitted = [r for r in replies if isinstance(r, Certificate)]
        assert len(admitted) == 1, replies
        errors = [r for r in replies if isinstance(r, Error)]
        assert len(errors) == len(hellos) - 1
        assert all("already used" in e.reason or "serviceAccount 'api'" in e.reason
                   for e in errors), errors
        reply = await _hello(cp.stream_port, hellos[0])
        assert isinstance(reply, Error) and "already used" in reply.reason


async def test_a_flood_of_unauthenticated_hellos_is_counted_not_logged_line_by_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """Refused credentials are logged once per workload and reason; a peer inventing a new
    workload name per hello made that one line per hello.  New lines are now held to a
    budget per 10 s, the rest summed up in one line; the counter counts each hello."""
    caplog.set_level(logging.INFO)
    async with running_control_plane() as cp:
        before = (await _stream_counters(cp))["unauthenticatedHellos"]
        n = 40
        replies = await asyncio.gather(*(
            _hello(cp.stream_port, _h(WorkloadInfo(name=f"flood-{i}", namespace=NS)))
            for i in range(n)))
        assert all(isinstance(r, Error) and "authentication required" in r.reason
                   for r in replies)
        assert (await _stream_counters(cp))["unauthenticatedHellos"] == before + n
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        named = [ln for ln in lines if " not admitted: " in ln]
        summed = [ln for ln in lines if "hellos not admitted, over the log budget" in ln]
        assert 1 <= len(named) <= 10, named
        assert len(summed) == 1, lines


async def test_a_first_hello_registers_a_dual_stack_pods_second_address_once() -> None:
    """`tulle proxy run --additional-address` (ADR 0088): the Workload the first hello makes
    has it, so mesh clients call that address over mTLS; like `address`, a later hello cannot
    change it, and one that is no pod's second address is refused with the field."""
    async with running_control_plane() as cp:
        dual = WorkloadInfo(name="dual-0", namespace=NS, address="10.1.2.3",
                            additional_addresses=["fd00:1::3"])
        token = await issue_token(cp.api_url, dual)
        key = WorkloadKey()
        cert = await _hello(cp.stream_port, _h(dual, token=token, csr=key.csr(NS, "dual-0")))
        assert isinstance(cert, Certificate), cert
        stored = cp.store  # the Workload as the stream made it
        obj = await stored.get("Workload", NS, "dual-0")
        assert obj["spec"]["additionalAddresses"] == ["fd00:1::3"]
        assert obj["spec"]["address"] == "10.1.2.3"

        now = int(dt.datetime.now(dt.UTC).timestamp())
        moved = WorkloadInfo(name="dual-0", namespace=NS, address="10.1.2.3",
                             additional_addresses=["fd00:1::99"])
        reply = await _hello(cp.stream_port, _h(moved, certificate=cert.cert_chain,
                                                 proof_time=now, proof=key.proof(NS, "dual-0",
                                                                                 now)))
        assert isinstance(reply, Error), reply
        assert "spec.additionalAddresses: a hello cannot change them" in reply.reason

        bad = WorkloadInfo(name="bad-0", namespace=NS, address="10.1.2.4",
                           additional_addresses=["10.1.2.5"])
        token = await issue_token(cp.api_url, bad)
        reply = await _hello(cp.stream_port, _h(bad, token=token, csr=WorkloadKey().csr(
            NS, "bad-0")))
        assert isinstance(reply, Error), reply
        assert "additionalAddresses" in reply.reason and "same family" in reply.reason


async def test_a_hello_naming_the_stored_addresses_otherwise_written_is_admitted() -> None:
    """A review: the operator applied `FD00:1::AB`, the pod's proxy said `fd00:1::ab`, and the
    hello was refused as a change of the address."""
    async with running_control_plane() as cp:
        doc = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
               "metadata": {"name": "dual-1", "namespace": NS},
               "spec": {"address": "10.1.2.9", "additionalAddresses": ["FD00:1::AB"]}}
        status, body = await apply(cp.api_url, doc)
        assert status == 200, body
        w = WorkloadInfo(name="dual-1", namespace=NS, address="10.1.2.9",
                         additional_addresses=["fd00:1:0::ab"])
        token = await issue_token(cp.api_url, w)
        reply = await _hello(cp.stream_port, _h(w, token=token,
                                                 csr=WorkloadKey().csr(NS, "dual-1")))
        assert isinstance(reply, Certificate), reply



async def test_a_hello_over_a_dual_stack_stream_socket_registers_the_ipv4_address() -> None:
    """A stream socket handed over (`--stream-fd`) may be dual-stack (`::`, IPv6-only off):
    an IPv4 proxy's address then arrives as `::ffff:127.0.0.1`.  The Workload its hello makes
    gets the IPv4 address (peers are compared as IPv4; the API refuses the mapped form)."""
    import socket

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen(16)
    async with running_control_plane(stream_fd=sock.detach()) as cp:  # it owns the socket now
        w = WorkloadInfo(name="v4-0", namespace=NS)  # no address: the peer's is taken
        token = await issue_token(cp.api_url, w)
        got = await _hello(cp.stream_port, _h(w, token=token, csr=WorkloadKey().csr(NS, "v4-0")))
        assert isinstance(got, Certificate), got
        obj = await cp.store.get("Workload", NS, "v4-0")
        assert obj["spec"]["address"] == "127.0.0.1"
