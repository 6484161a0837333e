"""SSL contexts built once per distinct TLS config and shared by everything that uses it.

Building an `SSLContext` reads and parses PEM files (about 3 ms with a client certificate); a
mesh where every cluster speaks mTLS has a thousand clusters with the *same* TLS settings.  So
contexts are cached, keyed by the frozen `TLSContext` struct (as its canonical encoding, since a
struct holding a list is not hashable) plus what else shapes the context (the default ALPN of
the cluster's protocol), plus the identity of the files on disk (inode, size, mtime): a
certificate rewritten in place gives a new key, so the next snapshot that builds a context
for it loads the new files.  Rotation of the contexts already in use (`load_cert_chain` on the
live object) belongs to the zero-trust issue.

`retain` drops the entries nothing in force uses any more, after each commit.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

import msgspec

from tulle.proxyconfig.model import Cluster, TLSContext

_encode = msgspec.json.encode


def _stamp(path: str) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # building the context reports the error with the file's name
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _key(kind: str, tls: TLSContext, extra: str = "") -> tuple[object, ...]:
    return (kind, _encode(tls), extra, _stamp(tls.cert_file), _stamp(tls.key_file),
            _stamp(tls.ca_file))


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
    """The cache: one `SSLContext` per distinct (TLS config, role, files on disk)."""

    __slots__ = ("_cache", "built")

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], ssl.SSLContext] = {}
        self.built = 0
        """Contexts built so far (tests and the apply log read it)."""

    def client(self, cfg: Cluster) -> ssl.SSLContext | None:
        """The upstream context of `cfg`, None for a plaintext cluster.  May raise (an
        unreadable certificate): nothing is cached then."""
        tls = cfg.tls
        if tls is None:
            return None
        alpn = "" if tls.alpn else ",".join(_default_alpn(cfg.protocol))
        key = _key("client", tls, alpn)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._cache[key] = build_client_context(tls, cfg.protocol)
            self.built += 1
        return ctx

    def server(self, tls: TLSContext) -> ssl.SSLContext:
        key = _key("server", tls)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._cache[key] = build_server_context(tls)
            self.built += 1
        return ctx

    def retain(self, in_use: Iterable[ssl.SSLContext | None]) -> None:
        """Forget every context not in `in_use` (what the snapshot in force holds)."""
        live = {id(c) for c in in_use if c is not None}
        if len(live) != len(self._cache):
            self._cache = {k: c for k, c in self._cache.items() if id(c) in live}

    def __len__(self) -> int:
        return len(self._cache)
