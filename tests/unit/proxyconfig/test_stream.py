"""The proxy stream's framing: messages survive any split of the byte stream; garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import (
    HELLO_MAX_FRAME,
    MAX_FRAME,
    Ack,
    FrameDecoder,
    FrameError,
    Hello,
    Nack,
    Ping,
    WorkloadInfo,
    encode,
    snapshot_message,
)

MESSAGES = [
    Hello(workload=WorkloadInfo(name="web-0", namespace="shop", labels={"app": "web"})),
    snapshot_message(ProxyConfig(version="v1")),
    Ack(version="v1"),
    Nack(version="v2", reason="listeners[0].port: must be <= 65535"),
    Ping(),
]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_of_the_stream_yields_the_same_messages(cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    dec = FrameDecoder()
    got = []
    pos = 0
    for c in cuts:
        got += dec.feed(stream[pos:pos + c])
        pos += c
    got += dec.feed(stream[pos:])
    assert got == MESSAGES


def test_oversized_and_undecodable_frames_are_refused() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder(max_frame=10).feed((11).to_bytes(4, "big") + b"x" * 11)
    with pytest.raises(FrameError, match="undecodable"):
        FrameDecoder().feed((7).to_bytes(4, "big") + b'{"a":1}')


def test_the_bound_is_refused_at_the_length_prefix_and_can_be_raised_after_hello() -> None:
    dec = FrameDecoder(max_frame=HELLO_MAX_FRAME)
    with pytest.raises(FrameError, match="exceeds the 65536 byte limit"):
        dec.feed((MAX_FRAME).to_bytes(4, "big"))  # nothing of the frame needed to refuse it
    dec = FrameDecoder(max_frame=HELLO_MAX_FRAME)
    hello = encode(Hello(workload=WorkloadInfo(name="web-0")))
    (msg,) = dec.feed(hello)
    assert isinstance(msg, Hello)
    dec.max_frame = MAX_FRAME
    big = encode(Nack(version="v1", reason="x" * (HELLO_MAX_FRAME + 1)))
    (msg,) = dec.feed(big)
    assert isinstance(msg, Nack) and len(msg.reason) == HELLO_MAX_FRAME + 1
