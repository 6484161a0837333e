"""Mirror config: Gateway API `RequestMirror` (`HTTPRequestMirrorFilter`).

A share of the rule's requests is copied to another cluster, fire-and-forget: the copy's
response is discarded and its failure or slowness never touches the request it copies.  The
share is `numerator / denominator` (Gateway API `percent: p` is `p / 100`, `fraction` is
itself; the defaults mirror every request).  The copy's authority gets `-shadow` appended to
its host (`api:80` -> `api-shadow:80`), as Envoy and Istio do, so the mirror can tell copies
from real traffic.  Bounds and what is counted: `tulle/dataplane/filters/mirror.py`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from tulle.errors import FieldError

Share = Annotated[int, Meta(ge=0, le=1_000_000)]


class RequestMirror(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                    tag_field="type", tag="RequestMirror"):
    """Copy a share of the requests to `cluster` (responses discarded)."""

    cluster: Annotated[str, Meta(min_length=1, max_length=253)]
    """The cluster the copies go to (must exist in the snapshot)."""
    numerator: Share = 100
    """Mirrored share: `numerator / denominator`; 0 mirrors nothing."""
    denominator: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """See `numerator`."""


def errors(f: RequestMirror, path: str) -> list[FieldError]:
    if f.numerator > f.denominator:
        return [FieldError(f"{path}.numerator", f"must be at most denominator "
                                                f"({f.denominator})")]
    return []
