"""`flow_log`: an observer writing one JSON line per opaque TCP connection when it closes.

Config: `tulle.proxyconfig.network.flow_log`.  It sees only `on_close` (observers run for
every connection, rejected ones too, after the filters that decided), so it records the
verdict of the whole chain: who, where to, which endpoint, bytes each way, duration, why it
ended.  Lines go to a Python logger at INFO; the process's logging config decides where.
"""

from __future__ import annotations

import json
import logging

from tulle.dataplane.network.filter import (
    CONTINUE,
    DEFAULT_STOP_TIMEOUT,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Verdict,
)
from tulle.proxyconfig.network.flow_log import FlowLog


def _addr(a: tuple[str, int] | None) -> str | None:
    if a is None:
        return None
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def flow_entry(record: ConnectionRecord) -> dict[str, object]:
    """The fields of one flow log line."""
    f = record.facts
    return {
        "listener": f.listener,
        "direction": f.direction,
        "peer": _addr(f.peer),
        "original_destination": _addr(f.original_destination),
        "peer_identity": f.peer_identity,
        "cluster": record.cluster,
        "upstream": _addr(record.upstream),
        "bytes_received": record.bytes_received,
        "bytes_sent": record.bytes_sent,
        "duration_ms": round(record.duration * 1000, 3),
        "close_reason": record.close_reason,
        "rejected_by": record.rejected_by or None,
        "reject_reason": record.reject_reason or None,
    }


class FlowLogFilter:
    __slots__ = ("log",)
    name = "flow_log"
    stop_timeout = DEFAULT_STOP_TIMEOUT
    observer = True

    def __init__(self, cfg: FlowLog) -> None:
        self.log = logging.getLogger(cfg.logger)

    def create(self) -> FlowLogFilter:
        return self

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        return CONTINUE  # never called: an observer

    def on_close(self, record: ConnectionRecord) -> None:
        if self.log.isEnabledFor(logging.INFO):
            self.log.info("%s", json.dumps(flow_entry(record), separators=(",", ":")))


def build(cfg: FlowLog) -> FlowLogFilter:
    return FlowLogFilter(cfg)
