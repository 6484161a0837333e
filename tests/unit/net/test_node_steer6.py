"""Agent mode's IPv6 side, rendered without root (ADR 0050): the served pods' IPv6 TCP and UDP
refused both ways through the node and to the node, one chain per hook, an exact clean."""

from __future__ import annotations

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
