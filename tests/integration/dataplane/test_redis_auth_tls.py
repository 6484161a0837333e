"""The global rate limit's Redis client against a real redis-server with a password, an ACL
user and TLS: AUTH from a file (read per connection, so rotation works), a wrong or missing
password and an unreadable file are "Redis down" (the limit's failure mode decides) and the
password is never logged; TLS verified against the CA given, refused without it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.proxy import free_port
from tests.support.rawservers import answer_ok
from tests.support.redis import available, redis_server

from tulle.dataplane.ratelimit.redis import RedisClient, RedisError, encode

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed "
                                "(scripts/install-system-deps.sh test)")
SECRET = "s3cret-never-logged"


async def incr(client: RedisClient) -> int | bytes | None:
    [f] = client.call(encode(b"INCR", b"tulle:test"))
    return await asyncio.wait_for(f, 5)


async def test_auth_from_a_file_and_every_way_it_fails(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    pw = tmp_path / "redis-password"
    pw.write_text(SECRET + "\n")
    async with redis_server("--requirepass", SECRET,
                            "--user", "alice", "on", ">alice-pw", "~tulle:*", "+incr",
                            "+pexpire", "+pttl") as r:
        good = RedisClient("127.0.0.1", r.port, password_file=str(pw), retry_interval=0.05)
        assert await incr(good) == 1
        assert await incr(good) == 2
        good.close()

        none = RedisClient("127.0.0.1", r.port)
        with pytest.raises(RedisError, match="NOAUTH"):
            await incr(none)
        none.close()

        alice = tmp_path / "alice"
        alice.write_text("alice-pw")
        user = RedisClient("127.0.0.1", r.port, username="alice", password_file=str(alice))
        assert await incr(user) == 3
        user.close()

        with caplog.at_level(logging.WARNING, "tulle.ratelimit"):
            wrong = tmp_path / "wrong"
            wrong.write_text("not-it")
            bad = RedisClient("127.0.0.1", r.port, password_file=str(wrong),
                              retry_interval=0.05)
            with pytest.raises(RedisError):
                await incr(bad)
            await asyncio.sleep(0.1)  # (the AUTH verdict is logged from a callback)
            # Down for retry_interval, then a rotated password works on the next connection.
            wrong.write_text(SECRET)
            for _ in range(100):
                try:
                    assert await incr(bad) == 4
                    break
                except RedisError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("the rotated password was never used")
            bad.close()
            gone = RedisClient("127.0.0.1", r.port, password_file=str(tmp_path / "missing"))
            with pytest.raises(RedisError):
                await incr(gone)
            gone.close()
        text = caplog.text
        assert "AUTH refused" in text and "cannot read password_file" in text
        assert SECRET not in text and "not-it" not in text and "alice-pw" not in text


def _tls_files(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("redis.test")]), False)
            .sign(key, hashes.SHA256()))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return root / "cert.pem", root / "key.pem"


async def test_tls_verified_against_the_ca_given(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    pw = tmp_path / "pw"
    pw.write_text(SECRET)
    async with redis_server("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                            "--tls-auth-clients", "no", "--requirepass", SECRET):
        ok = RedisClient("127.0.0.1", tls_port, tls=True, ca_file=str(cert),
                         server_name="redis.test", password_file=str(pw))
        assert await incr(ok) == 1
        ok.close()
        with caplog.at_level(logging.WARNING, "tulle.ratelimit"):
            # the system's CAs do not know this one; the wrong name does not match
            for client in (RedisClient("127.0.0.1", tls_port, tls=True, server_name="redis.test",
                                       password_file=str(pw)),
                           RedisClient("127.0.0.1", tls_port, tls=True, ca_file=str(cert),
                                       server_name="other.test", password_file=str(pw))):
                with pytest.raises(RedisError):
                    await incr(client)
                client.close()
        assert caplog.text.count("TLS failed") == 2
        plain = RedisClient("127.0.0.1", tls_port, connect_timeout=0.5)
        with pytest.raises((RedisError, TimeoutError)):
            await asyncio.wait_for(incr(plain), 2)  # plaintext to a TLS port: no answer
        plain.close()


async def test_a_proxy_limits_through_redis_over_tls_with_a_password(tmp_path: Path) -> None:
    """The whole filter: a real proxy whose RateLimit counts in a TLS + password Redis admits
    3 requests per window on the fail-closed route, then 429 (counted in Redis: the limit is
    global, not a fallback bucket)."""
    from bench.global_limit import proxy_config
    from tests.support.proxy import running_proxy

    from tulle.proxyconfig.validate import validate

    cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    pw = tmp_path / "pw"
    pw.write_text(SECRET)
    origin = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    try:
        async with redis_server("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                                "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                "--tls-auth-clients", "no", "--requirepass", SECRET):
            cfg = proxy_config(origin.sockets[0].getsockname()[1], f"127.0.0.1:{tls_port}",
                               3, 60_000, 500)
            for rule in cfg["route_tables"][0]["virtual_hosts"][0]["rules"]:
                rule["filters"][0]["global"].update(
                    password_file=str(pw), tls={"ca_file": str(cert),
                                                "server_name": "redis.test"})
            assert validate(cfg)
            async with running_proxy(cfg) as p:
                port = p.server.bound_port("in")
                codes = [await _get(port, "/closed") for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429], codes
    finally:
        origin.close()



async def _get(port: int, path: str) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(r.readline(), 5)
        return int(line.split()[1])
    finally:
        w.close()
