"""The HTTP/2 abuse budgets alone: frame headers counted off the byte stream (split anywhere),
token buckets with an injected clock, credits for requests and sent DATA, the unread-ACK limit,
and premature resets."""

from __future__ import annotations

import pytest
from tests.support import h2raw

from tulle.dataplane.protocols.h2guard import (
    Abuse,
    FrameGuard,
    GuardLimits,
    ResetBudget,
)

PREFACE = h2raw.PREFACE
HEADERS = h2raw.frame(h2raw.HEADERS, 0x5, 1, b"\x82")


def guard(**kw: float) -> FrameGuard:
    return FrameGuard(GuardLimits(**kw), now=100.0)  # type: ignore[arg-type]


def kind_of(g: FrameGuard, data: bytes, now: float = 100.0, blocked: bool = False) -> str | None:
    try:
        g.scan(data, now, blocked)
    except Abuse as exc:
        return exc.kind
    return None


@pytest.mark.parametrize(("frame", "kind"), [
    (h2raw.ping(), "h2_ping_flood"),
    (h2raw.settings(), "h2_settings_flood"),
    (h2raw.settings(ack=True), "h2_settings_flood"),
    (h2raw.window_update(0, 1), "h2_window_update_flood"),
    (h2raw.priority(3), "h2_priority_flood"),
    (h2raw.frame(0x10, 0, 0, b"\0\0\0\3u=1"), "h2_priority_flood"),
    (h2raw.rst(3), "h2_reset_flood"),
    (h2raw.data(1), "h2_empty_frame_flood"),
    (h2raw.frame(h2raw.DATA, 0x8, 1, b"\x03abc"), "h2_empty_frame_flood"),  # padding only
    (h2raw.frame(0xFA, 0, 0, b"??"), "h2_unknown_frame_flood"),
])
def test_each_cheap_frame_class_has_its_own_budget(frame: bytes, kind: str) -> None:
    g = guard(burst=10)
    assert kind_of(g, PREFACE + frame * 10) is None
    assert kind_of(g, frame) == kind


@pytest.mark.parametrize("frame", [h2raw.data(1, b"x"), h2raw.data(1, end=True), HEADERS,
                                   h2raw.frame(h2raw.GOAWAY, 0, 0, b"\0" * 8)])
def test_useful_frames_are_free(frame: bytes) -> None:
    g = guard(burst=1)
    assert kind_of(g, PREFACE + frame * 50) is None


def test_frames_split_at_every_byte_are_counted_exactly() -> None:
    stream = PREFACE + h2raw.data(1, b"payload" * 3) + h2raw.ping() * 5 + HEADERS
    g = guard(burst=5)
    for b in stream:
        assert kind_of(g, bytes([b])) is None
    assert kind_of(g, h2raw.ping()[:4]) is None
    assert kind_of(g, h2raw.ping()[4:]) is None  # 5 + 1 (one credit from HEADERS) allowed
    assert kind_of(g, h2raw.ping()) == "h2_ping_flood"


def test_buckets_refill_with_time() -> None:
    g = guard(burst=10, rate=5)
    assert kind_of(g, PREFACE + h2raw.ping() * 10, now=100.0) is None
    assert kind_of(g, h2raw.ping() * 5, now=101.0) is None  # 1 s: 5 more
    assert kind_of(g, h2raw.ping(), now=101.0) == "h2_ping_flood"


def test_requests_and_sent_data_earn_credit() -> None:
    g = guard(burst=10, rate=0.001)
    g.scan(PREFACE + h2raw.window_update(0, 1) * 10, 100.0, False)
    g.scan(HEADERS * 3, 100.0, False)
    g.data_sent = 2
    assert kind_of(g, h2raw.window_update(0, 1) * 7) is None  # 3 + 2 * 2
    assert kind_of(g, h2raw.window_update(0, 1)) == "h2_window_update_flood"


def test_zero_burst_turns_the_frame_budgets_off() -> None:
    g = guard(burst=0)
    assert kind_of(g, PREFACE + h2raw.ping() * 10_000) is None


def test_acks_asked_for_while_our_writes_are_blocked_are_limited() -> None:
    g = guard(burst=1_000_000, max_queued_control=10)
    assert kind_of(g, PREFACE + h2raw.ping() * 10, blocked=True) is None
    assert kind_of(g, h2raw.ping(), blocked=False) is None  # the peer read: counting restarts
    assert kind_of(g, h2raw.ping() * 6 + h2raw.settings(ack=True) * 20, blocked=True) is None
    assert kind_of(g, h2raw.ping() * 3 + h2raw.settings() * 2,
                   blocked=True) == "h2_control_queue_flood"


def test_streams_opened_while_our_writes_are_blocked_are_limited() -> None:
    # Each is answered with a frame (a response, or a malformed one's RST_STREAM at once):
    # CVE-2019-9514's reset flood queued them without bound for a peer that reads nothing.
    g = guard(burst=1_000_000, max_queued_control=10)
    assert kind_of(g, PREFACE + HEADERS * 10, blocked=False) is None  # reading: not counted
    assert kind_of(g, HEADERS * 6 + h2raw.ping() * 4, blocked=True) is None
    assert kind_of(g, HEADERS, blocked=True) == "h2_control_queue_flood"


def test_reset_budget_is_earned_back_by_answered_streams() -> None:
    b = ResetBudget(3)
    for _ in range(3):
        b.premature()
    b.answered()
    b.premature()
    with pytest.raises(Abuse) as err:
        b.premature()
    assert err.value.kind == "h2_rapid_reset"
    unlimited = ResetBudget(0)
    for _ in range(1000):
        unlimited.premature()
