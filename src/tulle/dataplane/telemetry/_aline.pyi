"""Types of the C line encoder `_aline.c` (ADR 0076)."""

from collections.abc import Callable
from typing import Any

FIELDS: tuple[str, ...]

def access_line(*fields: Any) -> bytes: ...
def set_fallback(f: Callable[..., bytes], /) -> None: ...
def scratch_size() -> int: ...
