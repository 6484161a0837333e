"""An admitted proxy turned hostile: what it can still make the control plane do over the
stream (issue 9, attack review A1).  Real control plane, real TLS on 127.0.0.1, a raw peer that
records the frames it receives."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from tests.support.controlplane import (
    auth,
    authenticated,
    open_stream,
    running_control_plane,
)

from tulle.controlplane.push.renewals import BURST
from tulle.controlplane.push.session import REPLY_BACKLOG
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Ack,
    Certificate,
    Csr,
    Error,
    FrameDecoder,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    TrustAck,
    WorkloadInfo,
    encode,
)

NS = "shop"


async def _admitted(api: str, port: int, name: str = "web-0") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, list[Message]]:
    """A raw stream admitted with a bootstrap token: (reader, writer, frames received)."""
    hello = await authenticated(api, Hello(workload=WorkloadInfo(name=name, namespace=NS),
                                           api_versions=[CONFIG_API_VERSION]))
    reader, writer = await open_stream(port)
    writer.write(encode(hello))
    got: list[Message] = []
    dec = FrameDecoder()
    while not any(isinstance(m, Certificate) for m in got):
        data = await asyncio.wait_for(reader.read(65536), timeout=5)
        assert data, "closed before the certificate"
        got += dec.feed(data)
    return reader, writer, got


async def _drain(reader: asyncio.StreamReader, dec: FrameDecoder, until: int,
                 timeout: float = 10, stop: type[Message] | None = None) -> list[Message]:
    """Frames until `until` of them (or one of type `stop`) arrived or the stream closed."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while len(got) < until and not (stop and any(isinstance(m, stop) for m in got)):
            data = await reader.read(65536)
            if not data:
                break
            got += dec.feed(data)
    return got


async def test_a_csr_flood_from_an_admitted_proxy_is_cut_off() -> None:
    """200 renewal CSRs in one write used to be 200 signatures on the event loop."""
    async with running_control_plane() as cp:
        reader, writer, _ = await _admitted(cp.api_url, cp.stream_port)
        assert cp.admission is not None
        before = cp.admission.signed
        csr = WorkloadKey().csr(NS, "web-0")
        n = 200
        writer.write(b"".join(encode(Csr(csr=csr)) for _ in range(n)))
        got = await _drain(reader, FrameDecoder(), n)
        writer.close()
        signed = cp.admission.signed - before
        assert signed == BURST  # a real proxy's burst: renewal plus a rotation's request
        assert sum(isinstance(m, Certificate) for m in got) == BURST
        errors = [m for m in got if isinstance(m, Error)]
        assert len(errors) == 1 and "too many certificate requests" in errors[0].reason
        assert len(got) < n  # the stream was closed, the rest never handled
        # The listener still admits the next proxy.
        reader2, writer2, frames = await _admitted(cp.api_url, cp.stream_port, "web-1")
        writer2.close()
        assert any(isinstance(m, Certificate) for m in frames)


FORGED = "\n2026-12-03 13:00:00 CRITICAL tulle: FORGED LINE\x1b]52;c;ZXZpbA==\x07\x1b[2J"


def _clean(text: str) -> None:
    """No line of `text` forged by a peer, no terminal control sequence, nothing huge."""
    assert "\x1b" not in text and "\x07" not in text
    for line in text.splitlines():
        assert not line.lstrip().startswith("2026-12-03 13:00:00"), line
        assert len(line) < 4096, len(line)


def _strings(obj: object) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


async def test_an_anonymous_hello_cannot_forge_or_flood_log_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_control_plane() as cp:
        big = "n" * 60_000
        for w, versions in ((WorkloadInfo(name="web" + FORGED, namespace=NS), []),
                            (WorkloadInfo(name=big, namespace=big[:3000]), []),
                            (WorkloadInfo(name="web-0", namespace=NS), ["x" + FORGED])):
            reader, writer = await open_stream(cp.stream_port)
            writer.write(encode(Hello(workload=w, api_versions=versions)))
            got = await _drain(reader, FrameDecoder(), 1)
            writer.close()
            assert got and isinstance(got[0], Error)
        assert cp.push is not None
        counters = cp.push.counters()
        assert counters["unauthenticatedHellos"] + counters["unsupportedHellos"] == 3
        # what the server remembers about refused peers (to log each once) stays small
        assert sum(len(repr(k)) for k in cp.push._told) < 10_000
    _clean(caplog.text)


async def test_what_an_admitted_proxy_reports_is_bounded_and_shown_escaped(
        caplog: pytest.LogCaptureFixture) -> None:
    """NACK reasons and paths, ACKed versions and trust-bundle ids are the proxy's to choose;
    `tulle get proxies` and `tulle describe` print them on the operator's terminal."""
    caplog.set_level(logging.INFO)
    async with running_control_plane() as cp:
        reader, writer, _ = await _admitted(cp.api_url, cp.stream_port)
        nack = Nack(version="v" + FORGED, reason="bad" + FORGED + "r" * 100_000,
                    paths=["p" + FORGED] * 2000)
        writer.write(b"".join([encode(nack)] * 50 + [
            encode(TrustAck(id="t" + FORGED + "i" * 100_000)),
            encode(Ack(version="a" + FORGED)), encode(Ping())]))
        assert any(isinstance(m, Pong) for m in await _drain(reader, FrameDecoder(), 50, stop=Pong))
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
                s.get(f"{cp.api_url}/api/v1/proxies") as r:
            status = next(p for p in (await r.json())["items"] if p["name"] == "web-0")
        writer.close()
        for text in _strings(status):
            assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text), text[:200]
        assert len(json.dumps(status)) < 20_000
        assert "FORGED" in status["lastNack"]["reason"]  # kept, escaped, not dropped
        assert caplog.text.count("rejected version") == 1  # 50 identical NACKs, one line
    _clean(caplog.text)


async def test_a_proxy_that_pings_without_reading_is_held_back_not_buffered() -> None:
    async with running_control_plane() as cp:
        reader, writer, _ = await _admitted(cp.api_url, cp.stream_port)
        writer.transport.pause_reading()  # never read a pong
        chunk = encode(Ping()) * 50_000  # ~1 MB of pings
        sent = 0
        try:
            while sent < 60 * len(chunk):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                sent += len(chunk)
        except TimeoutError:
            pass  # the control plane stopped reading us: what we want
        assert cp.push is not None
        (session,) = cp.push.live
        buffered = session.writer.transport.get_write_buffer_size()
        writer.transport.abort()
        assert sent < 60 * len(chunk), "sent everything: nothing held us back"
        assert buffered < 2 * REPLY_BACKLOG, buffered
