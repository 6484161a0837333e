"""Where the two kinds of token meet (ADRs 0028 and 0029), against a real `tulle control-plane
run` process on 127.0.0.1: issuing and revoking the proxies' bootstrap tokens
(`/api/v1/tokens`, `tulle token issue|revoke`) needs an admin API token; a read-only one is 403,
none is 401; a bootstrap token is no API credential and an API token admits no proxy; no token
of either kind reaches an answer or the control plane's log; a token the stream would refuse
(the control plane's identity, a name no Workload may have) is not issued."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from tests.support.cli import tulle
from tests.support.controlplane import (
    admin_token,
    control_plane_process,
    open_stream,
    running_control_plane,
)

from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import Error, FrameDecoder, Hello, Message, WorkloadInfo, encode

NS = "shop"
ISSUE = {"workload": "web-0", "namespace": NS, "serviceAccount": "web"}


async def call(api: str, method: str, path: str, token: str | None,
               body: Any = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.request(method, api + path, headers=headers,
                                                       json=body) as r:
        return r.status, await r.text()


async def first_answer(port: int, hello: Hello, pinned_by: str) -> Message:
    """The first answer to `hello` on a stream verified by the CA pin in `pinned_by`."""
    reader, writer = await open_stream(port, pinned_by)
    try:
        writer.write(encode(hello))
        dec = FrameDecoder()
        for _ in range(100):
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "closed without an answer"
            if msgs := dec.feed(data):
                return msgs[0]
        raise AssertionError("no answer in 100 reads")
    finally:
        writer.close()


async def test_bootstrap_tokens_need_an_admin_api_token(tmp_path: Path) -> None:
    async with control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path) as cp:
        admin, api = cp.admin_token, cp.api
        status, text = await call(api, "POST", "/api/v1/api-tokens", admin, {"role": "read-only"})
        assert status == 201, text
        reader = yaml.safe_load(text)["token"]
        answers: list[str] = []

        for token, want in ((None, 401), ("tulle_0123456789abcdef_" + "Q" * 43, 401),
                            (reader, 403)):
            status, text = await call(api, "POST", "/api/v1/tokens", token, ISSUE)
            assert status == want, text
            answers.append(text)
        status, text = await call(api, "POST", "/api/v1/tokens", admin, ISSUE)
        assert status == 201, text
        issued = yaml.safe_load(text)
        bootstrap, tid = issued["token"], issued["id"]
        assert bootstrap.startswith("tbt2.") and issued["serviceAccount"] == "web"

        # A bootstrap token is not an API credential, and an API token admits no proxy.
        status, text = await call(api, "GET", "/api/v1/proxies", bootstrap)
        assert status == 401 and "invalid or revoked token" in text
        answers.append(text)
        hello = Hello(workload=WorkloadInfo(name="web-0", namespace=NS),
                      api_versions=[CONFIG_API_VERSION], token=admin,
                      csr=WorkloadKey().csr(NS, "web-0"))
        refused = await first_answer(cp.stream_port, hello, bootstrap)
        assert isinstance(refused, Error), refused
        answers.append(refused.reason)

        for token, want in ((None, 401), (reader, 403), (admin, 200), (admin, 404)):
            status, text = await call(api, "DELETE", f"/api/v1/tokens/{NS}/{tid}", token)
            assert status == want, text
            answers.append(text)

        # The CLI: `tulle token issue|revoke` with the API token it finds.
        code, out, err = await tulle(api, "token", "issue", "--workload", "web-1", "-n", NS,
                                     token=reader)
        assert code == 1 and "forbidden" in err and "admin token" in err, err
        answers.append(out + err)
        code, out, err = await tulle(api, "token", "issue", "--workload", "web-1", "-n", NS,
                                     "--ttl", "10m", token=None)
        assert code == 1 and "unauthorized" in err, err
        code, out, err = await tulle(api, "token", "issue", "--workload", "web-1", "-n", NS,
                                     "--ttl", "10m", "--token", admin, token=None)
        assert code == 0 and out.strip().startswith("tbt2.") and "single-use" in err, err
        cli_token = out.strip()
        cli_id = err.split()[1].rstrip(":")
        code, out, err = await tulle(api, "token", "revoke", cli_id, "-n", NS, token=reader)
        assert code == 1 and "forbidden" in err, err
        code, out, err = await tulle(api, "token", "revoke", cli_id, "-n", NS)
        assert code == 0 and "revoked" in out, err

        log = cp.log()
        for secret in (admin, reader, bootstrap, cli_token):
            assert secret not in log, "a token reached the log"
            assert all(secret not in a for a in answers), "a token was echoed"


async def test_a_token_the_stream_would_refuse_is_not_issued() -> None:
    """The control plane's own identity and a Workload the stream cannot register are refused
    at issue, with the stream's reasons and the request field (the stream's refusal of such a
    token, minted underneath: test_stream_tls.py)."""
    async with running_control_plane() as cp:
        api, admin = cp.api_url, admin_token(cp.api_url)
        own = "spiffe://cluster.local/ns/tulle-system/sa/control-plane is the control plane's " \
              "own identity; no workload may have it"
        subdomain = "must be a DNS-1123 subdomain"
        for body, path, reason in (
                ({"workload": "x", "namespace": "tulle-system",
                  "serviceAccount": "control-plane"}, "serviceAccount", own),
                ({"workload": "BAD_NAME", "namespace": NS}, "workload", subdomain),
                ({"workload": "web-0", "namespace": "Shop"}, "namespace", "must be a DNS-1123"),
                ({"workload": "web-0", "namespace": NS, "serviceAccount": "Web_"},
                 "serviceAccount", subdomain),
                ({"workload": "web-0", "namespace": NS, "labels": {"a b": "c"}},
                 'labels["a b"]', "must be a qualified name")):
            status, text = await call(api, "POST", "/api/v1/tokens", admin, body)
            assert status == 422, (body, text)
            answer = json.loads(text)
            assert answer["details"][0]["path"] == path, answer
            assert reason in answer["details"][0]["message"], answer
            assert answer["error"].startswith(f"{path}: "), answer
            assert "token" not in answer
        for args, reason in ((["--workload", "x", "-n", "tulle-system", "--service-account",
                               "control-plane"], f"serviceAccount: {own}"),
                             (["--workload", "BAD_NAME"], f"workload: {subdomain}")):
            code, out, err = await tulle(api, "token", "issue", *args)
            assert code == 2, (args, err)
            assert out == "" and reason in err, (args, err)
        code, out, err = await tulle(api, "token", "issue", "--workload", "web-0", "-n", NS)
        assert code == 0, err
        assert out.startswith("tbt")
