"""HTTP/2 abuse budgets: cheap frames and premature resets, counted before they cost anything.

Why a module of its own: the attacks it stops (CVE-2019-9512 ping flood, 9515 settings flood,
9518 empty frames, the window-update and priority variants, CVE-2023-44487 rapid reset) all
send frames that are cheap to send and expensive for a pure-Python h2 to parse.  Counting them
through h2's events would mean paying h2's cost first, so `FrameGuard.scan` reads only the
9-byte frame headers of what arrived, before the bytes reach h2, and says when a budget is
blown; the codec then answers GOAWAY(ENHANCE_YOUR_CALM) without parsing the flood.

Budgets (one token bucket per frame class, per connection):

* PING, SETTINGS, PRIORITY (and PRIORITY_UPDATE), WINDOW_UPDATE, RST_STREAM, DATA without
  payload and without END_STREAM, and frame types h2 ignores (extensions) each start with
  `burst` tokens and regain `rate` per second; every request stream the peer opens (a HEADERS
  frame) adds one token to each, and every DATA frame we send adds two WINDOW_UPDATE tokens
  (a client acknowledges what it reads).  Buckets never hold more than `burst`.
* While our writes are blocked (the peer does not read), at most `max_queued_control` PINGs and
  SETTINGS needing an ACK, and HEADERS frames, may arrive: each queues at least one more frame
  for a peer that does not read -- an ACK, or a stream's answer (a malformed request's
  RST_STREAM goes out at once: 700,000 of them left 6 MB queued, CVE-2019-9514, attack audit,
  ADR 0094) -- as nghttp2's and Envoy's outbound-queue flood limits bound them (1,000 control
  frames in Envoy).  A client that reads nothing cannot have more streams than the concurrency
  limit waiting for an answer, so this does not touch a slow reader with a few requests.

Premature resets (streams the client reset before their response began, within
`PREMATURE_LIFETIME` seconds of opening, Envoy's definition) are counted by the codec with
`ResetBudget`: `limit` of them are allowed, and each answered stream earns one back (never more
than `limit`), so a connection that resets about as many streams as it gets answered lives on,
and one that only opens and resets is cut off after `limit`.

No I/O here; the clock is passed in (the event loop's monotonic time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PREMATURE_LIFETIME = 1.0
"""A reset this many seconds or more after the stream opened is not premature (Envoy's
`premature_reset_min_stream_lifetime_seconds` default)."""

# Frame types (RFC 9113 section 6; PRIORITY_UPDATE is RFC 9218).
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PUSH, _PING, _GOAWAY, _WU, _CONT = range(10)
_PRIORITY_UPDATE = 0x10
_END_STREAM: Final = 0x1
_ACK: Final = 0x1
_PADDED: Final = 0x8

# Budget classes: index into FrameGuard._tokens, and the metric kind a blown budget reports.
PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, EMPTY_DATA, UNKNOWN = range(7)
KINDS: Final = ("h2_ping_flood", "h2_settings_flood", "h2_priority_flood", "h2_window_update_flood",
         "h2_reset_flood", "h2_empty_frame_flood", "h2_unknown_frame_flood")
_CLASS_OF: Final[dict[int, int]] = {_PING: PING, _SETTINGS: SETTINGS, _PRIORITY: PRIORITY,
                             _PRIORITY_UPDATE: PRIORITY, _WU: WINDOW_UPDATE, _RST: RST_STREAM}
_KNOWN: Final = frozenset(range(10))
_NEEDS_ACK: Final = frozenset({_PING, _SETTINGS})
CONTROL_QUEUE_KIND: Final = "h2_control_queue_flood"
RAPID_RESET_KIND: Final = "h2_rapid_reset"


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """Budgets of one downstream connection (from `Settings`, once per snapshot)."""

    burst: int = 1000
    """Frames of one cheap class a connection may send at once; 0 turns the frame budgets off."""
    rate: float = 100.0
    """Tokens regained per second, per class."""
    max_queued_control: int = 1000
    """PING/SETTINGS needing an ACK, and HEADERS, while our writes are blocked; 0: no
    limit."""
    max_premature_resets: int = 100
    """See `ResetBudget`; 0: no limit."""


class Abuse(Exception):
    """A budget was blown; `kind` is the metric label, `detail` what the log says."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class FrameGuard:
    """Reads frame headers off the inbound byte stream and spends the budgets."""

    __slots__ = ("_burst", "_heads", "_heads_seen", "_last", "_max_queued", "_partial",
                 "_queued", "_rate", "_skip", "_tokens", "data_sent")

    def __init__(self, limits: GuardLimits, now: float, *, skip: int = 24) -> None:
        self._burst = float(limits.burst)
        self._rate = float(limits.rate)
        self._max_queued = limits.max_queued_control
        self._tokens = [self._burst] * len(KINDS)
        self._last = [now] * len(KINDS)
        """When each bucket was last refilled."""
        self._skip = skip
        """Bytes still to pass before the next frame header (the preface, then payloads)."""
        self._partial = b""
        """The start of a frame header split across reads."""
        self._queued = 0
        self._heads = 0
        """Request streams opened so far (each earns one token in every bucket)."""
        self._heads_seen = [0] * len(KINDS)
        """`_heads` when each bucket last took its credit."""
        self.data_sent = 0
        """DATA frames we sent since the last scan (each earns WINDOW_UPDATE tokens)."""

    def scan(self, data: bytes, now: float, write_blocked: bool) -> None:
        """Count the frames whose headers are in `data`; raise `Abuse` when a budget is blown."""
        if self._burst <= 0:
            return
        if self._partial:  # a frame header split across reads (rare): join, then scan
            data = self._partial + data
            self._partial = b""
        n = len(data)
        i = self._skip
        if i >= n:
            self._skip = i - n
            return
        counts = [0] * len(KINDS)
        heads = 0
        acks_needed = 0
        class_of = _CLASS_OF
        while i + 9 <= n:
            length = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
            typ = data[i + 3]
            if typ == _HEADERS:
                heads += 1
            elif typ == _DATA:
                flags = data[i + 4]
                if not flags & _END_STREAM and (length == 0 or (
                        flags & _PADDED and i + 9 < n and data[i + 9] >= length - 1)):
                    counts[EMPTY_DATA] += 1
            elif typ in class_of:
                counts[class_of[typ]] += 1
                if typ in _NEEDS_ACK and not data[i + 4] & _ACK:
                    acks_needed += 1
            elif typ not in _KNOWN:
                counts[UNKNOWN] += 1
            i += 9 + length
        if i < n:
            self._partial = data[i:]
            self._skip = 0
        else:
            self._skip = i - n
        if heads:
            self._heads += heads
        if any(counts):
            self._spend(counts, now)
        if self._max_queued:
            if write_blocked:
                self._queued += acks_needed + heads
                if self._queued > self._max_queued:
                    raise Abuse(CONTROL_QUEUE_KIND,
                                f"{self._queued} PING/SETTINGS/HEADERS while not reading our "
                                "writes")
            else:
                self._queued = 0

    def _spend(self, counts: list[int], now: float) -> None:
        tokens = self._tokens
        burst = self._burst
        heads = self._heads
        seen = self._heads_seen
        for k, c in enumerate(counts):
            if not c:
                continue
            # Credits earned since this bucket last spent, applied only now (no per-request cost).
            left = tokens[k] + heads - seen[k]
            seen[k] = heads
            if k == WINDOW_UPDATE and self.data_sent:
                left += 2 * self.data_sent
                self.data_sent = 0
            left = min(burst, left) - c
            if left < 0:
                # Refill lazily, only when empty: bounded by burst + elapsed * rate + burst.
                left = min(burst, left + (now - self._last[k]) * self._rate)
                self._last[k] = now
                if left < 0:
                    raise Abuse(KINDS[k], f"more than {int(burst)} {KINDS[k][3:-6]} frames "
                                          f"(+{self._rate:g}/s)")
            tokens[k] = left


class ResetBudget:
    """Premature resets of one connection (see the module docstring)."""

    __slots__ = ("_limit", "_tokens")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tokens = limit

    def answered(self) -> None:
        if self._tokens < self._limit:
            self._tokens += 1

    def premature(self) -> None:
        if not self._limit:
            return
        self._tokens -= 1
        if self._tokens < 0:
            raise Abuse(RAPID_RESET_KIND,
                        f"more than {self._limit} streams reset before their response began")
