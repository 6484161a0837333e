"""Tulle: a service mesh written in Python (control plane + data-plane proxies)."""

from tulle import native as _native

__version__ = "0.1.0"

_native.select()  # the compiled hot path, or its Python source (ADR 0052)
