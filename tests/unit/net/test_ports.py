"""Naming who holds a port: a listener this test opens is found, with this process."""

from __future__ import annotations

import os
import socket

from tulle.net.ports import Wanted, first_taken, holder


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
