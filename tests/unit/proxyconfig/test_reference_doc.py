"""docs/reference/proxyconfig.md documents every field of the model with its real default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec import inspect as mi

from tulle.proxyconfig import health, logs, model, network, retry, telemetry, tracing
from tulle.proxyconfig.filters import (
    authz,
    fault,
    headers,
    mirror,
    paths,
    ratelimit,
    redirect,
    rewrite,
)
from tulle.proxyconfig.network import rate_limit

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "proxyconfig.md"
STRUCTS = [model.ProxyConfig, model.Node, model.Admin, model.Settings, model.Listener,
           model.Destination, model.TLSContext, model.Cluster, model.Endpoint, model.RouteTable,
           model.VirtualHost, model.RouteRule, model.RouteMatch, model.PathMatch,
           model.BackendRef, model.Overload]
STRUCTS += [model.PathNormalization]
STRUCTS += [network.SourceIP, network.ConnectionLimit, network.FlowLog]
STRUCTS += [headers.RequestHeaderModifier, headers.ResponseHeaderModifier, headers.HTTPHeader]
STRUCTS += [model.FilterChain, model.FilterChainMatch, model.Metadata, model.Identity,
            model.TrustBundle]
STRUCTS += [model.HeaderMatch, model.QueryParamMatch]
STRUCTS += [model.ClusterLimits]
STRUCTS += [authz.Authorization, authz.AuthzPolicy, authz.AuthzRule, authz.AuthzSource,
            authz.AuthzOperation, authz.AuthzHeader, network.NetworkAuthz]
STRUCTS += [redirect.RequestRedirect, rewrite.URLRewrite, paths.PathModifier]
STRUCTS += [mirror.RequestMirror]
STRUCTS += [health.OutlierDetection, health.SuccessRate, health.HealthCheck]
STRUCTS += [retry.RetryPolicy, retry.RetryBudget]
STRUCTS += [model.DNS, model.DNSHost]
STRUCTS += [fault.FaultInjection, fault.FaultDelay, fault.FaultAbort, fault.FaultHeader,
            ratelimit.RateLimit, ratelimit.LocalLimit, ratelimit.GlobalLimit,
            rate_limit.ConnectionRateLimit]
STRUCTS += [telemetry.Telemetry, telemetry.MetricsTelemetry, telemetry.PeerWorkload,
            tracing.Tracing, logs.AccessLogTelemetry, logs.FlowLogTelemetry, logs.LogSink,
            logs.LogFilter]


def _doc_tables() -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^### `(\w+)`", line)
        if m:
            current = tables.setdefault(m.group(1), {})
            continue
        m = re.match(r"^\| `(\w+)` \| [^|]*(?:\\\|[^|]*)* \| (.*?) \|", line)
        if m and current is not None:
            current[m.group(1)] = m.group(2)
    return tables


def _render(default: Any) -> str:
    if isinstance(default, msgspec.Struct):
        return "`{}`"
    if default is None:
        return "`null`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f"`{default}`" if default else '`""`'
    if isinstance(default, list):
        if default and isinstance(default[0], msgspec.Struct):
            return "`[{}]`"
        return "`" + msgspec.json.encode(default).decode().replace(",", ", ") + "`"
    return f"`{default}`"


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_every_field_is_documented_with_its_default(cls: type[msgspec.Struct]) -> None:
    doc = _doc_tables().get(cls.__name__)
    assert doc is not None, f"no section for {cls.__name__} in {DOC.name}"
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {f.encode_name: f for f in info.fields}  # the wire name (`global`)
    assert set(doc) == set(fields), f"{cls.__name__}: documented {sorted(doc)} vs {sorted(fields)}"
    for name, f in fields.items():
        if f.required:
            expected = "required"
        elif f.default is not mi.NODEFAULT:
            expected = _render(f.default)
        else:
            expected = _render(f.default_factory())
        assert doc[name] == expected, f"{cls.__name__}.{name}: doc says {doc[name]}, code {expected}"
