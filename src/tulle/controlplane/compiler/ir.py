"""The compiler's intermediate form: the mesh as the compiler understands it, typed and frozen.

Compilation has three parts (see `compiler/__init__.py`):

1. *derive* — the stored resources become one `MeshModel`: every Service port with its
   resolved protocol and its endpoints (the selected workloads, each with the metadata a proxy
   needs to label its traffic), every route attached to a Service port (what was left out and
   why), every targetRef policy with its resolved target, the Mesh resource, and every proxy;
2. *plugins* — each policy kind edits the model in the declared order (`compiler/plugins/`);
3. *render* — each proxy's snapshot is rendered from the model alone.

Between those steps only these values travel, never the user's dicts: a plugin reads the
model, and where it needs what the user wrote for one rule or policy (a filter's settings) it
reads that rule's or policy's `spec`, which the model carries as written.  Values are frozen;
a plugin returns a new model (`msgspec.structs.replace`), so a stage cannot change another's
input behind its back, and the proxy part of the model doubles as the cache key of a proxy's own
snapshot part (a proxy whose model value is unchanged renders to the same bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.filters.authz import AuthzPolicy
from tulle.proxyconfig.filters.session import SessionPersistence
from tulle.proxyconfig.model import RouteMatch
from tulle.proxyconfig.network import NetworkFilterConfig

Key = tuple[str, str]
"""(namespace, name)."""
ObjectRef = tuple[str, str, str]
"""(kind, namespace, name) of a stored resource: what status conditions are written to."""


def cluster_name(ns: str, name: str, port: int) -> str:
    """A Service port's cluster, named like Istio's: `outbound|<port>||<name>.<namespace>`."""
    return f"outbound|{port}||{name}.{ns}"


class Metadata(msgspec.Struct, frozen=True):
    """Who a cluster or an endpoint stands for, as telemetry and policies name it.

    For a Service's cluster: `service` and `namespace`.  For an endpoint: also the `workload`
    behind the address, its labels (sorted pairs) and its zone when the Workload has one.
    """

    service: str = ""
    namespace: str = ""
    workload: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    zone: str = ""

    def render(self) -> dict[str, Any]:
        """As the contract's cluster / endpoint `metadata` (the zone is the endpoint's own
        field there)."""
        return {"service": self.service, "namespace": self.namespace,
                "workload": self.workload, "labels": dict(self.labels)}


class Endpoint(msgspec.Struct, frozen=True):
    address: str
    port: int
    metadata: Metadata
    weight: int = 1
    """The Workload's `spec.weight` (rendered only when not 1)."""


class UpstreamMTLS(msgspec.Struct, frozen=True):
    """What a client of a Service port checks: the SPIFFE IDs its endpoints may present."""

    expected_spiffe_ids: tuple[str, ...]


class ServicePort(msgspec.Struct, frozen=True):
    """One port of one Service: one cluster and one virtual host of the outbound table."""

    namespace: str
    name: str
    port: int
    protocol: str
    """What the Service says the port speaks: http1, http2 or tcp (`protocols.port_protocol`)."""
    endpoints: tuple[Endpoint, ...]
    domains: tuple[str, ...]
    """The names a client may use for it (`services` module docstring)."""
    port_name: str = ""
    """The Service port's `name` (a policy's `sectionName`)."""
    tls: UpstreamMTLS | None = None
    """mTLS its clients originate (`plugins/mtls.py`); None: plaintext."""
    lb: Mapping[str, Any] | None = None
    """Its cluster's `lb_policy` and `lb` as the contract writes them (the `load_balancing`
    plugin); None: not set, the proxy's own default."""
    generation: int = 1
    """The Service's `metadata.generation` (for conditions a plugin writes on it)."""
    set_by: tuple[tuple[str, str], ...] = ()
    """(value, who set it) for every value a policy plugin compiled into this port's cluster,
    e.g. ("lb_policy", "LoadBalancingPolicy shop/sticky"): what `describe` shows (ADR 0037)."""
    health: Mapping[str, Any] | None = None
    """Its cluster's `outlier_detection` / `health_check` as the contract writes them (the
    `endpoint_health` plugin); None: neither."""
    retry: Mapping[str, Any] | None = None
    """Retries of the Service's default rule and of route rules that set none more
    specifically (`plugins/retries.py`); None: one try."""
    retry_budget: Mapping[str, Any] | None = None
    """The contract's `RetryBudget` of the Service's cluster; None: the proxy's default."""
    retry_set_by: tuple[tuple[str, str], ...] = ()
    """For each Service-level retry field set (and `budget`): who set it."""
    default_timeouts: Mapping[str, int] = msgspec.field(default_factory=dict)
    """Contract timeouts of the Service's default rule (`timeout_ms`, `backend_timeout_ms`,
    `stream_idle_timeout_ms`) from TimeoutPolicy (`plugins/timeouts.py`)."""
    cluster_timeouts: Mapping[str, int] = msgspec.field(default_factory=dict)
    """Contract timeouts of the Service's cluster (`connect_timeout_ms`, `idle_timeout_ms`)."""
    timeout_set_by: tuple[tuple[str, str], ...] = ()
    vip: str = ""
    """The Service's virtual IP (`status.virtualIP`): a transparent client's connections to
    `vip:port` take this port's routes (`transparent.py`) and mesh DNS answers it
    (`dns.py`); empty: none allocated yet."""
    vip6: str = ""
    """Its IPv6 virtual IP (`status.virtualIPv6`, a dual-stack `ipFamilyPolicy`): the same
    routes as `vip`, and mesh DNS's AAAA answer (ADR 0088); empty: single-stack."""
    declared: str = ""
    """The protocol the Service port itself declares (`appProtocol` or name), without the
    default; lends it to the inbound ports it selects (`inbound_protocols.py`)."""
    limits: Mapping[str, int] | None = None
    """Its cluster's `limits` (only the fields a level sets; `plugins/circuit_breaker.py`);
    None: the proxy's defaults."""
    standby: tuple[Endpoint, ...] = ()
    """The endpoints of selected workloads that are out by readiness (ADR 0040: a proxy
    starting, draining or gone): never called, but still the Service's members for their own
    inbound side (mTLS mode, authorization, declared protocol), so the config a starting
    proxy is sent is the one it will serve as an endpoint (ADR 0116).  `members`."""

    @property
    def members(self) -> tuple[Endpoint, ...]:
        """Every selected workload's endpoint, in or out: whom the Service's inbound-side
        settings apply to (its clients call `endpoints` only)."""
        return self.endpoints + self.standby if self.standby else self.endpoints

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def cluster_name(self) -> str:
        return cluster_name(self.namespace, self.name, self.port)

    @property
    def metadata(self) -> Metadata:
        return Metadata(service=self.name, namespace=self.namespace)


INVALID_BACKEND = "blackhole|invalid-backend"
"""The cluster of a share of traffic no backend can take (a backendRef that does not resolve or
is not permitted, a rule that is invalid): the proxy answers it 500 itself (Gateway API), as
the cluster is rendered `unresolved`."""


class Backend(msgspec.Struct, frozen=True):
    cluster: str
    weight: int = 1
    filters: tuple[HTTPFilter, ...] = ()
    """This backend's own filters (`backendRefs[].filters`), as the proxy runs them; set by
    the plugin that claims their type (`header_modifiers`)."""


class RuleFilter(msgspec.Struct, frozen=True):
    """One entry of a rule's `filters`, in the user's order.  The plugin that runs this filter
    type claims it and sets `config`; a filter no plugin claimed leaves its rule out."""

    index: int
    type: str
    claimed_by: str = ""
    """The plugin that handles this type ("" while none has)."""
    config: HTTPFilter | None = None
    """Its contract config; None while unclaimed, or when its settings were refused."""


class Rule(msgspec.Struct, frozen=True):
    """One rule of a route as the proxy will run it (or, with `left_out`, will not)."""

    name: str
    index: int
    """Position in the route's `spec.rules`, for paths in messages."""
    matches: tuple[RouteMatch, ...]
    """As the proxy will run them; () when any match of the rule cannot be run as written."""
    backends: tuple[Backend, ...]
    spec: Mapping[str, Any]
    """The rule as the user wrote it, for plugins that read their own settings from it."""
    filters: tuple[RuleFilter, ...] = ()
    timeout_ms: int | None = None
    backend_timeout_ms: int | None = None
    """Per try (`timeouts.backendRequest`); None: no per-try limit."""
    retry: Mapping[str, Any] | None = None
    """The contract's `RetryPolicy` for this rule (`plugins/retries.py`); None: one try."""
    retry_set_by: tuple[tuple[str, str], ...] = ()
    """For each retry field set: who set it (ADR 0037 provenance, for `describe`)."""
    stream_idle_timeout_ms: int | None = None
    """No body bytes either way this long ends the request (`plugins/timeouts.py`)."""
    timeout_set_by: tuple[tuple[str, str], ...] = ()
    """For each timeout field a TimeoutPolicy set on this rule: who set it."""
    session: SessionPersistence | None = None
    """The rule's Gateway API `sessionPersistence` as the proxy's filter config
    (`plugins/session_persistence.py`); None: none."""
    left_out: bool = False
    """Not in force: no match the proxy can do (not rendered: its traffic cannot be told
    apart), or a plugin refused a setting of it (rendered to answer 500, Gateway API's answer
    for an invalid rule: never the Service's default route).  The route's `dropped` says
    which."""


class Dropped(msgspec.Struct, frozen=True):
    """Something of a route that is not in force, and why (surfaced in its status)."""

    what: str
    reason: Literal["unsupported", "invalid"]


class Route(msgspec.Struct, frozen=True):
    """An HTTPRoute or GRPCRoute and the Service ports it is attached to (GAMMA)."""

    kind: str
    namespace: str
    name: str
    generation: int
    parents: tuple[tuple[Key, int], ...]
    """(Service, port) pairs whose default rule this route replaces, in parentRef order."""
    rules: tuple[Rule, ...]
    created: str = ""
    """`metadata.creationTimestamp`: the first key of precedence between routes (then
    namespace and name), Gateway API's rule."""
    parent_problems: tuple[str, ...] = ()
    ref_problems: tuple[str, ...] = ()
    ref_reason: str = "BackendNotFound"
    """The `ResolvedRefs=False` reason when there are `ref_problems`: `RefNotPermitted` when a
    cross-namespace backend has no ReferenceGrant, else `BackendNotFound` (or
    `InvalidKind`)."""
    dropped: tuple[Dropped, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return (self.kind, self.namespace, self.name)

    @property
    def precedence(self) -> tuple[str, str, str, str]:
        """Between routes on one Service: the oldest first, then by namespace/name."""
        return (self.created, self.namespace, self.name, self.kind)


class TCPParent(msgspec.Struct, frozen=True):
    """One `spec.parentRefs` entry of a TCPRoute: its index and, if it does not resolve, why."""

    index: int
    label: str
    """`Service ns/name:port`, for messages."""
    problem: str = ""
    targets: tuple[tuple[Key, int], ...] = ()
    """The Service ports it resolves to (all the Service's ports when it names none)."""


class TCPRoute(msgspec.Struct, frozen=True):
    """A TCPRoute: which parents and backends resolve.  Transparent clients run it on their
    outbound listener (`transparent.py`, ADR 0044): connections to a parent's `vip:port` go to
    the backends, weighted."""

    namespace: str
    name: str
    generation: int
    parents: tuple[TCPParent, ...]
    ref_problems: tuple[str, ...] = ()
    ref_reason: str = "BackendNotFound"
    backends: tuple[Backend, ...] = ()
    """Every rule's backendRefs, in order (an unresolved one on `INVALID_BACKEND`)."""
    created: str = ""
    """`metadata.creationTimestamp`: the oldest route on a Service port wins."""

    @property
    def ref(self) -> ObjectRef:
        return ("TCPRoute", self.namespace, self.name)


class Policy(msgspec.Struct, frozen=True):
    """A policy attached by `targetRef`; the target is looked up in the same namespace."""

    kind: str
    namespace: str
    name: str
    generation: int
    target_kind: str
    target_name: str
    target_found: bool
    spec: Mapping[str, Any]
    """The policy's spec as the user wrote it, for the plugin of its kind."""
    section: str = ""
    """`targetRef.sectionName` (a route rule's name); empty: the whole target."""
    created: str = ""
    """`metadata.creationTimestamp`: between two policies at one level, the older wins a field
    (GEP-713; ADR 0037)."""

    @property
    def ref(self) -> ObjectRef:
        return (self.kind, self.namespace, self.name)


class Condition(msgspec.Struct, frozen=True, omit_defaults=True):
    """A status condition (Kubernetes shape once rendered: status "True" / "False")."""

    type: str
    status: bool
    reason: str
    message: str
    generation: int
    parent: int | None = None
    """For a route: the `spec.parentRefs` index this condition is for; None for every parent
    (`statuswriter` places it)."""

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "status": "True" if self.status else "False",
                               "reason": self.reason, "message": self.message,
                               "observedGeneration": self.generation}
        if self.parent is not None:
            out["parent"] = self.parent
        return out


class InboundPort(msgspec.Struct, frozen=True):
    port: int
    target_port: int
    """The application's port on 127.0.0.1."""
    protocol: str
    """auto, http1, http2 or tcp (`protocols.port_protocol`, default `auto`)."""


MTLSMode = Literal["STRICT", "PERMISSIVE", "DISABLED"]


class InboundAuthz(msgspec.Struct, frozen=True):
    """The authorization policies of one inbound port, as the proxy runs them (ports resolved:
    an operation for other ports is gone, `plugins/authorization.py`)."""

    port: int
    policies: tuple[AuthzPolicy, ...]


class InboundRule(msgspec.Struct, frozen=True):
    """Server-side HTTP filters of one inbound port (rate limits, faults: ADR 0041), for the
    requests of one route rule (`matches`, a route-targeted policy) or, with `scope` "", for
    the whole port.  Rendered after the port's authorization (`proxies.inbound_tables`)."""

    port: int
    scope: str
    """"" the whole port; else the name of the route rule it stands for
    (`<kind>/<ns>/<route>/<rule>`, `Rule.name`)."""
    matches: tuple[RouteMatch, ...]
    filters: tuple[HTTPFilter, ...]


class InboundNetwork(msgspec.Struct, frozen=True):
    """Server-side network filters of one opaque TCP inbound port (connection-rate limits)."""

    port: int
    filters: tuple[NetworkFilterConfig, ...]


class Proxy(msgspec.Struct, frozen=True):
    """One workload's proxy: what its own part of the snapshot is rendered from."""

    key: Key
    """The workload's (namespace, name)."""
    service: str
    """The workload's `app` label: the node's service name."""
    address: str
    """Where its inbound listeners listen."""
    inbound: tuple[InboundPort, ...]
    outbound_port: int
    metadata: Metadata
    authz: tuple[InboundAuthz, ...] = ()
    """Per inbound port with policies (`plugins/authorization.py`); () : none apply."""
    service_account: str = "default"
    """`Workload.spec.serviceAccount`: the SPIFFE ID its certificate carries."""
    sidecar: bool = True
    """`Workload.spec.sidecar`: false when no proxy fronts it (clients send plaintext)."""
    mtls: tuple[tuple[int, MTLSMode], ...] = ()
    """Per inbound port, the mode its listener enforces (`plugins/mtls.py`); a port not
    listed is plaintext (DISABLED)."""
    interception: Literal["explicit", "transparent", "agent"] = "explicit"
    """`Workload.spec.interception`: transparent proxies get the listeners on 15001 / 15006
    that take iptables-redirected traffic (`transparent.py`, ADR 0044); `agent` ones the same
    listeners on the node agent's loopback, inbound on `inbound_port` (ADR 0047)."""
    dns_port: int = 0
    """`Workload.spec.dnsPort`: its proxy's mesh DNS resolver port on loopback; 0: none."""
    admin_port: int | None = None
    """`Workload.spec.adminPort`: the admin port its proxy announced (0: disabled); None:
    the default (the snapshot's `admin` section says what the proxy serves)."""
    inbound_rules: tuple[InboundRule, ...] = ()
    """Server-side HTTP filters by port and scope (`plugins/rate_limit.py`,
    `plugins/fault_injection.py`); () : none."""
    inbound_network: tuple[InboundNetwork, ...] = ()
    """Server-side network filters by port (`plugins/rate_limit.py`); () : none."""
    inbound_port: int = 15006
    """`Workload.spec.inboundPort`: the inbound listener's port on a node agent."""
    additional_addresses: tuple[str, ...] = ()
    """`Workload.spec.additionalAddresses`: the pod's address of the other family, a pod-IP
    destination like `address` (ADR 0088)."""

    @property
    def intercepted(self) -> bool:
        """Transparent or agent: listeners by original destination, not explicit ones."""
        return self.interception != "explicit"

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[1]


class MeshResource(msgspec.Struct, frozen=True):
    """The `Mesh` resource (cluster-scoped: status is written with namespace "")."""

    name: str
    generation: int
    spec: Mapping[str, Any]
    """As the user wrote it, for the plugins that read their settings from it."""

    @property
    def ref(self) -> ObjectRef:
        return ("Mesh", "", self.name)


class ProxyDefaults(msgspec.Struct, frozen=True):
    """Values every proxy gets where nothing more specific applies.  None: the proxy's own
    default (`proxyconfig.model.Settings` / `Cluster`), which is then not rendered at all."""

    request_timeout_ms: int | None = None
    """`settings.request_timeout_ms`: a rule without its own timeout gets this one."""
    idle_timeout_ms: int | None = None
    """`settings.idle_timeout_ms`: idle downstream keep-alive connections."""
    drain_propagation_ms: int | None = None
    """`settings.drain_propagation_ms`: accepting on after `Draining` (ADR 0113)."""
    connect_timeout_ms: int | None = None
    """`connect_timeout_ms` of every Service cluster."""


class Grant(msgspec.Struct, frozen=True):
    """One permission a Gateway API ReferenceGrant gives: routes of `from_kind` in `from_ns`
    may name Service `to_name` (any Service when "") in `to_ns`."""

    from_kind: str
    from_ns: str
    to_ns: str
    to_name: str = ""

    def admits(self, kind: str, from_ns: str, to_ns: str, to_name: str) -> bool:
        return (self.from_kind == kind and self.from_ns == from_ns and self.to_ns == to_ns
                and self.to_name in ("", to_name))


class MeshModel(msgspec.Struct, frozen=True):
    """Everything the compiler derived from one set of inputs, in deterministic order."""

    services: tuple[ServicePort, ...]
    """Every Service port, sorted by (namespace, name, port)."""
    routes: tuple[Route, ...]
    """HTTPRoutes, then GRPCRoutes, each sorted by (namespace, name)."""
    policies: tuple[Policy, ...]
    """Sorted by (kind, namespace, name)."""
    proxies: tuple[Proxy, ...]
    """Sorted by (namespace, name)."""
    conditions: Mapping[ObjectRef, tuple[Condition, ...]] = msgspec.field(default_factory=dict)
    """Status conditions plugins wrote (route conditions are rendered from `routes`)."""
    mesh: MeshResource | None = None
    defaults: ProxyDefaults = ProxyDefaults()
    tcp_routes: tuple[TCPRoute, ...] = ()
    """Sorted by (namespace, name); not rendered (`plugins/tcp_routes`)."""
    grants: tuple[Grant, ...] = ()
    """What the ReferenceGrants permit, for references plugins resolve (a mirror's backend);
    backendRefs are resolved with them already (`routes.py`)."""


__all__ = [
    "INVALID_BACKEND",
    "Backend",
    "Condition",
    "Dropped",
    "Endpoint",
    "Grant",
    "InboundAuthz",
    "InboundNetwork",
    "InboundPort",
    "InboundRule",
    "Key",
    "MTLSMode",
    "MeshModel",
    "MeshResource",
    "Metadata",
    "ObjectRef",
    "Policy",
    "Proxy",
    "ProxyDefaults",
    "Route",
    "Rule",
    "RuleFilter",
    "ServicePort",
    "TCPParent",
    "TCPRoute",
    "UpstreamMTLS",
    "cluster_name",
]
