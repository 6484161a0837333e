"""The fake transport for driver tests: the in-memory transport the micro-benchmark uses too
(`tulle.dataplane.listeners.memory`, kept in the product tree so the benchmark need not import
the tests)."""

from __future__ import annotations

from tulle.dataplane.listeners.memory import MemoryTransport as FakeTransport

__all__ = ["FakeTransport"]
