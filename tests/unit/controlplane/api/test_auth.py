"""The API's doors, driven through the ASGI middleware with a scripted app behind it: which
requests get through, which get 401 or 403, and that no answer or log line carries the token."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tulle.controlplane.api.api_tokens import Role, TokenStore
from tulle.controlplane.api.auth import OPEN_PATHS, Authenticate, BearerTokens, allowed
from tulle.controlplane.api.exposure import ExposureError, check_api_address, is_loopback
from tulle.controlplane.store.memory import MemoryStore


class Behind:
    """The app behind the middleware: records what reached it, answers 200."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(mw: Authenticate, method: str, path: str,
               headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, bytes], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "client": ("127.0.0.1", 5555)}
    await mw(scope, receive, send)
    start, body = sent
    raw = body["body"]
    return start["status"], dict(start["headers"]), json.loads(raw) if raw != b"ok" else raw


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@pytest.fixture
async def doors() -> tuple[Authenticate, Behind, str, str]:
    ts = TokenStore(MemoryStore())
    admin, _ = await ts.create(Role.ADMIN)
    reader, _ = await ts.create(Role.READ_ONLY)
    behind = Behind()
    return Authenticate(behind, [BearerTokens(ts)]), behind, admin, reader


async def test_health_probes_are_open_everything_else_needs_a_token(
        doors: tuple[Authenticate, Behind, str, str]) -> None:
    mw, behind, _, _ = doors
    for path in sorted(OPEN_PATHS):
        assert (await call(mw, "GET", path, []))[0] == 200
    for method, path in [("GET", "/api/v1/proxies"), ("POST", "/api/v1/apply"),
                         ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no/such/path"),
                         ("DELETE", "/api/v1/resources/svc/x")]:
        status, headers, body = await call(mw, method, path, [])
        assert status == 401, (method, path)
        assert headers[b"www-authenticate"] == b'Bearer realm="tulle"'
        assert "Authorization: Bearer" in body["error"]
    assert [s["path"] for s in behind.seen] == sorted(OPEN_PATHS)


@pytest.mark.parametrize("header", [
    b"Bearer tulle_0123456789abcdef_" + b"A" * 43,   # well-formed, unknown
    b"Bearer not-a-token-at-all",
    b"Basic YWRtaW46YWRtaW4=",
    b"Bearer ",
    b"Bearer " + b"x" * 5000,
])
async def test_a_bad_credential_is_401_and_never_echoed(
        doors: tuple[Authenticate, Behind, str, str], header: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    mw, behind, _, _ = doors
    status, _, body = await call(mw, "GET", "/api/v1/proxies", [(b"authorization", header)])
    assert status == 401 and not behind.seen
    secret_part = header.partition(b" ")[2]
    if secret_part:
        assert secret_part.decode() not in json.dumps(body)
        assert secret_part.decode() not in caplog.text


async def test_two_authorization_headers_are_refused(
        doors: tuple[Authenticate, Behind, str, str]) -> None:
    mw, behind, admin, reader = doors
    status, _, _ = await call(mw, "GET", "/api/v1/proxies", bearer(reader) + bearer(admin))
    assert status == 401 and not behind.seen


async def test_read_only_reads_admin_writes(
        doors: tuple[Authenticate, Behind, str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    mw, behind, admin, reader = doors
    assert (await call(mw, "GET", "/api/v1/resources/services", bearer(reader)))[0] == 200
    status, _, body = await call(mw, "POST", "/api/v1/apply", bearer(reader))
    assert status == 403
    assert "read-only token cannot POST /api/v1/apply" in body["error"]
    assert reader not in json.dumps(body) and reader not in caplog.text
    assert (await call(mw, "GET", "/api/v1/api-tokens", bearer(reader)))[0] == 403
    assert (await call(mw, "POST", "/api/v1/tokens", bearer(reader)))[0] == 403  # bootstrap
    assert (await call(mw, "POST", "/api/v1/apply", bearer(admin)))[0] == 200
    assert (await call(mw, "POST", "/api/v1/api-tokens", bearer(admin)))[0] == 200
    assert (await call(mw, "POST", "/api/v1/tokens", bearer(admin)))[0] == 200
    principals = [s["tulle.principal"] for s in behind.seen]
    assert [p.role for p in principals] == [Role.READ_ONLY] + [Role.ADMIN] * 3
    assert admin not in caplog.text


def test_the_role_rule() -> None:
    assert allowed(Role.READ_ONLY, "GET", "/api/v1/proxies")
    assert allowed(Role.READ_ONLY, "HEAD", "/openapi.json")
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert not allowed(Role.READ_ONLY, method, "/api/v1/resources/svc/a")
        assert allowed(Role.ADMIN, method, "/api/v1/resources/svc/a")
    # Both kinds of token are admin-only, listing included.
    for tokens in ("/api/v1/api-tokens", "/api/v1/tokens"):
        assert not allowed(Role.READ_ONLY, "GET", tokens)
        assert not allowed(Role.READ_ONLY, "GET", f"{tokens}/0123456789abcdef")
        assert not allowed(Role.READ_ONLY, "DELETE", f"{tokens}/shop/0123456789abcdef")
        assert allowed(Role.READ_ONLY, "GET", f"{tokens}x")  # not the tokens path
        assert allowed(Role.ADMIN, "POST", tokens)


def test_beyond_loopback_needs_tls_or_an_explicit_yes() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.9.9.9"):
        assert is_loopback(host)
        assert check_api_address(host, tls=False, allow_plaintext=False) is None
    for host in ("0.0.0.0", "::", "10.0.0.5", "cp.example"):
        assert not is_loopback(host)
        with pytest.raises(ExposureError, match="plaintext"):
            check_api_address(host, tls=False, allow_plaintext=False)
        assert check_api_address(host, tls=True, allow_plaintext=False) is None
        warning = check_api_address(host, tls=False, allow_plaintext=True)
        assert warning is not None and "WITHOUT TLS" in warning
