"""A real control plane (store, reconciler, push stream, REST API) in the test's event loop,
and proxies subscribed to it through the production `Agent`; `control_plane_process` runs one
as a real child process instead.

Proxies are admitted the supported way (ADR 0028): `subscribe` asks the control plane that
owns the stream port for a bootstrap token through its REST API (`POST /api/v1/tokens`, what
`tulle token issue` calls, with the admin API token), with the workload's service account and
labels.

The API wants a token (ADR 0029): each control plane started here records its admin token by
API URL, and `auth(api)` gives the headers that send it (`apply`, `proxies`, `issue_token` and
the CLI helper use it).

The stream is TLS (ADR 0034): proxies verify it by the CA pin in their token; a test that
speaks the stream itself opens it with `open_stream(port)`, verified as a proxy would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from tulle.controlplane.main import ControlPlane
from tulle.controlplane.store.protocol import ResourceStore
from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import FrameDecoder, Hello, Message, WorkloadInfo, encode

_APIS: dict[int, str] = {}
"""Stream port -> REST API URL of the control planes these helpers started."""
_ROOTS: dict[int, Callable[[], list[str]]] = {}
"""Stream port -> the CA roots (PEM) the in-process control planes these helpers started trust
now (they change with `tulle ca rotate`)."""


async def open_stream(port: int, token: str = "") -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    """A TLS connection to the stream of the control plane started here at `port`, verified
    (CA and control-plane SPIFFE ID) exactly as a proxy's agent verifies it: by its CA for an
    in-process control plane, else by the CA pin in `token` (a bootstrap token it issued;
    without one, a token issued for the purpose provides the pin)."""
    from tulle.dataplane.stream_tls import StreamTrust

    if port not in _ROOTS and not token:
        token = await issue_token(_APIS[port], WorkloadInfo(name="pin-probe",
                                                            namespace="default"))
    trust = (StreamTrust(ca_pems=_ROOTS[port]()) if port in _ROOTS
             else StreamTrust.from_options(token))
    return await trust.connect("127.0.0.1", port)


async def first_answer(port: int, hello: Hello) -> Message:
    """Send one hello on a fresh stream connection; the control plane's first answer
    (Certificate, Config or Error)."""
    reader, writer = await open_stream(port)
    try:
        writer.write(encode(hello))
        dec = FrameDecoder()
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout=5)
            assert data, "closed without an answer"
            if msgs := dec.feed(data):
                return msgs[0]
    finally:
        writer.close()


async def issue_token(api: str, workload: WorkloadInfo, ttl_seconds: float = 300) -> str:
    """A bootstrap token for `workload` from the control plane at `api`."""
    body: dict[str, Any] = {"workload": workload.name, "namespace": workload.namespace,
                            "ttlSeconds": ttl_seconds}
    if workload.service_account != "default":  # else the declared Workload's, if any
        body["serviceAccount"] = workload.service_account
    if workload.labels:
        body["labels"] = workload.labels
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.post(f"{api}/api/v1/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def authenticated(api: str, hello: Hello) -> Hello:
    """`hello` with a fresh bootstrap token and a CSR, as a proxy's first hello carries."""
    from tulle.dataplane.identity import WorkloadKey

    w = hello.workload
    return msgspec.structs.replace(hello, token=await issue_token(api, w),
                                   csr=WorkloadKey().csr(w.namespace, w.name))


_ADMIN_TOKENS: dict[str, str] = {}


def auth(api: str) -> dict[str, str]:
    """`Authorization` header with the admin token of the control plane serving `api`."""
    return {"Authorization": f"Bearer {admin_token(api)}"}


def admin_token(api: str) -> str:
    try:
        return _ADMIN_TOKENS[api.rstrip("/")]
    except KeyError:
        raise AssertionError(f"no control plane with an admin token started at {api}") from None


@contextlib.asynccontextmanager
async def running_control_plane(store_url: str = "memory", *, stream_port: int = 0,
                                debounce: float = 0.05,
                                **options: Any) -> AsyncIterator[ControlPlane]:
    """`options`: more `ControlPlane` keyword arguments."""
    cp = ControlPlane(store_url, api_port=0, stream_port=stream_port, debounce=debounce,
                      **options)
    await cp.start()
    _ADMIN_TOKENS[cp.api_url] = cp.admin_token
    _APIS[cp.stream_port] = cp.api_url
    assert cp.ca is not None

    def roots(cp: ControlPlane = cp) -> list[str]:
        keeper = cp.ca_keeper
        if keeper is not None and keeper.state is not None:
            return keeper.state.bundle()
        assert cp.ca is not None
        return cp.ca.trust_bundle()

    _ROOTS[cp.stream_port] = roots
    try:
        yield cp
    finally:
        _APIS.pop(cp.stream_port, None)
        _ROOTS.pop(cp.stream_port, None)
        _ADMIN_TOKENS.pop(cp.api_url, None)
        await cp.stop()


class SubscribedProxy:
    def __init__(self, server: ProxyServer, agent: Agent, task: asyncio.Task[None]) -> None:
        self.server = server
        self.agent = agent
        self.task = task

    async def stop(self) -> None:
        self.agent.stop()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.server.close()


async def subscribe(stream_ports: list[int], workload: WorkloadInfo,
                    cache_dir: Path | None = None,
                    features: list[str] | None = None, token: str | None = None
                    ) -> SubscribedProxy:
    """`features`: what the agent announces (default: all of this build's).  `token`: the
    bootstrap token (default: one issued by the control plane owning the first port)."""
    if token is None:
        api = _APIS.get(stream_ports[0])
        token = await issue_token(api, workload) if api else ""
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", p) for p in stream_ports], workload, token=token,
                  cache_path=cache_dir / f"{workload.name}.json" if cache_dir else None,
                  backoff_max=0.3,
                  features=SUPPORTED if features is None else features)
    await agent.start_from_cache()
    task = asyncio.get_running_loop().create_task(agent.run())
    return SubscribedProxy(server, agent, task)


async def public_records(store: ResourceStore | None) -> list[str]:
    """`kind/name` of every record in `store` that is not the control plane's own (the CA,
    bootstrap-token and API-token records, all `internal.tulle.dev/v1`): what callers put
    there.  A fresh control plane has none."""
    assert store is not None
    items, _ = await store.list()
    return [f"{o['kind']}/{o['metadata']['name']}" for o in items
            if o.get("apiVersion") != "internal.tulle.dev/v1"]


async def apply(api: str, *docs: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.post(
            f"{api}/api/v1/apply", json={"documents": list(docs)}) as r:
        return r.status, await r.json()


async def apply_until_not_409(s: aiohttp.ClientSession, api: str, *docs: dict[str, Any]) -> None:
    """Apply; again on a 409 (the control plane's own status write moved the resourceVersion
    an edit raced, ADR 0102): for tests whose subject is what follows the apply."""
    for _ in range(20):
        async with s.post(f"{api}/api/v1/apply", json={"documents": list(docs)}) as r:
            if r.status == 409:
                await asyncio.sleep(0.05)
                continue
            assert r.status == 200, await r.text()
            return
    raise AssertionError("409 twenty times")


@contextlib.asynccontextmanager
async def control_plane_on(backend: str, request: Any, tmp_path: Path,
                           **options: Any) -> AsyncIterator[ControlPlane]:
    """A running control plane on `backend`: "sqlite" (a file in `tmp_path`) or "postgres"
    (a fresh schema of the session's `postgres_server` fixture, which the test module
    imports so pytest finds it)."""
    from tests.support.postgres import fresh_schema

    async with contextlib.AsyncExitStack() as stack:
        if backend == "postgres":
            server = request.getfixturevalue("postgres_server")
            url = await stack.enter_async_context(fresh_schema(server))
        else:
            url = f"sqlite:{tmp_path / 'cp.db'}"
        yield await stack.enter_async_context(running_control_plane(url, **options))


async def eventually(cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> float:
    """Wait until `cond()` (sync or async) is truthy; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serve_handler(handler: Any) -> AsyncIterator[int]:
    """A real aiohttp origin on 127.0.0.1 answering every method and path with `handler`;
    yields its port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def named_origin(name: str) -> AsyncIterator[int]:
    """An HTTP origin that answers every request with `{"name": NAME, "path": PATH}`."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "path": request.path_qs})

    async with serve_handler(handler) as port:
        yield port


class ControlPlaneProcess:
    """`tulle control-plane run` as a real child process (own session, dies with the test run),
    for what needs a process: SIGKILL, its RSS.  `kill()` SIGKILLs its process group."""

    def __init__(self, store: str, workdir: Path, *extra: str) -> None:
        from tests.support.proxy import free_port

        self.store = store
        self.api_port, self.stream_port = free_port(), free_port()
        self.extra = extra
        self.log_path = workdir / f"cp-{self.api_port}.log"
        _APIS[self.stream_port] = self.api
        self.token_path = workdir / f"cp-{self.api_port}.admin-token"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        from tests.support.subproc import TULLE, _die_with_test

        with self.log_path.open("ab") as out:
            # preexec_fn only calls prctl (dies with the test run); it takes no lock.
            self.proc = subprocess.Popen(
                [TULLE, "control-plane", "run", "--store", self.store,
                 "--api-port", str(self.api_port), "--stream-port", str(self.stream_port),
                 "--debounce-ms", "50", "--log-level", "info",
                 *(() if "--admin-token-file" in self.extra
                   else ("--admin-token-file", str(self.token_path))), *self.extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_test)  # noqa: PLW1509

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"control plane exited with {self.proc.returncode}:\n"
                                     f"{self.log()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{self.api}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(ready, timeout=timeout, interval=0.05)
        if self.token_path.exists():
            _ADMIN_TOKENS[self.api] = self.admin_token

    @property
    def admin_token(self) -> str:
        """The admin token the process wrote to its `--admin-token-file`."""
        return self.token_path.read_text().strip()

    async def proxies(self) -> dict[str, dict[str, Any]]:
        """The proxies this control plane serves, by `namespace/name` (GET /api/v1/proxies)."""
        async with aiohttp.ClientSession(headers=auth(self.api)) as s, \
                s.get(f"{self.api}/api/v1/proxies") as r:
            assert r.status == 200
            body = await r.json()
        return {f"{p['namespace']}/{p['name']}": p for p in body["items"]}


@contextlib.asynccontextmanager
async def control_plane_process(store: str, workdir: Path,
                                *extra: str) -> AsyncIterator[ControlPlaneProcess]:
    """A started, ready control-plane process; SIGKILLed on the way out whatever happened."""
    cp = ControlPlaneProcess(store, workdir, *extra)
    cp.start()
    try:
        await cp.wait_ready()
        yield cp
    finally:
        _ADMIN_TOKENS.pop(cp.api, None)
        cp.kill()



def routes_with(cp: ControlPlane, proxy: str, connected: tuple[str, ...],
                namespace: str = "default") -> bool:
    """The proxy `namespace/proxy` of the in-process `cp` runs a config compiled after the
    control plane saw each of `connected` Connected: the reconciler's view says so, no
    compilation is due, and the proxy ACKed the snapshot held for it now.  An endpoint count
    read without this may come from a config compiled before (a sidecar is out while it
    starts, ADR 0116, and was in before its hello when declared)."""
    rec = cp.reconciler
    assert rec is not None and cp.push is not None
    for name in connected:
        obj = rec._resources.get(("Workload", namespace, name)) or {}
        if ((obj.get("status") or {}).get("proxy") or {}).get("state") != "Connected":
            return False
    cfg, st = cp.cache.get((namespace, proxy)), cp.push.status.get((namespace, proxy))
    return (rec.settled and cfg is not None and st is not None
            and st.acked_version == cfg.version)
