"""One finding of `tulle check`: what is wrong, where, and what to do about it.

Shared by every source of findings (certificates and rotation in `ca/expiry.py`, the mesh's
resources, proxies and workloads in `check/mesh.py`), so that the CLI prints and orders them
one way and `-o json` has one shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    code: str
    object: str
    message: str
    hint: str = ""
    """The next step: a command to run or the field to change ("" when the message says it)."""

    def to_dict(self) -> dict[str, str]:
        out = {"severity": self.severity, "code": self.code, "object": self.object,
               "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


def order(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then information, each by object."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.object, f.code))
