"""The newest snapshot per proxy, and what the control plane knows of each proxy.

Why a module of its own: the reconciler writes `SnapshotCache`, the push server's sessions read
it and keep a `ProxyStatus` per workload, and the REST API serves both; none of that is the
stream protocol's business (`server.py`), which stays about connections and sessions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec

from tulle.controlplane.push.wire import WireCache
from tulle.proxyconfig.features import Feature
from tulle.proxyconfig.features_in_use import in_use
from tulle.proxyconfig.model import ProxyConfig

ProxyKey = tuple[str, str]
"""(namespace, workload name)."""


class SnapshotCache:
    """The newest snapshot per proxy, with change notification."""

    def __init__(self) -> None:
        self._snapshots: dict[ProxyKey, ProxyConfig] = {}
        self._waiters: dict[ProxyKey, set[asyncio.Event]] = {}
        self.wire = WireCache()

    def update(self, snapshots: dict[ProxyKey, ProxyConfig],
               keep: frozenset[ProxyKey] = frozenset()) -> int:
        """One compilation round: store every snapshot (waking only proxies whose version
        changed), drop proxies that are gone unless in `keep`; returns how many changed."""
        self.wire.rotate()
        changed = 0
        for key, cfg in snapshots.items():
            changed += self.set(key, cfg)
        for key in [k for k in self._snapshots if k not in snapshots and k not in keep]:
            self.remove(key)
        return changed

    def get(self, key: ProxyKey) -> ProxyConfig | None:
        return self._snapshots.get(key)

    def set(self, key: ProxyKey, cfg: ProxyConfig) -> bool:
        """Store a snapshot; returns False (and wakes nobody) when the version is unchanged."""
        old = self._snapshots.get(key)
        if old is not None and old.version == cfg.version:
            return False
        self._snapshots[key] = cfg
        for ev in self._waiters.get(key, ()):
            ev.set()
        return True

    def remove(self, key: ProxyKey) -> None:
        self._snapshots.pop(key, None)

    def subscribe(self, key: ProxyKey, ev: asyncio.Event | None = None) -> asyncio.Event:
        """An event set whenever `key`'s snapshot changes (`ev`: one shared with other keys)."""
        ev = ev or asyncio.Event()
        self._waiters.setdefault(key, set()).add(ev)
        return ev

    def unsubscribe(self, key: ProxyKey, ev: asyncio.Event) -> None:
        self._waiters.get(key, set()).discard(ev)

    def proxies(self) -> list[ProxyKey]:
        return list(self._snapshots)


@dataclass
class ProxyStatus:
    namespace: str
    name: str
    connected: bool = False
    draining: bool = False
    """Said `Draining` (ADR 0092): still on its stream, no longer an endpoint."""
    serving: bool = False
    """Its workload is an endpoint for this session: it ACKed a config, or its hello named one
    it runs, or it predates `serving-ack` (ADR 0116).  Connected and not serving: starting
    (or its first config was NACKed: `nack_*`), out of the endpoints."""
    peer: str = ""
    connected_since: float = 0.0
    last_seen: float = 0.0
    sent_version: str = ""
    acked_version: str = ""
    acked_at: float = 0.0
    nack_version: str = ""
    nack_reason: str = ""
    nack_paths: list[str] = field(default_factory=list)
    pushes: int = 0
    protocol: int = 0
    """The stream protocol version of the proxy's last hello."""
    features: list[str] = field(default_factory=list)
    """The config features the proxy announced."""
    withheld: tuple[Feature, ...] = ()
    """Features this control plane has and the proxy lacks: left out of its snapshots."""
    refused: tuple[Feature, ...] = ()
    """Features it lacks that are never withheld (`features.refused_by`): a snapshot using one
    it refuses whole (a NACK).  Read by apply's version-skew warnings (ADR 0125)."""
    delta_units: frozenset[str] = frozenset()
    """The delta units (`proxyconfig/delta.py`) the proxy takes; others go as whole resources."""
    node: list[str] = field(default_factory=list)
    """A proxy fronting several workloads: all of them (`namespace/name`), its own first; the
    status of each is kept under its own name, versions being that workload's part."""
    control_plane: str = ""
    cert_issuer: str = ""
    """Fingerprint of the CA certificate that signed the workload certificate it serves."""
    cert_not_before: int = 0
    """Unix seconds it was issued at (lifetimes count from here)."""
    cert_not_after: int = 0
    trust_updates: bool = False
    """It takes `TrustUpdate` (feature `ca-rotation`)."""
    trust_bundle: str = ""
    """The id of the trust bundle it last confirmed (`TrustAck`)."""
    extra: dict[str, str] = field(default_factory=dict)
    session: object | None = field(default=None, repr=False, compare=False)
    """The stream session that holds this status now: a session that ends marks the proxy
    disconnected only if no newer one took it over (a proxy that reconnected at once must
    not be shown disconnected when its old stream's end is handled after the new hello)."""
    running: ProxyConfig | None = field(default=None, repr=False)
    """The snapshot the proxy ACKed last: what it runs (not in `to_dict`; served whole by the
    proxy-config endpoint)."""
    _in_use: tuple[ProxyConfig | None, tuple[Feature, ...], tuple[str, ...]] = field(
        default=(None, (), ()), repr=False, compare=False)

    def withheld_in_use(self) -> tuple[str, ...]:
        """The withheld features that the snapshot it ACKed uses: what of its config this
        (older) proxy does not run (ADR 0122).  Worked out once per ACKed snapshot, and only
        for a proxy that lacks something."""
        if not self.withheld or self.running is None:
            return ()
        cfg, missing, names = self._in_use
        if cfg is not self.running or missing != self.withheld:
            names = tuple(f.name for f in in_use(msgspec.to_builtins(self.running),
                                                 self.withheld))
            self._in_use = (self.running, self.withheld, names)
        return names

    def to_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace, "name": self.name, "connected": self.connected,
            "draining": self.draining, "serving": self.serving,
            "peer": self.peer, "connectedSince": self.connected_since,
            "lastSeen": self.last_seen, "sentVersion": self.sent_version,
            "ackedVersion": self.acked_version, "ackedAt": self.acked_at,
            "lastNack": {"version": self.nack_version, "reason": self.nack_reason,
                         "paths": self.nack_paths}
            if self.nack_version else None,
            "pushes": self.pushes, "controlPlane": self.control_plane,
            "protocol": self.protocol, "features": self.features,
            "withheld": [{"feature": f.name, "paths": list(f.paths)} for f in self.withheld],
            "withheldInUse": list(self.withheld_in_use()),
            "deltaUnits": sorted(self.delta_units), "node": self.node,
            "certificate": {"issuer": self.cert_issuer, "notBefore": self.cert_not_before,
                            "notAfter": self.cert_not_after} if self.cert_not_after else None,
            "trustBundle": self.trust_bundle,
        }


__all__ = ["ProxyKey", "ProxyStatus", "SnapshotCache"]
