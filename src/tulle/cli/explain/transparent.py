"""The outbound hop of a transparent caller (ADR 0044): chosen by original destination.

Why: a workload with `interception: transparent` has no Host-routed outbound table; its
outbound listener picks a `Destination` by the address:port the application connected to (a
Service's VIP and port), and that destination names the route table (`outbound|SVC.NS:PORT`,
whose only virtual host answers to any Host) or, for an opaque TCP port, a cluster
(`outbound-tcp|PORT||SVC.NS`).  Explain must find that same destination -- by the names the
compiler gives the destination's table or cluster, or by a VIP given literally -- and report
the VIP it stands for, rather than route by Host over a table the caller does not have.
A node agent's pod listener refuses a meshed pod's address on the ports it does not declare
(`Destination.refuse`, ADR 0114): explain says so, and why, instead of "passed through".
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tulle.cli.explain.request import ExplainError
from tulle.proxyconfig.address import hostport, same_address
from tulle.proxyconfig.model import Destination, Listener, ProxyConfig


def transparent_outbound(cfg: ProxyConfig) -> Listener | None:
    """The caller's transparent outbound listener, if it has one with destinations."""
    return next((x for x in cfg.listeners if x.direction == "outbound"
                 and x.mode == "transparent" and x.destinations), None)


def _target(authority: str, namespace: str) -> tuple[str, str, int]:
    """(host, namespace or "" for an IP literal, port) of `SERVICE[.NS[.svc...]][:PORT]`, an
    IPv4 `ADDRESS[:PORT]` or an IPv6 `[ADDRESS][:PORT]` (or a bare IPv6 address)."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") > 1:
        host, port = authority, ""  # a bare IPv6 address
    else:
        host, _, port = authority.partition(":")
    try:
        number = int(port) if port else 80
    except ValueError:
        raise ExplainError(400, "to", f"{authority!r}: the port must be a number") from None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if authority.startswith("[") or ":" in host:
            raise ExplainError(400, "to", f"{host!r} is not an IPv6 address") from None
    else:
        return str(ip), "", number
    parts = host.split(".")
    if len(parts) > 2 and parts[2] != "svc":
        raise ExplainError(404, "to", f"{host!r} is not SERVICE[.NAMESPACE[.svc...]]: a "
                                      "transparent caller's hop is chosen by the Service's "
                                      "address")
    return parts[0], parts[1] if len(parts) > 1 else namespace, number


def _matches(d: Destination, host: str, ns: str, port: int) -> bool:
    if not ns:  # an address: the first destination that takes it, as the proxy picks
        return d.port in (0, port) and same_address(d.address, host)
    return (d.route_table == f"outbound|{host}.{ns}:{port}"
            or d.cluster == f"outbound-tcp|{port}||{host}.{ns}")


def original_destination(listener: Listener, authority: str, namespace: str
                         ) -> tuple[Destination, dict[str, Any]]:
    """The destination the caller's proxy picks for a connection to the Service `authority`
    names (resolved in the caller's `namespace` when it has none), and its trace entry;
    raises `ExplainError` (404, `to`) when no destination is that Service's VIP and port."""
    host, ns, port = _target(authority, namespace)
    dest = next((d for d in listener.destinations if _matches(d, host, ns, port)), None)
    if dest is None:
        if not ns:  # an address: what the listener does with one no destination names
            fate = ("relays it unchanged, as opaque TCP (outboundTrafficPolicy ALLOW_ANY)"
                    if listener.passthrough else
                    "refuses it: the connection is reset, counted in tulle_proxy_protocol_"
                    "errors_total{kind=\"no_destination\"} and logged (outboundTrafficPolicy "
                    "REGISTRY_ONLY)")
            raise ExplainError(404, "to", f"no original destination of {listener.name} is "
                                          f"{hostport(host, port)} (no mesh Service's virtual IP or "
                                          f"endpoint): the caller's proxy {fate}")
        raise ExplainError(404, "to", f"no original destination of {listener.name} is Service "
                                      f"{ns}/{host} port {port} (unknown service or port, or "
                                      "the Service has no status.virtualIP)")
    if dest.refuse:
        raise ExplainError(403, "to", f"{hostport(host, port)} is a meshed workload's address "
                                      f"on a port it does not declare: {listener.name} refuses "
                                      "it (the connection is reset, counted in tulle_proxy_"
                                      "protocol_errors_total{kind=\"destination_refused\"} and "
                                      "logged); a node agent would reach it from the node, past "
                                      "the workload's inbound side, so it never passes it "
                                      "through (ADR 0114).  Declare the port on the Workload to "
                                      "reach it through the mesh")
    target = (f"route table {dest.route_table}" if dest.route_table
              else f"cluster {dest.cluster}")
    doc: dict[str, Any] = {
        "address": dest.address, "port": dest.port, "protocol": dest.protocol,
        "routeTable": dest.route_table or None, "cluster": dest.cluster or None,
        "why": f"transparent listener {listener.name}: the hop is chosen by original "
               f"destination {hostport(dest.address, dest.port)} (the Service's VIP and port), not by "
               f"Host; it selects {target}"}
    return dest, doc
