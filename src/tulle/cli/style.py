"""Colour for terminal output: only when stdout is a terminal and `NO_COLOR` is unset
(https://no-color.org), so pipes, files and tests get plain text."""

from __future__ import annotations

import os
import sys

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


def enabled() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") \
        and os.environ.get("TERM") != "dumb"


def paint(text: str, colour: str) -> str:
    code = _CODES.get(colour)
    return f"\033[{code}m{text}\033[0m" if code and enabled() else text


__all__ = ["enabled", "paint"]
