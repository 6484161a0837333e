"""The CLI's HTTP client for the control-plane API: stdlib only, so `tulle` starts fast.

The server is named by `--server` or `TULLE_SERVER` (default http://127.0.0.1:15681); the
token it gets is found by `credentials.py` (`--token`, `TULLE_TOKEN`, token files).  An
`https://` server is verified against the system's CAs, or the PEM bundle in `TULLE_CA_FILE`.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import click

from tulle.cli import credentials

DEFAULT_SERVER = "http://127.0.0.1:15681"


class APIError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error") or f"HTTP {status}")
        self.status = status
        self.body = body


class ServerURLError(click.UsageError):
    """`--server` / `TULLE_SERVER` is not a URL the CLI can call (a usage error: exit 2)."""


def server_url(explicit: str | None) -> str:
    """The API's base URL.  `HOST:PORT` (what people type after using `--control-plane
    HOST:PORT` for proxies) means `http://HOST:PORT`; any other scheme is refused with the
    form expected, never urllib's "unknown url type"."""
    raw = (explicit or os.environ.get("TULLE_SERVER") or DEFAULT_SERVER).strip()
    where = "--server / TULLE_SERVER" if explicit or os.environ.get("TULLE_SERVER") \
        else "the default server"
    if "://" not in raw:
        raw = "http://" + raw
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerURLError(f"{where} {raw!r}: expected http://HOST:PORT or "
                             f"https://HOST:PORT (or HOST:PORT, taken as http://)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ServerURLError(f"{where} {raw!r}: the port is not a number 0-65535") from None
    if parts.query or parts.fragment:
        raise ServerURLError(f"{where} {raw!r}: no query or fragment, just the base URL")
    return raw.rstrip("/")


def _request(server: str, method: str, path: str, query: dict[str, Any] | None,
             body: Any) -> tuple[urllib.request.Request, Any, str | None]:
    """The request, its TLS context (None: urllib's default) and the token it carries."""
    q = {k: v for k, v in (query or {}).items() if v is not None and v is not False}
    url = server + path + ("?" + urllib.parse.urlencode(q) if q else "")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data else {}
    token = credentials.resolve(server)
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = None
    if url.startswith("https:") and os.environ.get("TULLE_CA_FILE"):
        import ssl

        context = ssl.create_default_context(cafile=os.environ["TULLE_CA_FILE"])
    return req, context, token


def call(server: str, method: str, path: str, *, query: dict[str, Any] | None = None,
         body: Any = None, timeout: float = 30.0) -> Any:
    req, context, token = _request(server, method, path, query, body)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            payload = resp.read()
            _print_warnings(resp.headers.get_all("Warning") or [])
            return json.loads(payload) if payload else None
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, token) from None
    except urllib.error.URLError as exc:
        raise APIError(0, {"error": f"cannot reach the control plane at {server}: "
                                    f"{exc.reason}"}) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _gone(server, exc) from None


def _print_warnings(values: list[str]) -> None:
    """The API's `Warning: 299 - "text"` headers (ADR 0131), as kubectl prints the Kubernetes
    API's: a `Warning:` line each on stderr, the text only, control characters dropped."""
    from tulle.cli.style import paint

    for value in values:
        code, _, rest = value.partition(" ")
        if code != "299":
            continue
        text = rest.partition(" ")[2].strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        text = "".join(c for c in text if c.isprintable())
        if text:
            click.echo(f"{paint('Warning:', 'yellow')} {text}", err=True)


def _gone(server: str, exc: BaseException) -> APIError:
    """A connection that broke after the request went out (a control plane stopping resets
    it; urllib wraps only what fails before): the same one line as a refused connect."""
    return APIError(0, {"error": f"cannot reach the control plane at {server}: "
                                 f"{exc or type(exc).__name__}"})


def _http_error(exc: urllib.error.HTTPError, token: str | None) -> APIError:
    """An error answer as an `APIError` carrying the API's `{"error", "details"}`."""
    raw = exc.read()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {"error": raw.decode(errors="replace") or exc.reason}
    if not isinstance(parsed, dict):
        parsed = {"error": str(parsed)}
    if exc.code == 401 and not token:
        parsed["error"] = (f"{parsed.get('error') or 'unauthorized'} (no token found: "
                           "tried --token, TULLE_TOKEN, TULLE_TOKEN_FILE, "
                           f"{credentials.user_token_file()} and, for a local server, "
                           "the control plane's admin token file)")
    return APIError(exc.code, parsed)


def stream(server: str, path: str, *, query: dict[str, Any] | None = None,
           timeout: float = 30.0) -> Iterator[dict[str, Any] | None]:
    """GET a JSON-lines answer (a watch) and yield each line's object as it arrives; None for
    an empty line (a heartbeat).  `timeout` bounds the wait for each line, so a connection that
    went quiet (a control plane gone without a FIN) ends as an `APIError` instead of hanging.
    Errors before the stream are `APIError`s, as `call` raises them."""
    req, context, token = _request(server, "GET", path, query, None)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, token) from None
    except urllib.error.URLError as exc:
        raise APIError(0, {"error": f"cannot reach the control plane at {server}: "
                                    f"{exc.reason}"}) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _gone(server, exc) from None
    with resp:
        try:
            for line in resp:
                text = line.strip()
                if not text:
                    yield None
                    continue
                item = json.loads(text)
                if isinstance(item, dict):
                    yield item
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise APIError(0, {"error": f"the watch on {server} broke off: {exc}"}) from None
