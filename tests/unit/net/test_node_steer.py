"""`tulle iptables node`'s ruleset, rendered without root (ADR 0047): one DNAT per pod matched
by interface and source, one jump, and a clean that names only our chain."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence

import pytest

from tulle.net import node_steer
from tulle.net.iptables_run import InterceptionError
from tulle.net.node_steer import PodSteer, check_pods, devices_in, parse_pod, restore_input

A = PodSteer(ipaddress.IPv4Address("10.232.0.2"), 15001, "p1")
B = PodSteer(ipaddress.IPv4Address("10.232.0.3"), 15002, "p2")


def test_apply_renders_one_dnat_per_pod_by_interface_and_source() -> None:
    assert restore_input([A, B], "") == (
        "*nat\n"
        ":TULLE_NODE - [0:0]\n"
        "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p tcp -j DNAT --to-destination 127.0.0.1:15001\n"
        "-A TULLE_NODE -i p2 -s 10.232.0.3/32 -p tcp -j DNAT --to-destination 127.0.0.1:15002\n"
        "-A PREROUTING -j TULLE_NODE\n"
        "COMMIT\n"
        "*raw\n"
        ":TULLE_NODE_GUARD - [0:0]\n"
        "-A TULLE_NODE_GUARD -i p1 -d 127.0.0.0/8 -j DROP\n"
        "-A TULLE_NODE_GUARD -i p2 -d 127.0.0.0/8 -j DROP\n"
        "-A PREROUTING -j TULLE_NODE_GUARD\n"
        "COMMIT\n")


def test_apply_again_replaces_the_jump_instead_of_adding_one() -> None:
    saved = ("*nat\n:PREROUTING ACCEPT [0:0]\n:TULLE_NODE - [0:0]\n-A PREROUTING -j TULLE_NODE\n"
             "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p tcp -j DNAT --to-destination "
             "127.0.0.1:15001\nCOMMIT\n")
    text = restore_input([B], saved)
    assert text.splitlines()[1] == "-D PREROUTING -j TULLE_NODE"
    assert text.count("-A PREROUTING -j TULLE_NODE\n") == 1 and "p1" not in text
    assert devices_in(saved) == ["p1"]


def test_clean_removes_only_our_chain_and_jump() -> None:
    saved = ("*nat\n:TULLE_NODE - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j TULLE_NODE\n"
             "-A PREROUTING -j OTHER\nCOMMIT\n")
    assert restore_input(None, saved) == (
        "*nat\n-D PREROUTING -j TULLE_NODE\n-F TULLE_NODE\n-X TULLE_NODE\nCOMMIT\n"
        "*raw\nCOMMIT\n")
    assert restore_input(None, "") == "*nat\nCOMMIT\n*raw\nCOMMIT\n"


@pytest.mark.parametrize(("text", "error"), [
    ("10.232.0.2", "use ADDRESS=PORT"),
    ("pod-a=15001", "not an IP address"),
    ("fd00::1=15001", "IPv4 only"),
    ("127.0.0.1=15001", "cannot be a pod's address"),
    ("10.232.0.2=0", "not a port"),
    ("10.232.0.2=70000", "not a port"),
    ("10.232.0.2=x", "not a port"),
])
def test_bad_pods_are_refused_with_the_option_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        parse_pod(text)
    assert str(info.value).startswith("--pod: ")


def test_two_pods_on_one_port_or_one_address_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="each pod needs agent ports of its own"):
        check_pods([A, PodSteer(B.address, A.port, "p2")])
    with pytest.raises(ValueError, match="given twice"):
        check_pods([A, PodSteer(A.address, 15009, "p2")])
    with pytest.raises(ValueError, match="bad interface name"):
        check_pods([PodSteer(A.address, 1, "p1 -j ACCEPT")])


def _route(stdout: str, code: int = 0) -> node_steer.Runner:
    def runner(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        assert list(argv[:4]) == ["ip", "-o", "-4", "route"]
        return subprocess.CompletedProcess(list(argv), code, stdout, "no route" if code else "")
    return runner


def test_the_pods_interface_comes_from_the_route_and_a_local_address_is_refused() -> None:
    ip = ipaddress.IPv4Address("10.232.0.2")
    assert node_steer.device_of(ip, _route("10.232.0.2 dev p7 src 169.254.1.1 uid 0")) == "p7"
    with pytest.raises(InterceptionError, match="this namespace's own"):
        node_steer.device_of(ip, _route("local 10.232.0.2 dev lo src 10.232.0.2 uid 0"))
    with pytest.raises(InterceptionError, match="no route"):
        node_steer.device_of(ip, _route("", 2))


def test_an_agent_pods_inbound_is_steered_from_every_other_interface_after_the_outbound() -> None:
    c = PodSteer(ipaddress.IPv4Address("10.232.0.4"), 15003, "p3", inbound=15103)
    text = restore_input([A, c], "", ["eth0", "p9"])
    nat = text.split("*raw")[0].splitlines()
    rules = [line for line in nat if line.startswith("-A TULLE_NODE ")]
    assert rules == [
        "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p tcp -j DNAT --to-destination 127.0.0.1:15001",
        "-A TULLE_NODE -i p3 -s 10.232.0.4/32 -p tcp -j DNAT --to-destination 127.0.0.1:15003",
        "-A TULLE_NODE -i eth0 -d 10.232.0.4/32 -p tcp -j DNAT --to-destination 127.0.0.1:15103",
        "-A TULLE_NODE -i p9 -d 10.232.0.4/32 -p tcp -j DNAT --to-destination 127.0.0.1:15103"]
    # route_localnet is on for the uplinks too: they are guarded as well.
    assert [line.split()[3] for line in text.splitlines()
            if line.startswith("-A TULLE_NODE_GUARD")] == ["p1", "p3", "eth0", "p9"]
    assert devices_in(text.replace("*raw", "")) == ["p1", "p3", "eth0", "p9"]
    assert parse_pod("10.232.0.4=15003:15103") == PodSteer(c.address, 15003, inbound=15103)
    with pytest.raises(ValueError, match="not a port"):
        parse_pod("10.232.0.4=15003:")
    with pytest.raises(ValueError, match="agent ports of its own"):
        check_pods([A, PodSteer(c.address, 15003, "p3", inbound=15001)])


def test_uplinks_are_every_interface_but_loopback_and_the_served_pods() -> None:
    def runner(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 0, (
            "1: lo: <LOOPBACK,UP> mtu 65536\n"
            "2: eth0@if7: <BROADCAST,UP> mtu 1500\n"
            "3: p1@if2: <BROADCAST,UP> mtu 1500\n"
            "4: p9@if2: <BROADCAST,UP> mtu 1500\n"), "")
    assert node_steer.uplinks([A], runner) == ["eth0", "p9"]


def test_resolving_the_interface_keeps_the_inbound_port() -> None:
    pod = parse_pod("10.232.0.4=15003:15103")
    (got,) = node_steer.resolve([pod], _route("10.232.0.4 dev p5 src 169.254.1.1 uid 0"))
    assert got == PodSteer(pod.address, 15003, "p5", 15103)


def test_a_pods_dns_goes_to_the_agents_resolver_before_its_tcp_catch_all() -> None:
    """ADR 0050: UDP and TCP 53 from the pod, by interface and source (the source is kept:
    the resolver answers the pod's bare names by it), ahead of the pod's outbound rule,
    which would take TCP 53 to its outbound listener."""
    rules = [line for line in restore_input([A], "", (), 15053).splitlines()
             if line.startswith("-A TULLE_NODE ")]
    assert rules == [
        "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p udp --dport 53 -j DNAT --to-destination "
        "127.0.0.1:15053",
        "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p tcp --dport 53 -j DNAT --to-destination "
        "127.0.0.1:15053",
        "-A TULLE_NODE -i p1 -s 10.232.0.2/32 -p tcp -j DNAT --to-destination 127.0.0.1:15001"]


def test_the_agents_own_dials_to_a_served_pods_alias_go_to_its_inbound_listener() -> None:
    """ADR 0050: one nat OUTPUT rule per pod served inbound, from its loopback alias to its
    inbound listener; none (and no chain) when no pod is served inbound; clean removes it."""
    c = PodSteer(ipaddress.IPv4Address("10.232.0.4"), 15003, "p3", inbound=15103)
    text = restore_input([A, c], "", ["eth0"])
    assert [line for line in text.splitlines() if "TULLE_NODE_OUT" in line] == [
        ":TULLE_NODE_OUT - [0:0]",
        "-A TULLE_NODE_OUT -d 127.1.58.255/32 -p tcp -j DNAT --to-destination 127.0.0.1:15103",
        "-A OUTPUT -j TULLE_NODE_OUT"]
    assert "TULLE_NODE_OUT" not in restore_input([A], "")
    saved = "*nat\n:TULLE_NODE_OUT - [0:0]\n-A OUTPUT -j TULLE_NODE_OUT\nCOMMIT\n"
    for again in (restore_input([A], saved), restore_input(None, saved)):
        assert "-D OUTPUT -j TULLE_NODE_OUT\n-F TULLE_NODE_OUT\n-X TULLE_NODE_OUT\n" in again
