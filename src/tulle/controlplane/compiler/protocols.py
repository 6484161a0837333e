"""What a Service or Workload port speaks, from what the user said about it.

A port whose protocol is known is compiled as that protocol -- an HTTP port gets a listener that
speaks only HTTP, so every byte on it goes through the HTTP stack (parser, header timeout,
routing, policies) and nothing unparsed can reach the application.  Only a port nobody
described is sniffed (`auto`).  The answer comes from, in this order (Istio's rules, Kubernetes
values):

1. `appProtocol`, when it is one of `APP_PROTOCOLS` (case-insensitive);
2. the port `name`: `<protocol>` or `<protocol>-<suffix>` for a protocol of `NAME_PREFIXES`
   (`http`, `http-web`, `grpc-api`, `tcp-db` ...);
3. the caller's default: `auto` for a workload's inbound port, `http1` for a Service port (the
   universal-mode outbound listener routes Services by Host, so only HTTP reaches them there).

An `appProtocol` the table does not know (say `example.com/custom`) says nothing and the port
name decides.  Values are listener / cluster protocols of the proxy config: `http1`, `http2`,
`tcp`.  TLS the application terminates itself (`https`, `tls`, `kubernetes.io/wss`) is opaque
to the proxy: `tcp`.
"""

from __future__ import annotations

from typing import Any, Final

APP_PROTOCOLS: Final = {
    "http": "http1", "http1": "http1", "kubernetes.io/ws": "http1", "grpc-web": "http1",
    "http2": "http2", "h2c": "http2", "kubernetes.io/h2c": "http2", "grpc": "http2",
    "tcp": "tcp", "tls": "tcp", "https": "tcp", "kubernetes.io/wss": "tcp",
    "mongo": "tcp", "mysql": "tcp", "redis": "tcp",
}
"""Recognised `appProtocol` values (IANA service names, Kubernetes `kubernetes.io/*` values,
Istio's names) -> proxy protocol."""

NAME_PREFIXES: Final = {
    "http": "http1", "grpc-web": "http1",
    "http2": "http2", "grpc": "http2",
    "tcp": "tcp", "tls": "tcp", "https": "tcp", "mongo": "tcp", "mysql": "tcp", "redis": "tcp",
}
"""Istio's port-name protocols: a name that is one of these, or starts with one and `-`."""


def port_protocol(port: dict[str, Any], default: str) -> str:
    """The proxy protocol of a Service or Workload port (see the module docstring)."""
    app = port.get("appProtocol")
    if app:
        known = APP_PROTOCOLS.get(str(app).lower())
        if known is not None:
            return known
    name = str(port.get("name") or "").lower()
    if name:
        if name in NAME_PREFIXES:
            return NAME_PREFIXES[name]
        # Longest prefix first: `grpc-web-ui` is grpc-web, not grpc.
        for prefix in sorted(NAME_PREFIXES, key=len, reverse=True):
            if name.startswith(prefix + "-"):
                return NAME_PREFIXES[prefix]
    return default
