"""Network (L4) filter configs: a tagged union, one module per filter config.

`listeners[].network_filters` is a list of these, told apart by `type`.  Each module owns its
struct and its semantic `check` (errors with their field paths); the data plane's factory for
each lives in `tulle.dataplane.network.<type>`, and `tulle.dataplane.network.order` fixes the
order they run in.  Adding a filter: a module here, its variant in `NetworkFilterConfig`, its
runtime module, its place in the order, docs.
"""

from __future__ import annotations

from tulle.errors import FieldError
from tulle.proxyconfig.network import authz, connection_limit, flow_log, rate_limit, source_ip
from tulle.proxyconfig.network.authz import NetworkAuthz
from tulle.proxyconfig.network.connection_limit import ConnectionLimit
from tulle.proxyconfig.network.flow_log import FlowLog
from tulle.proxyconfig.network.rate_limit import ConnectionRateLimit
from tulle.proxyconfig.network.source_ip import SourceIP

NetworkFilterConfig = SourceIP | ConnectionLimit | FlowLog | NetworkAuthz | ConnectionRateLimit


def check(cfg: NetworkFilterConfig, path: str) -> list[FieldError]:
    """The semantic errors of one filter config at `path`."""
    if isinstance(cfg, SourceIP):
        return source_ip.check(cfg, path)
    if isinstance(cfg, ConnectionLimit):
        return connection_limit.check(cfg, path)
    if isinstance(cfg, NetworkAuthz):
        return authz.check(cfg, path)
    if isinstance(cfg, ConnectionRateLimit):
        return rate_limit.check(cfg, path)
    return flow_log.check(cfg, path)


__all__ = ["ConnectionLimit", "ConnectionRateLimit", "FlowLog", "NetworkAuthz",
           "NetworkFilterConfig", "SourceIP", "check"]
