"""`tulle control-plane run`: store + reconciler + proxy stream + REST API in one process.

Several of these may run against one PostgreSQL store (high availability): each compiles the
same snapshots from the same resources, serves the proxies connected to it, and a proxy whose
control plane dies reconnects to another (`--control-plane` may be given several times).

The mesh CA (ADR 0028) is the operator's (`ca_cert`, `ca_key` files) or the store's (made at
the first start, shared by replicas); proxies are admitted to the stream by bootstrap tokens
and their certificates (`controlplane/ca/`).

The proxy stream is served over TLS 1.3 with a certificate from that CA for the control plane's
SPIFFE ID (ADR 0034, `push/stream_tls.py`), and the bootstrap tokens carry the pin of the CA's
root, so a proxy holding only a token can verify us.  `stream_plaintext` (development only)
serves it without TLS and says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
from pathlib import Path

import uvicorn

from tulle.controlplane import readiness
from tulle.controlplane.api.admin_token import ensure_admin_token
from tulle.controlplane.api.api_tokens import TokenStore
from tulle.controlplane.api.app import create_app
from tulle.controlplane.api.apply_checks import ApplyChecks
from tulle.controlplane.api.exposure import check_api_address
from tulle.controlplane.api.http_guard import Guard, guarded_protocol
from tulle.controlplane.api.limits import DEFAULT_MAX_BODY_BYTES
from tulle.controlplane.api.watch_routes import Watches, WatchLimits
from tulle.controlplane.ca import persist
from tulle.controlplane.ca.admission import Admission
from tulle.controlplane.ca.authority import DEFAULT_CERT_TTL, CertificateAuthority
from tulle.controlplane.ca.keeper import CAKeeper
from tulle.controlplane.ca.rotation import CAState
from tulle.controlplane.ca.spiffe import DEFAULT_TRUST_DOMAIN
from tulle.controlplane.ca.tokens import PURPOSE, TokenService, TokenSigner
from tulle.controlplane.heap import FrozenHeap
from tulle.controlplane.push.server import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HELLOS,
    DEFAULT_STALL_TIMEOUT,
    PushServer,
    SnapshotCache,
)
from tulle.controlplane.push.stream_tls import StreamCertificate, parse_sans
from tulle.controlplane.push.trust import view
from tulle.controlplane.readiness import DEFAULT_LIVENESS_TIMEOUT
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.base import DEFAULT_CHANGES_RETAINED
from tulle.controlplane.store.factory import open_store
from tulle.controlplane.store.protocol import ResourceStore
from tulle.controlplane.telemetry.tap import TapBroker
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.proxyconfig.stream_trust import ca_pin

log = logging.getLogger("tulle.controlplane")

TOKEN_PURGE_INTERVAL = 600.0
"""Seconds between purges of expired bootstrap tokens' records."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the control plane owns SIGTERM/SIGINT (uvicorn
    would re-raise the signal after shutdown and skip our cleanup)."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class ControlPlane:
    """One control-plane replica; `start()` binds, `stop()` releases everything."""

    def __init__(self, store_url: str, *, api_host: str = "127.0.0.1", api_port: int = 15681,
                 stream_host: str = "127.0.0.1", stream_port: int = 15680,
                 instance: str = "", debounce: float = 0.1,
                 stream_hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
                 stream_max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 stream_max_pending_hellos: int = DEFAULT_MAX_PENDING_HELLOS,
                 api_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 api_guard: Guard | None = None,
                 ca_cert: str = "", ca_key: str = "",
                 cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
                 admin_token_file: Path | None = None,
                 api_tls_cert: Path | None = None, api_tls_key: Path | None = None,
                 api_allow_plaintext: bool = False,
                 stream_sans: tuple[str, ...] | list[str] = (),
                 stream_plaintext: bool = False,
                 stream_liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
                 stream_ping_interval: float = 10.0,
                 stream_stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 stats_interval: float = 5.0,
                 stream_fd: int | None = None,
                 api_watch: WatchLimits | None = None,
                 store_changes_retained: int = DEFAULT_CHANGES_RETAINED,
                 heap: FrozenHeap | None = None) -> None:
        """`heap`: the collector policy around compilations (ADR 0130; `main` gives one, an
        in-process control plane none).  `admin_token_file`: where the first admin API token
        is kept (admin_token.py); None keeps it only in `admin_token`.  The API refuses a
        non-loopback `api_host` without TLS unless `api_allow_plaintext` (exposure.py)."""
        if bool(ca_cert) != bool(ca_key):
            raise ValueError("give both --ca-cert and --ca-key, or neither")
        self.store_url = store_url
        self.api_host, self.api_port = api_host, api_port
        self.stream_host, self.stream_port = stream_host, stream_port
        self.stream_socket = inherited_listener(stream_fd) if stream_fd is not None else None
        """A listening socket handed over (`--stream-fd`), served instead of binding: how
        `tulle demo` serves the stream inside a network namespace (ADR 0049)."""
        if self.stream_socket is not None:
            self.stream_host, self.stream_port = self.stream_socket.getsockname()[:2]
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.debounce = debounce
        self.heap = heap
        self.stream_hello_timeout = stream_hello_timeout
        self.stream_max_connections = stream_max_connections
        self.stream_max_pending_hellos = stream_max_pending_hellos
        if stream_liveness_timeout and stream_liveness_timeout <= stream_ping_interval:
            raise ValueError(f"--stream-liveness-timeout must be 0 or more than the stream's "
                             f"ping interval ({stream_ping_interval:g}s), got "
                             f"{stream_liveness_timeout:g}")
        if stream_liveness_timeout < 0:
            raise ValueError("--stream-liveness-timeout must not be negative")
        self.stream_liveness_timeout = stream_liveness_timeout
        self.stream_ping_interval = stream_ping_interval
        if stream_stall_timeout <= 0:
            raise ValueError(f"--stream-stall-timeout must be more than 0, got "
                             f"{stream_stall_timeout:g}")
        self.stream_stall_timeout = stream_stall_timeout
        """Seconds a push may go without the proxy taking any of it (ADR 0118)."""
        if stats_interval < 0:
            raise ValueError("--stats-interval must not be negative (0: no reports)")
        self.stats_interval = stats_interval
        """Seconds between the proxies' traffic reports for `tulle stat` (ADR 0046)."""
        self.api_max_body_bytes = api_max_body_bytes
        self.api_guard = api_guard if api_guard is not None else Guard()
        self.api_watch = api_watch
        self._watches: Watches | None = None
        """The bounds of list watches (watch_routes.py); the defaults unless a test sets them."""
        self._apply_checks: ApplyChecks | None = None
        """Apply's worker (apply_checks.py), closed when the control plane stops."""
        self.store_changes_retained = store_changes_retained
        """Change-log entries the store keeps (how far back a watch may resume)."""
        self.ca_files = (Path(ca_cert), Path(ca_key)) if ca_cert else None
        self.cert_ttl = cert_ttl
        self.ca: CertificateAuthority | None = None
        self.bootstrap_tokens: TokenService | None = None
        self.admission: Admission | None = None
        self.ca_keeper: CAKeeper | None = None
        self.admin_token_file = admin_token_file
        parse_sans(stream_sans)  # a bad --stream-san is refused here, naming it
        self.stream_sans = list(stream_sans)
        self.stream_plaintext = stream_plaintext
        self.stream_cert: StreamCertificate | None = None
        self._stream_cert_task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        if (api_tls_cert is None) != (api_tls_key is None):
            raise ValueError("--api-tls-cert and --api-tls-key go together")
        self.api_tls_cert, self.api_tls_key = api_tls_cert, api_tls_key
        self.exposure_warning = check_api_address(api_host, tls=api_tls_cert is not None,
                                                  allow_plaintext=api_allow_plaintext)
        self.admin_token = ""
        """An admin token valid in this control plane's store (set by `start`); a secret."""
        self.store: ResourceStore | None = None
        self.cache = SnapshotCache()
        self.reconciler: Reconciler | None = None
        self.presence: readiness.PresenceWriter | None = None
        self.push: PushServer | None = None
        self.http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def _presence(self, keys: list[tuple[str, str]], connected: bool, reason: str,
                        session: str, *, claim: bool = False) -> None:
        """A proxy's session started, serves, or ended: into its Workloads' status (ADR 0040,
        0116)."""
        assert self.presence is not None
        self.presence.submit(keys, connected, reason, session, claim=claim)

    async def start(self) -> None:
        self.store = await open_store(self.store_url,
                                      changes_retained=self.store_changes_retained)
        self.reconciler = Reconciler(self.store, self.cache, debounce=self.debounce,
                                     heap=self.heap)
        self.presence = readiness.PresenceWriter(self.store, self.instance)
        self.presence.start()
        if self.ca_files is not None:
            self.ca = persist.load_files(*self.ca_files)
        else:
            self.ca = await persist.load_or_create(self.store, await _trust_domain(self.store))
            persist.restrict_sqlite_file(self.store_url)
        self.ca_keeper = CAKeeper(self.store, from_files=self.ca_files is not None,
                                  instance=self.instance)
        state = await self.ca_keeper.load(self.ca)
        self.ca = state.signing
        self.bootstrap_tokens = TokenService(self.store, TokenSigner(
            state.token_secret or self.ca.derive_secret(PURPOSE)), ca_pins=self.ca_pins)
        self.admission = Admission(state, self.bootstrap_tokens,
                                   self.reconciler.trust_domain, cert_ttl=self.cert_ttl,
                                   aliases=self.reconciler.trust_domain_aliases)
        if self.stream_plaintext:
            log.warning("INSECURE: the proxy stream is served WITHOUT TLS (--stream-plaintext): "
                        "bootstrap tokens and certificate proofs cross the network in the "
                        "clear; for development only")
        else:
            self.stream_cert = StreamCertificate(state.stream_ca(), self.reconciler.trust_domain,
                                                 host=self.stream_host, sans=self.stream_sans,
                                                 ttl=self.cert_ttl)
            self._stream_cert_task = asyncio.get_running_loop().create_task(
                self.stream_cert.keep_fresh())
        self._purge_task = asyncio.get_running_loop().create_task(
            self._purge_tokens(self.bootstrap_tokens))
        self.push = PushServer(self.cache, on_register=self.reconciler.register,
                               admission=self.admission,
                               tls=self.stream_cert.context if self.stream_cert else None,
                               instance=self.instance,
                               hello_timeout=self.stream_hello_timeout,
                               max_connections=self.stream_max_connections,
                               max_pending_hellos=self.stream_max_pending_hellos,
                               on_presence=self._presence,
                               liveness_timeout=self.stream_liveness_timeout,
                               ping_interval=self.stream_ping_interval,
                               stall_timeout=self.stream_stall_timeout,
                               stats=StatsWindow(), stats_interval=self.stats_interval,
                               taps=TapBroker(labels=self.reconciler.workload_labels,
                                              snapshots=self.cache.get))
        self.stream_port = await self.push.start(self.stream_host, self.stream_port,
                                                 self.stream_socket)
        self.ca_keeper.on_change.append(self._ca_changed)
        push = self.push
        # (A draining proxy takes no trust update, ADR 0092: a rotation does not wait for it.)
        self.ca_keeper.local = lambda: [view(st) for st in push.statuses()
                                        if st.connected and not st.draining]
        self.ca_keeper.start()
        self.reconciler.start()
        api_tokens = TokenStore(self.store)
        self.admin_token = await ensure_admin_token(api_tokens, self.admin_token_file)
        app = create_app(self.store, self.push, self.cache, self.reconciler,
                         max_body_bytes=self.api_max_body_bytes,
                         api_tokens=api_tokens, bootstrap_tokens=self.bootstrap_tokens,
                         ca_keeper=self.ca_keeper, watch_limits=self.api_watch)
        self._watches = app.state.watches
        self._apply_checks = app.state.apply_checks
        if self.exposure_warning:
            log.warning("%s", self.exposure_warning)
        tls = ({"ssl_certfile": str(self.api_tls_cert), "ssl_keyfile": str(self.api_tls_key)}
               if self.api_tls_cert is not None else {})
        config = uvicorn.Config(app, host=self.api_host, port=self.api_port, log_level="warning",
                                access_log=False, lifespan="off",
                                http=guarded_protocol(self.api_guard),
                                **tls)  # type: ignore[arg-type]
        self.http = _Server(config)
        self._http_task = asyncio.get_running_loop().create_task(self.http.serve())
        while not self.http.started:
            if self._http_task.done():
                self._http_task.result()  # a bind error surfaces here
                raise RuntimeError(f"API server on {self.api_host}:{self.api_port} did not start")
            await asyncio.sleep(0.01)
        sock = self.http.servers[0].sockets[0]
        self.api_port = int(sock.getsockname()[1])
        log.info("control plane %s: store %s, proxy stream %s:%d, API %s",
                 self.instance, self.store_url.split("@")[-1], self.stream_host,
                 self.stream_port, self.api_url)

    def _ca_changed(self, state: CAState) -> None:
        """A rotation stage (ADR 0035): sign and admit by the new state, tell the proxies, and
        serve the stream with a certificate of `state.stream_ca()`: the old CA through
        `reissue`, so a proxy that missed `add-root` can still verify the stream, learn both
        roots and renew (ADR 0091); the new one from `retire`."""
        self.ca = state.signing
        if self.admission is not None:
            self.admission.use(state)
        stream_ca = state.stream_ca()
        if self.stream_cert is not None and self.stream_cert.ca is not stream_ca:
            self.stream_cert.ca = stream_ca
            self.stream_cert.renew()
        if self.push is not None:
            self.push.trust_changed()

    @staticmethod
    async def _purge_tokens(tokens: TokenService) -> None:
        """Delete expired bootstrap tokens' records at start and every TOKEN_PURGE_INTERVAL
        (each replica does; a record already gone is skipped)."""
        while True:
            try:
                gone = await tokens.purge()
            except Exception:  # a store hiccup must not end the loop
                log.exception("purging expired bootstrap tokens failed; retrying later")
            else:
                if gone:
                    log.info("purged %d records of expired bootstrap tokens", gone)
            await asyncio.sleep(TOKEN_PURGE_INTERVAL)

    def ca_pins(self) -> list[str]:
        """The pins (`sha256:` of the SPKI) of every root proxies trust now, put into bootstrap
        tokens: mid-rotation both, so a token works whichever root signs the stream."""
        if self.ca_keeper is not None and self.ca_keeper.state is not None:
            return [ca_pin(r) for r in self.ca_keeper.state.roots]
        assert self.ca is not None
        return [ca_pin(self.ca.root)]

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api_tls_cert is not None else "http"
        return f"{scheme}://{self.api_host}:{self.api_port}"

    async def stop(self) -> None:
        if self.http is not None:
            if self._watches is not None:
                self._watches.close()  # (open watches would hold uvicorn's shutdown for ever)
            self.http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await self._http_task
        if self._apply_checks is not None:
            self._apply_checks.close()
        if self.ca_keeper is not None:
            await self.ca_keeper.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        if self._stream_cert_task is not None:
            self._stream_cert_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_cert_task
        if self.push is not None:
            await self.push.close()
        if self.presence is not None:
            await self.presence.stop()
        if self.store is not None:
            await self.store.close()


def inherited_listener(fd: int) -> socket.socket:
    """The listening TCP socket open on `fd` (inherited from the parent process); ValueError
    naming `--stream-fd` for anything else."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"--stream-fd {fd}: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ValueError(f"--stream-fd {fd}: not a listening TCP socket")
    sock.setblocking(False)
    return sock


async def _trust_domain(store: ResourceStore) -> str:
    """The Mesh's trust domain, for a CA made before the reconciler has read anything."""
    items, _ = await store.list("Mesh")
    for obj in items:
        td = (obj.get("spec") or {}).get("trustDomain")
        if isinstance(td, str) and td:
            return td
    return DEFAULT_TRUST_DOMAIN


async def run(store_url: str, **kwargs: object) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        cp = ControlPlane(store_url, **kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        await cp.start()
        await stop.wait()
        log.info("control plane %s stopping", cp.instance)
        return 0
    finally:
        await cp.stop()


GC_THRESHOLDS = (100_000, 50, 50)
"""The process holds every proxy's snapshot: long-lived, acyclic graphs whose per-proxy lists
reference ~1,000 shared clusters each.  With CPython's default thresholds (700, 10, 10) the
collector re-traverses those lists many times per compilation: measured at 1,000 Services /
2,000 proxies, ~40% of the control plane's CPU per change went to young collections.  Garbage
here is freed by reference counting; the collector only needs to run now and then.  Since ADR
0130 the compilations themselves run with the collector off and their results frozen
(`heap.py`); these thresholds still pace the collections of everything else (requests,
sessions, apply's checks on their worker thread)."""


def main(store_url: str, **kwargs: object) -> int:
    import gc

    import uvloop

    gc.set_threshold(*GC_THRESHOLDS)
    kwargs.setdefault("heap", FrozenHeap())
    return uvloop.run(run(store_url, **kwargs))
