"""Reading `GET /api/v1/tap` as it streams: one JSON object per line (ADR 0056).

Shared by `tulle tap` and `tulle top`.  Kept apart from `client.py`, whose `call` reads a whole
answer: a tap answers for as long as the watcher stays.  Closing the generator closes the
connection, which is what stops the tap at the proxies.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from tulle.cli import credentials
from tulle.cli.client import APIError

MAX_LINE = 1 << 20
"""A longer line is not a record this control plane sends: the stream is ended."""


def tap_query(target: str, namespace: str, **options: Any) -> dict[str, Any]:
    """The query of `tulle tap KIND/NAME ...`; ValueError when TARGET is not KIND/NAME."""
    kind, sep, name = target.partition("/")
    if not sep or not kind or not name:
        raise ValueError(f"{target!r}: expected KIND/NAME, e.g. deploy/web or svc/api")
    q: dict[str, Any] = {"kind": kind, "name": name, "namespace": namespace}
    q.update({k: ("true" if v is True else v) for k, v in options.items()
              if v not in (None, "", False)})
    return q


def stream(server: str, query: dict[str, Any], timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """The objects of one tap, as they arrive; raises APIError when it cannot start."""
    url = f"{server}/api/v1/tap?{urllib.parse.urlencode(query)}"
    headers = {"accept": "application/x-ndjson"}
    token = credentials.resolve(server)
    if token:
        headers["authorization"] = f"Bearer {token}"
    context = None
    if url.startswith("https:") and os.environ.get("TULLE_CA_FILE"):
        import ssl

        context = ssl.create_default_context(cafile=os.environ["TULLE_CA_FILE"])
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"error": raw.decode(errors="replace") or exc.reason}
        raise APIError(exc.code, body if isinstance(body, dict) else {"error": str(body)}
                       ) from None
    except urllib.error.URLError as exc:
        raise APIError(0, {"error": f"cannot reach the control plane at {server}: "
                                    f"{exc.reason}"}) from None
    with resp:
        while True:
            line = resp.readline(MAX_LINE + 1)
            if not line or len(line) > MAX_LINE:
                return
            try:
                item = json.loads(line)
            except ValueError:
                return
            if isinstance(item, dict):
                yield item


__all__ = ["stream", "tap_query"]
