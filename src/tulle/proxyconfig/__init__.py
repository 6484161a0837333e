"""The contract between the control plane and the proxies (see model.py)."""

from tulle.proxyconfig.load import dump, load_file, load_text
from tulle.proxyconfig.model import (
    Admin,
    BackendRef,
    Cluster,
    Destination,
    Endpoint,
    Listener,
    Node,
    PathMatch,
    ProxyConfig,
    RouteMatch,
    RouteRule,
    RouteTable,
    Settings,
    TLSContext,
    VirtualHost,
)
from tulle.proxyconfig.validate import ConfigError, FieldError, validate

__all__ = [
    "Admin", "BackendRef", "Cluster", "ConfigError", "Destination", "Endpoint", "FieldError",
    "Listener", "Node", "PathMatch", "ProxyConfig", "RouteMatch", "RouteRule", "RouteTable",
    "Settings", "TLSContext", "VirtualHost", "dump", "load_file", "load_text", "validate",
]
