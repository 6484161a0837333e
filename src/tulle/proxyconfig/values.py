"""Shared scalar types and the base struct of the proxy configuration contract.

Kept apart from `model.py` so the contract's sections that live in their own modules
(`settings.py`, `dns_config.py`) share one definition of a port, a name, a duration and the
strict struct base without importing `model.py`, which imports them.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Port = Annotated[int, Meta(ge=1, le=65535)]
PortOrZero = Annotated[int, Meta(ge=0, le=65535)]
Millis = Annotated[int, Meta(ge=0, le=86_400_000)]
Name = Annotated[
    str, Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:|/-]*$")
]


class Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Frozen, keyword-only, refusing unknown fields: the base of `model.py` and its sections."""
