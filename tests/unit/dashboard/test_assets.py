"""The dashboard's files: every listed one exists, the vendored libraries are the ones
`vendor/README.md` names (hash for hash), and the page loads nothing from elsewhere."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files

from tulle.dashboard import ASSETS, asset


def test_every_asset_is_there_with_its_type() -> None:
    for name, content_type in ASSETS.items():
        body, ct = asset(name)
        assert body and ct == content_type


def test_the_vendored_files_match_the_readme() -> None:
    readme = files("tulle.dashboard").joinpath("vendor/README.md").read_text()
    listed = dict((name, digest) for digest, name in
                  re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)$", readme, re.M))
    assert set(listed) == {"cytoscape.min.js", "cytoscape-dagre.min.js"}
    for name, digest in listed.items():
        assert hashlib.sha256(asset(f"vendor/{name}")[0]).hexdigest() == digest, name
    for lic in ("LICENSE-cytoscape", "LICENSE-cytoscape-dagre", "LICENSE-dagre"):
        assert b"Permission is hereby granted" in asset(f"vendor/{lic}")[0]


def test_the_page_references_only_its_own_files() -> None:
    html = asset("index.html")[0].decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r in ASSETS or r == "data:," for r in refs), refs
    assert "<script>" not in html and " on" not in html.replace(" one", "")  # no inline script
    js = asset("app.js")[0].decode()
    assert "innerHTML" not in js and "eval(" not in js
