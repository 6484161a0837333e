"""An admitted proxy turned hostile: what it can still make the control plane do over the
stream (issue 9, attack review A1).  Real control plane, real TLS on 127.0.0.1, a raw peer that
records the frames it receives."""

from __future__ import annotations

import asyncio

from tests.support.controlplane import authenticated, open_stream, running_control_plane

from tulle.controlplane.push.renewals import BURST
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Certificate,
    Csr,
    Error,
    FrameDecoder,
    Hello,
    Message,
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


async def _drain(reader: asyncio.StreamReader, dec: FrameDecoder,
                 until: int, timeout: float = 10) -> list[Message]:
    """Frames until `until` of them arrived or the stream closed."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while len(got) < until:
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
