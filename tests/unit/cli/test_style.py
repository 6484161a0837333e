"""Colour only on a terminal, never with NO_COLOR or TERM=dumb."""

from __future__ import annotations

import io
import sys

import pytest

from tulle.cli.style import paint


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", _Tty())
    assert paint("ok", "green") == "\x1b[32mok\x1b[0m"
    assert paint("ok", "no-such-colour") == "ok"
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint("ok", "green") == "ok"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert paint("ok", "green") == "ok"
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert paint("ok", "green") == "ok"
