"""Whether this control plane can serve a proxy at all: the stream protocol and the contract
version its hello names (ADR 0011).  Its own module so the stream server stays about sessions."""

from __future__ import annotations

from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, Hello


def negotiation_error(hello: Hello) -> str:
    """Why this control plane cannot serve a proxy that said `hello`; empty when it can."""
    if hello.protocol not in SUPPORTED_PROTOCOLS:
        speaks = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOLS))
        return (f"unsupported stream protocol version {hello.protocol}: this control plane "
                f"speaks {speaks} (current {PROTOCOL_VERSION})")
    if hello.api_versions and CONFIG_API_VERSION not in hello.api_versions:
        return (f"the proxy decodes config versions {', '.join(hello.api_versions)}; this "
                f"control plane compiles {CONFIG_API_VERSION}")
    return ""
