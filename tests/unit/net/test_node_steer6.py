"""Agent mode's IPv6 side, rendered without root (ADR 0050): the served pods' IPv6 TCP and UDP
refused both ways through the node and to the node, one chain per hook, an exact clean."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from tulle.net import node_steer6
from tulle.net.iptables_run import EXIT_ENVIRONMENT, InterceptionError
from tulle.net.node_steer6 import restore_input


def test_every_served_pods_ipv6_tcp_and_udp_is_refused_both_ways() -> None:
    assert restore_input(["p1"], "") == (
        "*filter\n"
        ":TULLE_NODE6 - [0:0]\n"
        "-A TULLE_NODE6 -i p1 -p tcp -j REJECT --reject-with tcp-reset\n"
        "-A TULLE_NODE6 -i p1 -p udp -j REJECT\n"
        "-A TULLE_NODE6 -o p1 -p tcp -j REJECT --reject-with tcp-reset\n"
        "-A TULLE_NODE6 -o p1 -p udp -j REJECT\n"
        "-A FORWARD -j TULLE_NODE6\n"
        ":TULLE_NODE6_IN - [0:0]\n"
        "-A TULLE_NODE6_IN -i p1 -p tcp -j REJECT --reject-with tcp-reset\n"
        "-A TULLE_NODE6_IN -i p1 -p udp -j REJECT\n"
        "-A INPUT -j TULLE_NODE6_IN\n"
        "COMMIT\n")


def test_apply_again_replaces_the_jumps_and_clean_removes_only_ours() -> None:
    saved = ("*filter\n:TULLE_NODE6 - [0:0]\n:TULLE_NODE6_IN - [0:0]\n:OTHER - [0:0]\n"
             "-A FORWARD -j TULLE_NODE6\n-A INPUT -j TULLE_NODE6_IN\n-A FORWARD -j OTHER\n"
             "COMMIT\n")
    again = restore_input(["p2"], saved).splitlines()
    assert again[1:2] == ["-D FORWARD -j TULLE_NODE6"] and "-D INPUT -j TULLE_NODE6_IN" in again
    assert again.count("-A FORWARD -j TULLE_NODE6") == 1 and not any("p1" in x for x in again)
    assert restore_input(None, saved) == (
        "*filter\n-D FORWARD -j TULLE_NODE6\n-F TULLE_NODE6\n-X TULLE_NODE6\n"
        "-D INPUT -j TULLE_NODE6_IN\n-F TULLE_NODE6_IN\n-X TULLE_NODE6_IN\nCOMMIT\n")
    assert restore_input(None, "") == "*filter\nCOMMIT\n"


def _ip_addr(lines: str) -> node_steer6.Runner:
    def runner(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        assert list(argv) == ["ip", "-6", "-o", "addr", "show"]
        return subprocess.CompletedProcess([], 0, lines, "")
    return runner


def test_ipv6_is_refused_wherever_an_interface_but_loopback_has_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ADR 0114: `--no-ipv6` no longer decides; the node's IPv6 does.  A veth's link-local
    address is enough to reach the pod around the agent."""
    monkeypatch.setattr(node_steer6.os.path, "exists", lambda p: True)
    lo = "1: lo    inet6 ::1/128 scope host \n"
    veth = "5: p2@if4    inet6 fe80::1/64 scope link \n"
    assert not node_steer6.needed(_ip_addr(lo))
    assert node_steer6.needed(_ip_addr(lo + veth))


def test_a_node_with_ipv6_and_no_ip6tables_is_refused_naming_both_ways_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_steer6.shutil, "which",
                        lambda t: None if t == "ip6tables-restore" else "/sbin/" + t)
    with pytest.raises(InterceptionError) as exc:
        node_steer6.check_tools()
    assert exc.value.code == EXIT_ENVIRONMENT
    assert "needs ip6tables-restore: install them, or turn IPv6 off on the node" in str(exc.value)
