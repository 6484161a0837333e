"""The proxy stream's messages: an envelope decoded first, the config payload kept as raw bytes.

Why here, next to the contract: both ends speak it, and the data plane must never import the
control plane (a test guards the import directions).  Why not gRPC/xDS: grpcio + protobuf add
~10 MB RSS to every proxy (measured), a third of its budget (ADR 0009).  A frame
(`framing.py`) holds one JSON object tagged by `type`.

Why the payload stays raw (ADR 0011): the frame decoder decodes only the envelope (type,
version, the optional-field marks).  The snapshot or delta inside is decoded by the proxy's
agent, with the contract's validator on failure, so a config this proxy cannot take is a
`Nack` with every reason and field path while the stream stays up, never a decode error that
drops the connection.

Exchange:

    proxy -> cp   Hello(workload, last_version,       who it is, what it runs, what it speaks:
                        protocol, api_versions,       stream protocol version, contract
                        features, workloads,          versions, config features (features.py),
                        token | certificate+proof,    further workloads of a node; how it
                        csr, credentials)             proves who it is, for each (ADR 0028,
                                                      0032)
    cp -> proxy   Certificate(cert_chain, bundle,     the signed CSR, before any snapshot
                        workload)                     (one per fronted workload)
    proxy -> cp   Csr(csr, workload)                  renewal, at half-life
    cp -> proxy   Snapshot(version, config)           full config, first and on resync
    cp -> proxy   DeltaMsg(delta)                     afterwards, against the last ACKed version
    proxy -> cp   Ack(version) | Nack(version,        for each Snapshot/Delta
                        reason, paths)
    either        Ping / Pong                         keepalive
    cp -> proxy   Error(reason)                       then close (unsupported protocol,
                                                      unknown workload, bad auth)
    cp -> proxy   TrustUpdate(id, bundle, renew)      the mesh roots changed (CA rotation,
    proxy -> cp   TrustAck(id)                        ADR 0035; feature `ca-rotation` only)
    cp -> proxy   StatsRequest(interval_ms,           report traffic summaries (ADR 0046;
                        draining)                     feature `stats-reports` only), then
    proxy -> cp   StatsReport(interval_ms, rows)      one report every interval
    proxy -> cp   Draining()                          stopping: take me out of the endpoints,
                                                      the stream (and its reports) stays up
                                                      for the drain (ADR 0092; only when the
                                                      StatsRequest says `draining`)
    cp -> proxy   TapStart(id, match, rate,           live tap (ADR 0056; feature `tap` only):
                        expires_ms, headers)          start or renew; TapStop ends it early
    cp -> proxy   TapStop(id)
    proxy -> cp   TapEvents(id, records, dropped,     what the tap saw, in batches; `ended`
                        ended)                        when the proxy refused or expired it

Evolution: a new optional field in a message is an addition with a default (both ends ignore
unknown envelope fields); a new message type or a changed meaning is a new `PROTOCOL_VERSION`,
and the control plane refuses a version it does not speak with an `Error` saying which it does.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

import msgspec

from tulle.proxyconfig.delta import Delta, apply_delta
from tulle.proxyconfig.framing import HELLO_MAX_FRAME, MAX_FRAME, FrameError, FrameSplitter, frame
from tulle.proxyconfig.model import (
    CONFIG_API_VERSION,
    DNS,
    Admin,
    Cluster,
    DNSHost,
    Endpoint,
    Identity,
    Listener,
    Node,
    ProxyConfig,
    RouteTable,
    Settings,
    TrustBundle,
    VirtualHost,
)
from tulle.proxyconfig.stats import StatsRow
from tulle.proxyconfig.tap import TapMatch, TapRecord
from tulle.proxyconfig.telemetry import Telemetry
from tulle.proxyconfig.validate import ConfigError, FieldError, convert_error, errors_in

PROTOCOL_VERSION = 2
"""The stream protocol this build speaks.  2: hellos authenticate (a bootstrap token or the
workload's certificate), certificates are issued over the stream (ADR 0028)."""
SUPPORTED_PROTOCOLS = frozenset({2})
"""Stream protocol versions the control plane accepts in a `Hello`."""


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class WorkloadInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a proxy says about the workload it fronts, to register it."""

    name: str
    namespace: str = "default"
    address: str = ""
    additional_addresses: list[str] = msgspec.field(default_factory=list)
    """A dual-stack pod's address of the other family (`Workload.spec.additionalAddresses`,
    ADR 0088), set only when the hello creates the Workload, like `address`."""
    service_account: str = "default"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    ports: list[dict[str, Any]] = msgspec.field(default_factory=list)
    zone: str = ""
    outbound_port: int = 0
    """The loopback port of the outbound listener (0: the mesh default, 15001)."""
    dns_port: int = 0
    """The loopback port of the mesh DNS resolver (`Workload.spec.dnsPort`); 0: none."""
    admin_port: int | None = None
    """The proxy's admin port (`Workload.spec.adminPort`; 0: disabled); None: not said."""


class WorkloadCredential(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a node proves it may front one more workload (`Hello.workloads`): the same two ways
    as the hello's own workload, a bootstrap token with a CSR, or that workload's certificate
    with a proof of its key (ADR 0032)."""

    namespace: str = "default"
    name: str
    token: str = ""
    csr: str = ""
    certificate: str = ""
    proof: str = ""
    proof_time: int = 0

    def __repr__(self) -> str:  # never print the token
        return (f"WorkloadCredential({self.namespace}/{self.name}, "
                f"token={'<redacted>' if self.token else ''!r})")


class Hello(_Msg, frozen=True, tag="hello"):
    workload: WorkloadInfo
    last_version: str = ""
    """The version the proxy is serving (from its disk cache), so a resync can be a no-op."""
    protocol: int = PROTOCOL_VERSION
    token: str = ""
    api_versions: list[str] = msgspec.field(default_factory=list)
    """Contract versions the proxy decodes; empty (a proxy from before negotiation) means
    only `proxy.tulle.dev/v1alpha1`."""
    features: list[str] = msgspec.field(default_factory=list)
    """Config features the proxy takes (`features.py`); sections of the others are withheld."""
    workloads: list[WorkloadInfo] = msgspec.field(default_factory=list)
    """Further workloads this proxy fronts besides `workload` (a per-node agent): the control
    plane registers each and sends one snapshot covering them all, its listeners and inbound
    clusters naming the workload they serve (feature `multi-workload`).  A control plane from
    before this field ignores it and serves `workload` alone (the agent warns)."""
    csr: str = ""
    """A PEM CSR for the proxy's own key: with `token` (bootstrap) it is required; with a
    certificate it renews at once.  Signed before any snapshot is sent."""
    certificate: str = ""
    """The workload certificate chain (PEM) the proxy holds, instead of a token."""
    proof: str = ""
    """With `certificate`: base64 ECDSA signature by its key over `hello_proof_payload`."""
    proof_time: int = 0
    """Unix seconds the proof was made at (accepted within a short window)."""
    credentials: list[WorkloadCredential] = msgspec.field(default_factory=list)
    """One per workload of `workloads`: how this proxy proves it may front each (ADR 0032).
    Every workload is admitted, or the hello is refused."""
    trust_bundle: str = ""
    """`bundle_id` of the mesh trust bundle the proxy holds (with `certificate`): the
    control plane sends a `TrustUpdate` only when it differs (ADR 0035)."""

    def __repr__(self) -> str:  # never print the token
        return (f"Hello(workload={self.workload.namespace}/{self.workload.name}, "
                f"protocol={self.protocol}, token={'<redacted>' if self.token else ''!r})")


def bundle_id(pems: list[str]) -> str:
    """Names a trust bundle: a hash over its certificates' SHA-256 fingerprints, in order.
    Both ends compute it (the proxy for its hello, the control plane for `TrustUpdate.id`)."""
    prints = "".join(hashlib.sha256(ssl.PEM_cert_to_DER_cert(p.strip())).hexdigest()
                     for p in pems)
    return hashlib.sha256(prints.encode()).hexdigest()[:16]


def hello_proof_payload(namespace: str, name: str, at: int) -> bytes:
    """What a proxy signs with its workload key to present its certificate in a hello."""
    return f"tulle-hello-v2|{namespace}|{name}|{at}".encode()


class Snapshot(_Msg, frozen=True, tag="snapshot", omit_defaults=True):
    version: str
    config: msgspec.Raw
    """A `ProxyConfig` document, decoded by the receiver (`decode_snapshot`), not by the frame
    decoder."""
    optional: list[str] = msgspec.field(default_factory=list)
    """Schema paths (`settings.foo`, `listeners[].bar`) whose fields a proxy that does not
    know them may drop instead of NACKing."""


class DeltaMsg(_Msg, frozen=True, tag="delta", omit_defaults=True):
    delta: msgspec.Raw
    """A `Delta` document (`proxyconfig/delta.py`), decoded by the receiver."""
    optional: list[str] = msgspec.field(default_factory=list)


class Ack(_Msg, frozen=True, tag="ack"):
    version: str


class Nack(_Msg, frozen=True, tag="nack", omit_defaults=True):
    version: str
    reason: str
    paths: list[str] = msgspec.field(default_factory=list)
    """The field paths at fault (`settings.overload.foo`), when the reason is about fields."""


class Ping(_Msg, frozen=True, tag="ping"):
    pass


class Pong(_Msg, frozen=True, tag="pong"):
    pass


class Error(_Msg, frozen=True, tag="error"):
    reason: str


class Csr(_Msg, frozen=True, tag="csr"):
    """A renewal: a CSR for a new key, signed for the identity this stream was admitted as."""

    csr: str
    workload: str = ""
    """`namespace/name` of the fronted workload to renew (a node, ADR 0032); empty: the
    hello's own workload."""


class Certificate(_Msg, frozen=True, tag="certificate"):
    """A signed workload certificate (leaf first, PEM) and the mesh's trust anchors."""

    cert_chain: str
    trust_bundle: list[str] = msgspec.field(default_factory=list)
    not_after: int = 0
    """Unix seconds; the proxy renews at about half of its lifetime."""
    not_before: int = 0
    """Unix seconds it was issued at (the certificate itself starts a little earlier, for
    clock skew); the lifetime counts from here."""
    workload: str = ""
    """`namespace/name` of the fronted workload it is for (a node, ADR 0032); empty: the
    hello's own workload."""


class TrustUpdate(_Msg, frozen=True, tag="trust-update"):
    """The mesh's trust anchors changed (a CA rotation, ADR 0035): put `trust_bundle` in force
    with the certificate held, answer `TrustAck(id)`; with `renew`, send a `Csr` now.  Sent
    only to a proxy that announced the feature `ca-rotation`."""

    id: str
    trust_bundle: list[str]
    renew: bool = False


class TrustAck(_Msg, frozen=True, tag="trust-ack"):
    """The bundle `id` of a `TrustUpdate` is in force (new handshakes verify with it)."""

    id: str


class StatsRequest(_Msg, frozen=True, tag="stats-request"):
    """Send a `StatsReport` every `interval_ms` on this stream (ADR 0046).  Sent only to a
    proxy that announced the feature `stats-reports`; a proxy sends reports only once asked,
    so a control plane from before them never gets one."""

    interval_ms: int
    draining: bool = False
    """This control plane takes `Draining` (ADR 0092): a proxy that stops may say so and keep
    the stream, and its reports, through its drain.  Absent (a control plane from before it,
    whose decoder would end the stream on a `Draining`): the proxy leaves the stream first."""


class Draining(_Msg, frozen=True, tag="draining"):
    """The proxy is stopping (SIGTERM): its workloads leave their Services' endpoints now, as
    if the stream had closed (ADR 0040), while the stream stays up for the drain, so what the
    drain serves is still reported (ADR 0092).  Sent once, only to a control plane whose
    `StatsRequest` said `draining`; the stream closes when the drain ends."""


class StatsReport(_Msg, frozen=True, tag="stats"):
    """What the proxy saw since its previous report (`proxyconfig/stats.py`)."""

    interval_ms: int
    """The time the counts cover, measured by the proxy's monotonic clock."""
    rows: list[StatsRow] = msgspec.field(default_factory=list)


class TapStart(_Msg, frozen=True, tag="tap-start", omit_defaults=True):
    """Start (or, with an id already running, renew) a live tap (ADR 0056,
    `proxyconfig/tap.py`).  Sent only to a proxy that announced the feature `tap`."""

    id: str
    match: TapMatch = msgspec.field(default_factory=TapMatch)
    rate: float = 10.0
    """Records per second at most (the proxy clamps it to its own bounds)."""
    expires_ms: int = 30_000
    """The tap ends by itself this long after this message unless renewed."""
    headers: bool = False
    """Records carry the request headers (credentials always redacted)."""


class TapStop(_Msg, frozen=True, tag="tap-stop"):
    id: str


class TapEvents(_Msg, frozen=True, tag="tap-events", omit_defaults=True):
    """What tap `id` saw since the previous batch."""

    id: str
    records: list[TapRecord] = msgspec.field(default_factory=list)
    dropped: int = 0
    """Requests that matched but were not recorded (over the rate) since the last batch."""
    ended: str = ""
    """Non-empty: the tap is over at this proxy, and why (refused, expired)."""


Message = (Hello | Snapshot | DeltaMsg | Ack | Nack | Ping | Pong | Error | Csr | Certificate
           | TrustUpdate | TrustAck | StatsRequest | StatsReport | Draining | TapStart
           | TapStop | TapEvents)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)
_config_decoder = msgspec.json.Decoder(ProxyConfig)
_delta_decoder = msgspec.json.Decoder(Delta)


def encode(msg: Message) -> bytes:
    return frame(_encoder.encode(msg))


def snapshot_message(cfg: ProxyConfig, optional: list[str] | None = None) -> Snapshot:
    return Snapshot(version=cfg.version, config=msgspec.Raw(_encoder.encode(cfg)),
                    optional=optional or [])


def delta_message(d: Delta, optional: list[str] | None = None) -> DeltaMsg:
    return DeltaMsg(delta=msgspec.Raw(_encoder.encode(d)), optional=optional or [])


class FrameDecoder:
    """Feed bytes, get message envelopes.  Raises FrameError on an oversized frame or one whose
    envelope is not a message; a payload (`config`, `delta`) is not looked at here."""

    __slots__ = ("_frames",)

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._frames = FrameSplitter(max_frame)

    @property
    def max_frame(self) -> int:
        return self._frames.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._frames.max_frame = value

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        for body in self._frames.feed(data):
            try:
                out.append(_decoder.decode(body))
            except msgspec.DecodeError as exc:
                raise FrameError(f"undecodable message: {exc}") from exc
        return out


# -- the receiver's side of a payload ----------------------------------------------------------

def decode_snapshot(raw: msgspec.Raw, optional: list[str] | None = None,
                    ignored: list[str] | None = None) -> ProxyConfig:
    """The config of a `Snapshot`, structurally valid, or ConfigError with every path at fault.

    The typed decode is the fast path; only a payload it refuses (or one carrying optional
    marks) is decoded to plain values and walked, for all the errors with their paths."""
    if not optional:
        try:
            return _config_decoder.decode(raw)
        except msgspec.ValidationError:
            pass  # walked below, for every error with its path
        except msgspec.DecodeError as exc:
            raise ConfigError([FieldError("config", f"not a JSON document: {exc}")]) from exc
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError([FieldError("config", f"not a JSON document: {exc}")]) from exc
    errors = errors_in(doc, ProxyConfig, optional=optional or (), ignored=ignored)
    if errors:
        raise ConfigError(errors)
    try:
        return msgspec.convert(doc, ProxyConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError([convert_error(exc)]) from exc


def decode_delta(raw: msgspec.Raw, optional: list[str] | None = None,
                 ignored: list[str] | None = None) -> Delta:
    """The `Delta` of a `DeltaMsg`, or ConfigError.  Its resources stay plain values, checked
    when applied (`apply_checked`); fields marked `optional` are dropped here (and recorded)."""
    try:
        d = _delta_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ConfigError([convert_error(exc, "delta")]) from exc
    except msgspec.DecodeError as exc:
        raise ConfigError([FieldError("delta", f"not a JSON document: {exc}")]) from exc
    if optional:
        errors = _delta_errors(d, optional, ignored)
        if errors:
            raise ConfigError(errors)
    return d


def apply_checked(base: ProxyConfig, d: Delta) -> ProxyConfig:
    """`apply_delta`, with a resource that does not fit the contract reported by path
    (`listeners[name=web].max_connections: ...`) as ConfigError.  The walk runs only when the
    typed conversion fails: a good delta is converted once."""
    try:
        return apply_delta(base, d)
    except msgspec.ValidationError as exc:
        errors = _delta_errors(d) or [convert_error(exc, "delta")]
        raise ConfigError(errors) from exc


def _named(where: str, item: Any, i: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"{where}[name={name}]" if isinstance(name, str) else f"{where}[upsert {i}]"


def _delta_errors(d: Delta, optional: list[str] | None = None,
                  ignored: list[str] | None = None) -> list[FieldError]:
    parts: list[tuple[Any, Any, str]] = [
        (d.node, Node, "node"), (d.admin, Admin, "admin"), (d.settings, Settings, "settings"),
        (d.telemetry, Telemetry, "telemetry")]
    for coll, typ in (("listeners", Listener), ("route_tables", RouteTable),
                      ("clusters", Cluster), ("identities", Identity),
                      ("trust_bundles", TrustBundle)):
        for i, item in enumerate(getattr(d, coll).upsert):
            parts.append((item, typ, _named(coll, item, i)))
    for v in d.virtual_hosts:  # delta units (ADR 0018): paths as if the resource came whole
        for i, item in enumerate(v.upsert):
            parts.append((item, VirtualHost, _named(
                f"route_tables[name={v.route_table}].virtual_hosts", item, i)))
    for e in d.endpoints:
        parts.append((e.endpoints, list[Endpoint], f"clusters[name={e.cluster}].endpoints"))
    parts.append((d.dns, DNS, "dns"))
    for i, item in enumerate(d.dns_hosts.upsert if d.dns_hosts is not None else ()):
        parts.append((item, DNSHost, f"dns.hosts[{i}]"))
    errors: list[FieldError] = []
    for value, typ, path in parts:
        if value is not None:
            errors += errors_in(value, typ, path, optional=optional or (), ignored=ignored)
    return errors


__all__ = [
    "CONFIG_API_VERSION",
    "HELLO_MAX_FRAME",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "Ack",
    "Certificate",
    "Csr",
    "DeltaMsg",
    "Draining",
    "Error",
    "FrameDecoder",
    "FrameError",
    "Hello",
    "Message",
    "Nack",
    "Ping",
    "Pong",
    "Snapshot",
    "StatsReport",
    "StatsRequest",
    "TapEvents",
    "TapStart",
    "TapStop",
    "WorkloadInfo",
    "apply_checked",
    "decode_delta",
    "decode_snapshot",
    "delta_message",
    "encode",
    "hello_proof_payload",
    "snapshot_message",
]
