"""Peer-chosen strings as the control plane logs, keeps and shows them."""

from __future__ import annotations

from tulle.controlplane.push.reported import SHOWN_ITEMS, shown, shown_list


def test_control_and_bidi_characters_are_escaped_visibly() -> None:
    assert shown("a\nb\x1b[2J\x07\x9b\u202edef") == "a\\x0ab\\x1b[2J\\x07\\x9b\\u202edef"
    assert shown("web-0/shop") == "web-0/shop"
    assert shown("café ✓") == "café ✓"


def test_long_strings_and_lists_are_cut_and_say_so() -> None:
    assert shown("x" * 1000, 10) == "x" * 10 + "...(990 more characters)"
    assert shown("\n" * 20, 5) == "\\x0a" * 5 + "...(15 more characters)"
    many = shown_list(["p"] * 1000)
    assert len(many) == SHOWN_ITEMS + 1 and many[-1] == "..."
