"""Config features: named, optional sections of the contract that a proxy announces it takes.

Why: the contract grows.  A proxy built before a section existed rejects that section as an
unknown field, so a control plane must not send it one (ADR 0011).  Each section added after
the first release of the stream is a *feature* here: a name and the schema paths it owns
(`settings.overload`, `listeners[].max_connections`: `[]` stands for every item of a list).
A proxy announces the features of its build in `Hello.features`; the control plane leaves the
paths of every feature the proxy lacks out of that proxy's snapshots and deltas, and its status
says which were withheld.

Adding a section to the contract: add its field to `model.py` with a default that keeps the old
behaviour, add a `Feature` below naming the field's path, document both.  Tests check that
every path here names a field of the model, and that every field added since the stream's first
release belongs to a feature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    paths: tuple[str, ...]
    """Schema paths of the fields this feature adds; `[]` after a name means each list item."""
    summary: str


FEATURES: tuple[Feature, ...] = (
    Feature("connection-limits", ("settings.max_connections", "listeners[].max_connections"),
            "caps on open downstream connections, per process and per listener"),
    Feature("overload", ("settings.overload",),
            "the overload guard: fd and RSS monitors, 503 OL and stop-accepting thresholds"),
    Feature("path-normalization", ("settings.path_normalization",),
            "request paths made canonical before routing"),
    Feature("tcp-idle-timeout", ("settings.tcp_idle_timeout_ms",),
            "opaque TCP relays closed after an idle period"),
    Feature("http2-limits", ("settings.http2_max_concurrent_streams",
                             "settings.http2_max_premature_resets",
                             "settings.http2_control_frame_burst",
                             "settings.http2_control_frame_rate",
                             "settings.http2_max_queued_control_frames"),
            "HTTP/2 stream and control-frame limits (rapid reset, floods)"),
    Feature("tls-handshake-timeout", ("settings.tls_handshake_timeout_ms",),
            "TLS handshakes on listeners bounded in time and counted against connection caps"),
    Feature("http1-limits", ("settings.max_header_count", "settings.max_chunk_extension_bytes",
                             "settings.max_trailer_bytes"),
            "HTTP/1 header-count, chunk-extension and trailer-size limits"),
    Feature("network-filters", ("listeners[].network_filters",),
            "L4 filters (source_ip, connection_limit, flow_log) on opaque TCP listeners"),
    Feature("http-filters", ("route_tables[].virtual_hosts[].rules[].filters",),
            "HTTP filters on route rules (request and response header modifiers)"),
    Feature("cluster-limits", ("clusters[].limits",),
            "per-cluster connection, pending, request and retry limits (503 UO past them)"),
)
"""Every feature this build's contract has, in the order they were added."""

BY_NAME = {f.name: f for f in FEATURES}
SUPPORTED: tuple[str, ...] = tuple(f.name for f in FEATURES)
"""What a proxy of this build announces: it takes every section its model has."""


def lacking(announced: Iterable[str]) -> tuple[Feature, ...]:
    """The features this contract has and a proxy that announced `announced` does not."""
    have = set(announced)
    return tuple(f for f in FEATURES if f.name not in have)


def _strip(node: Any, segments: list[str]) -> None:
    if not isinstance(node, dict):
        return
    head, rest = segments[0], segments[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2])
        if isinstance(items, list) and rest:
            for item in items:
                _strip(item, rest)
        elif rest == [] and head[:-2] in node:
            del node[head[:-2]]
        return
    if not rest:
        node.pop(head, None)
    else:
        _strip(node.get(head), rest)


def withhold_config(doc: dict[str, Any], missing: Iterable[Feature]) -> None:
    """Remove the paths of `missing` from a plain `ProxyConfig` document, in place."""
    for f in missing:
        for p in f.paths:
            _strip(doc, p.split("."))


COLLECTIONS = ("listeners", "route_tables", "clusters")


def withhold_delta(doc: dict[str, Any], missing: Iterable[Feature]) -> None:
    """Remove the paths of `missing` from a plain `Delta` document, in place: a singleton's
    path applies to the singleton sent whole, a collection's to each upserted resource."""
    for f in missing:
        for p in f.paths:
            segments = p.split(".")
            head = segments[0]
            if head.endswith("[]") and head[:-2] in COLLECTIONS:
                for item in (doc.get(head[:-2]) or {}).get("upsert") or []:
                    _strip(item, segments[1:])
            elif len(segments) > 1:
                _strip(doc.get(head), segments[1:])
