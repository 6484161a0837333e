"""A connection a pod holds open across a config change, for the end-to-end tests of what a
swap does to open connections (ADR 0127).

`HELD` is a script run inside a pod namespace (`held.py KIND HOST PORT`, KIND `tcp`, `http`
or `h2`): it opens one connection, then makes one exchange on it per line it reads from
stdin -- a line echoed (`tcp`), a keep-alive HTTP/1.1 GET, an HTTP/2 GET on a new stream --
and prints one JSON object per exchange.  `Held` drives it from the test:

    c = Held.start(pod, workdir, "http", vip, 80)
    assert c.exchange()["status"] == 200
    ... change the config ...
    got = c.exchange()          # {"ok": False, "error": "closed"} once the proxy closed it
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tulle.net.netns import Namespace

HELD = r'''
import json, socket, sys

kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
buf = b""

def out(**kw):
    print(json.dumps(kw), flush=True)

def recv():
    data = s.recv(65536)
    if not data:
        raise EOFError("closed")
    return data

def until(marker):
    global buf
    while marker not in buf:
        buf += recv()
    head, _, buf = buf.partition(marker)
    return head

def exactly(n):
    global buf
    while len(buf) < n:
        buf += recv()
    data, buf = buf[:n], buf[n:]
    return data

if kind == "h2":
    import h2.config, h2.connection, h2.events
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding=None))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())

def tcp(n):
    s.sendall(b"ping %d\n" % n)
    return {"ok": True, "data": until(b"\n").decode()}

def http(n):
    s.sendall(b"GET /held-%d HTTP/1.1\r\nHost: held.example\r\n\r\n" % n)
    head = until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    body = exactly(int(fields.get("content-length", "0")))
    return {"ok": True, "status": int(lines[0].split()[1]), "data": body.decode("latin-1"),
            "close": fields.get("connection", "").lower() == "close"}

def h2get(n):
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                            (b":authority", b"held.example"), (b":path", b"/held-%d" % n)],
                      end_stream=True)
    s.sendall(conn.data_to_send())
    got = {"ok": True, "status": 0, "data": ""}
    while True:
        for ev in conn.receive_data(recv()):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                got["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                got["data"] += ev.data.decode("latin-1")
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                s.sendall(conn.data_to_send())
                return got
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                return {"ok": False, "error": "reset %d" % ev.error_code}
            elif isinstance(ev, h2.events.ConnectionTerminated):
                got["goaway"] = ev.last_stream_id
                if ev.last_stream_id is not None and ev.last_stream_id < sid:
                    return {"ok": False, "error": "goaway", "goaway": ev.last_stream_id}
        s.sendall(conn.data_to_send())

out(opened=True)
for n, line in enumerate(sys.stdin, 1):
    try:
        out(**{"tcp": tcp, "http": http, "h2": h2get}[kind](n))
    except (OSError, EOFError) as exc:
        out(ok=False, error="closed" if isinstance(exc, EOFError) else type(exc).__name__)
    except Exception as exc:
        out(ok=False, error=repr(exc))
'''


class Held:
    """A `HELD` script running in a pod: one connection, one exchange per `exchange()`."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, pod: Namespace, workdir: Path, kind: str, host: str, port: int) -> Held:
        script = workdir / "held.py"
        if not script.exists():
            script.write_text(HELD)
        proc = pod.popen([sys.executable, str(script), kind, host, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        held = cls(proc)
        assert held._line() == {"opened": True}
        return held

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": "the held client exited"}
        return dict(json.loads(line))

    def exchange(self) -> dict[str, Any]:
        """One exchange on the held connection (bounded by the script's 10 s socket timeout)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"ok": False, "error": "the held client exited"}
        return self._line()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
