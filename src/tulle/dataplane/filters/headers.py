"""Request and response header modifiers at run time (Gateway API `HTTPHeaderFilter`).

The config (`proxyconfig/filters/headers.py`) was validated at the boundary: names are tokens,
values carry no CR/LF/NUL, framing and routing fields are refused.  Here the factory lower-cases
the names once per snapshot (heads carry lower-case names, `exchange.py`), and the filter edits
the head's header list in place in one pass: `remove` and `set` names drop every existing value,
then the `set` values and the `add` values are appended.  The filter has no per-request state,
so the factory is `stateless` and one instance serves every request.  The edit itself
(`HeaderEdit`, which runs per request) is compiled, in `filters/header_edit.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.filters.header_edit import HeaderEdit
from tulle.dataplane.http.filter import CONTINUE, FilterStream, HttpFilter

if TYPE_CHECKING:
    from tulle.dataplane.exchange import ResponseHead
    from tulle.proxyconfig.filters.headers import RequestHeaderModifier, ResponseHeaderModifier


class _RequestFilter(HttpFilter):
    __slots__ = ("edit",)

    def __init__(self, edit: HeaderEdit) -> None:
        self.edit = edit

    def on_request_head(self, stream: FilterStream) -> int:
        self.edit.apply(stream.head.headers)
        return CONTINUE


class _ResponseFilter(HttpFilter):
    __slots__ = ("edit",)

    def __init__(self, edit: HeaderEdit) -> None:
        self.edit = edit

    def on_response_head(self, stream: FilterStream, head: ResponseHead) -> int:
        self.edit.apply(head.headers)
        return CONTINUE


class HeadersFactory:
    """The factory of one modifier (request or response), built once per route per snapshot."""

    __slots__ = ("_filter", "filter_type", "request_edit", "response_edit")

    name = "headers"
    stateless = True

    def __init__(self, cfg: RequestHeaderModifier | ResponseHeaderModifier,
                 response: bool) -> None:
        edit = HeaderEdit(cfg)
        self._filter: HttpFilter = _ResponseFilter(edit) if response else _RequestFilter(edit)
        self.filter_type: type[HttpFilter] = type(self._filter)
        # A pure edit of a head's header list (`chain.Chain.edits_only`): a chain of nothing
        # else applies it straight to the head, without a per-request run of the chain.
        self.request_edit = None if response else edit.apply
        self.response_edit = edit.apply if response else None

    def create(self) -> HttpFilter:
        return self._filter
