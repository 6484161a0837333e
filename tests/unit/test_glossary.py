"""docs/glossary.md explains each term the docs and CLI use without explanation (issue 14's
list), and every link in it resolves to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
TERMS = ("GAMMA", "Universal mode", "ACK / NACK", "Snapshot", "VIP", "SPIFFE ID",
         "Policy attachment", "outbound|80||", "Response flags", "Blackhole", "Sidecar",
         "Agent mode", "Trust domain", "Bootstrap token", "mTLS")


def test_every_term_has_an_entry() -> None:
    text = (DOCS / "glossary.md").read_text()
    heads = re.findall(r"^\*\*(.+?)\*\* — ", text, re.M)
    for term in TERMS:
        assert any(term in h for h in heads), f"no glossary entry for {term!r}"
    assert heads == sorted(heads, key=str.lower), "keep the entries alphabetical"


def test_links_resolve() -> None:
    text = (DOCS / "glossary.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)", text):
        assert (DOCS / target).exists(), target
