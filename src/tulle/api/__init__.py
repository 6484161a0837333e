"""The user's language: resource kinds, their validation, YAML/JSON I/O and JSON Schema.

Kubernetes shapes throughout (`apiVersion`, `kind`, `metadata`, `spec`, `status`); routes are
Gateway API's; policies attach by `spec.targetRef`.  Bad input is refused with every reason,
each with its field path (`spec.rules[0].matches[1].path.value: must start with "/"`).

    from tulle.api import parse, load_path
    result = load_path("manifests/")
    if not result.ok:
        print("\\n".join(result.error_lines()))
"""

from __future__ import annotations

from tulle.api.errors import FieldError, ValidationError
from tulle.api.io import Document, LoadResult, load_path, load_text
from tulle.api.meta import Resource
from tulle.api.registry import KindInfo, kinds, lookup, parse, resolve

__all__ = [
    "Document",
    "FieldError",
    "KindInfo",
    "LoadResult",
    "Resource",
    "ValidationError",
    "kinds",
    "load_path",
    "load_text",
    "lookup",
    "parse",
    "resolve",
]
