"""The proxy stream's framing: messages survive any split of the byte stream; garbage is refused."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.proxyconfig.delta import diff
from tulle.proxyconfig.model import Cluster, Listener, ProxyConfig
from tulle.proxyconfig.stream import (
    HELLO_MAX_FRAME,
    MAX_FRAME,
    Ack,
    DeltaMsg,
    FrameDecoder,
    FrameError,
    Hello,
    Nack,
    Ping,
    Snapshot,
    WorkloadInfo,
    apply_checked,
    decode_delta,
    decode_snapshot,
    encode,
    snapshot_message,
)
from tulle.proxyconfig.validate import ConfigError, validate

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


# -- the envelope first, the payload on its own ------------------------------------------------

def _frame(doc: dict[str, object]) -> bytes:
    body = msgspec.json.encode(doc)
    return len(body).to_bytes(4, "big") + body


def test_a_config_with_an_unknown_field_still_decodes_as_a_snapshot_envelope() -> None:
    """The frame decoder looks at the envelope only: a newer control plane's field is a NACK
    with its path later, not a frame error that drops the stream."""
    cfg = msgspec.to_builtins(ProxyConfig(version="v9"))
    cfg["settings"]["brand_new"] = {"x": 1}
    (msg,) = FrameDecoder().feed(_frame({"type": "snapshot", "version": "v9", "config": cfg,
                                         "a_future_envelope_field": True}))
    assert isinstance(msg, Snapshot) and msg.version == "v9"
    with pytest.raises(ConfigError) as err:
        decode_snapshot(msg.config)
    assert [str(e) for e in err.value.errors] == ["settings.brand_new: unknown field"]


def test_every_error_of_a_snapshot_is_reported_with_its_path() -> None:
    cfg = msgspec.to_builtins(ProxyConfig(version="v1"))
    cfg["listeners"] = [{"name": "in", "port": 99999, "sniff": True}]
    cfg["settings"]["overload"]["reject_requests_percent"] = "high"
    with pytest.raises(ConfigError) as err:
        decode_snapshot(msgspec.Raw(msgspec.json.encode(cfg)))
    assert sorted(e.path for e in err.value.errors) == [
        "listeners[0].port", "listeners[0].sniff", "settings.overload.reject_requests_percent"]


def test_fields_marked_optional_are_dropped_and_recorded_not_nacked() -> None:
    cfg = msgspec.to_builtins(ProxyConfig(version="v1"))
    cfg["settings"]["brand_new"] = 5
    cfg["listeners"] = [{"name": "a", "port": 1, "labels": {}}, {"name": "b", "port": 2}]
    cfg["listeners"][1]["labels"] = {"x": "y"}
    raw = msgspec.Raw(msgspec.json.encode(cfg))
    ignored: list[str] = []
    got = decode_snapshot(raw, ["settings.brand_new", "listeners[].labels"], ignored)
    assert [x.name for x in got.listeners] == ["a", "b"]
    assert ignored == ["settings.brand_new", "listeners[0].labels", "listeners[1].labels"]
    # Marked optional elsewhere is no excuse: the path must match.
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.labels: unknown field"):
        decode_snapshot(raw, ["settings.brand_new", "clusters[].labels"])


def test_not_json_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="config: not a JSON document"):
        decode_snapshot(msgspec.Raw(b"[1, 2"))


def test_delta_errors_name_the_resource_by_name() -> None:
    d = diff(ProxyConfig(version="v1"), ProxyConfig(
        version="v2", clusters=[Cluster(name="web")], listeners=[
            Listener(name="out", port=1, cluster="web")]))
    doc = msgspec.to_builtins(d)
    doc["listeners"]["upsert"][0]["max_connections"] = -1
    doc["clusters"]["upsert"][0]["zone_affinity"] = "strict"
    doc["settings"] = {"workers": "two"}
    (msg,) = FrameDecoder().feed(_frame({"type": "delta", "delta": doc}))
    assert isinstance(msg, DeltaMsg)
    d = decode_delta(msg.delta)  # the envelope of the delta: resources are checked on apply
    with pytest.raises(ConfigError) as err:
        apply_checked(ProxyConfig(version="v1"), d)
    assert sorted(str(e) for e in err.value.errors) == [
        "clusters[name=web].zone_affinity: unknown field",
        "listeners[name=out].max_connections: must be >= 0, got -1",
        "settings.workers: expected an integer, got str",
    ]
    # The same delta with the unknown field marked optional applies; the bad values still fail.
    doc["listeners"]["upsert"][0]["max_connections"] = 3
    doc["settings"] = None
    ignored: list[str] = []
    ok = decode_delta(msgspec.Raw(msgspec.json.encode(doc)), ["clusters[].zone_affinity"],
                      ignored)
    assert ignored == ["clusters[name=web].zone_affinity"]
    assert apply_checked(ProxyConfig(version="v1"), ok).listeners[0].max_connections == 3


def test_a_delta_envelope_that_is_not_a_delta_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="delta"):
        decode_delta(msgspec.Raw(b'{"version": 3}'))


def test_a_snapshot_frame_is_the_same_bytes_an_older_proxy_decodes() -> None:
    """Envelope fields added since (`optional`) are left out when empty, so a proxy from
    before this change still gets exactly the frame it expects."""
    cfg = ProxyConfig(version="v1", listeners=[Listener(name="out", port=1, cluster="web")],
                      clusters=[Cluster(name="web")])
    expected = msgspec.json.encode({"type": "snapshot", "version": "v1",
                                    "config": msgspec.to_builtins(cfg)})
    assert encode(snapshot_message(cfg))[4:] == expected
    assert encode(Nack(version="v1", reason="r"))[4:] == (
        b'{"type":"nack","version":"v1","reason":"r"}')


def test_errors_inside_delta_units_name_the_resource_as_if_it_came_whole() -> None:
    base = validate({"version": "v1", "clusters": [
        {"name": "web", "endpoints": [{"address": "127.0.0.1", "port": 1}]}],
        "route_tables": [{"name": "out", "virtual_hosts": [{"name": "h"}]}]})
    doc = {"version": "v2", "base_version": "v1",
           "virtual_hosts": [{"route_table": "out", "upsert": [
               {"name": "h", "domains": "x"}, {"name": "g", "rules": [{"timeout_ms": -1}]}]}],
           "endpoints": [{"cluster": "web", "endpoints": [{"address": "127.0.0.1",
                                                           "port": 0}]}]}
    d = decode_delta(msgspec.Raw(msgspec.json.encode(doc)))
    with pytest.raises(ConfigError) as err:
        apply_checked(base, d)
    assert sorted(str(e) for e in err.value.errors) == [
        "clusters[name=web].endpoints[0].port: must be >= 1, got 0",
        "route_tables[name=out].virtual_hosts[name=g].rules[0].timeout_ms: must be >= 0, got -1",
        "route_tables[name=out].virtual_hosts[name=h].domains: expected a list, got str",
    ]
