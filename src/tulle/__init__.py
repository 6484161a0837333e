"""Tulle: a service mesh written in Python (control plane + data-plane proxies)."""

__version__ = "0.1.0"
