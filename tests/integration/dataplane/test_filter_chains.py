"""Listener filter chains with real TLS on 127.0.0.1: one listener, chains chosen per connection
by transport, ALPN and SNI, each routed to its own origin; identities pushed as named sections
and rotated in place (a new connection sees the new certificate, an open one keeps working, the
listener is not restarted); key material never shown."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from tests.support.certs import self_signed
from tests.support.controlplane import eventually, named_origin
from tests.support.origin import running_origin
from tests.support.proxy import running_proxy
from tests.support.rawhttp import RawClient

from tulle.dataplane.server import ApplyError
from tulle.proxyconfig import ConfigError, validate


def identity(tmp_path: Path, name: str) -> dict[str, str]:
    """An identity section for host `name` (a fresh key and serial each call)."""
    crt, key = self_signed(tmp_path, name)
    return {"name": name, "cert_chain_pem": Path(crt).read_text(),
            "private_key_pem": Path(key).read_text()}


def route(name: str, cluster: str) -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [{"name": "any", "rules": [
        {"backends": [{"cluster": cluster}]}]}]}


def cluster(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "endpoints": [{"address": "127.0.0.1", "port": port}]}


@pytest.fixture
async def origins() -> AsyncIterator[dict[str, int]]:
    async with AsyncExitStack() as stack:
        yield {n: await stack.enter_async_context(named_origin(n)) for n in ("a", "b")}


def two_origin_config(origins: dict[str, int], chains: list[dict[str, Any]],
                      identities: list[dict[str, str]]) -> dict[str, Any]:
    return {"admin": {"port": 0},
            "listeners": [{"name": "edge", "port": 0, "filter_chains": chains}],
            "route_tables": [route("rt-a", "a"), route("rt-b", "b")],
            "clusters": [cluster("a", origins["a"]), cluster("b", origins["b"])],
            "identities": identities}


async def curl(*argv: str) -> tuple[str, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-k", "-m", "20", "-w", "\n%{http_version}", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    body, _, version = out.decode().rpartition("\n")
    return version, json.loads(body)


def client_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def tls_client(port: int, sni: str) -> tuple[RawClient, int]:
    """An HTTP/1.1 client over TLS with `sni`, and the serial of the certificate it got."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls(),
                                                   server_hostname=sni)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return RawClient(reader, writer), x509.load_der_x509_certificate(der).serial_number


async def test_tls_h2_and_plaintext_http1_chains_on_one_listener_reach_different_origins(
        origins: dict[str, int], tmp_path: Path) -> None:
    chains = [
        {"name": "tls-h2", "match": {"transport": "tls", "alpn": ["h2"]},
         "tls": {"identity": "localhost"}, "route_table": "rt-a"},
        {"name": "plain", "match": {"transport": "plaintext"}, "protocol": "http1",
         "route_table": "rt-b"},
    ]
    cfg = two_origin_config(origins, chains, [identity(tmp_path, "localhost")])
    async with running_proxy(cfg) as p:
        port = p.port("edge")
        version, body = await curl("--http2", f"https://127.0.0.1:{port}/x")
        assert (version, body) == ("2", {"name": "a", "path": "/x"})
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/y") as r:
            assert (r.status, await r.json()) == (200, {"name": "b", "path": "/y"})
        # TLS without ALPN h2 matches neither chain (transport narrows to tls-h2, whose ALPN
        # does not match) and the listener has no default chain: closed and counted.
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-k", "-m", "10", "--http1.1", f"https://127.0.0.1:{port}/z",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(proc.wait(), 20) != 0
        assert p.metric("tulle_proxy_protocol_errors_total", listener="edge",
                        kind="no_filter_chain") == 1
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="chain:tls-h2") == 1
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="chain:plain") == 1
        assert p.metric("tulle_proxy_requests_total", cluster="a", response_code="200") == 1
        assert p.metric("tulle_proxy_requests_total", cluster="b", response_code="200") == 1


async def test_sni_selects_the_chain_its_certificate_and_its_origin(
        origins: dict[str, int], tmp_path: Path) -> None:
    a, b = identity(tmp_path, "a.example"), identity(tmp_path, "b.example")
    chains = [
        {"name": "a", "match": {"server_names": ["a.example"], "transport": "tls"},
         "tls": {"identity": "a.example"}, "route_table": "rt-a"},
        {"name": "b", "match": {"server_names": ["*.b.example"], "transport": "tls"},
         "tls": {"identity": "b.example"}, "route_table": "rt-b"},
    ]
    cfg = two_origin_config(origins, chains, [a, b])
    async with running_proxy(cfg) as p:
        port = p.port("edge")
        want_a = x509.load_pem_x509_certificate(a["cert_chain_pem"].encode()).serial_number
        want_b = x509.load_pem_x509_certificate(b["cert_chain_pem"].encode()).serial_number
        for sni, serial, name in (("a.example", want_a, "a"), ("api.b.example", want_b, "b")):
            c, got = await tls_client(port, sni)
            assert got == serial
            c.send("GET", "/who")
            r = await c.response()
            assert (r.status, json.loads(r.body)["name"]) == (200, name)
            # The connection's facts carry the server name the chain was chosen by.
            drivers = [x for x in p.server.listeners["edge"].connections if hasattr(x, "facts")]
            assert [(d.facts.tls, d.facts.sni) for d in drivers] == [(True, sni)]
            c.writer.close()
            await c.writer.wait_closed()
            await eventually(lambda: not p.server.listeners["edge"].connections)
        async with AsyncExitStack() as stack:  # x-forwarded-proto is the chain's scheme
            echo = await stack.enter_async_context(running_origin())
            cfg["clusters"][0] = cluster("a", echo)
            await p.apply(cfg)
            c, _ = await tls_client(port, "a.example")
            c.send("GET", "/echo")
            assert json.loads((await c.response()).body)["headers"]["x-forwarded-proto"] == \
                "https"
            c.writer.close()
        _, body = await curl("--http2", "--resolve", f"web.b.example:{port}:127.0.0.1",
                             f"https://web.b.example:{port}/h2")
        assert body == {"name": "b", "path": "/h2"}
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await tls_client(port, "c.example")  # no chain: closed before the handshake
        assert p.metric("tulle_proxy_protocol_errors_total", kind="no_filter_chain") == 1


async def test_an_identity_rotated_by_a_new_snapshot_is_served_in_place(
        origins: dict[str, int], tmp_path: Path) -> None:
    chains = [{"name": "web", "match": {"transport": "tls"}, "tls": {"identity": "web"},
               "route_table": "rt-a"}]
    first = identity(tmp_path, "web")
    cfg = two_origin_config(origins, chains, [first])
    async with running_proxy(cfg) as p:
        port = p.port("edge")
        handle = p.server.listeners["edge"]
        server, ctx = handle.servers[0], handle.ctx
        old, old_serial = await tls_client(port, "web")
        old.send("GET", "/before")
        assert (await old.response()).status == 200

        second = identity(tmp_path, "web")
        cfg["identities"] = [second]
        cfg["version"] = "v2"
        built = p.server.tls.built
        await p.apply(cfg)

        # The same listener (server, context, socket): only the certificate changed.
        assert p.server.listeners["edge"] is handle
        assert handle.servers[0] is server and handle.ctx is ctx
        assert p.server.tls.reloaded == 1 and p.server.tls.built == built + 1
        new, new_serial = await tls_client(port, "web")
        want = x509.load_pem_x509_certificate(second["cert_chain_pem"].encode()).serial_number
        assert new_serial == want != old_serial
        new.send("GET", "/after")
        assert json.loads((await new.response()).body) == {"name": "a", "path": "/after"}
        old.send("GET", "/still")  # the open connection keeps its session
        assert (await old.response()).status == 200
        for c in (old, new):
            c.writer.close()


async def test_a_listener_tls_identity_and_a_missing_reference(tmp_path: Path,
                                                               origin: int) -> None:
    ident = identity(tmp_path, "localhost")
    cfg = {"admin": {"port": 0},
           "listeners": [{"name": "out", "port": 0, "route_table": "rt", "protocol": "http1",
                          "tls": {"identity": "localhost"}}],
           "route_tables": [route("rt", "app")], "clusters": [cluster("app", origin)],
           "identities": [ident]}
    async with running_proxy(cfg) as p:
        version, body = await curl("--http1.1", f"https://127.0.0.1:{p.port()}/echo")
        assert version == "1.1" and body["headers"]["x-forwarded-proto"] == "https"
    cfg["listeners"][0]["tls"] = {"identity": "nope", "trust_bundle": "mesh"}
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert [str(e) for e in err.value.errors] == [
        "listeners[0].tls.identity: no identity named 'nope'",
        "listeners[0].tls.trust_bundle: no trust bundle named 'mesh'"]


async def test_key_material_never_shows_in_dumps_errors_or_logs(
        origins: dict[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = identity(tmp_path, "localhost")
    secret = good["private_key_pem"].splitlines()[1]
    chains = [{"name": "t", "match": {"transport": "tls"}, "tls": {"identity": "localhost"},
               "route_table": "rt-a"}]
    cfg = two_origin_config(origins, chains, [good])
    async with running_proxy(cfg, admin=True) as p:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{p.admin_port}/config_dump") as r:
            dump = await r.text()
        assert good["cert_chain_pem"].splitlines()[1] in dump  # the certificate is public
        assert secret not in dump and '"private_key_pem": "<redacted>"' in dump
        assert secret not in repr(p.server.config) and secret not in str(p.server.config)

        # A key that does not belong to the certificate: refused with the section's name.
        other = identity(tmp_path, "other")
        bad = dict(good, private_key_pem=other["private_key_pem"])
        cfg["identities"] = [bad]
        with pytest.raises(ApplyError) as err:
            await p.apply(cfg)
        assert "identity 'localhost'" in str(err.value)
        assert other["private_key_pem"].splitlines()[1] not in str(err.value)
        # Not PEM at all: the validator says so by path, without quoting it.
        cfg["identities"] = [dict(good, private_key_pem="garbage " + secret)]
        with pytest.raises(ConfigError) as verr:
            validate(cfg)
        assert str(verr.value) == "identities[0].private_key_pem: must hold a PEM private key"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged and other["private_key_pem"].splitlines()[1] not in logged


async def test_hostile_client_hellos_are_closed_and_counted_and_the_listener_serves_on(
        origins: dict[str, int], tmp_path: Path) -> None:
    chains = [{"name": "t", "match": {"transport": "tls"}, "tls": {"identity": "localhost"},
               "route_table": "rt-a"},
              {"name": "p", "match": {"transport": "plaintext"}, "route_table": "rt-b"}]
    cfg = two_origin_config(origins, chains, [identity(tmp_path, "localhost")])
    cfg["listeners"][0]["detect_timeout_ms"] = 200
    async with running_proxy(cfg) as p:
        port = p.port("edge")

        async def closed_after(data: bytes) -> bool:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(data)
            try:
                async with asyncio.timeout(5):
                    return await r.read() == b""
            except ConnectionError:
                return True
            finally:
                w.close()

        # Two server_name extensions; a body announced at 1 MiB; a trickle that stops.
        ext = b"\x00\x00\x00\x05\x00\x03\x00\x00\x00"
        body = b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
        body += (2 * len(ext)).to_bytes(2, "big") + ext + ext
        msg = b"\x01" + len(body).to_bytes(3, "big") + body
        assert await closed_after(b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg)
        assert await closed_after(b"\x16\x03\x01\x00\x04\x01\x10\x00\x00")
        assert await closed_after(b"\x16\x03\x01\x02\x00\x01")  # then silence
        kinds = ("tls_client_hello_invalid", "tls_client_hello_too_large",
                 "tls_client_hello_timeout")
        assert [p.metric("tulle_proxy_protocol_errors_total", kind=k) for k in kinds] == [1, 1, 1]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/ok") as r:
            assert (await r.json())["name"] == "b"
        assert p.server.listeners["edge"].connections == set()


async def mtls_get(port: int, crt: str, key: str) -> int | None:
    """Status of one request over mTLS presenting `crt`; None when the proxy refused it."""
    ctx = client_tls()
    ctx.load_cert_chain(crt, key)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="web")
        c = RawClient(reader, writer)
        c.send("GET", "/m")
        status = (await c.response()).status
        writer.close()
        return status
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return None


async def test_a_ca_removed_from_a_trust_bundle_is_no_longer_trusted_without_a_restart(
        origins: dict[str, int], tmp_path: Path) -> None:
    """Strict mTLS on a chain: client certificates are verified against a pushed trust
    bundle; a bundle that drops a CA refuses that CA's clients at their next handshake."""
    x_crt, x_key = self_signed(tmp_path, "client-x")
    y_crt, y_key = self_signed(tmp_path, "client-y")
    chains = [{"name": "mtls", "match": {"transport": "tls"}, "route_table": "rt-a",
               "tls": {"identity": "web", "trust_bundle": "clients"}}]
    cfg = two_origin_config(origins, chains, [identity(tmp_path, "web")])
    cfg["trust_bundles"] = [{"name": "clients",
                             "ca_pems": [Path(x_crt).read_text(), Path(y_crt).read_text()]}]
    async with running_proxy(cfg) as p:
        port = p.port("edge")
        handle = p.server.listeners["edge"]
        ctx, server = handle.ctx, handle.servers[0]
        assert await mtls_get(port, x_crt, x_key) == 200
        assert await mtls_get(port, y_crt, y_key) == 200

        cfg["trust_bundles"] = [{"name": "clients", "ca_pems": [Path(y_crt).read_text()]}]
        cfg["version"] = "v2"
        await p.apply(cfg)
        assert handle.ctx is ctx and handle.servers[0] is server  # no listener restart
        assert p.server.tls.replaced == 1
        assert await mtls_get(port, x_crt, x_key) is None  # X's CA is gone from the bundle
        assert await mtls_get(port, y_crt, y_key) == 200
        assert p.metric("tulle_proxy_protocol_errors_total", kind="tls_client_certificate") >= 1
