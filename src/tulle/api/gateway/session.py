"""Gateway API `sessionPersistence` on a route rule (GEP-1619, HTTPRoute and GRPCRoute alike).

The shape is the spec's: `sessionName`, `absoluteTimeout`, `idleTimeout`, `type`
(`Cookie` | `Header`, default `Cookie`), `cookieConfig.lifetimeType` (`Session` | `Permanent`,
default `Session`).  Checked here, with field paths: the spec's own rule (a `Permanent` cookie
needs an `absoluteTimeout`: it becomes the cookie's `Max-Age`), a `sessionName` the proxy can
put in a cookie or header (an RFC 9110 token; the spec's limit of 128 characters), timeouts
of at most a year (a token's expiry must fit its four bytes for a while yet), and a
`Permanent` cookie's `absoluteTimeout` of at least one second (`Max-Age` counts seconds).
What the proxy does with it: `tulle/dataplane/filters/session.py`; ADR 0058.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import model_validator

from tulle.api.errors import field_error
from tulle.api.fields import HEADER_NAME_RE, Duration, duration_ms, pattern
from tulle.api.meta import Model

MAX_SESSION_MS = 365 * 24 * 3_600_000
SessionName = Annotated[
    str, pattern(HEADER_NAME_RE, "a cookie or header name (an RFC 9110 token)", max_length=128)
]


class CookieConfig(Model):
    lifetimeType: Literal["Permanent", "Session"] | None = None
    """`Session` (the default): no `Max-Age`, the browser forgets it when it closes;
    `Permanent`: `Max-Age` = `absoluteTimeout`."""


class SessionPersistence(Model):
    sessionName: SessionName | None = None
    """The cookie's or header's name; default `tulle-session` (Cookie) or `x-tulle-session`
    (Header)."""
    absoluteTimeout: Duration | None = None
    idleTimeout: Duration | None = None
    type: Literal["Cookie", "Header"] | None = None
    cookieConfig: CookieConfig | None = None

    @model_validator(mode="after")
    def _rules(self) -> SessionPersistence:
        for name in ("absoluteTimeout", "idleTimeout"):
            value = getattr(self, name)
            if value is not None and duration_ms(value) > MAX_SESSION_MS:
                raise field_error((name,), "must be at most 8760h (a year)")
        permanent = self.cookieConfig is not None and self.cookieConfig.lifetimeType == "Permanent"
        if permanent:
            if self.type == "Header":
                raise field_error(("cookieConfig", "lifetimeType"),
                                  "Permanent applies to Cookie sessions only")
            if self.absoluteTimeout is None:
                raise field_error(("absoluteTimeout",),
                                  "required when cookieConfig.lifetimeType is Permanent")
            if duration_ms(self.absoluteTimeout) < 1000:
                raise field_error(("absoluteTimeout",),
                                  "a Permanent cookie's lifetime (its Max-Age) must be at least 1s")
        return self
