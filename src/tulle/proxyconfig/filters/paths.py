"""Path and hostname values shared by the filters that change where a request goes.

Gateway API's `HTTPPathModifier` (used by `RequestRedirect` and `URLRewrite`) and its
`PreciseHostname`, as contract structs.  `ReplacePrefixMatch` replaces the part of the path the
rule's `PathPrefix` match matched, segment-aware: prefix `/foo` replaced by `/bar` turns
`/foo/x` into `/bar/x` and `/foo` into `/bar`; replaced by `/`, `/foo/x` becomes `/x`.  The
query string is kept.  A rule whose matches are not all `PathPrefix` cannot say what was
matched, so a `ReplacePrefixMatch` on it is refused (`prefix_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from msgspec import Meta, Struct

from tulle.errors import FieldError

PathValue = Annotated[str, Meta(min_length=1, max_length=1024,
                                pattern=r"^/[!$%&'()*+,\-./0-9:;=@A-Z_a-z~]*$")]
"""An absolute path of RFC 3986 path characters (percent-encoded where needed): no query,
fragment, whitespace or control character can be put into a request line or `Location`."""

Hostname = Annotated[str, Meta(
    min_length=1, max_length=253,
    pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]
"""Gateway API `PreciseHostname`: an RFC 1123 name, lower case, no port, no wildcard."""


class PathModifier(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Gateway API `HTTPPathModifier`."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    """`ReplaceFullPath`: the path becomes `value`.  `ReplacePrefixMatch`: the matched prefix
    is replaced by `value` (the rule's matches must all be `PathPrefix`)."""
    value: PathValue
    """The new path, or the new prefix."""


def prefix_errors(path: PathModifier | None, match_types: Sequence[str],
                  where: str) -> list[FieldError]:
    """`ReplacePrefixMatch` needs every match of the rule to be a `PathPrefix` one."""
    if path is None or path.type != "ReplacePrefixMatch":
        return []
    if all(t == "PathPrefix" for t in match_types):
        return []
    return [FieldError(f"{where}.path.type", "ReplacePrefixMatch needs every match of the rule "
                                             "to be a PathPrefix match")]
