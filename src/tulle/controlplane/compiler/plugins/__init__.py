"""The compiler's policy plugins and the one order they run in.

Each plugin edits the model (`compiler/ir.py`) for one policy kind; they run one after the
other, each on the model the previous one returned, before anything is rendered.  The order is
declared here once, with the reason for each position (as `dataplane/http/chain.py` does for
the proxy's filters).  Where the next ones go:

- retries, circuit breaking, outlier detection (traffic management): after `route_timeouts`
  (a retry's per-try timeout is read against the rule's timeout), before `unclaimed_filters`;
- a TimeoutPolicy plugin: between `route_timeouts` and `mesh_defaults`, filling in only rules
  the route left without a timeout (Service, then route targets, most specific first).
"""

from __future__ import annotations

from tulle.controlplane.compiler.ir import MeshModel
from tulle.controlplane.compiler.plugins import (
    authorization,
    circuit_breaker,
    endpoint_health,
    fault_injection,
    header_modifiers,
    load_balancing,
    mesh_defaults,
    mesh_settings,
    mtls,
    rate_limit,
    request_mirror,
    request_redirect,
    retries,
    route_timeouts,
    session_persistence,
    tcp_routes,
    timeouts,
    unclaimed_filters,
    unenforced_policies,
    url_rewrite,
)
from tulle.controlplane.compiler.plugins.base import Plugin

ORDER: tuple[tuple[Plugin, str], ...] = (
    (header_modifiers.PLUGIN,
     "first of the filter plugins: each claims its own filter types on a rule; their order "
     "among themselves does not matter (the proxy's chain order decides the run order)"),
    (request_redirect.PLUGIN,
     "a filter plugin (claims RequestRedirect): with the others, before unclaimed_filters"),
    (url_rewrite.PLUGIN,
     "a filter plugin (claims URLRewrite, refused next to a RequestRedirect on one rule)"),
    (request_mirror.PLUGIN,
     "a filter plugin (claims RequestMirror, resolving its backendRef to a Service cluster)"),
    (route_timeouts.PLUGIN,
     "the route's own timeout, before any policy that sets defaults, which must see which "
     "rules already have one"),
    (timeouts.PLUGIN,
     "TimeoutPolicy: after route_timeouts (a rule's own timeouts win), before mesh_defaults "
     "(whose values are the proxy-wide fallback beneath every policy)"),
    (retries.PLUGIN,
     "after route_timeouts (a rule's own settings first), before mesh_defaults: a rule's "
     "retry, then RetryPolicy by precedence, and every Service cluster's retry budget"),
    (session_persistence.PLUGIN,
     "a route rule's own Gateway API field with nothing to merge; with the route plugins, "
     "before unclaimed_filters (a rule it leaves out drops its session too)"),
    (mesh_defaults.PLUGIN,
     "the least specific values, after everything more specific (a route's own timeout, "
     "TimeoutPolicy, RetryPolicy) is in place"),
    (mesh_settings.PLUGIN,
     "right after mesh_defaults, whose DefaultsApplied condition it keeps and adds its own to: "
     "the Mesh's settings outside `defaults`, reported as not in force until each is"),
    (load_balancing.PLUGIN,
     "edits Service clusters, not routes: after the route plugins, before "
     "unenforced_policies, which must see the conditions it writes on its policies; it reads "
     "the Mesh's `defaults.loadBalancing` itself (mesh_defaults does not)"),
    (unclaimed_filters.PLUGIN,
     "after every plugin that claims filter types: what is still unclaimed nobody runs, so "
     "its rule is left out and reported"),
    (tcp_routes.PLUGIN,
     "after the HTTP route plugins, before unenforced_policies: TCPRoutes are not run (no "
     "interception yet) and each says so; a policy targeting one is still unenforced_policies'"),
    (authorization.PLUGIN,
     "the inbound side's policies, after the route plugins (it edits proxies, not routes) and "
     "after mesh_settings (it reads whether mTLS is in force to warn about identity rules); "
     "before unenforced_policies, which must see the status it writes"),
    (rate_limit.PLUGIN,
     "server side, after authorization (refused callers spend no budget, as in the proxy's "
     "filter order) and the route plugins (a route-targeted limit reads its rules' matches); "
     "before unenforced_policies, which must see the status it writes"),
    (fault_injection.PLUGIN,
     "server side, after rate_limit (it adds its filters to the inbound rules the rate limit "
     "made; the proxy's chain order, not this one, runs limits before faults)"),
    (mtls.PLUGIN,
     "after authorization, which binds policies to a Service's workloads through its "
     "endpoints (this one may leave out endpoints that cannot take mTLS); it edits the "
     "Service ports' client TLS and the proxies' inbound modes; before unenforced_policies, "
     "which must see the MutualTLSPolicy status it writes"),
    (endpoint_health.PLUGIN,
     "edits Service clusters, not routes (outlier detection, health checks): after the route "
     "plugins, before unenforced_policies, which must see the conditions it writes on its "
     "policies; it reads the Mesh's `defaults.outlierDetection` / `healthCheck` itself"),
    (circuit_breaker.PLUGIN,
     "edits Service clusters, not routes (their limits): after the route plugins, before "
     "unenforced_policies, which must see the conditions it writes on its policies; it reads "
     "the Mesh's `defaults.circuitBreaker` itself"),
    (unenforced_policies.PLUGIN,
     "last: a policy no plugin wrote a status for is not enforced, and must say so"),
)


def run(mesh: MeshModel, until: str | None = None) -> MeshModel:
    """`mesh` after every plugin in `ORDER` (or up to and including the one named `until`)."""
    for plugin, _ in ORDER:
        mesh = plugin.apply(mesh)
        if plugin.name == until:
            break
    return mesh


__all__ = ["ORDER", "Plugin", "run"]
