"""What the L4 tests share: the flow log's lines as they are logged, both relay engines, and a
proxy config with one opaque TCP listener in front of one origin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tulle.dataplane.network import relay


class FlowLines(logging.Handler):
    """Each flow-log line (JSON) as a dict, in a queue."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.put_nowait(json.loads(record.getMessage()))


@contextlib.contextmanager
def flow_lines(logger_name: str) -> Iterator[FlowLines]:
    """The lines logger `logger_name` logs at INFO while the block runs."""
    handler = FlowLines()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def use_engine(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Relay with `splice` (the default) or `copy`."""
    if name == "copy":
        monkeypatch.setattr(relay, "USE_SPLICE", False)
    return name


def tcp_config(port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    """Listener `db` (opaque TCP, inbound, these network filters) to an origin on `port`."""
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "db", "port": 0, "protocol": "tcp", "cluster": "backend",
                       "direction": "inbound", "network_filters": filters}],
        "clusters": [{"name": "backend", "protocol": "tcp",
                      "endpoints": [{"address": "127.0.0.1", "port": port}]}],
    }
