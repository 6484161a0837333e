"""The REST API's doors against a real `tulle control-plane run` process on 127.0.0.1: no token
or a bad one is 401, a read-only token's write is 403, admin works, a revoked token is 401 at
once; no token shows up in an answer or the control plane's log; `tulle` finds its token in
`--token`, `TULLE_TOKEN` or the file the local control plane wrote, and says what is wrong; a
non-loopback address needs TLS, and the API serves it."""

from __future__ import annotations

import asyncio
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.support.certs import self_signed
from tests.support.cli import tulle
from tests.support.controlplane import control_plane_process, running_control_plane
from tests.support.resources import service

TULLE = str(Path(sys.executable).parent / "tulle")


async def call(api: str, method: str, path: str, token: str | None = None,
               body: Any = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.request(method, api + path, headers=headers,
                                                       json=body) as r:
        return r.status, await r.text()


async def test_no_token_bad_token_read_only_admin_revoked(tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'cp.db'}"
    async with control_plane_process(store, tmp_path) as cp:
        admin = cp.admin_token
        assert stat.S_IMODE(cp.token_path.stat().st_mode) == 0o600
        api = cp.api
        bad = "tulle_0123456789abcdef_" + "Q" * 43
        answers: list[str] = []

        assert (await call(api, "GET", "/healthz"))[0] == 200
        assert (await call(api, "GET", "/readyz"))[0] == 200
        for path in ("/api/v1/proxies", "/api/v1/resources/services", "/openapi.json"):
            status, text = await call(api, "GET", path)
            assert status == 401, (path, text)
            answers.append(text)
        status, text = await call(api, "POST", "/api/v1/apply", bad,
                                  {"documents": [service("web")]})
        assert status == 401 and "invalid or revoked token" in text
        answers.append(text)

        status, text = await call(api, "POST", "/api/v1/api-tokens", admin,
                                  {"role": "read-only", "name": "viewer"})
        assert status == 201, text
        created = yaml.safe_load(text)
        reader = created["token"]
        assert created["role"] == "read-only" and created["id"] in reader

        status, text = await call(api, "GET", "/api/v1/resources/services", reader)
        assert status == 200, text
        status, text = await call(api, "POST", "/api/v1/apply", reader,
                                  {"documents": [service("web")]})
        assert status == 403 and "read-only token cannot POST /api/v1/apply" in text
        answers.append(text)
        status, text = await call(api, "DELETE", "/api/v1/resources/services/web", reader)
        assert status == 403
        answers.append(text)
        status, text = await call(api, "GET", "/api/v1/api-tokens", reader)
        assert status == 403
        answers.append(text)

        status, text = await call(api, "POST", "/api/v1/apply", admin,
                                  {"documents": [service("web")]})
        assert status == 200, text
        status, text = await call(api, "GET", "/api/v1/api-tokens", admin)
        assert status == 200 and created["id"] in text
        assert reader not in text and admin not in text and "sha256" not in text
        answers.append(text)

        status, text = await call(api, "DELETE", f"/api/v1/api-tokens/{created['id']}", admin)
        assert status == 200, text
        status, text = await call(api, "GET", "/api/v1/resources/services", reader)
        assert status == 401
        answers.append(text)
        status, text = await call(api, "DELETE", f"/api/v1/api-tokens/{reader}", admin)
        assert status == 404  # the whole token in the path: not echoed either
        answers.append(text)

        # Still up and serving the admin after all that.
        assert (await call(api, "GET", "/api/v1/proxies", admin))[0] == 200
        log = cp.log()
        for secret in (admin, reader, bad):
            piece = secret.split("_", 2)[2]  # tulle_<id>_<secret>: the secret may hold "_"
            assert piece not in log, "a token reached the log"
            assert all(piece not in a for a in answers), "a token was echoed"
        assert "rejected" in log  # refusals are logged, without the token


async def test_the_cli_sends_its_token_and_says_what_is_wrong(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    token_file = tmp_path / "cp.db.admin-token"  # where the control plane puts it by default
    async with control_plane_process(f"sqlite:{db}", tmp_path,
                                     "--admin-token-file", str(token_file)) as cp:
        api = cp.api
        admin = token_file.read_text().strip()
        manifest = tmp_path / "web.yaml"
        manifest.write_text(yaml.safe_dump(service("web")))

        code, out, err = await tulle(api, "get", "services", "-n", "shop", token=None)
        assert code == 1 and "unauthorized" in err and "no token found" in err

        # The local quickstart: the CLI finds the file next to the store (server on loopback).
        code, out, err = await tulle(api, "apply", "-f", str(manifest), token=None,
                                     env={"TULLE_STORE": f"sqlite:{db}"})
        assert code == 0, err

        code, out, err = await tulle(api, "api-token", "create", "--role", "read-only",
                                     "--name", "ci", token=admin)
        assert code == 0, err
        reader = out.strip()
        assert reader.startswith("tulle_") and "shown only now" in err

        code, out, err = await tulle(api, "get", "services", "-n", "shop", token=reader)
        assert code == 0 and "web" in out, err
        code, out, err = await tulle(api, "delete", "svc", "web", "-n", "shop", token=reader)
        assert code == 1 and "forbidden" in err and "admin token" in err
        assert reader not in err and reader not in out
        code, out, err = await tulle(api, "api-token", "list", token=reader)
        assert code == 1 and "forbidden" in err

        # --token wins over TULLE_TOKEN.
        code, out, err = await tulle(api, "get", "services", "-n", "shop", "--token", reader,
                                     token="tulle_0123456789abcdef_" + "Z" * 43)
        assert code == 0, err

        code, out, err = await tulle(api, "api-token", "list", token=admin)
        assert code == 0 and "ci" in out and "read-only" in out and reader not in out
        code, out, err = await tulle(api, "api-token", "revoke", reader, token=admin)
        assert code == 0 and "revoked" in out, err
        code, out, err = await tulle(api, "get", "services", "-n", "shop", token=reader)
        assert code == 1 and "invalid or revoked token" in err and reader not in err
        assert admin not in cp.log() and reader not in cp.log()


async def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        TULLE, "control-plane", "run", "--store", "memory", "--api-address", "0.0.0.0",
        "--api-port", "0", "--stream-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"not loopback and the API has no TLS" in out


async def test_the_api_over_tls_with_the_cli_trusting_its_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    async with running_control_plane(api_tls_cert=Path(cert), api_tls_key=Path(key)) as cp:
        assert cp.api_url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=cert)
        async with aiohttp.ClientSession() as s:
            async with s.get(cp.api_url + "/api/v1/proxies", ssl=trust,
                             headers={"Authorization": f"Bearer {cp.admin_token}"}) as r:
                assert r.status == 200
            async with s.get(cp.api_url + "/api/v1/proxies", ssl=trust) as r:
                assert r.status == 401
            with pytest.raises(aiohttp.ClientError):  # plaintext on the TLS port: no answer
                async with s.get(f"http://127.0.0.1:{cp.api_port}/api/v1/proxies") as r:
                    await r.read()
        code, out, err = await tulle(cp.api_url, "get", "proxies", env={"TULLE_CA_FILE": cert})
        assert code == 0, err
        code, out, err = await tulle(cp.api_url, "get", "proxies")  # not trusted: refused
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err


async def test_replicas_on_one_store_share_tokens_and_revocations(tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'shared.db'}"
    async with running_control_plane(store) as a, running_control_plane(store) as b:
        status, text = await call(a.api_url, "POST", "/api/v1/api-tokens", a.admin_token,
                                  {"role": "read-only"})
        assert status == 201, text
        reader = yaml.safe_load(text)
        assert (await call(b.api_url, "GET", "/api/v1/proxies", reader["token"]))[0] == 200
        assert (await call(b.api_url, "GET", "/api/v1/proxies", a.admin_token))[0] == 200
        status, _ = await call(b.api_url, "DELETE", f"/api/v1/api-tokens/{reader['id']}",
                               b.admin_token)
        assert status == 200
        assert (await call(a.api_url, "GET", "/api/v1/proxies", reader["token"]))[0] == 401
