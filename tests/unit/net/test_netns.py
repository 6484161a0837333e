"""The namespace testbed: nodes reach each other over the bridge; crashed runs are cleaned up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.support.netns import testbed  # noqa: F401

from tulle.net import netns
from tulle.net.netns import Testbed

pytestmark = pytest.mark.netns


def namespaces() -> set[str]:
    return set(netns.list_namespaces())


def test_nodes_talk_over_the_bridge(testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24")
    b = testbed.node("10.231.0.3/24")
    listener = b.popen([sys.executable, "-c",
                        "import socket; s = socket.create_server(('10.231.0.3', 7000)); "
                        "c, _ = s.accept(); c.sendall(b'hi from b')"])
    got = a.run([sys.executable, "-c",
                 "import socket, time\n"
                 "for _ in range(100):\n"
                 "    try:\n"
                 "        s = socket.create_connection(('10.231.0.3', 7000), timeout=5); break\n"
                 "    except ConnectionRefusedError:\n"
                 "        time.sleep(0.05)\n"
                 "print(s.recv(100).decode())"])
    assert got.stdout.strip() == "hi from b"
    listener.wait(timeout=10)
    # The node's only way out is the bridge: no default route, nothing of the host's.
    assert "default" not in a.run(["ip", "route"]).stdout


def test_close_removes_namespaces_and_processes(testbed: Testbed) -> None:  # noqa: F811
    node = testbed.node("10.231.0.2/24")
    sleeper = node.popen(["sleep", "300"])
    names = {ns.name for ns in testbed.namespaces}
    assert names <= namespaces()
    testbed.close()
    assert not names & namespaces()
    assert sleeper.poll() is not None


def test_namespaces_of_a_dead_run_are_removed_at_start() -> None:
    if (why := netns.missing_requirements()) is not None:
        pytest.skip(why)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        removed = netns.remove_stale()
        assert stale in removed
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], check=False, capture_output=True)


def test_namespaces_of_a_live_run_are_kept() -> None:
    if (why := netns.missing_requirements()) is not None:
        pytest.skip(why)
    with Testbed() as tb:
        ns = tb.namespace()
        assert ns.name not in netns.remove_stale()
        assert ns.name in namespaces()
    assert ns.name not in namespaces()


def host(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def test_the_host_namespace_is_left_alone(testbed: Testbed) -> None:  # noqa: F811
    links, routes = host("ip", "-o", "link"), host("ip", "route")
    testbed.node("10.231.0.2/24")
    testbed.node("10.231.0.3/24")
    assert host("ip", "-o", "link") == links
    assert host("ip", "route") == routes
