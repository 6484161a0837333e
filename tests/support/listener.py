"""A listener's handle made in memory from a validated proxy config, as the server makes one
(`tulle.dataplane.listeners.memory.memory_handle`, in the product tree so the micro-benchmarks
use the same one): unit tests of a driver (HTTP/1, HTTP/2, detection) feed bytes to a protocol
object built on it without a socket."""

from __future__ import annotations

from tulle.dataplane.listeners.memory import memory_handle as listener_handle

__all__ = ["listener_handle"]
