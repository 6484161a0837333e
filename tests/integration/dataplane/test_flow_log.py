"""Flow logs through a real proxy: a TCP exchange on both relay engines checked field by field
(5-tuple, bytes and kernel-counted packets each way, duration, close reason, verdict), a
rejected connection, a failed connect, a passthrough, and interim records of a long
connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.integration.dataplane.test_network_filters import REPLY, exchange, origin
from tests.support.logsink import log_config, read_records
from tests.support.proxy import free_port, running_proxy

from tulle.dataplane.network import relay
from tulle.proxyconfig.log_fields import FLOW_FIELDS


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "copy":
        monkeypatch.setattr(relay, "USE_SPLICE", False)
    return str(request.param)


def config(port: int, log: Path, filters: list[dict[str, Any]] | None = None,
           **flow: Any) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "node": {"name": "db-0", "namespace": "shop"},
        "listeners": [{"name": "db", "port": 0, "protocol": "tcp", "cluster": "backend",
                       "direction": "outbound", "network_filters": filters or []}],
        "clusters": [{"name": "backend", "protocol": "tcp",
                      "metadata": {"namespace": "data", "workload": "postgres"},
                      "endpoints": [{"address": "127.0.0.1", "port": port}]}],
        "telemetry": {"flow_log": log_config(log, **flow)},
    }


async def test_a_tcp_exchange_field_by_field(engine: str, tmp_path: Path) -> None:
    log = tmp_path / "flow.log"
    payload = bytes(range(256)) * 400  # 100 KiB: many segments
    async with origin() as o, running_proxy(config(o.port, log)) as p:
        got = await exchange(p, payload)
        assert got == REPLY
        (rec,) = await read_records(log, 1)
    assert list(rec) == list(FLOW_FIELDS)
    assert rec["event"] == "end" and rec["direction"] == "outbound" and rec["listener"] == "db"
    assert (rec["transport"], rec["protocol"]) == ("tcp", "tcp")
    assert rec["source_address"] == "127.0.0.1" and rec["source_port"] > 0
    assert (rec["destination_address"], rec["destination_port"]) == ("127.0.0.1", p.port("db"))
    assert rec["original_destination"] is None
    assert rec["upstream_host"] == f"127.0.0.1:{o.port}"
    assert rec["upstream_cluster"] == "backend"
    assert rec["source_workload"] == "shop/db-0"
    assert rec["destination_workload"] == "data/postgres"
    assert (rec["bytes_received"], rec["bytes_sent"]) == (len(payload), len(REPLY))
    # Segments from TCP_INFO: at least the data segments (loopback MSS is 65483 bytes), plus
    # the handshake and FIN; the same order of magnitude, not thousands.
    assert 2 <= rec["packets_received"] < 200 and 2 <= rec["packets_sent"] < 200
    assert 2 <= rec["upstream_packets_sent"] < 200 and 2 <= rec["upstream_packets_received"] < 200
    assert rec["duration"] >= 0
    assert rec["close_reason"] == "eof" and rec["verdict"] == "allow"


async def test_a_rejected_connection_says_who_refused_it(tmp_path: Path) -> None:
    log = tmp_path / "flow.log"
    deny = [{"type": "source_ip", "deny": ["127.0.0.2/32"]}]
    async with origin() as o, running_proxy(config(o.port, log, deny)) as p:
        assert await exchange(p, b"hi", source="127.0.0.2") == b""
        (rec,) = await read_records(log, 1)
    assert rec["verdict"].startswith("deny:source_ip:")
    assert rec["close_reason"] == "rejected" and rec["upstream_host"] is None
    assert rec["bytes_received"] == 0 and rec["source_address"] == "127.0.0.2"


async def test_a_failed_connect(tmp_path: Path) -> None:
    log = tmp_path / "flow.log"
    async with running_proxy(config(free_port(), log)) as p:
        assert await exchange(p, b"hi") == b""
        (rec,) = await read_records(log, 1)
    assert rec["close_reason"] == "connect_failed" and rec["verdict"] == "allow"
    assert rec["upstream_packets_sent"] is None  # no upstream socket: no count, no guess


async def test_a_long_connection_is_reported_while_it_lasts(engine: str, tmp_path: Path) -> None:
    log = tmp_path / "flow.log"
    async with origin() as o, running_proxy(config(o.port, log, interval_ms=50)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(b"a" * 1000)
        await w.drain()
        first, second = await read_records(log, 2)  # two interim reports while it is open
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == REPLY
        w.close()
        recs = await read_records(log, 3)
        async with asyncio.timeout(10):
            while recs[-1]["event"] != "end":
                recs = await read_records(log, len(recs) + 1)
    assert (first["event"], second["event"]) == ("interim", "interim")
    assert first["close_reason"] is None and first["bytes_received"] == 1000
    assert first["start_time"] == second["start_time"] and second["duration"] > first["duration"]
    assert first["packets_received"] >= 2
    end = recs[-1]
    assert end["bytes_received"] == 1000 and end["bytes_sent"] == len(REPLY)
    assert end["close_reason"] == "eof"




async def test_a_passthrough_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transparent listener relaying an opaque port to its original destination (only the
    kernel's SO_ORIGINAL_DST answer is stood in for, as in test_filter_chains_transparent)."""
    from tulle.dataplane.listeners import detect

    log = tmp_path / "flow.log"
    async with origin() as o:
        monkeypatch.setattr(detect, "original_destination", lambda sock: ("127.0.0.1", o.port))
        cfg = {"admin": {"port": 0},
               "listeners": [{"name": "outbound", "port": 0, "mode": "transparent",
                              "passthrough": True, "opaque_ports": [o.port]}],
               "telemetry": {"flow_log": log_config(log)}}
        async with running_proxy(cfg) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port("outbound"))
            w.write(b"ping")
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 10) == REPLY
            w.close()
            (rec,) = await read_records(log, 1)
    assert rec["upstream_cluster"] == "PassthroughCluster"
    assert rec["original_destination"] == f"127.0.0.1:{o.port}"
    assert (rec["destination_address"], rec["destination_port"]) == ("127.0.0.1", o.port)
    assert rec["upstream_host"] == f"127.0.0.1:{o.port}"
    assert (rec["bytes_received"], rec["bytes_sent"]) == (4, len(REPLY))
    assert rec["close_reason"] == "eof" and rec["verdict"] == "allow"


async def test_http_connections_have_flows_with_wire_counts(tmp_path: Path) -> None:
    """An HTTP/1 connection carrying two requests is one flow; its bytes are the kernel's
    (`tcpi_bytes_received` / `tcpi_bytes_acked`), requests and responses with their heads."""
    from tests.support.origin import running_origin
    from tests.support.proxy import simple_config

    log = tmp_path / "flow.log"
    async with running_origin() as origin_port:
        cfg = simple_config(origin_port)
        cfg["telemetry"] = {"flow_log": log_config(log)}
        async with running_proxy(cfg) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            request = b"GET /bytes/5000 HTTP/1.1\r\nhost: x\r\n\r\n"
            for _ in range(2):
                w.write(request)
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                await r.readexactly(5000)
            local = w.get_extra_info("sockname")
            w.close()
            (rec,) = await read_records(log, 1)
    assert rec["event"] == "end" and rec["protocol"] == "http1"
    assert (rec["source_address"], rec["source_port"]) == tuple(local)
    assert (rec["destination_address"], rec["destination_port"]) == ("127.0.0.1", p.port())
    # The kernel counts sequence numbers: the client's FIN is one more.
    assert 2 * len(request) <= rec["bytes_received"] <= 2 * len(request) + 1
    assert 2 * 5000 < rec["bytes_sent"] < 2 * 5000 + 2000  # bodies plus two heads
    assert rec["packets_received"] >= 3 and rec["packets_sent"] >= 2
    assert rec["upstream_host"] is None and rec["close_reason"] == "closed"
    assert rec["source_workload"] is not None and rec["verdict"] == "allow"


async def test_an_http2_connection_is_one_flow(tmp_path: Path) -> None:
    from tests.support.origin import running_origin
    from tests.support.proxy import simple_config

    log = tmp_path / "flow.log"
    async with running_origin() as origin_port:
        cfg = simple_config(origin_port, protocol="http2")
        cfg["telemetry"] = {"flow_log": log_config(log)}
        async with running_proxy(cfg) as p:
            url = f"http://127.0.0.1:{p.port()}/bytes/6000"
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err
            (rec,) = await read_records(log, 1)
    assert rec["protocol"] == "http2" and rec["event"] == "end"
    assert rec["bytes_sent"] > 6000 and rec["bytes_received"] > 24  # the h2 preface


def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello, as an ssl client would send it first."""
    import ssl

    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def test_a_relayed_client_hello_is_tls(tmp_path: Path) -> None:
    """On a sniffing listener, a TLS ClientHello it does not terminate is relayed as it came
    (SNI passthrough) and logged as `tls`."""
    log = tmp_path / "flow.log"
    hello = client_hello("db.example")
    async with origin() as o:
        cfg = config(o.port, log)
        cfg["listeners"][0]["protocol"] = "auto"
        async with running_proxy(cfg) as p:
            assert await exchange(p, hello) == REPLY
            (rec,) = await read_records(log, 1)
        assert await o.done.get() == hello  # relayed byte for byte
    assert rec["protocol"] == "tls" and rec["bytes_received"] == len(hello)
    assert rec["upstream_host"] == f"127.0.0.1:{o.port}"


async def test_a_flows_duration_is_not_in_the_loops_millisecond_steps(tmp_path: Path) -> None:
    """A relayed connection's duration comes from the monotonic clock: the loop's has
    millisecond steps, so every short connection lasted a whole number of milliseconds."""
    log = tmp_path / "flow.log"
    async with origin() as o, running_proxy(config(o.port, log)) as p:
        for _ in range(8):
            assert await exchange(p, b"ping") == REPLY
        recs = await read_records(log, 8)
    durations = [r["duration"] for r in recs]
    assert all(d >= 0 for d in durations)
    assert any(d != int(d) for d in durations), durations  # microseconds, not whole ms
