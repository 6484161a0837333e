"""The one shape of a user-facing validation problem, shared by every layer that validates.

User resources (`tulle.api`) and proxy configurations (`tulle.proxyconfig`) report errors the
same way — `spec.rules[0].matches[1].path.value: must start with "/"` — so the CLI, the REST
API and the proxy print them alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason input was refused: `path` is dotted with list indices in brackets."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"
