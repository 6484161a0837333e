"""`--server` / `TULLE_SERVER`: HOST:PORT means http://, anything else that is not an http(s)
URL is a usage error saying the form expected (never urllib's "unknown url type")."""

from __future__ import annotations

import click
import pytest

from tulle.cli.client import DEFAULT_SERVER, server_url


def test_host_port_means_http_and_a_trailing_slash_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TULLE_SERVER", raising=False)
    assert server_url("127.0.0.1:15681") == "http://127.0.0.1:15681"
    assert server_url("https://cp.example:443/") == "https://cp.example:443"
    assert server_url(None) == DEFAULT_SERVER
    monkeypatch.setenv("TULLE_SERVER", "localhost:9")
    assert server_url(None) == "http://localhost:9"


@pytest.mark.parametrize(("value", "says"), [
    ("ftp://cp:21", "expected http://HOST:PORT"),
    ("http://cp:http", "port is not a number"),
    ("http://cp:99999", "port is not a number"),
    ("http://cp:1/?a=b", "no query or fragment"),
    ("http://", "expected http://HOST:PORT"),
])
def test_anything_else_is_a_usage_error(value: str, says: str) -> None:
    with pytest.raises(click.UsageError) as exc:
        server_url(value)
    assert says in str(exc.value) and value in str(exc.value)
