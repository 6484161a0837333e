"""Access logs through real proxies: HTTP/1, HTTP/2 and gRPC exchanges and failures, checked
field by field, with their Envoy response flags; formats, filters, sampling."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from tests.support.grpc_peers import running_grpc_server, unary
from tests.support.logsink import log_config, read_lines, read_records
from tests.support.proxy import free_port, running_proxy, simple_config
from tests.support.rawservers import half_then_reset, raw_server, reset_before_head, rst

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def logged(upstream_port: int, path: Path, *, protocol: str = "http1",
           cluster_protocol: str = "http1", **access: Any) -> dict[str, Any]:
    cfg = simple_config(upstream_port, protocol=protocol, cluster_protocol=cluster_protocol)
    cfg["telemetry"] = {"access_log": log_config(path, **access)}
    return cfg


async def _run(*argv: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_an_http1_exchange_field_by_field(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log)) as p, aiohttp.ClientSession() as s:
        headers = {"x-request-id": "req-1", "user-agent": "probe/1",
                   "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        async with s.post(p.url(path="/echo?q=1"), data=b"x" * 1234, headers=headers) as r:
            body = await r.read()
            assert r.status == 200
        (rec,) = await read_records(log, 1)
    assert ISO.match(rec["start_time"])
    assert rec["method"] == "POST"
    assert rec["path"] == "/echo?q=1"
    assert rec["protocol"] == "HTTP/1.1"
    assert rec["response_code"] == 200
    assert rec["response_flags"] == "-"
    assert rec["response_code_details"] is None
    assert rec["bytes_received"] == 1234
    assert rec["bytes_sent"] == len(body)
    assert 0 <= rec["response_duration"] <= rec["duration"]
    assert 0 <= rec["upstream_duration"] <= rec["duration"]
    assert rec["upstream_host"] == f"127.0.0.1:{origin}"
    assert rec["upstream_cluster"] == "backend"
    assert rec["route_name"]
    assert rec["upstream_request_attempt_count"] == 1
    assert rec["request_id"] == "req-1"
    assert rec["trace_id"] == TRACE
    assert rec["authority"] == f"127.0.0.1:{p.port()}"
    assert rec["user_agent"] == "probe/1"
    assert rec["x_forwarded_for"] == "127.0.0.1"
    assert rec["downstream_remote_address"].startswith("127.0.0.1:")
    assert rec["direction"] == "outbound" and rec["listener"] == "out"
    assert list(rec) == list(__import__("tulle.proxyconfig.log_fields",
                                        fromlist=["ACCESS_FIELDS"]).ACCESS_FIELDS)


async def test_a_generated_request_id_and_b3_trace(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log)) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/echo"), headers={"b3": f"{TRACE}-00f067aa0ba902b7-1"}) as r:
            sent = (await r.json())["headers"]["x-request-id"]
        (rec,) = await read_records(log, 1)
    assert rec["request_id"] == sent and rec["trace_id"] == TRACE


async def test_no_route_is_NR(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = logged(origin, log)
    cfg["route_tables"][0]["virtual_hosts"][0]["domains"] = ["only.example"]
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/x")) as r:
            assert r.status == 404
        (rec,) = await read_records(log, 1)
    assert (rec["response_code"], rec["response_flags"]) == (404, "NR")
    assert rec["route_name"] is None and rec["upstream_host"] is None
    assert rec["upstream_request_attempt_count"] == 0


async def test_connect_refused_is_UF_and_no_endpoint_is_UH(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = logged(free_port(), log)
    cfg["clusters"].append({"name": "empty", "protocol": "http1", "endpoints": []})
    cfg["route_tables"][0]["virtual_hosts"].insert(0, {
        "name": "e", "domains": ["empty.example"], "rules": [{"backends": [{"cluster": "empty"}]}]})
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/a")) as r:
            assert r.status == 503
        async with s.get(p.url(path="/b"), headers={"host": "empty.example"}) as r:
            assert r.status == 503
        refused, empty = await read_records(log, 2)
    assert (refused["response_code"], refused["response_flags"]) == (503, "UF")
    assert refused["upstream_host"] is not None and refused["upstream_request_attempt_count"] == 1
    assert (empty["response_code"], empty["response_flags"]) == (503, "UH")
    assert empty["upstream_cluster"] == "empty" and empty["upstream_host"] is None


async def test_a_route_timeout_is_UT(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = logged(origin, log)
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["timeout_ms"] = 100
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/delay/3000")) as r:
            assert r.status == 504
        (rec,) = await read_records(log, 1)
    assert (rec["response_code"], rec["response_flags"]) == (504, "UT")
    # The record's clock is the monotonic clock; the timer runs on the loop's, which has
    # millisecond steps, so a 100 ms timeout fires within a millisecond of 100 ms, not after.
    assert 99 <= rec["duration"] < 3000
    assert rec["response_duration"] is None


async def test_upstream_resets(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with raw_server(reset_before_head) as before, raw_server(half_then_reset) as half:
        cfg = logged(before.port, log)
        cfg["clusters"].append({"name": "half", "protocol": "http1",
                                "endpoints": [{"address": "127.0.0.1", "port": half.port}]})
        cfg["route_tables"][0]["virtual_hosts"].insert(0, {
            "name": "h", "domains": ["half.example"],
            "rules": [{"backends": [{"cluster": "half"}]}]})
        async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
            async with s.get(p.url(path="/r")) as r:
                assert r.status == 502
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.get(p.url(path="/h"), headers={"host": "half.example"}) as r:
                    await r.read()
            first, second = await read_records(log, 2)
    assert (first["response_code"], first["response_flags"]) == (502, "UC")
    assert second["response_code"] == 200 and second["response_flags"] == "UC"
    assert second["response_duration"] is not None and second["bytes_sent"] >= 1000


async def test_an_http2_exchange(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log, protocol="http2")) as p:
        rc, out, err = await _run("curl", "-sS", "--http2-prior-knowledge", "-m", "20",
                                  "-H", "x-request-id: h2-1", "--data-binary", "abc",
                                  p.url(path="/echo"))
        assert rc == 0, err
        (rec,) = await read_records(log, 1)
    assert rec["protocol"] == "HTTP/2" and rec["method"] == "POST"
    assert rec["response_code"] == 200 and rec["response_flags"] == "-"
    assert rec["bytes_received"] == 3 and rec["bytes_sent"] == len(out)
    assert rec["request_id"] == "h2-1" and rec["authority"] == f"127.0.0.1:{p.port()}"


async def test_grpc_calls_and_an_unavailable_upstream(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with running_grpc_server() as port:
        cfg = logged(port, log, protocol="http2", cluster_protocol="http2")
        cfg["clusters"].append({"name": "down", "protocol": "http2",
                                "endpoints": [{"address": "127.0.0.1", "port": free_port()}]})
        cfg["route_tables"][0]["virtual_hosts"].insert(0, {
            "name": "d", "domains": ["down.example"],
            "rules": [{"backends": [{"cluster": "down"}]}]})
        async with running_proxy(cfg) as p:
            with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch:
                assert await asyncio.to_thread(unary, ch, b"hello") == b"echo:hello"
            opts = [("grpc.default_authority", "down.example")]
            with grpc.insecure_channel(f"127.0.0.1:{p.port()}", options=opts) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    await asyncio.to_thread(unary, ch, b"x")
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            ok, down = await read_records(log, 2)
    assert ok["protocol"] == "HTTP/2" and ok["method"] == "POST"
    assert ok["path"].endswith("/Unary") and ok["response_code"] == 200
    assert ok["response_flags"] == "-" and ok["bytes_received"] == 5 + len(b"hello")
    assert ok["upstream_host"] == f"127.0.0.1:{port}"
    assert down["response_flags"] == "UF" and down["upstream_cluster"] == "down"


async def test_text_format_with_request_headers(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    fmt = '%REQ(:METHOD)% %REQ(X-MISSING?:PATH):5% %RESPONSE_CODE% %RESPONSE_FLAGS_LONG% "%REQ(USER-AGENT)%"'
    async with running_proxy(logged(origin, log, format="text", text_format=fmt)) as p, \
            aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/status/503"), headers={"user-agent": "a b"}) as r:
            assert r.status == 503
        async with s.get(p.url(path="/echo"), headers={"user-agent": "x"}) as r:
            assert r.status == 200
        lines = await read_lines(log, 2)
    assert lines[0] == 'GET /stat 503 - "a b"'
    assert lines[1] == 'GET /echo 200 - "x"'


async def test_filters_keep_errors_and_slow_requests(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = logged(origin, log, filter={"errors_only": True, "duration_min_ms": 300})
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        for path in ("/echo", "/status/404", "/status/502", "/delay/400", "/echo"):
            async with s.get(p.url(path=path)) as r:
                await r.read()
        recs = await read_records(log, 2)
        await asyncio.sleep(0.1)  # nothing more comes: the other three were filtered out
        assert len(log.read_text().splitlines()) == 2
    assert [r["path"] for r in recs] == ["/status/502", "/delay/400"]


async def test_sampling_zero_logs_nothing(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log, sample_percent=0)) as p, \
            aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(p.url(path="/echo")) as r:
                await r.read()
        stats = p.server.runtime.logs.access.sink.stats  # type: ignore[union-attr]
        assert stats.offered == 0
    assert not log.exists() or log.read_text() == ""


async def test_retries_are_counted_and_exhausted_ones_flagged_URX(origin: int,
                                                                 tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = logged(free_port(), log)  # nothing listens: every try fails to connect
    rule = cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]
    rule["retry"] = {"num_retries": 2, "retry_on": ["connect-failure"], "backoff_base_ms": 1,
                     "backoff_max_ms": 2}
    cfg["clusters"].append({"name": "good", "protocol": "http1",
                            "endpoints": [{"address": "127.0.0.1", "port": origin}]})
    cfg["route_tables"][0]["virtual_hosts"].insert(0, {
        "name": "g", "domains": ["good.example"],
        "rules": [{"backends": [{"cluster": "good"}], "retry": rule["retry"]}]})
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/a")) as r:
            assert r.status == 503
        async with s.get(p.url(path="/echo"), headers={"host": "good.example"}) as r:
            assert r.status == 200
        failed, ok = await read_records(log, 2)
    assert failed["response_flags"] == "UF,URX"
    assert failed["upstream_request_attempt_count"] == 3
    assert ok["response_flags"] == "-" and ok["upstream_request_attempt_count"] == 1


async def test_a_client_that_goes_away_is_DC(origin: int, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(b"GET /delay/2000 HTTP/1.1\r\nhost: x\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.2)  # the request is upstream now
        rst(w)  # gone (a FIN would be a half-close, after which HTTP/1 still answers)
        (rec,) = await read_records(log, 1)
    assert rec["response_flags"] == "DC" and rec["response_code"] == 0, rec
    assert rec["path"] == "/delay/2000" and rec["upstream_host"] == f"127.0.0.1:{origin}"


async def test_hostile_request_bytes_stay_inside_their_json_fields(origin: int,
                                                                   tmp_path: Path) -> None:
    """A raw client puts what a JSON line must escape into every field it controls: quotes,
    backslashes, tabs, Latin-1's upper half and a try at injecting a key.  The record is
    one line, valid JSON, each field the text of the bytes sent (read as Latin-1, as the
    record always did), and no key was added (ADR 0076: the line is written in C)."""
    log = tmp_path / "access.log"
    inject = b'x","response_code":999,"injected":"y'
    agent = b'probe "quoted" \\back\\slash\ttab \xe9\xff ' + inject
    rid = b'r\\"1\x80'
    xff = b'10.0.0.1, "evil"'
    async with running_proxy(logged(origin, log)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port())
        writer.write(b"GET /echo?q=%22" + inject.replace(b'"', b"%22") + b" HTTP/1.1\r\n"
                     b"Host: h\r\nUser-Agent: " + agent + b"\r\nX-Request-Id: " + rid +
                     b"\r\nX-Forwarded-For: " + xff + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 ")
        (line,) = await read_lines(log, 1)
        (rec,) = await read_records(log, 1)
    assert "\n" not in line.rstrip("\n")
    assert list(rec) == list(__import__("tulle.proxyconfig.log_fields",
                                        fromlist=["ACCESS_FIELDS"]).ACCESS_FIELDS)
    assert rec["response_code"] == 200
    assert rec["user_agent"] == agent.decode("latin-1")
    assert rec["request_id"] == rid.decode("latin-1")
    assert rec["x_forwarded_for"] == xff.decode("latin-1") + ", 127.0.0.1"
    assert rec["path"] == "/echo?q=%22" + inject.replace(b'"', b"%22").decode()


async def test_durations_are_not_in_the_loops_millisecond_steps(origin: int,
                                                               tmp_path: Path) -> None:
    """A request's times come from the monotonic clock (`stream.request_clock`), not the
    loop's: uvloop's `loop.time()` has millisecond steps, so every sub-millisecond request
    read 0.0 or 1.0 ms in the access log (and in the duration histogram)."""
    log = tmp_path / "access.log"
    async with running_proxy(logged(origin, log)) as p, aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(p.url(path="/echo")) as r:
                assert r.status == 200
                await r.read()
        recs = await read_records(log, 20)
    durations = [r["duration"] for r in recs]
    assert all(d is not None and 0 <= d < 1000 for d in durations)
    assert any(d != int(d) for d in durations), durations  # microseconds, not whole ms
