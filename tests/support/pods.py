"""What the end-to-end tests run inside their pod namespaces: one application, one client, and
how to start a Python process under the proxy's uid.

    from tests.support.pods import as_user, write_scripts

    write_scripts(workdir)                       # app.py and client.py, shared by the tests
    pod.popen([sys.executable, str(workdir / "app.py"), "web-a"])
    pod.run([sys.executable, str(workdir / "client.py"), "http", vip, "80", "/hello"])
    pod.popen(as_user(PROXY_UID, ["-m", "tulle.cli.main", "proxy", "run", ...]),
              env=as_user_env(PROXY_UID))

`app.py NAME` answers HTTP on 8080 with JSON `{name, path, headers, peer}` (Connection: close)
and echoes lines prefixed with NAME on 9000.  `client.py` prints one JSON object: `http HOST
PORT PATH` (status and body; the Host header is deliberately not the Service's, the mesh
routes by original destination), `echoes HOST PORT N` (which app answered each of N
connections), `refused HOST PORT` (what, if anything, came back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tulle.net.netns import python_for

SRC = str(Path(__file__).resolve().parents[2] / "src")

APP = r'''
import asyncio, json, sys
NAME = sys.argv[1].encode()

async def http(r, w):
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    body = json.dumps({"name": NAME.decode(), "path": lines[0].split(" ")[1],
                       "headers": headers, "peer": w.get_extra_info("peername")[0]}).encode()
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body)
    await w.drain()
    w.close()

async def echo(r, w):
    while line := await r.readline():
        w.write(NAME + b" " + line)
        await w.drain()
    w.close()

async def main():
    servers = [await asyncio.start_server(http, "0.0.0.0", 8080),
               await asyncio.start_server(echo, "0.0.0.0", 9000)]
    await asyncio.Event().wait()

asyncio.run(main())
'''

CLIENT = r'''
import json, socket, sys

def http(host, port, path):
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET %b HTTP/1.1\r\nHost: not-the-service.example\r\nConnection: close\r\n\r\n"
                  % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]) if head else 0, "body": body.decode("latin-1")}

def echoes(host, port, n):
    seen = []
    for _ in range(int(n)):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"ping\n")
            seen.append(s.makefile("rb").readline().decode().split(" ")[0])
    return {"seen": seen}

def refused(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(100)
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        data = b""
    return {"data": data.decode("latin-1")}

what, *args = sys.argv[1:]
print(json.dumps({"http": http, "echoes": echoes, "refused": refused}[what](*args)))
'''


def write_scripts(workdir: Path) -> None:
    """`app.py` and `client.py` in `workdir` (which the pods' uids can read)."""
    (workdir / "app.py").write_text(APP)
    (workdir / "client.py").write_text(CLIENT)


def as_user(uid: int, args: Sequence[str]) -> list[str]:
    """`python ARGS` under `uid` (no groups): `setpriv` and an interpreter that uid can run."""
    py, _ = python_for(uid)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", py, *args]


def as_user_env(uid: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `as_user`: the source tree and, when the interpreter is the
    system's, this environment's site-packages on PYTHONPATH."""
    _, paths = python_for(uid)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = ":".join([SRC, *paths])
    return env
