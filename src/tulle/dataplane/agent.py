"""The proxy's link to the control plane: register, subscribe, apply, ACK/NACK, reconnect.

Decision 4 of DESIGN.md: the proxy keeps working without the control plane.  With a cache
directory the last good snapshot is written to disk after every successful apply, and every
certificate held with its key and the mesh bundle at every issue, renewal and bundle change
(`identity_cache.py`, ADR 0123); both are loaded at start, so a proxy restarted while the
control plane is down serves what it served before, mTLS included.  What it no longer fronts
(a pod taken off the node) is left out of that cache, and its kept identity removed (ADR
0126).  The agent reconnects with exponential backoff and full jitter, rotating through the
control-plane addresses it was given (several replicas share one PostgreSQL store).

The hello announces what this build speaks: the stream protocol, the contract version and every
config feature of its model (`proxyconfig/features.py`).  A snapshot or delta is decoded here,
not in the frame decoder, so one that fails to decode, validate or apply is NACKed with every
reason and field path and the stream stays up; the proxy keeps serving the previous snapshot.

Identity (ADR 0028): the first hello carries the bootstrap token and a CSR for a key made here;
later hellos (reconnects) present the certificate and a proof of its key instead.  The
certificate is renewed over the stream at about half its lifetime (`identity.py`), and put into
every applied snapshot as the reserved `workload` identity and `mesh` bundle; a renewal
re-applies the config in force, so new handshakes use the new certificate (TLS contexts rotate
in place) and open connections are untouched.  The cached snapshot is the control plane's
config, without those sections; the identities have their own files.  An identity read from
disk is a claim until the control plane takes it: the first hello presents it with a CSR, so
a fresh certificate replaces it at once, and a hello refused over it drops it (the next one
uses the bootstrap token).

The stream runs over TLS (ADR 0034): `trust` (`stream_tls.py`) verifies the control plane —
by the CA pin in the bootstrap token on first contact, or `--ca-file`, then by the mesh bundle
of the certificate received — before the hello, which carries the token or proof, is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from tulle.dataplane.cache_serving import is_node_snapshot, named_workloads, without_workloads
from tulle.dataplane.identity import (
    HeldIdentity,
    ReservedSection,
    WorkloadKey,
    check_reserved,
    inject,
)
from tulle.dataplane.identity_cache import IdentityCache
from tulle.dataplane.kept_identities import KeptIdentities
from tulle.dataplane.outage import OutageLog
from tulle.dataplane.server import ApplyError, ProxyServer
from tulle.dataplane.stream_tls import StreamTrust
from tulle.dataplane.tap_link import TapLink
from tulle.dataplane.telemetry.summary import Summarizer
from tulle.proxyconfig import features
from tulle.proxyconfig.delta import DeltaError
from tulle.proxyconfig.framing import MAX_FRAME
from tulle.proxyconfig.model import CONFIG_API_VERSION, ProxyConfig
from tulle.proxyconfig.reserved import workload_identity
from tulle.proxyconfig.stats import report_seconds
from tulle.proxyconfig.stream import (
    Ack,
    Certificate,
    Csr,
    DeltaMsg,
    Draining,
    Error,
    FrameDecoder,
    FrameError,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    Snapshot,
    StatsReport,
    StatsRequest,
    TapStart,
    TapStop,
    TrustAck,
    TrustUpdate,
    WorkloadCredential,
    WorkloadInfo,
    apply_checked,
    bundle_id,
    decode_delta,
    decode_snapshot,
    encode,
)
from tulle.proxyconfig.validate import ConfigError, check

log = logging.getLogger("tulle.agent")

CLOSE_TIMEOUT = 1.0
"""Seconds a closed stream may take to shut down before the agent reconnects anyway."""
STATS_MAX_GAP = 600.0
"""Seconds: traffic older than this when a control plane asks for reports is not reported
(the control plane keeps no longer a window)."""


CACHE_MAX_BYTES = MAX_FRAME
"""A cached snapshot larger than this is refused unread: none that large came over the stream
(its frames are bounded by the same figure), and reading it whole would cost the proxy memory
at every start (a 300 MB file made one take 1.5 GB and put a 300 MB version in force; ADR
0108)."""


class RefusedByControlPlane(ConnectionRefusedError):
    """The control plane answered with an `error` (a token refused, a protocol it does not
    speak): a failed attempt, which keeps backing off."""


def load_cached(path: Path, workload: WorkloadInfo | None = None) -> ProxyConfig | None:
    """The snapshot cached at `path`, if it is one this proxy may serve: readable, at most
    `CACHE_MAX_BYTES`, well-formed, without the sections the proxy fills itself, and (given
    `workload`) made for that workload -- a cache of another one would bind its ports and
    answer as it (a directory copied between hosts, a `--cache-dir` shared by two proxies).
    Anything else is logged and ignored: the proxy then waits for the control plane.  Its
    semantic checks (`check`) are the caller's, once the identities it names are injected:
    without them, mTLS settings name an identity that is not there (ADR 0123)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # (ELOOP: a symbolic link, never followed)
        log.warning("ignoring unusable cached snapshot %s: %s", path, exc)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if why := _not_ours(st):
                # What a cache-dir others may write to (a bare emptyDir is 0777) lets them
                # put here: a snapshot of their own making, served at the next start while the
                # control plane is away (policies gone, routes elsewhere).  ADR 0123.
                log.error("ignoring cached snapshot %s: %s; remove it", path, why)
                return None
            size = st.st_size
            if size > CACHE_MAX_BYTES:
                log.warning("ignoring cached snapshot %s: %d bytes, more than the %d a snapshot "
                            "from the stream can be", path, size, CACHE_MAX_BYTES)
                return None
            data = f.read(CACHE_MAX_BYTES + 1)
        cfg = decode_snapshot(msgspec.Raw(data))
        check_reserved(cfg)
    except (OSError, ConfigError, ReservedSection) as exc:
        log.warning("ignoring unusable cached snapshot %s: %s", path, exc)
        return None
    node = cfg.node
    if workload is not None and (node.namespace, node.name) != (workload.namespace,
                                                                 workload.name):
        log.warning("ignoring cached snapshot %s: it is workload %r's, not %s/%s's", path,
                    f"{node.namespace}/{node.name}"[:300], workload.namespace, workload.name)
        return None
    return cfg


def _not_ours(st: os.stat_result) -> str:
    """Why a cached snapshot may hold what another uid wrote (another owner, or group or
    others may write it), or "".  A file of the proxy's readable by others (0644, as versions
    before ADR 0111 wrote it) is served: no one else could have changed it, and the proxy
    writes it 0600 at its next snapshot."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by the proxy's ({uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return f"mode {mode:04o} lets group or others write it (the proxy writes it 0600)"
    return ""


CACHE_FILE_MODE = 0o600
"""The cached snapshot is the proxy uid's alone.  It holds the mesh as this workload sees it
(Services, addresses, policies; not the certificate and its key, which the proxy injects after
and keeps in files of their own, `identity_cache.py`): written under the default umask it
was 0644, readable by the application's uid and every other user of the host or node (ADR
0111)."""
CACHE_DIR_MODE = 0o700


def save_cached(path: Path, cfg: ProxyConfig) -> None:
    """Atomic write: a crash mid-write leaves the previous file intact.  The file is the proxy
    uid's alone (`CACHE_FILE_MODE`) from its first byte, whatever the umask, and a directory
    this creates is too."""
    path.parent.mkdir(mode=CACHE_DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover (a crash mid-write) keeps its old mode: never write into it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 CACHE_FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, CACHE_FILE_MODE)  # the umask may have taken bits away, never added any
        out.write(msgspec.json.encode(msgspec.to_builtins(cfg)))
    os.replace(tmp, path)


class Agent:
    def __init__(self, server: ProxyServer, addresses: Sequence[tuple[str, int]],
                 workload: WorkloadInfo, *, cache_path: Path | None = None,
                 token: str = "", backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 idle_timeout: float = 40.0,
                 features: Sequence[str] = features.SUPPORTED,
                 workloads: Sequence[WorkloadInfo] = (),
                 node_tokens: Mapping[str, str] | None = None,
                 trust: StreamTrust | None = None,
                 identities: IdentityCache | None = None) -> None:
        """`trust`: how the control plane is verified; default: by the pins of `token`
        (ValueError for a token without one).  `identities`: where the certificates held are
        kept on disk (`--cache-dir`, ADR 0123); None: memory only."""
        if not addresses:
            raise ValueError("at least one control-plane address is needed")
        if trust is None:
            trust = StreamTrust.from_options(token) if token else StreamTrust()
        self.trust = trust
        self.server = server
        self.addresses = list(addresses)
        self.workload = workload
        self.cache_path = cache_path
        self.token = token
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_timeout = idle_timeout
        self.connected = asyncio.Event()
        self.current: ProxyConfig | None = None
        self._back: Callable[[], None] | None = None
        """Says the control plane is back (`outage.py`): set per session by `run`, called at
        the session's first frame (a proxy that reconnects with its version current gets no
        snapshot, only pings)."""
        self.features = list(features)
        """Announced in the hello; tests announce fewer to play an older proxy."""
        self.workloads = list(workloads)
        """Further workloads this proxy fronts (a per-node agent), announced in the hello."""
        self.unserved: list[str] = []
        """Of `workloads`, those the config in force has no listener for (a control plane
        from before `Hello.workloads` serves only the first): warned about, not NACKed."""
        self.last_nack = ""
        self.last_ignored: list[str] = []
        """Fields the control plane marked optional that this proxy dropped, last apply."""
        self._stop = False
        self.held: HeldIdentity | None = None
        """The workload certificate in force (memory only)."""
        self._pending_key: WorkloadKey | None = None
        """The key of the CSR in flight."""
        self.renewals = 0
        self.identity_changed = asyncio.Event()
        """Set whenever a new certificate is in force (tests wait on it)."""
        self.node_tokens = dict(node_tokens or {})
        """Bootstrap tokens of the further `workloads`, by `namespace/name` (ADR 0032)."""
        self.node_held: dict[str, HeldIdentity] = {}
        """The further workloads' certificates in force, by `namespace/name`."""
        self._node_pending: dict[str, WorkloadKey] = {}
        self._renew_now = asyncio.Event()
        """Set by a `TrustUpdate` asking for a renewal (CA rotation): renew before half-life."""
        self.trust_updates = 0
        self.summarizer = Summarizer(server.metrics)
        """Kept across sessions: the first report covers everything since the proxy started,
        one after a reconnect the gap (ADR 0046)."""
        self._stats_last = time.monotonic()
        self._stats_task: asyncio.Task[None] | None = None
        self._stats_writer: asyncio.StreamWriter | None = None
        self.stats_reports = 0
        self._drain_taken = False
        """This session's control plane takes `Draining` (its `StatsRequest` said so)."""
        self.draining = False
        """Said `Draining`: the stream stays for the drain, and is never opened again."""
        self._renewer: asyncio.Task[None] | None = None
        self.kept = KeptIdentities(identities, self.own_key)
        """The certificates kept on disk (ADR 0123)."""
        self._partial = False
        """Serving the cached snapshot without some fronted workloads' parts (no usable
        identity): the hello then names no version, which would say all of them serve."""

    @property
    def own_key(self) -> str:
        return f"{self.workload.namespace}/{self.workload.name}"

    def held_by_key(self) -> dict[str, HeldIdentity]:
        """Every certificate in force by `namespace/name`, the proxy's own first."""
        own = {self.own_key: self.held} if self.held is not None else {}
        return {**own, **self.node_held}

    async def start_from_cache(self) -> bool:
        """Serve the cached snapshot, if any, with the cached identities, before the control
        plane is reachable (ADR 0108, 0123).  Each refusal is one log line; then the proxy
        waits for the control plane, as it does without a cache.  Usable identities are kept
        even when no snapshot is served: the hello presents them instead of a bootstrap
        token, which a restarted proxy has used already."""
        if self.cache_path is None:
            return False
        cfg = load_cached(self.cache_path, self.workload)
        self.kept.tidy(self._fronted_keys(),
                       named_workloads(cfg, self.own_key) if cfg is not None else ())
        if cfg is not None:
            cfg = self._without_left(cfg)
        found, refused = self.kept.read(self._fronted_keys(), cfg)
        self.held = found.pop(self.own_key, None)
        self.node_held.update(found)
        held = self._held_all()
        if held:  # the stream verifies the control plane by the bundle kept, as before
            self.trust.learn(max(held, key=lambda h: h.cert.not_before).cert.trust_bundle)
        if cfg is None:
            for k, why in refused.items():
                if why is not None:
                    self.kept.log_refused(k, why, f"workload {k}")
            return False
        served = cfg
        missing: list[str] = []
        try:
            check(inject(cfg, held))
        except ConfigError as exc:
            missing = list(refused)
            if not missing or not is_node_snapshot(cfg):
                self.kept.log_unserved(cfg, exc, refused, self.cache_path)
                return False
            served = without_workloads(cfg, missing, [self.kept.section(k) for k in missing])
            try:
                check(inject(served, held))
            except ConfigError as again:
                self.kept.log_unserved(cfg, again, refused, self.cache_path)
                return False
        for k, why in refused.items():
            if k not in missing and why is not None:
                self.kept.log_refused(k, why, f"workload {k}")
        try:
            await self.server.apply(inject(served, held))
        except ApplyError as exc:
            log.warning("cached snapshot %s cannot be applied: %s", cfg.version, exc)
            return False
        self.current = cfg
        self._partial = bool(missing)
        for k in missing:
            self.kept.log_refused(k, refused.get(k), f"cached snapshot {cfg.version} served "
                                                     f"without workload {k} (its listeners wait "
                                                     f"for the control plane)")
        log.info("serving cached snapshot %s%s until the control plane answers", cfg.version,
                 f" with the cached certificate{'s' if len(held) > 1 else ''} of "
                 f"{', '.join(self.held_by_key())}" if held else "")
        return True

    def _fronted_keys(self) -> list[str]:
        return [self.own_key, *(f"{w.namespace}/{w.name}" for w in self.workloads)]

    def _without_left(self, cfg: ProxyConfig) -> ProxyConfig:
        """The cached snapshot without the workloads it names that this proxy no longer
        fronts (a pod taken off `--node-config`): not its to serve (ADR 0126)."""
        left = sorted(named_workloads(cfg, self.own_key) - set(self._fronted_keys()))
        if not left:
            return cfg
        log.info("cached snapshot %s names %s, which this proxy no longer fronts: left out",
                 cfg.version, ", ".join(left))
        return without_workloads(cfg, left, [self.kept.section(k) for k in left])

    def _drop_from_disk(self, reason: str) -> None:
        """The control plane refused the hello that presented identities read from disk:
        dropped when it was over a certificate; the next hello uses the bootstrap token."""
        for k in self.kept.refused_by_control_plane(reason):
            if k == self.own_key:
                self.held = None
            else:
                self.node_held.pop(k, None)

    async def run(self) -> None:
        """Stay subscribed until `stop()`; never raises for connection trouble."""
        attempt = 0
        i = 0
        outage = OutageLog(self.backoff_initial, self.backoff_max, len(self.addresses))
        while not self._stop:
            host, port = self.addresses[i % len(self.addresses)]
            where = f"{host}:{port}"
            going = False

            def back(where: str = where) -> None:
                nonlocal going
                going = True
                outage.back(where)

            try:
                self._back = back
                await self._session(host, port)
                reason = "closed the stream"
            except RefusedByControlPlane as exc:
                reason, going = str(exc), False  # (refused: no session got going)
            except (OSError, FrameError, asyncio.IncompleteReadError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self.connected.clear()
            if going:
                # A session that got going resets the backoff: a control plane restarted a
                # second time is retried from `backoff_initial` again, not from where the
                # first outage left off (it never was reset: `_session` ends by raising).
                attempt = 0
            if self._stop or self.draining:
                # (a draining proxy that reconnected would be an endpoint again)
                break
            outage.failed(where, reason, self.current.version if self.current else None)
            self.kept.note_expired(self.held_by_key())
            i += 1
            attempt += 1
            cap = min(self.backoff_max, self.backoff_initial * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(0, cap))  # full jitter

    def stop(self) -> None:
        self._stop = True

    async def announce_draining(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Tell the control plane this proxy is stopping (ADR 0092): its workloads leave
        their Services' endpoints now, and the stream, with its stats reports, stays up for
        the drain, so `tulle stat` keeps what the drain serves.  False when this stream's
        control plane does not take `Draining` (from before it, or not asking for reports) or
        the stream is gone: then the caller leaves the stream to be taken out (ADR 0040)."""
        writer = self._stats_writer
        if not self._drain_taken or writer is None or writer.is_closing():
            return False
        self.draining = True
        if self._renewer is not None:  # (a certificate now would not be put in force)
            self._renewer.cancel()
        # What was served up to the signal goes first, as before ADR 0092: a stream that
        # breaks during the drain is not reopened, and a report held to the drain's end
        # would be lost with it.
        self._send_report(writer)
        writer.write(encode(Draining()))
        try:
            await asyncio.wait_for(writer.drain(), timeout)
        except (OSError, TimeoutError):
            return False
        return True

    async def last_report(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Send what was served since the last stats report, now, on the open stream, and
        stop reporting: a proxy's last interval would otherwise go with it, and `tulle stat`
        lose up to a report interval of traffic at every restart or scale-down.  False when
        no report was asked for or the stream is gone (that interval is lost)."""
        writer, self._stats_writer = self._stats_writer, None
        await self._stop_stats()
        if writer is None or writer.is_closing():
            return False
        self._send_report(writer)
        try:
            await asyncio.wait_for(writer.drain(), timeout)
        except (OSError, TimeoutError):
            return False
        return True

    def _hello(self) -> Hello:
        w = self.workload
        auth: dict[str, object] = {}
        held = self.held
        self._pending_key = None  # a new stream: a CSR the last one sent is void
        if held is None:
            if self.token:
                self._pending_key = WorkloadKey()
                auth = {"token": self.token, "csr": self._pending_key.csr(w.namespace, w.name)}
        else:
            at = int(time.time())  # noqa: TID251 - wall clock, compared with the CP's
            auth = {"certificate": held.cert.cert_chain, "proof_time": at,
                    "proof": held.key.proof(w.namespace, w.name, at),
                    "trust_bundle": bundle_id(held.cert.trust_bundle)}
            if at >= held.renew_at() or self.own_key in self.kept.from_disk:
                # (a key read from disk is replaced at the first chance, ADR 0123)
                self._pending_key = WorkloadKey()
                auth["csr"] = self._pending_key.csr(w.namespace, w.name)
        # A version names what this proxy serves now, for every workload it fronts (ADR
        # 0116): not while the cache is served without some of them.
        serving = self.current.version if self.current and not self._partial else ""
        return Hello(workload=w, last_version=serving,
                     api_versions=[CONFIG_API_VERSION], features=self.features,
                     workloads=self.workloads, credentials=self._node_credentials(),
                     **auth)  # type: ignore[arg-type]

    def _node_credentials(self) -> list[WorkloadCredential]:
        """How this node proves each further workload: its certificate and a proof when it
        holds one, else its bootstrap token with a CSR for a fresh key."""
        out = []
        self._node_pending.clear()  # a new stream: what the last one asked for is void
        for w in self.workloads:
            k = f"{w.namespace}/{w.name}"
            held = self.node_held.get(k)
            if held is None:
                self._node_pending[k] = key = WorkloadKey()
                out.append(WorkloadCredential(namespace=w.namespace, name=w.name,
                                              token=self.node_tokens.get(k, ""),
                                              csr=key.csr(w.namespace, w.name)))
                continue
            at = int(time.time())  # noqa: TID251 - wall clock, compared with the CP's
            csr = ""
            if k in self.kept.from_disk:  # replaced at the first chance (ADR 0123)
                self._node_pending[k] = key = WorkloadKey()
                csr = key.csr(w.namespace, w.name)
            out.append(WorkloadCredential(namespace=w.namespace, name=w.name,
                                          certificate=held.cert.cert_chain, proof_time=at,
                                          proof=held.key.proof(w.namespace, w.name, at),
                                          csr=csr))
        return out

    def _held_all(self) -> list[HeldIdentity]:
        """Every certificate in force: the proxy's own first, then the node's others."""
        return ([self.held] if self.held else []) + list(self.node_held.values())

    def _renew_node(self, writer: asyncio.StreamWriter) -> float:
        """Send a renewal CSR for each further workload whose certificate is due (and not
        already asked for); the seconds until the next one is due."""
        now = time.time()  # noqa: TID251 - wall clock vs cert times
        wait = float("inf")
        for k, held in self.node_held.items():
            if k in self._node_pending:
                continue
            due = -1.0 if self._renew_now.is_set() else held.renew_at() - now
            if due > 0:
                wait = min(wait, due)
                continue
            ns, _, name = k.partition("/")
            self._node_pending[k] = key = WorkloadKey()
            writer.write(encode(Csr(csr=key.csr(ns, name), workload=k)))
        return wait

    async def _renew_when_due(self, writer: asyncio.StreamWriter) -> None:
        """Send a renewal CSR at about half the certificate's lifetime (once per certificate;
        the next one is scheduled when the new certificate arrives)."""
        while not self._stop:
            node_wait = self._renew_node(writer)
            held = self.held
            if held is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.identity_changed.wait(),
                                           timeout=min(node_wait, 86400.0))
                self.identity_changed.clear()
                continue
            delay = min(held.renew_at() - time.time(),  # noqa: TID251 - wall clock vs cert
                        node_wait)
            if self._pending_key is not None or (delay > 0 and not self._renew_now.is_set()):
                # (a CSR is out, the hello's own say: one at a time, or the answer to the
                # first would be paired with the second's key)
                self.identity_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed_or_asked(), timeout=delay)
                continue
            self._renew_now.clear()
            w = self.workload
            self._pending_key = WorkloadKey()
            writer.write(encode(Csr(csr=self._pending_key.csr(w.namespace, w.name))))
            self.identity_changed.clear()
            await self.identity_changed.wait()

    async def _changed_or_asked(self) -> None:
        """Until a new certificate is in force or a renewal is asked for."""
        waits = [asyncio.ensure_future(self.identity_changed.wait()),
                 asyncio.ensure_future(self._renew_now.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _take_trust(self, msg: TrustUpdate) -> Message | None:
        """Put a new mesh trust bundle in force with the certificate held (ADR 0035); confirm
        it only once applied, so the control plane never counts a proxy that failed."""
        held, node_held = self.held, dict(self.node_held)

        def rebundled(h: HeldIdentity) -> HeldIdentity:
            return HeldIdentity(h.key, msgspec.structs.replace(
                h.cert, trust_bundle=list(msg.trust_bundle)), h.identity.name)

        if held is not None or node_held:
            self.held = rebundled(held) if held is not None else None
            self.node_held = {k: rebundled(h) for k, h in node_held.items()}
            try:
                await self._reapply()
            except ApplyError as exc:
                self.held, self.node_held = held, node_held
                log.warning("the new trust bundle cannot be put in force: %s", exc)
                return None
            for k, h in self.held_by_key().items():  # the bundle kept with each follows
                self.kept.keep(k, h)
        self.trust.learn(msg.trust_bundle)  # the stream's own trust follows the rotation
        self.trust_updates += 1
        log.info("mesh trust bundle %s in force (%d roots)%s", msg.id, len(msg.trust_bundle),
                 "; renewing the certificate now" if msg.renew else "")
        if msg.renew and self._pending_key is None:
            self._renew_now.set()
        return TrustAck(id=msg.id)

    async def _take_certificate(self, msg: Certificate) -> None:
        if msg.workload:
            nkey = self._node_pending.pop(msg.workload, None)
            if nkey is None or not nkey.certified_by(msg.cert_chain):
                log.warning("ignoring a certificate for %s this proxy did not ask for",
                            msg.workload)
                return
            renewed = msg.workload in self.node_held
            ns, _, name = msg.workload.partition("/")
            key = msg.workload
            taken = self.node_held[key] = HeldIdentity(
                nkey, msg, workload_identity(ns, name, first=False))
        else:
            pending = self._pending_key
            if pending is None or not pending.certified_by(msg.cert_chain):
                log.warning("ignoring a certificate this proxy did not ask for")
                return
            self._pending_key = None
            renewed = self.held is not None
            key = self.own_key
            taken = self.held = HeldIdentity(pending, msg)
        was_disk = key in self.kept.from_disk
        self.kept.from_disk.discard(key)
        self.trust.learn(msg.trust_bundle)
        self.renewals += renewed
        self.kept.keep(key, taken)
        log.info("workload certificate%s %s, valid until %s",
                 f" of {msg.workload}" if msg.workload else "",
                 "issued in place of the one read from disk" if was_disk
                 else "renewed" if renewed else "issued",
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(msg.not_after)))
        try:
            await self._reapply()
        except ApplyError as exc:
            log.warning("the new certificate cannot be put in force: %s", exc)
        self.identity_changed.set()

    async def _reapply(self) -> None:
        """Put the config in force again with the certificates held now (ApplyError).  The
        cache served without some workloads (`_partial`) takes each back as its
        certificate arrives."""
        cfg = self.current
        if cfg is None:
            return
        if not self._partial:
            await self.server.apply(inject(cfg, self._held_all()))
            return
        missing = [k for k in self._fronted_keys() if k not in self.held_by_key()]
        served = without_workloads(cfg, missing, [self.kept.section(k) for k in missing])
        await self.server.apply(inject(served, self._held_all()))
        self._partial = bool(missing)

    async def _session(self, host: str, port: int) -> None:
        reader, writer = await self.trust.connect(host, port, timeout=5)
        self._drain_taken = False  # (this control plane says so in its own StatsRequest)
        renewer = self._renewer = asyncio.get_running_loop().create_task(
            self._renew_when_due(writer))
        taps = TapLink(self.server.taps, writer)
        try:
            writer.write(encode(self._hello()))
            decoder = FrameDecoder()
            while not self._stop:
                data = await asyncio.wait_for(reader.read(65536), timeout=self.idle_timeout)
                if not data:
                    raise ConnectionResetError("control plane closed the stream")
                for msg in decoder.feed(data):
                    if self._back is not None:  # the first frame: this session got going
                        self._back()
                        self._back = None
                        if isinstance(msg, Error):  # the hello was refused
                            self._drop_from_disk(msg.reason)
                    if isinstance(msg, StatsRequest):
                        self._drain_taken = msg.draining
                        self._start_stats(writer, msg.interval_ms)
                        continue
                    if isinstance(msg, TapStart | TapStop):
                        taps.handle(msg)
                        continue
                    if self.draining and isinstance(msg, Snapshot | DeltaMsg | TrustUpdate
                                                    | Certificate):
                        # What it runs, it drains with (`ProxyServer.apply` refuses while
                        # draining); no answer: a NACK would read as a config it found bad.
                        log.debug("draining: %s not taken", type(msg).__name__)
                        continue
                    reply = await self._handle(msg)
                    if reply is not None:
                        writer.write(encode(reply))
                        await writer.drain()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._stats_writer = None
            await self._stop_stats()
            await taps.close()
            writer.close()
            # Bounded: a TLS close waits for the peer's close_notify (up to asyncio's 30 s
            # shutdown timeout), and a control plane that dropped us may never send one.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    def _start_stats(self, writer: asyncio.StreamWriter, interval_ms: int) -> None:
        """Report traffic summaries on this stream every `interval_ms` (clamped to the
        contract's bounds) until it ends (ADR 0046)."""
        interval = report_seconds(interval_ms)
        if time.monotonic() - self._stats_last > STATS_MAX_GAP:
            # Long unreported (no control plane asked): that history is no window's.
            self.summarizer.report(self.current)
            self._stats_last = time.monotonic()
        if self._stats_task is not None:
            self._stats_task.cancel()
        self._stats_writer = writer
        self._stats_task = asyncio.get_running_loop().create_task(
            self._report_stats(writer, interval))

    async def _report_stats(self, writer: asyncio.StreamWriter, interval: float) -> None:
        while not self._stop and not writer.is_closing():
            await asyncio.sleep(interval)
            self._send_report(writer)

    def _send_report(self, writer: asyncio.StreamWriter) -> None:
        """One `StatsReport`: what was served since the last one."""
        now = time.monotonic()
        rows = self.summarizer.report(self.current)
        # At least 1 ms: a report right after another is still one the window takes.
        ms = max(1, round((now - self._stats_last) * 1000))
        writer.write(encode(StatsReport(interval_ms=ms, rows=rows)))
        self._stats_last = now
        self.stats_reports += 1

    async def _stop_stats(self) -> None:
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _handle(self, msg: Message) -> Message | None:
        if isinstance(msg, Ping):
            return Pong()
        if isinstance(msg, Error):
            log.warning("control plane refused this proxy: %s", msg.reason)
            raise RefusedByControlPlane(f"control plane refused us: {msg.reason}")
        if isinstance(msg, Certificate):
            await self._take_certificate(msg)
            return None
        if isinstance(msg, TrustUpdate):
            return await self._take_trust(msg)
        if isinstance(msg, Snapshot):
            self.connected.set()
            raw, optional = msg.config, msg.optional

            def checked(ignored: list[str]) -> ProxyConfig:
                return decode_snapshot(raw, optional, ignored)

            return await self._apply(_payload_version(raw, msg), checked)
        if isinstance(msg, DeltaMsg):
            self.connected.set()
            draw, doptional = msg.delta, msg.optional

            def build(ignored: list[str]) -> ProxyConfig:
                d = decode_delta(draw, doptional, ignored)
                if self.current is None:
                    raise DeltaError("delta received before any snapshot")
                return apply_checked(self.current, d)

            return await self._apply(_payload_version(draw, msg), build)
        return None

    async def _apply(self, version: str, build: Callable[[list[str]], ProxyConfig]) -> Message:
        ignored: list[str] = []
        paths: list[str] = []
        try:
            cfg = build(ignored)
            check_reserved(cfg)
            # Checked with the sections this proxy fills (its SVIDs, the mesh roots), which
            # compiled TLS settings refer to; without a certificate yet, such a reference is
            # refused by name (`...tls.identity: no identity named 'workload'`).
            full = inject(cfg, self._held_all())
            check(full)
            await self.server.apply(full)
        except ConfigError as exc:
            reason = "; ".join(str(e) for e in exc.errors)
            paths = [e.path for e in exc.errors if e.path]
        except DeltaError as exc:
            reason = str(exc)
            paths = [exc.path] if exc.path else []
        except (ApplyError, msgspec.ValidationError, ReservedSection) as exc:
            reason = str(exc)
        else:
            self.current = cfg
            self._partial = False  # (checked with every identity it names)
            self.last_nack = ""
            self._check_served(cfg)
            self.last_ignored = ignored
            if ignored:
                log.info("config version %s: dropped optional fields this proxy does not know: "
                         "%s", version, ", ".join(ignored))
            if self.cache_path is not None:
                try:
                    save_cached(self.cache_path, cfg)
                except OSError as exc:
                    log.warning("cannot cache snapshot at %s: %s", self.cache_path, exc)
            return Ack(version=version)
        self.last_nack = reason
        log.warning("rejected config version %s, keeping %s: %s", version,
                    self.current.version if self.current else "none", reason)
        return Nack(version=version, reason=reason, paths=paths)


    def _check_served(self, cfg: ProxyConfig) -> None:
        if not self.workloads:
            return
        served = {lc.workload for lc in cfg.listeners}
        unserved = [f"{w.namespace}/{w.name}" for w in self.workloads
                    if f"{w.namespace}/{w.name}" not in served]
        if unserved and unserved != self.unserved:
            log.warning("config version %s has no listener for %s: the control plane may "
                        "predate nodes with several workloads", cfg.version,
                        ", ".join(unserved))
        self.unserved = unserved


class _Versioned(msgspec.Struct):
    version: str = ""


_version_decoder = msgspec.json.Decoder(_Versioned)


def _payload_version(raw: msgspec.Raw, msg: Snapshot | DeltaMsg) -> str:
    """The version to ACK or NACK: the snapshot envelope says it; a delta's is in its payload,
    read on its own so that even a payload that fails to decode is NACKed by version."""
    if isinstance(msg, Snapshot):
        return msg.version
    try:
        return _version_decoder.decode(raw).version
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
