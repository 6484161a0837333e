"""`cli/listing.list_all` (ADR 0120) against a real HTTP server on loopback that answers pages
and records what it was asked: pages of `--chunk-size` until no `continue`, the first page's
revision kept, an old control plane's whole answer taken as one page, and a server that hands
out the same token again cannot keep the CLI reading."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tulle.cli.listing import list_all

Answer = Callable[[dict[str, str]], dict[str, Any]]


@contextlib.contextmanager
def serving(answer: Answer) -> Iterator[tuple[str, list[dict[str, str]]]]:
    asked: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            asked.append(q)
            body = json.dumps(answer(q)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", asked
    finally:
        srv.shutdown()
        srv.server_close()


ITEMS = [{"metadata": {"name": f"s{i}"}} for i in range(5)]


def paged(q: dict[str, str]) -> dict[str, Any]:
    start = int(q.get("continue", "0"))
    end = start + int(q["limit"])
    md: dict[str, Any] = {"resourceVersion": str(10 + start)}
    if end < len(ITEMS):
        md["continue"] = str(end)
    return {"items": ITEMS[start:end], "metadata": md}


def test_pages_until_no_continue_keeping_the_first_pages_revision() -> None:
    with serving(paged) as (url, asked):
        items, revision = list_all(url, "services", "shop", "app=web", 2)
    assert items == ITEMS and revision == "10"
    assert asked == [
        {"namespace": "shop", "labelSelector": "app=web", "limit": "2"},
        {"namespace": "shop", "labelSelector": "app=web", "limit": "2", "continue": "2"},
        {"namespace": "shop", "labelSelector": "app=web", "limit": "2", "continue": "4"}]


def test_an_old_control_planes_whole_list_is_one_page_and_zero_asks_for_no_pages() -> None:
    with serving(lambda q: {"items": ITEMS, "metadata": {"resourceVersion": "7"}}) as (url,
                                                                                      asked):
        assert list_all(url, "services", None, None) == (ITEMS, "7")
        assert list_all(url, "services", None, None, 0) == (ITEMS, "7")
    assert [q.get("limit") for q in asked] == ["500", None]


def test_the_same_token_again_ends_the_reading() -> None:
    with serving(lambda q: {"items": ITEMS[:1], "metadata": {"continue": "again"}}) as (url,
                                                                                      asked):
        items, _ = list_all(url, "services", None, None, 1)
    assert len(asked) == 2 and items == ITEMS[:1] * 2
