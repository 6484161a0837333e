"""`Mesh.spec.mtls` and `MutualTLSPolicy` -> what each inbound port accepts and what each
client of a Service originates (ADR 0033).

The mode of a Service port, most specific first: a `MutualTLSPolicy` on that port
(`sectionName`), one on the Service, one on the Mesh, `Mesh.spec.mtls.mode` (default STRICT).

- **Server side** (a workload's inbound port): the strictest mode of the Service ports that
  send traffic to it (STRICT > PERMISSIVE > DISABLED: a Service asking for STRICT is never
  weakened by another one sharing the port; the other's plaintext callers are refused, which
  shows); a port no Service reaches takes the mesh-wide mode.  Rendered by `proxies.inbound`
  as filter chains (ADR 0030): STRICT = one mTLS chain, PERMISSIVE = mTLS + plaintext.
- **Client side** (Istio's auto-mTLS): a client originates mTLS to an endpoint whose port
  accepts it (STRICT or PERMISSIVE) and plaintext to one that is DISABLED or has no sidecar
  (`Workload.spec.sidecar: false`).  A cluster is one or the other, so a Service whose
  endpoints disagree keeps only those that take mTLS and the Mesh says which endpoints were
  left out (`MTLSEndpoints=False`) — never plaintext to a server that requires mTLS.  The
  client expects the SPIFFE IDs of the service accounts of the kept endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import (
    Condition,
    Endpoint,
    Key,
    MeshModel,
    MTLSMode,
    ObjectRef,
    Policy,
    Proxy,
    ServicePort,
    UpstreamMTLS,
)
from tulle.controlplane.compiler.plugins.base import Plugin

NAME = "mtls"
KIND = "MutualTLSPolicy"
DEFAULT_MODE: MTLSMode = "STRICT"
DEFAULT_TRUST_DOMAIN = "cluster.local"
_RANK: dict[str, int] = {"DISABLED": 0, "PERMISSIVE": 1, "STRICT": 2}


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _mesh_spec(mesh: MeshModel) -> Mapping[str, Any]:
    return mesh.mesh.spec if mesh.mesh is not None else {}


def trust_domain(mesh: MeshModel) -> str:
    td = _mesh_spec(mesh).get("trustDomain")
    return td if isinstance(td, str) and td else DEFAULT_TRUST_DOMAIN


def trust_domains(mesh: MeshModel) -> tuple[str, ...]:
    """The trust domain and its aliases (`Mesh.spec.trustDomainAliases`), in that order: the
    domains a workload's certificate may name while the mesh moves from one to another."""
    aliases = _mesh_spec(mesh).get("trustDomainAliases") or ()
    td = trust_domain(mesh)
    return (td, *(a for a in aliases if isinstance(a, str) and a and a != td))


def spiffe_ids(trust_domains: tuple[str, ...], namespace: str, service_account: str
               ) -> tuple[str, ...]:
    """A workload's SPIFFE ID in every trust domain the mesh accepts."""
    return tuple(spiffe_id(td, namespace, service_account) for td in trust_domains)


def mesh_mode(mesh: MeshModel) -> MTLSMode:
    """`Mesh.spec.mtls.mode`, or the default when there is no Mesh."""
    section = _mesh_spec(mesh).get("mtls")
    mode = section.get("mode") if isinstance(section, Mapping) else None
    return mode if mode in _RANK else DEFAULT_MODE


TargetKey = tuple[str, str, str, str]
"""(kind, namespace, name, section) a policy decides for."""


def _target(p: Policy) -> TargetKey:
    if p.target_kind == "Mesh":
        return ("Mesh", "", "", "")
    section = (p.spec.get("targetRef") or {}).get("sectionName") or ""
    return ("Service", p.namespace, p.target_name, str(section))


class Decisions:
    """Which policy decides for which target (the first by namespace/name on each), and the
    conditions of every MutualTLSPolicy."""

    def __init__(self, mesh: MeshModel) -> None:
        self.by_target: dict[TargetKey, Policy] = {}
        self.conditions: dict[ObjectRef, tuple[Condition, ...]] = {}
        self.decided: dict[ObjectRef, int] = {}
        port_names = {(sp.namespace, sp.name, sp.port_name) for sp in mesh.services}
        for p in sorted((p for p in mesh.policies if p.kind == KIND),
                        key=lambda p: (p.namespace, p.name)):
            key = _target(p)
            if not p.target_found:
                self._refuse(p, "TargetNotFound", f"target {p.target_kind} "
                             f"{p.namespace}/{p.target_name} does not exist")
            elif key[3] and (key[1], key[2], key[3]) not in port_names:
                self._refuse(p, "TargetNotFound", f"Service {key[1]}/{key[2]} has no port "
                             f"named {key[3]!r} (sectionName)")
            elif key in self.by_target:
                first = self.by_target[key]
                self._refuse(p, "Conflicted", f"{first.namespace}/{first.name} targets the "
                             "same and wins (the first by namespace/name)")
            else:
                self.by_target[key] = p
                self.decided[p.ref] = 0

    def _refuse(self, p: Policy, reason: str, message: str) -> None:
        self.conditions[p.ref] = (Condition("Accepted", False, reason, message, p.generation),)

    def mode_of(self, sp: ServicePort, fallback: MTLSMode) -> MTLSMode:
        keys: tuple[TargetKey, ...] = (("Service", sp.namespace, sp.name, sp.port_name),
                                       ("Service", sp.namespace, sp.name, ""))
        for key in keys if sp.port_name else keys[1:]:
            p = self.by_target.get(key)
            mode = p.spec.get("mode") if p is not None else None
            if p is not None and mode in _RANK:
                self.decided[p.ref] += 1
                return mode  # type: ignore[no-any-return]
        mesh_policy = self.by_target.get(("Mesh", "", "", ""))
        if mesh_policy is not None:
            self.decided[mesh_policy.ref] += 1
        return fallback

    def mesh_level(self, fallback: MTLSMode) -> MTLSMode:
        p = self.by_target.get(("Mesh", "", "", ""))
        mode = p.spec.get("mode") if p is not None else None
        return mode if mode in _RANK else fallback

    def accepted(self) -> dict[ObjectRef, tuple[Condition, ...]]:
        out = dict(self.conditions)
        for p in self.by_target.values():
            n = self.decided[p.ref]
            what = ("the mesh-wide mode" if p.target_kind == "Mesh" else
                    f"{n} Service port(s)")
            out[p.ref] = (Condition("Accepted", True, "Applied",
                                    f"mode {p.spec.get('mode')} in force for {what}",
                                    p.generation),)
        return out


def inbound_modes(mesh: MeshModel) -> tuple[dict[tuple[Key, int], MTLSMode], MTLSMode]:
    """What `apply` will make each (workload, inbound port) enforce, and the mode of a port no
    Service reaches; for plugins that run before it (authorization's status)."""
    decisions = Decisions(mesh)
    fallback = decisions.mesh_level(mesh_mode(mesh))
    modes = {i: decisions.mode_of(sp, fallback) for i, sp in enumerate(mesh.services)}
    return _inbound_modes(mesh, modes), fallback


def _inbound_modes(mesh: MeshModel, modes: dict[int, MTLSMode]) -> dict[tuple[Key, int], MTLSMode]:
    """(workload, port) -> the strictest mode of the Service ports that reach it."""
    out: dict[tuple[Key, int], MTLSMode] = {}
    for i, sp in enumerate(mesh.services):
        for e in sp.members:  # (out by readiness too: its own side, ADR 0116)
            k = ((e.metadata.namespace, e.metadata.workload), e.port)
            have = out.get(k)
            if have is None or _RANK[modes[i]] > _RANK[have]:
                out[k] = modes[i]
    return out


def apply(mesh: MeshModel) -> MeshModel:
    decisions = Decisions(mesh)
    fallback = decisions.mesh_level(mesh_mode(mesh))
    modes = {i: decisions.mode_of(sp, fallback) for i, sp in enumerate(mesh.services)}
    inbound = _inbound_modes(mesh, modes)
    proxies: dict[Key, Proxy] = {p.key: p for p in mesh.proxies}
    tds = trust_domains(mesh)
    left_out: list[str] = []

    def takes_mtls(wkey: Key, port: int) -> tuple[bool, str]:
        proxy = proxies.get(wkey)
        if proxy is not None and not proxy.sidecar:
            return False, "no sidecar"
        mode = inbound.get((wkey, port), fallback)
        return mode != "DISABLED", mode

    services: list[ServicePort] = []
    for sp in mesh.services:
        mtls: list[tuple[Endpoint, str]] = []
        plain: list[tuple[Endpoint, str]] = []
        for e in sp.endpoints:
            wkey = (e.metadata.namespace, e.metadata.workload)
            ok, why = takes_mtls(wkey, e.port)
            (mtls if ok else plain).append((e, why))
        if not mtls:
            services.append(sp)
            continue
        if plain:
            left_out.append(f"{sp.namespace}/{sp.name}:{sp.port} leaves out "
                            + ", ".join(f"{e.metadata.workload} ({why})" for e, why in plain))
        ids = sorted({i for e, _ in mtls for i in spiffe_ids(
            tds, e.metadata.namespace,
            proxies[(e.metadata.namespace, e.metadata.workload)].service_account
            if (e.metadata.namespace, e.metadata.workload) in proxies else "default")})
        services.append(replace(sp, endpoints=tuple(e for e, _ in mtls),
                                tls=UpstreamMTLS(tuple(ids))))

    def bind(proxy: Proxy) -> Proxy:
        if not proxy.sidecar or not proxy.inbound:
            return proxy
        mine = tuple((ip.port, inbound.get((proxy.key, ip.port), fallback))
                     for ip in proxy.inbound)
        return proxy if mine == proxy.mtls else replace(proxy, mtls=mine)

    conditions: dict[ObjectRef, tuple[Condition, ...]] = {**mesh.conditions,
                                                          **decisions.accepted()}
    if left_out and mesh.mesh is not None:
        ref = mesh.mesh.ref
        conditions[ref] = (*conditions.get(ref, ()), Condition(
            "MTLSEndpoints", False, "MixedEndpoints",
            "a Service's endpoints disagree on mTLS; its clients originate mTLS and leave out "
            "those that cannot take it (no sidecar, or DISABLED): " + "; ".join(left_out),
            mesh.mesh.generation))
    return replace(mesh, services=tuple(services),
                   proxies=tuple(bind(x) for x in mesh.proxies), conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("services", "proxies", "conditions"))
