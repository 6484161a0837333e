"""Checks of the `telemetry` section that its types cannot express (`validate._semantic`)."""

from __future__ import annotations

from tulle.errors import FieldError
from tulle.proxyconfig.model import ProxyConfig


def otlp_endpoint_error(endpoint: str, path: str) -> FieldError | None:
    """An OTLP/HTTP base URL: `http(s)://host[:port][/prefix]`, nothing else (no user info,
    query or fragment: the proxy appends `/v1/traces`)."""
    from urllib.parse import urlsplit  # only when an endpoint is configured (ADR 0068)

    try:
        u = urlsplit(endpoint)
        port = u.port
    except ValueError as exc:
        return FieldError(path, f"not a URL: {exc}")
    if u.scheme not in ("http", "https") or not u.hostname:
        return FieldError(path, "must be http://host[:port] or https://host[:port]")
    if u.username is not None or u.password is not None or u.query or u.fragment:
        return FieldError(path, "no user info, query or fragment")
    if port == 0:
        return FieldError(path, "port must be 1-65535")
    return None


def errors(cfg: ProxyConfig) -> list[FieldError]:
    tracing = cfg.telemetry.tracing
    out: list[FieldError] = []
    if tracing is not None:
        if len(set(tracing.propagation)) != len(tracing.propagation):
            out.append(FieldError("telemetry.tracing.propagation", "duplicate format"))
        if tracing.otlp_endpoint:
            err = otlp_endpoint_error(tracing.otlp_endpoint, "telemetry.tracing.otlp_endpoint")
            if err is not None:
                out.append(err)
    return out
