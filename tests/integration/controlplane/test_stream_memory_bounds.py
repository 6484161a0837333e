"""The stream's memory against peers that misbehave (ADR 0118): one stream per workload, and a
push nobody reads is cut.

Real control planes (one as a real `tulle control-plane run` process, for its RSS), real TLS on
127.0.0.1, raw peers speaking the stream by hand: a proxy that reconnects with its certificate
and leaves its old streams open, a proxy back after a network blip while its old stream is
still open on the control plane, a subscriber that never reads its snapshot, one that reads
slowly, one gone silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from tests.support.controlplane import (
    apply,
    auth,
    control_plane_process,
    eventually,
    issue_token,
    running_control_plane,
)
from tests.support.resources import scale_address, scale_mesh

from tulle.controlplane.main import ControlPlane
from tulle.controlplane.push.server import CLOSE_GRACE
from tulle.dataplane.identity import WorkloadKey
from tulle.dataplane.stream_tls import StreamTrust, client_context
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Ack,
    Certificate,
    DeltaMsg,
    Error,
    FrameDecoder,
    Hello,
    Message,
    Snapshot,
    WorkloadInfo,
    encode,
)

NS = "mem"


def _info(i: int) -> WorkloadInfo:
    return WorkloadInfo(name=f"w-{i}", namespace=NS, address=scale_address(i))


class Identity:
    """A workload's key and the certificate the control plane signed for it."""

    def __init__(self, info: WorkloadInfo) -> None:
        self.info = info
        self.key = WorkloadKey()
        self.cert = ""

    def token_hello(self, token: str) -> Hello:
        w = self.info
        return Hello(workload=w, token=token, csr=self.key.csr(w.namespace, w.name),
                     api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED))

    def cert_hello(self, last_version: str = "") -> Hello:
        """What a proxy's agent says on a reconnect: its certificate and a fresh proof."""
        w, at = self.info, int(time.time())  # noqa: TID251 - the proof's wall clock
        return Hello(workload=w, certificate=self.cert, proof_time=at,
                     proof=self.key.proof(w.namespace, w.name, at), last_version=last_version,
                     api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED))


class Raw:
    """A stream spoken by hand: the frames it read, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 26)
        self.got: list[Message] = []

    def pause(self) -> None:
        """Read nothing more from the socket (what the kernel buffers stays unread)."""
        cast(asyncio.ReadTransport, self.writer.transport).pause_reading()

    async def until(self, kinds: tuple[type[Message], ...], timeout: float = 10) -> Message | None:
        """Read until a frame of one of `kinds` arrives (returned) or the stream ends (None)."""
        async with asyncio.timeout(timeout):
            while True:
                for m in self.got:
                    if isinstance(m, kinds):
                        self.got.remove(m)
                        return m
                data = await self.reader.read(1 << 20)
                if not data:
                    return None
                self.got += self.decoder.feed(data)


async def _open(trust: StreamTrust, port: int, hello: Hello) -> Raw:
    reader, writer = await trust.connect("127.0.0.1", port)
    writer.write(encode(hello))
    return Raw(reader, writer)


async def _admitted(api: str, port: int, ident: Identity) -> tuple[StreamTrust, Raw, str]:
    """First contact with a bootstrap token: the stream's trust, the open stream, and the
    version of the snapshot it ACKed."""
    token = await issue_token(api, ident.info)
    trust = StreamTrust.from_options(token)
    raw = await _open(trust, port, ident.token_hello(token))
    cert = await raw.until((Certificate,))
    assert isinstance(cert, Certificate), raw.got
    ident.cert = cert.cert_chain
    trust.learn(cert.trust_bundle)
    snap = await raw.until((Snapshot,))
    assert isinstance(snap, Snapshot), raw.got
    raw.writer.write(encode(Ack(version=snap.version)))
    return trust, raw, snap.version


async def _stream_counters(api: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/proxies") as r:
        return dict((await r.json())["stream"])


RECONNECTS = 250


async def test_a_proxy_reconnecting_without_closing_its_streams_holds_one_stream(
        tmp_path: Path) -> None:
    """ADR 0109 left this open: a reconnect loop grew the real control plane from 111 to
    430 MB, not returned after the loop stopped.  Its cause: every stream it opened stayed
    open (until the liveness timeout, or for ever for one that answers pings), each holding a
    TLS connection and what its push left resident (~300 KB here).  Before: after this loop
    251 streams were open and RSS had grown 73 MB; now each new stream ends the older one,
    one stays open, and RSS grows ~2 MB."""
    async with control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path,
                                     "--log-level", "warning") as cp:
        status, body = await apply(cp.api, *scale_mesh(150, NS))
        assert status == 200, body
        ident = Identity(_info(0))
        trust, first, _ = await _admitted(cp.api, cp.stream_port, ident)
        first.pause()
        rss0 = cp.rss_kib()
        held = [first]
        for _ in range(RECONNECTS):
            raw = await _open(trust, cp.stream_port, ident.cert_hello())
            snap = await raw.until((Snapshot,))
            assert isinstance(snap, Snapshot), raw.got
            raw.writer.write(encode(Ack(version=snap.version)))
            raw.pause()  # left open, never read again
            held.append(raw)

        async def one_left() -> bool:
            return int((await _stream_counters(cp.api))["connections"]) == 1

        with contextlib.suppress(AssertionError):  # (asserted below, with the RSS)
            await eventually(one_left, timeout=5, interval=0.2)
        grown_mb = (cp.rss_kib() - rss0) / 1024
        counters = await _stream_counters(cp.api)
        for raw in held:
            raw.writer.transport.abort()
        assert counters["connections"] == 1, (counters, f"RSS grew {grown_mb:.0f} MB")
        assert counters["replacedStreams"] == RECONNECTS
        assert grown_mb < 25, f"RSS grew {grown_mb:.0f} MB over {RECONNECTS} reconnects"
        assert "was replaced by a newer one" in cp.log()


class NonReader:
    """A subscriber that says hello over TLS and then reads nothing (a blocking socket with a
    4 KiB receive buffer, driven from a thread: no event loop reads ahead for it), or reads
    as slowly as it is told (`read`)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(1 << 26)
        self.got: list[Message] = []

    @classmethod
    async def open(cls, trust: StreamTrust, port: int, hello: Hello) -> NonReader:
        ctx = client_context()
        ctx.load_verify_locations(cadata="".join(trust.anchors))

        def connect() -> ssl.SSLSocket:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.settimeout(5)
            raw.connect(("127.0.0.1", port))
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(encode(hello))
            return tls

        return cls(await asyncio.to_thread(connect))

    async def read(self, n: int) -> bytes:
        return await asyncio.to_thread(self.sock.recv, n)

    async def send(self, msg: Message) -> None:
        await asyncio.to_thread(self.sock.sendall, encode(msg))

    async def until(self, kinds: tuple[type[Message], ...]) -> Message | None:
        """Frames until one of `kinds` (returned), or None at the end of the stream."""
        while True:
            for m in self.got:
                if isinstance(m, kinds):
                    self.got.remove(m)
                    return m
            data = await self.read(1 << 16)
            if not data:
                return None
            self.got += self.decoder.feed(data)

    def abort(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def _stored(cp: ControlPlane, name: str) -> dict[str, Any]:
    assert cp.store is not None
    obj = await cp.store.get("Workload", NS, name)
    return dict((obj.get("status") or {}).get("proxy") or {})


@pytest.mark.parametrize("says_version", [True, False], ids=["serving", "starting"])
async def test_a_proxy_back_after_a_blip_is_served_while_its_old_stream_is_open(
        says_version: bool) -> None:
    """The network blipped: the proxy reconnects while the control plane still holds its old
    stream (half-open: nothing will ever come from it, or close it).  The new stream is
    served at once, the old one is ended (told why, if anything still reads it), and the old
    one's end does not take the workload out of its Services' endpoints: presence stays the
    new session's `Connected` (ADR 0116's writes are by session).  `starting`: the new hello
    names no version, so the workload is out until the new stream's first ACK, as for any
    start."""
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, *scale_mesh(3, NS))
        assert status == 200, body
        ident = Identity(_info(1))
        trust, first, _ = await _admitted(cp.api_url, cp.stream_port, ident)
        first.writer.close()
        old = await NonReader.open(trust, cp.stream_port, ident.cert_hello())
        snap = await old.until((Snapshot,))
        assert isinstance(snap, Snapshot), old.got
        await old.send(Ack(version=snap.version))

        async def connected(session: str = "") -> bool:
            st = await _stored(cp, "w-1")
            return st.get("state") == "Connected" and st.get("session") != session

        assert cp.push is not None
        await eventually(lambda: cp.push is not None and len(cp.push._sessions) == 1)
        await eventually(connected)
        old_session = (await _stored(cp, "w-1"))["session"]
        # The blip: nothing more is read from the old stream, nor closed.
        new = await _open(trust, cp.stream_port,
                          ident.cert_hello(snap.version if says_version else ""))
        try:
            if not says_version:
                again = await new.until((Snapshot,))
                assert isinstance(again, Snapshot), new.got
                new.writer.write(encode(Ack(version=again.version)))
            await eventually(lambda: connected(old_session))
            await eventually(lambda: cp.push is not None and len(cp.push._sessions) == 1)
            await asyncio.sleep(0.3)  # (the old session's end, written or dropped by now)
            assert cp.presence is not None and not cp.presence.pending
            stored = await _stored(cp, "w-1")
            assert stored["state"] == "Connected" and stored["session"] != old_session, stored
            st = cp.push.status[(NS, "w-1")]
            assert st.connected and st.peer.endswith(
                f":{new.writer.get_extra_info('sockname')[1]}"), st.peer
            assert cp.push.counters()["replacedStreams"] == 1
            told = await old.until((Error,))  # what the old stream's peer was sent
            assert isinstance(told, Error) and "replaced by a newer one" in told.reason, old.got
            assert await old.until((Snapshot, DeltaMsg)) is None  # and then the end
        finally:
            old.abort()
            new.writer.close()


def _small_buffers_listener() -> int:
    """A listening socket whose connections get a 4 KiB send buffer (inherited on accept):
    a snapshot of a few hundred KB then cannot hide in the kernel from a peer that reads
    nothing.  Its fd, handed to the control plane (`--stream-fd`)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock.detach()


STALL = 1.0


async def _back_with_its_certificate(cp: ControlPlane, services: int, i: int) -> NonReader:
    """Workload `w-i` of a mesh of `services` Services, admitted with its token, its first
    stream closed and gone from the control plane, and back on a second stream with the
    certificate it got, which reads nothing until the test says."""
    status, body = await apply(cp.api_url, *scale_mesh(services, NS))
    assert status == 200, body
    ident = Identity(_info(i))
    trust, first, _ = await _admitted(cp.api_url, cp.stream_port, ident)
    first.writer.close()
    await eventually(lambda: cp.push is not None and not cp.push._sessions)
    return await NonReader.open(trust, cp.stream_port, ident.cert_hello())


async def test_a_subscriber_that_reads_nothing_is_cut_at_the_stall_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    """ADR 0109 left this open: a subscriber that does not read held the rest of its
    snapshot in the control plane (encrypted, written at once after 10 s) until the liveness
    timeout, 30 s: 70 of them at 3,500 Services grew it from 203 to 676 MB.  Now the push
    that goes `--stream-stall-timeout` without the proxy taking any of it ends the stream:
    counted, logged, and the workload's status says why.  Before: still open 8 s later."""
    caplog.set_level(logging.WARNING, "tulle.controlplane.push")
    async with running_control_plane(stream_fd=_small_buffers_listener(),
                                     stream_stall_timeout=STALL) as cp:
        peer = await _back_with_its_certificate(cp, 250, 2)
        loop = asyncio.get_running_loop()
        start = loop.time()  # (the push starts once the control plane has read the hello)
        try:
            await eventually(lambda: cp.push is not None and cp.push.stalled_pushes == 1,
                             timeout=8)
            took = loop.time() - start
            await eventually(lambda: cp.push is not None and not cp.push._sessions, timeout=3)
        finally:
            peer.abort()
        assert STALL <= took < STALL + 5, took
        stored = await _stored(cp, "w-2")
        assert "read nothing of its config" in stored.get("reason", ""), stored
        assert any("read nothing of version" in r.getMessage() for r in caplog.records)


async def test_a_slow_subscriber_that_keeps_reading_gets_its_whole_snapshot() -> None:
    """The stall timeout is on progress, not on the whole frame: a proxy reading 32 KiB every
    0.1 s takes longer than `--stream-stall-timeout` for its ~560 KB snapshot, and is not
    cut (each chunk it is sent drains well within the timeout)."""
    stall = 1.5
    async with running_control_plane(stream_fd=_small_buffers_listener(),
                                     stream_stall_timeout=stall) as cp:
        peer = await _back_with_its_certificate(cp, 400, 3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        decoder = FrameDecoder(1 << 26)
        got: list[Message] = []
        reads = 0
        try:
            while not any(isinstance(m, Snapshot) for m in got):
                data = await peer.read(16 * 1024)
                assert data, "the control plane closed the stream"
                got += decoder.feed(data)
                reads += 1
                if reads % 2 == 0:
                    await asyncio.sleep(0.1)
        finally:
            peer.abort()
        assert loop.time() - start > stall  # (slow indeed)
        assert cp.push is not None and cp.push.stalled_pushes == 0


async def test_a_silent_stream_lets_go_of_its_connection_soon_after_it_ends() -> None:
    """A proxy gone silent (its host lost, a half-open stream) is ended at the liveness
    timeout; the connection is then closed cleanly if the peer answers, else aborted after
    `CLOSE_GRACE`.  Before, the clean close waited for the peer's TLS close_notify for uvloop's
    own shutdown timeout, 30 s more, the connection and its buffers held all along."""
    async with running_control_plane(stream_ping_interval=0.2,
                                     stream_liveness_timeout=0.5) as cp:
        status, body = await apply(cp.api_url, *scale_mesh(3, NS))
        assert status == 200, body
        ident = Identity(_info(1))
        trust, first, _ = await _admitted(cp.api_url, cp.stream_port, ident)
        first.writer.close()
        assert cp.push is not None and cp.push._listener is not None
        listener = cp.push._listener
        await eventually(lambda: not listener._tasks)
        peer = await NonReader.open(trust, cp.stream_port, ident.cert_hello())
        try:
            snap = await peer.until((Snapshot,))
            assert isinstance(snap, Snapshot), peer.got
            await peer.send(Ack(version=snap.version))  # then nothing, ever
            await eventually(lambda: cp.push is not None and not cp.push._sessions)
            took = await eventually(lambda: not listener._tasks, timeout=CLOSE_GRACE + 3)
        finally:
            peer.abort()
        assert took < CLOSE_GRACE + 3, took
