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
(`load_cert_chain` on the live object: new handshakes only).

Pushed **identities and trust bundles** (the snapshot's named sections, referenced by
`TLSContext.identity` / `trust_bundle`) take the same path: `use(cfg)` tells the cache the
sections of the snapshot being prepared, an entry's material is its files' stamps plus the PEMs
of the sections it references, and a changed PEM rebuilds (clients) or reloads in place
(servers) exactly like a rewritten file.  So a context is shared by every listener and cluster
with the same settings and identity, and an identity rotated by a new snapshot reaches new
connections without a listener restart or a new listener context.  PEMs are loaded through an
anonymous in-memory file (`memfd_create`): key material never touches the disk, and errors
name the section, never its contents.  A live context can gain trust anchors but never lose
one, so a server context whose CAs changed is *replaced* in its cache entry instead: listeners
and filter chains hold the entry (`ServerRef`) and read its context at each accept, so a CA
removed from a bundle stops being trusted for the next handshake (ADR 0019).

`retain` drops the entries nothing in force uses any more, after each commit.  An entry whose
identity or trust bundle the new snapshot no longer has (a node's pod that left it, ADR 0126)
is not rebuilt on the way: nothing of that snapshot can use it.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable

import msgspec

from tulle.dataplane.security.spiffe import TCP_ALPN
from tulle.proxyconfig.model import Cluster, Identity, ProxyConfig, TLSContext, TrustBundle

_encode = msgspec.json.encode
log = logging.getLogger("tulle.proxy")


def _stamp(path: str) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # building the context reports the error with the file's name
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Sections:
    """The named key material of one snapshot: identities and trust bundles by name."""

    __slots__ = ("bundles", "identities")

    def __init__(self, identities: Iterable[Identity] = (),
                 bundles: Iterable[TrustBundle] = ()) -> None:
        self.identities = {i.name: i for i in identities}
        self.bundles = {b.name: b for b in bundles}

    def identity(self, name: str) -> Identity:
        i = self.identities.get(name)
        if i is None:  # the validator refuses this; a config built in code may still have it
            raise ValueError(f"no identity named {name!r}")
        return i

    def bundle(self, name: str) -> TrustBundle:
        b = self.bundles.get(name)
        if b is None:
            raise ValueError(f"no trust bundle named {name!r}")
        return b


NO_SECTIONS = Sections()

Material = tuple[object, ...]
"""What a context was built from: file stamps and the PEMs of the sections it references."""


def _material(tls: TLSContext, sections: Sections) -> Material:
    ident = sections.identities.get(tls.identity) if tls.identity else None
    bundle = sections.bundles.get(tls.trust_bundle) if tls.trust_bundle else None
    return (_stamp(tls.cert_file), _stamp(tls.key_file), _stamp(tls.ca_file),
            (ident.cert_chain_pem, ident.private_key_pem) if ident is not None else None,
            tuple(bundle.ca_pems) if bundle is not None else None)


def _gone(tls: TLSContext, sections: Sections) -> bool:
    """`tls` names an identity or trust bundle that `sections` does not hold."""
    return bool((tls.identity and tls.identity not in sections.identities)
                or (tls.trust_bundle and tls.trust_bundle not in sections.bundles))


def _memfile(data: str) -> int:
    """An anonymous in-memory file holding `data` (the caller closes it)."""
    fd = os.memfd_create("tulle-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(data.encode("ascii", "replace"))
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load_identity(ctx: ssl.SSLContext, ident: Identity) -> None:
    """`load_cert_chain` from the PEMs of `ident`, never through the disk.  The error names the
    identity, never the material."""
    cert = _memfile(ident.cert_chain_pem)
    try:
        key = _memfile(ident.private_key_pem)
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{cert}", f"/proc/self/fd/{key}")
        finally:
            os.close(key)
    except ssl.SSLError as exc:
        raise ValueError(f"identity {ident.name!r}: the certificate chain and key do not load "
                         f"({exc.reason or 'bad PEM'})") from None
    finally:
        os.close(cert)


def _load_bundle(ctx: ssl.SSLContext, bundle: TrustBundle) -> None:
    try:
        ctx.load_verify_locations(cadata="\n".join(bundle.ca_pems))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"trust bundle {bundle.name!r}: the CA certificates do not load "
                         f"({getattr(exc, 'reason', None) or 'bad PEM'})") from None


def _load_chain(ctx: ssl.SSLContext, tls: TLSContext, sections: Sections) -> None:
    if tls.identity:
        _load_identity(ctx, sections.identity(tls.identity))
    elif tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)


def _load_anchors(ctx: ssl.SSLContext, tls: TLSContext, sections: Sections) -> bool:
    """Trust anchors of `tls` into `ctx`; False when it names none."""
    if tls.trust_bundle:
        _load_bundle(ctx, sections.bundle(tls.trust_bundle))
        return True
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        return True
    return False


class _Entry:
    """One shared context and what it was built from.  Server-side holders keep the entry
    (`ServerRef`) and read `ctx` at each accept, so a replaced context reaches them."""

    __slots__ = ("ctx", "protocol", "server", "stamps", "tls")

    def __init__(self, tls: TLSContext, protocol: str, server: bool, sections: Sections) -> None:
        self.tls = tls
        self.protocol = protocol
        self.server = server
        # before reading: a write in between is seen next time
        self.stamps: Material = _material(tls, sections)
        self.ctx = self.build(sections)

    def build(self, sections: Sections) -> ssl.SSLContext:
        if self.server:
            return build_server_context(self.tls, sections)
        return build_client_context(self.tls, self.protocol, sections)


ServerRef = _Entry
"""What a listener or filter chain holds: `.ctx` is the server context to accept with now."""

_ANCHORS = (2, 4)
"""Positions of the trust anchors (CA file stamp, trust bundle PEMs) in a `Material`."""

Rotation = dict[tuple[object, ...], tuple[ssl.SSLContext, Material]]
"""Cache key -> (the rebuilt context, the material it was built from)."""


def _min_version(tls: TLSContext) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2


def build_client_context(tls: TLSContext, protocol: str,
                         sections: Sections = NO_SECTIONS) -> ssl.SSLContext:
    """A client (upstream) context for a cluster's TLS settings.  With `expected_spiffe_ids`
    the server is verified against the trust anchors and then by its SPIFFE ID (the dialler's
    peer check), not by host name: an SVID names a workload, not a DNS name (ADR 0030)."""
    from tulle.dataplane.tlsread import DirectSSLObject  # with the first TLS context (ADR 0068)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = DirectSSLObject  # one C call per TLS record operation (ADR 0067)
    ctx.minimum_version = _min_version(tls)
    if not _load_anchors(ctx, tls, sections):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.expected_spiffe_ids:
        ctx.check_hostname = False  # verify_mode stays CERT_REQUIRED
    _load_chain(ctx, tls, sections)
    ctx.set_alpn_protocols(client_alpn(protocol, tls))
    return ctx


def client_alpn(protocol: str, tls: TLSContext) -> list[str]:
    """The ALPN protocols a cluster of `protocol` offers upstream (`tulle explain` reads it)."""
    return list(tls.alpn) or _default_alpn(protocol, tls)


def _default_alpn(protocol: str, tls: TLSContext) -> list[str]:
    """ALPN says what the connection carries, so a mesh server picks its driver without
    sniffing: h2, http/1.1, or (mesh mTLS only) `tulle-tcp` for an opaque stream."""
    if protocol == "http2":
        return ["h2"]
    if protocol == "tcp" and tls.expected_spiffe_ids:
        return [TCP_ALPN]
    return ["http/1.1"]


SERVER_ALPN = ("h2", "http/1.1", TCP_ALPN)
"""What a listener offers by default, in its order of preference (ALPN is the server's pick
among what the client offers)."""


def build_server_context(tls: TLSContext, sections: Sections = NO_SECTIONS) -> ssl.SSLContext:
    """A server (listener) context: TLS 1.2+ (or 1.3 only), the client verified -- a client
    certificate *required* -- when a CA is set."""
    from tulle.dataplane.tlsread import DirectSSLObject

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = DirectSSLObject  # one C call per TLS record operation (ADR 0067)
    ctx.minimum_version = _min_version(tls)
    if not (tls.identity or tls.cert_file):
        raise ValueError("a server TLS context needs an identity or cert_file and key_file")
    _load_chain(ctx, tls, sections)
    if _load_anchors(ctx, tls, sections):
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(list(tls.alpn) or list(SERVER_ALPN))
    return ctx


class TLSContexts:
    """The cache: one `SSLContext` per distinct (TLS config, role)."""

    __slots__ = ("_cache", "built", "reloaded", "replaced", "sections")

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], _Entry] = {}
        self.built = 0
        """Contexts built so far (tests read it)."""
        self.reloaded = 0
        """Server contexts reloaded in place so far (tests read it)."""
        self.replaced = 0
        """Server contexts replaced in their entry (trust anchors changed) so far."""
        self.sections = NO_SECTIONS
        """The identities and trust bundles of the snapshot being prepared (`use`)."""

    def use(self, cfg: ProxyConfig) -> None:
        """Resolve section references against `cfg` from now on (called first in prepare)."""
        self.sections = (Sections(cfg.identities, cfg.trust_bundles)
                         if cfg.identities or cfg.trust_bundles else NO_SECTIONS)

    def client(self, cfg: Cluster) -> ssl.SSLContext | None:
        """The upstream context of `cfg`, None for a plaintext cluster.  May raise (an
        unreadable certificate): nothing is cached then."""
        tls = cfg.tls
        if tls is None:
            return None
        alpn = "" if tls.alpn else ",".join(_default_alpn(cfg.protocol, tls))
        return self._get(("client", _encode(tls), alpn), tls, cfg.protocol, False)

    def server(self, tls: TLSContext) -> ssl.SSLContext:
        return self.server_ref(tls).ctx

    def server_ref(self, tls: TLSContext) -> ServerRef:
        """The shared server entry of `tls`: hold it and read `.ctx` per accept."""
        return self._entry(("server", _encode(tls)), tls, "", True)

    def _get(self, key: tuple[object, ...], tls: TLSContext, protocol: str,
             server: bool) -> ssl.SSLContext:
        return self._entry(key, tls, protocol, server).ctx

    def _entry(self, key: tuple[object, ...], tls: TLSContext, protocol: str,
               server: bool) -> _Entry:
        e = self._cache.get(key)
        if e is None:
            e = _Entry(tls, protocol, server, self.sections)
            self._cache[key] = e
            self.built += 1
        return e

    def rotation(self) -> Rotation:
        """Contexts whose files changed on disk or whose identity / trust bundle changed in
        the sections given to `use`, rebuilt (nothing installed yet).  May raise (a
        certificate that no longer loads): then nothing has changed."""
        out: Rotation = {}
        sections = self.sections
        for key, e in self._cache.items():
            if _gone(e.tls, sections):
                # It names a section this snapshot lacks, so nothing of it uses this context
                # (the validator refuses such a reference): not rebuilt, which could only
                # fail the swap (`no identity named ...`); `retain` forgets it after the
                # commit, and the connections made with it keep it until they end (ADR 0126).
                continue
            stamps = _material(e.tls, sections)
            if stamps != e.stamps:
                out[key] = (e.build(sections), stamps)
                self.built += 1
        return out

    def rotate(self, rotation: Rotation) -> dict[int, ssl.SSLContext]:
        """Install a `rotation`.  Returns id(old client context) -> its replacement, for the
        caller to swap in what holds them.  A server context whose certificate alone changed
        is reloaded in place; one whose trust anchors changed is replaced in its entry (a live
        context can gain CAs but never lose one), which its holders read per accept."""
        swapped: dict[int, ssl.SSLContext] = {}
        for key, (fresh, stamps) in rotation.items():
            e = self._cache.get(key)
            if e is None:
                continue
            anchors_changed = (not e.stamps
                               or any(e.stamps[i] != stamps[i] for i in _ANCHORS))
            e.stamps = stamps
            if e.server and anchors_changed:
                e.ctx = fresh
                self.replaced += 1
            elif e.server:
                try:
                    _load_chain(e.ctx, e.tls, self.sections)
                    self.reloaded += 1
                except (OSError, ValueError) as exc:  # changed again since `rotation`: retried
                    e.stamps = ()
                    log.warning("cannot reload %s in place: %s",
                                e.tls.identity or e.tls.cert_file, exc)
            else:
                swapped[id(e.ctx)] = fresh
                e.ctx = fresh
        return swapped

    def retain(self, in_use: Iterable[ssl.SSLContext | None]) -> None:
        """Forget every context not in `in_use` (what the snapshot in force holds; server
        holders pass their entry's current `ctx`)."""
        live = {id(c) for c in in_use if c is not None}
        if len(live) != len(self._cache):
            self._cache = {k: e for k, e in self._cache.items() if id(e.ctx) in live}

    def __len__(self) -> int:
        return len(self._cache)
