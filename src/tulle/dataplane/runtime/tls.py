"""SSL contexts built once per distinct TLS config and shared by everything that uses it.

Building an `SSLContext` reads and parses PEM files (about 3 ms with a client certificate); a
mesh where every cluster speaks mTLS has a thousand clusters with the *same* TLS settings.  So
contexts are cached, keyed by the frozen `TLSContext` struct (as its canonical encoding, since a
struct holding a list is not hashable) and what else shapes the context (its role, the default
ALPN of the cluster's protocol).

Certificate files rewritten on disk are still picked up by the next config swap (as when every
swap rebuilt every context): `rotation()` (in prepare; one `stat` per file of each *distinct*
config, not per cluster) rebuilds the contexts whose files changed, and `rotate()` (at commit)
installs them: client contexts are swapped in the cluster runtimes that hold them (pools read
`ClusterRuntime.ssl_context` when they dial), a listener's server context is reloaded in place
(`load_cert_chain` on the live object: new handshakes only).  Pushed identities (SVIDs) will
use the same path (zero-trust issue).

`retain` drops the entries nothing in force uses any more, after each commit.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable

import msgspec

from tulle.proxyconfig.model import Cluster, TLSContext

_encode = msgspec.json.encode
log = logging.getLogger("tulle.proxy")


Stamps = tuple[tuple[int, int, int] | None, ...]


def _stamp(path: str) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # building the context reports the error with the file's name
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stamps(tls: TLSContext) -> Stamps:
    return (_stamp(tls.cert_file), _stamp(tls.key_file), _stamp(tls.ca_file))


class _Entry:
    __slots__ = ("ctx", "protocol", "server", "stamps", "tls")

    def __init__(self, tls: TLSContext, protocol: str, server: bool) -> None:
        self.tls = tls
        self.protocol = protocol
        self.server = server
        self.stamps = _stamps(tls)  # before reading: a write in between is seen next time
        self.ctx = self.build()

    def build(self) -> ssl.SSLContext:
        if self.server:
            return build_server_context(self.tls)
        return build_client_context(self.tls, self.protocol)


Rotation = dict[tuple[object, ...], tuple[ssl.SSLContext, Stamps]]
"""Cache key -> (the rebuilt context, the file stamps it was built from)."""


def build_client_context(tls: TLSContext, protocol: str) -> ssl.SSLContext:
    """A client (upstream) context for a cluster's TLS settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.set_alpn_protocols(list(tls.alpn) or _default_alpn(protocol))
    return ctx


def _default_alpn(protocol: str) -> list[str]:
    return ["h2"] if protocol == "http2" else ["http/1.1"]


def build_server_context(tls: TLSContext) -> ssl.SSLContext:
    """A server (listener) context: TLS 1.2+, the client verified when a CA is set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(list(tls.alpn) or ["h2", "http/1.1"])
    return ctx


class TLSContexts:
    """The cache: one `SSLContext` per distinct (TLS config, role)."""

    __slots__ = ("_cache", "built")

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], _Entry] = {}
        self.built = 0
        """Contexts built so far (tests read it)."""

    def client(self, cfg: Cluster) -> ssl.SSLContext | None:
        """The upstream context of `cfg`, None for a plaintext cluster.  May raise (an
        unreadable certificate): nothing is cached then."""
        tls = cfg.tls
        if tls is None:
            return None
        alpn = "" if tls.alpn else ",".join(_default_alpn(cfg.protocol))
        return self._get(("client", _encode(tls), alpn), tls, cfg.protocol, False)

    def server(self, tls: TLSContext) -> ssl.SSLContext:
        return self._get(("server", _encode(tls)), tls, "", True)

    def _get(self, key: tuple[object, ...], tls: TLSContext, protocol: str,
             server: bool) -> ssl.SSLContext:
        e = self._cache.get(key)
        if e is None:
            e = _Entry(tls, protocol, server)
            self._cache[key] = e
            self.built += 1
        return e.ctx

    def rotation(self) -> Rotation:
        """Contexts whose files changed on disk, rebuilt (nothing installed yet).  May raise
        (a certificate that no longer loads): then nothing has changed."""
        out: Rotation = {}
        for key, e in self._cache.items():
            stamps = _stamps(e.tls)
            if stamps != e.stamps:
                out[key] = (e.build(), stamps)
                self.built += 1
        return out

    def rotate(self, rotation: Rotation) -> dict[int, ssl.SSLContext]:
        """Install a `rotation`.  Returns id(old client context) -> its replacement, for the
        caller to swap in what holds them; server contexts are reloaded in place."""
        swapped: dict[int, ssl.SSLContext] = {}
        for key, (fresh, stamps) in rotation.items():
            e = self._cache.get(key)
            if e is None:
                continue
            e.stamps = stamps
            if e.server:
                try:
                    e.ctx.load_cert_chain(e.tls.cert_file, e.tls.key_file)
                    if e.tls.ca_file:
                        e.ctx.load_verify_locations(e.tls.ca_file)
                except OSError as exc:  # rewritten again since `rotation`: next swap retries
                    e.stamps = ()
                    log.warning("cannot reload %s in place: %s", e.tls.cert_file, exc)
            else:
                swapped[id(e.ctx)] = fresh
                e.ctx = fresh
        return swapped

    def retain(self, in_use: Iterable[ssl.SSLContext | None]) -> None:
        """Forget every context not in `in_use` (what the snapshot in force holds)."""
        live = {id(c) for c in in_use if c is not None}
        if len(live) != len(self._cache):
            self._cache = {k: e for k, e in self._cache.items() if id(e.ctx) in live}

    def __len__(self) -> int:
        return len(self._cache)
