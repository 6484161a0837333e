"""The proxy as curl sees it: 100-continue for a large POST, a chunked upload, HTTP/1.0."""

from __future__ import annotations

import asyncio
import hashlib
import json

from tests.support.proxy import running_proxy, simple_config


async def curl(*args: str, stdin: bytes | None = None) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def test_curl_large_post_gets_100_continue_then_the_response(origin: int) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: curl sends Expect: 100-continue
    async with running_proxy(simple_config(origin)) as p:
        out, err = await curl("--data-binary", "@-", p.url(path="/sink"), stdin=body)
    assert "> Expect: 100-continue" in err
    assert "< HTTP/1.1 100 Continue" in err
    assert "< HTTP/1.1 200" in err
    assert json.loads(out) == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_curl_chunked_upload(origin: int) -> None:
    body = b"chunky" * 100_000
    async with running_proxy(simple_config(origin)) as p:
        out, err = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                              p.url(path="/sink"), stdin=body)
    assert "> Transfer-Encoding: chunked" in err
    assert json.loads(out)["len"] == len(body)


async def test_curl_http10(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        out, err = await curl("-0", p.url(path="/chunked"))
        assert "> GET /chunked HTTP/1.0" in err
        assert out == "one,two,three"  # close-delimited for 1.0: no chunk framing leaks
        out, _ = await curl("-0", p.url(path="/echo"))
        assert json.loads(out)["method"] == "GET"
