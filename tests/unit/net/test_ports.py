"""Naming who holds a port: a listener this test opens is found, with this process.  Picking a
port for a listener: never one from the ephemeral range, never one that is taken."""

from __future__ import annotations

import os
import socket

import pytest

from tulle.net import ports
from tulle.net.ports import Wanted, first_taken, holder, unused_port


def test_the_holder_of_a_listening_port_is_this_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        who = holder(port)
        assert who is not None and who.startswith(f"pid {os.getpid()} (")
        msg = first_taken([Wanted("127.0.0.1", 0, "nothing", "--x"),
                           Wanted("127.0.0.1", port, "the admin port", "--admin-port")])
        assert msg is not None
        assert f"the admin port 127.0.0.1:{port} is already in use by pid {os.getpid()}" in msg
        assert msg.endswith("choose another port with --admin-port")
    assert first_taken([Wanted("127.0.0.1", port, "the admin port", "--admin-port")]) is None


def test_a_port_nobody_listens_on_has_no_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening
        assert holder(s.getsockname()[1]) is None


def test_an_unused_port_is_outside_the_ephemeral_range_bindable_and_new() -> None:
    low, high = ports._ephemeral_range()
    picked = [unused_port() for _ in range(200)]
    assert len(set(picked)) == 200  # each handed out once
    for port in picked[:20]:
        assert not low <= port <= high
        assert 10_000 <= port < 30_000
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        picker = ports._Picker()
        picker.ports = [busy, free]
        monkeypatch.setattr(ports, "_picker", picker)
        assert unused_port() == free
        assert picker.next == 2
