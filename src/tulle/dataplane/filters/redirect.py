"""RequestRedirect at run time: answer with a redirect, build `Location` (Gateway API).

The config (`proxyconfig/filters/redirect.py`) says which parts of the request's URL change;
the module docstring there says how an unset port is derived and when it is left out.  The
factory encodes the fixed parts once per snapshot; per request the filter joins them with the
request's own (host, port, path) and answers locally with `Location` and an empty body: the
request never reaches an upstream (the stream drops any body the client still sends).

What comes from the request is held to what an `http(s)` URL can carry (ADR 0101): the scheme
only when it is `http` or `https`, in any case (an HTTP/2 client chooses `:scheme`; `javascript` was
copied), a port only in 1..65535, and a request with no host (HTTP/1.0 without `Host`) on a
rule that sets no hostname is answered 400: `http:///old/evil.com` has an empty host, which
RFC 9110 section 4.2.1 forbids and browsers read as host `old`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.filters.paths import PathEdit
from tulle.dataplane.http.filter import STOP, FilterStream, HttpFilter

if TYPE_CHECKING:
    from tulle.proxyconfig.filters.redirect import RequestRedirect
    from tulle.proxyconfig.model import RouteMatch

WELL_KNOWN = {b"http": 80, b"https": 443}
NO_HOST = b"no host to redirect to: the request names none\n"
"""The 400's body for a request without a host, on a rule that sets no hostname."""


def split_authority(authority: bytes) -> tuple[bytes, int | None]:
    """(host, port or None) of an authority: `a:8080`, `[::1]:80`, `a`.  A port outside
    1..65535 (`a:0`, `a:99999`: the codecs take five digits) is no port: None."""
    if authority[:1] == b"[":
        end = authority.find(b"]")
        host, rest = authority[: end + 1], authority[end + 1:]
        port = rest[1:] if rest[:1] == b":" else b""
    else:
        host, sep, port = authority.rpartition(b":")
        if not sep:
            return authority, None
    number = int(port) if port.isdigit() else 0
    return host, number if 0 < number < 65536 else None


class _Redirect(HttpFilter):
    __slots__ = ("host", "path", "port", "scheme", "status")

    def __init__(self, cfg: RequestRedirect, matches: list[RouteMatch]) -> None:
        self.scheme = cfg.scheme.encode() if cfg.scheme is not None else None
        self.host = cfg.hostname.encode() if cfg.hostname is not None else None
        self.port = cfg.port
        self.path = (PathEdit(cfg.path.type, cfg.path.value, matches)
                     if cfg.path is not None else None)
        self.status = cfg.status_code

    def location(self, stream: FilterStream) -> bytes | None:
        """`Location`, or None when there is no host to put in it."""
        head = stream.head
        scheme = self.scheme
        host, asked = split_authority(head.authority)
        if self.host is not None:
            host = self.host
        elif not host:
            return None
        port = self.port
        if port is None:
            # Scheme set: its well-known port; else the port the client named (the Service
            # port it called), else its scheme's default.
            port = WELL_KNOWN.get(scheme) if scheme is not None else asked
        if scheme is None:
            scheme = b"https" if head.scheme.lower() == b"https" else b"http"
        path = head.path
        if path[:1] != b"/":
            path = b"/"  # `OPTIONS *`: the server's root (`https://svc*` would name host `svc*`)
        elif self.path is not None:
            path = self.path.apply(path, head)
        if port is None or WELL_KNOWN.get(scheme) == port:
            return b"%b://%b%b" % (scheme, host, path)
        return b"%b://%b:%d%b" % (scheme, host, port, path)

    def on_request_head(self, stream: FilterStream) -> int:
        location = self.location(stream)
        if location is None:
            stream.reply(400, NO_HOST)
        else:
            stream.reply(self.status, b"", ((b"location", location),))
        return STOP


class RedirectFactory:
    """Built once per route per snapshot; the filter has no per-request state."""

    __slots__ = ("_filter",)

    name = "redirect"
    stateless = True
    filter_type: type[HttpFilter] = _Redirect

    def __init__(self, cfg: RequestRedirect, matches: list[RouteMatch]) -> None:
        self._filter = _Redirect(cfg, matches)

    def create(self) -> HttpFilter:
        return self._filter
