"""The dashboard's static files, served by the control plane under `/dashboard/` (ADR 0056).

A fixed list, read from this package: the server never maps a URL to a file path, so nothing
outside this list can be asked for.  The page (`index.html`, `app.js`, `style.css`) is plain
HTML and JavaScript with no build step; the graph libraries are vendored prebuilt from npm with
their licences (`vendor/README.md`).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "vendor/cytoscape.min.js": "text/javascript; charset=utf-8",
    "vendor/cytoscape-dagre.min.js": "text/javascript; charset=utf-8",
    "vendor/LICENSE-cytoscape": "text/plain; charset=utf-8",
    "vendor/LICENSE-cytoscape-dagre": "text/plain; charset=utf-8",
    "vendor/LICENSE-dagre": "text/plain; charset=utf-8",
}
"""Every file the dashboard serves, with its content type."""


@cache
def asset(name: str) -> tuple[bytes, str]:
    """The bytes and content type of dashboard file `name` (KeyError: not one of ASSETS)."""
    content_type = ASSETS[name]
    return files(__name__).joinpath(name).read_bytes(), content_type


__all__ = ["ASSETS", "asset"]
