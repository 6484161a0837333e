"""What `tulle explain` is asked: one request from a workload to a Service, checked at the
boundary (every error names the field it is about, ADR 0036).

The request is described as the calling application would send it through its proxy's
outbound listener: `to` is the authority (`Host`) it uses -- `SERVICE[.NAMESPACE][:PORT]`,
any of the names the Service answers to -- and the path, method and headers are the request's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tulle.proxyconfig.model import HTTPMethod

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_AUTHORITY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")
_IPV6 = re.compile(r"^(\[[0-9a-f:.]{2,45}\](:[0-9]{1,5})?|[0-9a-f:.]{2,45})$")
"""`[ADDRESS][:PORT]` or a bare IPv6 address (a dual-stack Service's VIP, a pod's address); a
bare one must also have two colons (checked apart: one pattern for both was cubic)."""
MAX_TO = 253 + 6
"""A DNS name and a port: longer is refused before any pattern runs."""
_METHODS: frozenset[str] = frozenset(HTTPMethod.__args__)  # type: ignore[attr-defined]
MAX_HEADERS = 32
MAX_VALUE = 4096
MAX_PATH = 65_536
"""The proxy's request-head limit by default (`settings.max_request_header_bytes`)."""
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What llhttp refuses in a field value (a proxy answers 400): control characters but HTAB.
Taken, explain traced a request no proxy serves and echoed it to the terminal."""


class ExplainError(Exception):
    """Bad input or nothing to explain: `status` says which (400 bad input, 404 an unknown
    workload / service / port; the CLI exits 2 for both); `field` the option it is about."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ExplainRequest:
    namespace: str
    workload: str
    authority: str
    """As the application sends it (`Host`), lower-cased."""
    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """(lower-case name, value) in the order given."""

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.workload}"


def parse_header(text: str) -> tuple[str, str]:
    """`NAME=VALUE` (or `NAME:VALUE`) -> (lower-case name, value); raises `ExplainError`."""
    sep = min((i for i in (text.find("="), text.find(":")) if i > 0), default=-1)
    if sep < 0:
        raise ExplainError(400, "header", f"{text[:64]!r} is not NAME=VALUE")
    name, value = text[:sep].strip(), text[sep + 1:].strip()
    if not _TOKEN.match(name):
        raise ExplainError(400, "header", f"{name[:64]!r} is not a valid header name")
    if len(value) > MAX_VALUE or _CONTROL.search(value):
        raise ExplainError(400, f"header {name}", "value has a line break or another "
                                                  f"control character, or is over "
                                                  f"{MAX_VALUE} characters")
    return name.lower(), value


def build_request(source: str, namespace: str, to: str, path: str, method: str,
                  headers: list[str]) -> ExplainRequest:
    """The checked request; `source` is `NAME` or `NAMESPACE/NAME`."""
    ns, _, name = source.rpartition("/") if "/" in source else (namespace, "", source)
    if not name or not ns:
        raise ExplainError(400, "from", "give a workload as NAME or NAMESPACE/NAME")
    to = to.strip().lower()
    if len(to) > MAX_TO:
        raise ExplainError(400, "to", f"longer than {MAX_TO} characters")
    six = bool(_IPV6.match(to)) and (to.startswith("[") or to.count(":") >= 2)
    if not to or not (six or _AUTHORITY.match(to)):
        raise ExplainError(400, "to", f"{to[:64]!r} is not SERVICE[.NAMESPACE][:PORT], "
                                      "ADDRESS[:PORT] or [IPV6-ADDRESS][:PORT]")
    if six:
        port = to.rpartition("]:")[2] if "]:" in to else ""
    else:
        port = to.rpartition(":")[2] if ":" in to else ""
    if port and not 1 <= int(port) <= 65535:
        raise ExplainError(400, "to", f"port {port} is out of range")
    if not path.startswith("/") or len(path) > MAX_PATH or " " in path or _CONTROL.search(
            path) or "\t" in path:
        raise ExplainError(400, "path", "must start with '/' and hold no space, tab or "
                                        f"control character (at most {MAX_PATH} characters)")
    if method not in _METHODS:
        # Methods are case-sensitive (RFC 9110 9.1): the proxy answers `post` with 400.
        hint = f" (methods are case-sensitive: {method.upper()})" if method.upper() in _METHODS \
            else ""
        raise ExplainError(400, "method", f"{method[:16]!r} is not one of "
                                          f"{', '.join(sorted(_METHODS))}{hint}")
    if len(headers) > MAX_HEADERS:
        raise ExplainError(400, "header", f"at most {MAX_HEADERS} headers")
    parsed = tuple(parse_header(h) for h in headers)
    if any(n == "host" for n, _ in parsed):
        raise ExplainError(400, "header", "give the authority with --to, not a host header")
    framing = sorted({n for n, _ in parsed if n in _FRAMING})
    if framing:
        raise ExplainError(400, "header", f"{', '.join(framing)}: the request explain traces "
                                          "has no body, and its framing is the proxy's")
    return ExplainRequest(ns, name, to, path, method, parsed)
