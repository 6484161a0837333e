"""A workload port's protocol from the Services that select it, when the port says nothing.

Kubernetes puts `appProtocol` on the Service port far more often than on the Pod's container
port, so a workload port nobody described (`auto`: no `appProtocol`, no protocol-named port
name) takes the protocol its Services declare for it (`ServicePort.declared`: their own
`appProtocol` or port name, never their `http1` default).  Only when they agree: two Services
that declare different protocols for one workload port leave it `auto` (sniffed), as neither
can be right for the other's clients.  The workload's own declaration always wins.

This runs once per compilation after the Service ports are derived (they read the proxies'
labels) and before the plugins (the `mtls` and `authorization` plugins read the protocols).
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import InboundPort, Key, Proxy, ServicePort


def declared_by_services(services: tuple[ServicePort, ...]) -> dict[tuple[Key, int], str]:
    """(workload, port) -> the one protocol its Services declare ("" when they disagree)."""
    out: dict[tuple[Key, int], str] = {}
    for sp in services:
        if not sp.declared:
            continue
        for e in sp.members:  # (out by readiness too: its own side, ADR 0116)
            k = ((e.metadata.namespace, e.metadata.workload), e.port)
            have = out.get(k)
            out[k] = sp.declared if have in (None, sp.declared) else ""
    return out


def with_service_protocols(proxies: tuple[Proxy, ...],
                           services: tuple[ServicePort, ...]) -> tuple[Proxy, ...]:
    """`proxies`, each `auto` inbound port given its Services' declared protocol (a proxy
    with nothing to change is the same object)."""
    declared = declared_by_services(services)
    if not declared:
        return proxies
    out: list[Proxy] = []
    for proxy in proxies:
        ports = tuple(
            InboundPort(p.port, p.target_port, declared.get((proxy.key, p.port)) or "auto")
            if p.protocol == "auto" else p for p in proxy.inbound)
        out.append(proxy if ports == proxy.inbound else replace(proxy, inbound=ports))
    return tuple(out)


__all__ = ["declared_by_services", "with_service_protocols"]
