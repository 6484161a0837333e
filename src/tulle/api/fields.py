"""Constrained field types shared by every kind: names, ports, durations, header names, labels.

Each type checks its value with a reason a person can act on (`must be a DNS-1123 label ...,
got "Web_1"`) and publishes the same constraint in the JSON Schema (`pattern`, `maxLength`), so
the CRDs generated later enforce what the API enforces.  The regular expressions are those of
Kubernetes and Gateway API, written in the subset both Python and ECMA-262 understand.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from tulle.api.errors import field_error, quote


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: typing caches Annotated
class Checked:
    """Annotated metadata: run `check` after the base type validated; add `schema` to the JSON Schema."""

    check: Callable[[Any], Any]
    schema: Mapping[str, Any] = field(default_factory=dict)
    plain: bool = False
    """Replace the base type's validation instead of following it (`schema` is then the whole schema)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        if self.plain:
            return core_schema.no_info_plain_validator_function(self.check)
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, cs: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        if self.plain:
            return dict(self.schema)
        js = handler(cs)
        js.update(self.schema)
        return js


def pattern(regex: str, what: str, *, max_length: int, min_length: int = 1) -> Checked:
    """A string of `min_length..max_length` characters that fully matches `regex`."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if len(value) < min_length:
            raise ValueError(
                "must not be empty" if min_length == 1 else f"must be at least {min_length} characters"
            )
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters, got {len(value)}")
        if not compiled.fullmatch(value):
            raise ValueError(f"must be {what}, got {quote(value)}")
        return value

    schema: dict[str, Any] = {"pattern": regex, "maxLength": max_length}
    if min_length:
        schema["minLength"] = min_length
    return Checked(check, schema)


# --- Kubernetes names ------------------------------------------------------------------------

DNS1123_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1035_LABEL_RE = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

SUBDOMAIN_WHAT = 'a DNS-1123 subdomain (lowercase letters, digits, "-" and ".", alphanumeric at both ends)'
LABEL_WHAT = 'a DNS-1123 label (lowercase letters, digits and "-", alphanumeric at both ends)'
DNS1035_WHAT = 'a DNS-1035 label (lowercase letters, digits and "-", starting with a letter)'

DNSSubdomain = Annotated[str, pattern(DNS1123_SUBDOMAIN_RE, SUBDOMAIN_WHAT, max_length=253)]
DNSLabel = Annotated[str, pattern(DNS1123_LABEL_RE, LABEL_WHAT, max_length=63)]
DNS1035Label = Annotated[str, pattern(DNS1035_LABEL_RE, DNS1035_WHAT, max_length=63)]

_QNAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN_C = re.compile(DNS1123_SUBDOMAIN_RE)


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes qualified name (`[prefix/]name`), or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN_C.fullmatch(prefix)):
        return f"prefix of {quote(key)} must be {SUBDOMAIN_WHAT}"
    if not name or len(name) > 63 or not _QNAME_RE.fullmatch(name):
        return (
            f"{quote(key)} must be a qualified name: at most 63 letters, digits, '-', '_' or '.', "
            "alphanumeric at both ends, with an optional DNS subdomain prefix and '/'"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63 or not _QNAME_RE.fullmatch(value):
        return (
            f"label value {quote(value)} must be empty or at most 63 letters, digits, '-', '_' or '.', "
            "alphanumeric at both ends"
        )
    return None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        problem = qualified_name_problem(key) or label_value_problem(value)
        if problem:
            raise field_error((key,), problem)
    return labels


def _check_annotation_keys(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        problem = qualified_name_problem(key)
        if problem:
            raise field_error((key,), problem)
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > 262_144:
        raise ValueError(f"must total at most 256 KiB, got {size} bytes")
    return annotations


Labels = Annotated[dict[str, str], Checked(_check_labels)]
Annotations = Annotated[dict[str, str], Checked(_check_annotation_keys)]
QualifiedName = Annotated[
    str,
    Checked(lambda v: _raise_if(qualified_name_problem(v), v), {"maxLength": 317}),
]


def _raise_if(problem: str | None, value: Any) -> Any:
    if problem:
        raise ValueError(problem)
    return value


# --- Network values --------------------------------------------------------------------------

Port = Annotated[int, Field(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP", "SCTP"]


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address, got {quote(value)}") from None
    return value


IPAddress = Annotated[str, Checked(_check_ip, {"maxLength": 45})]


def _check_port_name(value: str) -> str:
    """IANA service name rules, as Kubernetes applies them to port names."""
    ok = (
        1 <= len(value) <= 15
        and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", value) is not None
        and "--" not in value
        and re.search(r"[a-z]", value) is not None
    )
    if not ok:
        raise ValueError(
            "must be an IANA service name: at most 15 lowercase letters, digits and '-', "
            f"with a letter, no '--', alphanumeric at both ends; got {quote(value)}"
        )
    return value


PortName = Annotated[str, Checked(_check_port_name, {"maxLength": 15, "minLength": 1})]


def _check_int_or_string(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a port number or a port name, got {quote(value)}")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"must be between 1 and 65535, got {value}")
        return value
    return _check_port_name(value)


IntOrPortName = Annotated[
    int | str,
    # replaces the union's own validation (which would report one error per member)
    Checked(
        _check_int_or_string,
        {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
        plain=True,
    ),
]

# --- Gateway API types -----------------------------------------------------------------------

DURATION_RE = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
Duration = Annotated[
    str,
    pattern(DURATION_RE, 'a duration such as "10s", "1m30s" or "250ms" (units h, m, s, ms)', max_length=64),
]
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


def duration_ms(value: str) -> int:
    """A Gateway API duration string in milliseconds (`"1m30s"` -> 90000)."""
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value))


HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
HeaderName = Annotated[
    str, pattern(HEADER_NAME_RE, "an HTTP header name (an RFC 7230 token)", max_length=256)
]
HOSTNAME_RE = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Hostname = Annotated[
    str,
    pattern(HOSTNAME_RE, 'a lowercase DNS name, optionally starting with "*."', max_length=253),
]
PreciseHostname = Annotated[str, pattern(DNS1123_SUBDOMAIN_RE, "a lowercase DNS name", max_length=253)]
GROUP_RE = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Group = Annotated[
    str,
    pattern(
        GROUP_RE, 'an API group (a DNS subdomain, or "" for the core group)', max_length=253, min_length=0
    ),
]
KIND_RE = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
Kind = Annotated[str, pattern(KIND_RE, "a kind name (a letter, then letters, digits or '-')", max_length=63)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253)]
SectionName = DNSSubdomain
Namespace = DNSLabel
Weight = Annotated[int, Field(ge=0, le=1_000_000)]

CORE_GROUPS = frozenset({"", "core"})
"""Both spellings of the Kubernetes core group: `""` (Gateway API) and `core` (Linkerd's docs)."""
