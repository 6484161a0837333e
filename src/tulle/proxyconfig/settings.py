"""The `settings` section of the proxy configuration: process-wide limits, timeouts, the
overload guard and path normalisation.

Kept apart from `model.py` because the section is self-contained (nothing in it names a
listener, a route or a cluster) and it is the largest block of knobs; `model.ProxyConfig`
holds it and `model` re-exports its names.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tulle.proxyconfig.values import Base as _Base
from tulle.proxyconfig.values import Millis

Percent = Annotated[int, Meta(ge=1, le=100)]

SUBSCRIBED_DRAIN_PROPAGATION_MS = 1000
"""`settings.drain_propagation_ms` unset: a second, fifty times the 9-17 ms the callers took to
get the new endpoints on loopback (ADR 0108), room for a control plane pushing to many proxies
on a busy host, and short enough for tests, `tulle demo`'s Ctrl-C and rolling restarts (Istio
waits 5 s, which also covers kube-proxy and load balancers Tulle's callers do not go through)."""


class Overload(_Base, frozen=True, kw_only=True):
    """The overload guard (Envoy's overload manager): resource monitors and the actions taken as
    their pressure (used / limit, the highest of them, in percent) crosses a threshold.  Admin
    is exempt."""

    file_descriptors: bool = True
    """Monitor open file descriptors against the process's soft RLIMIT_NOFILE."""
    max_rss_bytes: Annotated[int, Meta(ge=0)] = 0
    """Monitor resident memory (RSS) against this limit; 0 turns the memory monitor off."""
    reject_requests_percent: Percent = 90
    """Pressure at which new HTTP requests get 503 (flag OL) and keep-alive is disabled."""
    stop_accepting_percent: Percent = 95
    """Pressure at which new downstream connections are closed at once (RST); implies the
    reject action."""
    hysteresis_percent: Annotated[int, Meta(ge=0, le=50)] = 5
    """A state is left only when the pressure falls this many points below its threshold."""
    sample_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000
    """How often the monitors are sampled."""


class PathNormalization(_Base, frozen=True, kw_only=True):
    """How request paths are made canonical before routing (Istio's `pathNormalization`,
    Envoy's `normalize_path` / `merge_slashes` / `path_with_escaped_slashes_action`).

    The normalised path is what routing (and later authorization) matches and what the
    upstream receives, so the proxy and the application never disagree about which resource a
    request names.  The query string is never changed."""

    normalize: bool = True
    """RFC 3986 section 6.2.2: decode percent-encoded unreserved characters, upper-case the hex
    of the other escapes, remove `.` and `..` segments (`..` above the root stays at `/`).  A
    fragment (`#`), `%00` or a malformed escape gets 400.  false forwards paths exactly as
    received (Istio `NONE`) and the other fields are ignored."""
    merge_slashes: bool = False
    """Merge adjacent slashes (`/a//b` -> `/a/b`) after the segments are resolved (Istio
    `MERGE_SLASHES`)."""
    escaped_slashes: Literal["keep", "reject", "decode"] = "keep"
    """`%2F` and `%5C` (any case): `keep` them opaque inside their segment (upper-cased, as
    Envoy's KEEP_UNCHANGED), `reject` the request with 400, or `decode` them to `/` and `\\`
    before segments are resolved (Istio `DECODE_AND_MERGE_SLASHES` with `merge_slashes`)."""
    backslash: Literal["slash", "reject", "keep"] = "slash"
    """A `\\` in the path: read as `/` (`slash`, what Envoy's normalize_path does), answered
    with 400 (`reject`), or kept as an ordinary character (`keep`)."""


class Settings(_Base, frozen=True, kw_only=True):
    """Process-wide limits and timeouts.  Each is documented with its default in the reference."""

    max_request_header_bytes: Annotated[int, Meta(ge=1024, le=1_048_576)] = 65_536
    """Request line plus headers; larger gets 431."""
    max_response_header_bytes: Annotated[int, Meta(ge=1024, le=1_048_576)] = 65_536
    header_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    """A request head not complete this long after its first byte (or after the connection
    opened) gets 408 and the connection is closed (slowloris)."""
    idle_timeout_ms: Millis = 300_000
    """Idle downstream keep-alive connections are closed after this long; 0 disables."""
    request_timeout_ms: Millis = 15_000
    """Default whole-request timeout (first request byte to last response byte); 0 disables."""
    drain_timeout_ms: Millis = 15_000
    """On SIGTERM: how long in-flight requests may take before connections are closed."""
    drain_propagation_ms: Annotated[int, Meta(ge=0, le=600_000)] | None = None
    """On SIGTERM, before the drain: how long the listeners keep accepting and serving (each
    HTTP/1 response says `Connection: close`, HTTP/2 connections get a GOAWAY that lets their
    streams go on) while the callers learn the proxy left their endpoints (Istio's
    `terminationDrainDuration`, ADR 0113).  Unset: 1000 for a proxy fed by a control plane
    that took its `Draining`, 0 for a `--config` proxy; 0: none.  A second SIGTERM / SIGINT
    ends it."""
    buffer_high_water_bytes: Annotated[int, Meta(ge=4096, le=67_108_864)] = 65_536
    """Per-direction buffering above which the sending side stops being read."""
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    """Worker processes sharing the listeners with SO_REUSEPORT."""
    generate_request_id: bool = True
    """Set `x-request-id` when a request has none."""
    tcp_idle_timeout_ms: Millis = 3_600_000
    """An opaque TCP relay with no bytes either way this long is closed on both sides (Envoy's
    tcp_proxy `idle_timeout`, same default: 1 h); 0 disables.  An HTTP/1.1 upgrade tunnel
    (after 101) is such a relay too."""
    max_connections: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    """Open downstream connections of the process (each worker), all listeners together, admin
    excluded; one more is closed at once (RST) and counted.  0 means no limit."""
    overload: Overload = msgspec.field(default_factory=Overload)
    """Resource monitors and overload actions."""
    path_normalization: PathNormalization = msgspec.field(default_factory=PathNormalization)
    """How request paths are normalised before routing; see `PathNormalization`."""
    http2_max_concurrent_streams: Annotated[int, Meta(ge=1, le=2_147_483_647)] = 100
    """Downstream SETTINGS_MAX_CONCURRENT_STREAMS; streams past it get REFUSED_STREAM.  Also
    bounds the upstream connections one client connection can have opening at once."""
    http2_max_premature_resets: Annotated[int, Meta(ge=0, le=1_000_000)] = 100
    """Streams a client may reset before their response began (rapid reset), or open past
    the concurrency limit, beyond those it got answered; more is GOAWAY(ENHANCE_YOUR_CALM).
    0: no limit."""
    http2_control_frame_burst: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    """Per connection and class (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty
    DATA, unknown types): frames allowed at once; more is GOAWAY(ENHANCE_YOUR_CALM).
    0: no frame budgets."""
    http2_control_frame_rate: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """Frames per second each class's budget regains."""
    http2_max_queued_control_frames: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    """PING/SETTINGS needing an ACK, and HEADERS, a client may send while not reading our
    writes (each is answered with a frame).  0: no limit."""
    tls_handshake_timeout_ms: Millis = 10_000
    """A downstream TLS handshake not done this long after accept is aborted and counted
    (Envoy's `transport_socket_connect_timeout`, which has no default; ours is the header
    timeout's).  The connection counts against the connection caps from accept.  0: the event
    loop's own default (60 s)."""
    max_header_count: Annotated[int, Meta(ge=1, le=10_000)] = 100
    """HTTP/1 header fields in one request or response head (and in one trailer section);
    a request over it gets 431, an upstream response 502."""
    max_chunk_extension_bytes: Annotated[int, Meta(ge=16, le=1_048_576)] = 4096
    """HTTP/1 chunk extensions (`;name=value` after a chunk size); a request over it gets
    400, an upstream response 502."""
    max_trailer_bytes: Annotated[int, Meta(ge=256, le=1_048_576)] = 16_384
    """HTTP/1 trailer section of a chunked body; a request over it gets 431, an upstream
    response 502."""
