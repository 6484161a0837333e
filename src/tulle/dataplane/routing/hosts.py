"""The authority → virtual host index of a router, patched instead of rebuilt when few hosts change.

Why a module of its own: at 1,000 services the outbound route table has a thousand virtual
hosts of eight domains each, and a canary weight change re-delivers one of them (ADR 0018).
Sorting eight thousand domains into the lookup structures again costs more than everything
else the proxy does for that change, so a router built from a previous one (`Router(previous=)`)
keeps the compiled hosts that did not change (`routing/table.py`) and patches the previous
index: the changed hosts' domains out, their successors' in (ADR 0022).

Patching is exact because precedence between hosts only depends on declaration order for a
domain that several hosts claim (the first claim wins): distinct exact names never compete,
and two distinct `*.suffix` (or `prefix.*`) keys of the same length cannot both fit one
authority, so their order among themselves changes no lookup.  The index therefore records
the domains claimed more than once (`contested`); a patch that touches one of them, or that
would create one, builds the index from scratch in table order instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import CompiledHost
    from tulle.dataplane.routing.table import HostEntry


class HostIndex:
    """Exact names (a dict), `*.suffix` and `prefix.*` wildcards (longest first) and the `*`
    host.  Immutable once built: a router in force keeps reading its own."""

    __slots__ = ("any", "contested", "exact", "prefix", "suffix")

    def __init__(self, exact: dict[str, CompiledHost], suffix: list[tuple[str, CompiledHost]],
                 prefix: list[tuple[str, CompiledHost]], any_: CompiledHost | None,
                 contested: frozenset[str]) -> None:
        self.exact = exact
        self.suffix = suffix
        self.prefix = prefix
        self.any = any_
        self.contested = contested
        """Domains (as written, lower case) that more than one host claims."""

    @classmethod
    def build(cls, entries: Sequence[HostEntry]) -> HostIndex:
        """The index of `entries` in table order: for a contested domain the first host wins."""
        exact: dict[str, CompiledHost] = {}
        suffix: list[tuple[str, CompiledHost]] = []
        prefix: list[tuple[str, CompiledHost]] = []
        any_: CompiledHost | None = None
        contested: set[str] = set()
        wild: dict[str, CompiledHost] = {}
        for e in entries:
            h = e.host
            for d in e.exact:
                if exact.setdefault(d, h) is not h:
                    contested.add(d)
            if e.any:
                if any_ is None:
                    any_ = h
                else:
                    contested.add("*")
            for s in e.suffix:
                if wild.setdefault("*" + s, h) is not h:
                    contested.add("*" + s)
                suffix.append((s, h))
            for p in e.prefix:
                if wild.setdefault(p + "*", h) is not h:
                    contested.add(p + "*")
                prefix.append((p, h))
        suffix.sort(key=_longest_first)
        prefix.sort(key=_longest_first)
        return cls(exact, suffix, prefix, any_, frozenset(contested))

    def patched(self, entries: Sequence[HostEntry], dropped: Sequence[HostEntry],
                added: Sequence[HostEntry]) -> HostIndex:
        """The index of `entries`, which are this index's hosts less `dropped` plus `added`.
        Costs the changed hosts' domains (and one dict copy), unless a contested domain is
        involved: then `build(entries)`."""
        contested = self.contested
        if contested:
            for e in (*dropped, *added):
                if not contested.isdisjoint(e.domains):
                    return HostIndex.build(entries)
        exact = self.exact.copy()
        for e in dropped:
            for d in e.exact:
                del exact[d]  # uncontested: this host was its only claimant
        any_ = self.any
        if any_ is not None and any(e.any for e in dropped):
            any_ = None
        wild_out = {id(e.host) for e in dropped if e.suffix or e.prefix}
        suffix = self.suffix
        prefix = self.prefix
        if wild_out:
            suffix = [kv for kv in suffix if id(kv[1]) not in wild_out]
            prefix = [kv for kv in prefix if id(kv[1]) not in wild_out]
        keys: set[str] | None = None  # the wildcards claimed, once some host adds one
        for e in added:
            h = e.host
            for d in e.exact:
                if exact.setdefault(d, h) is not h:
                    return HostIndex.build(entries)  # now contested
            if e.any:
                if any_ is not None:
                    return HostIndex.build(entries)
                any_ = h
            if e.suffix or e.prefix:
                if keys is None:
                    keys = {"*" + s for s, _ in suffix} | {p + "*" for p, _ in prefix}
                    suffix, prefix = list(suffix), list(prefix)
                for d in e.domains:
                    if "*" in d and d != "*":
                        if d in keys:
                            return HostIndex.build(entries)  # a wildcard now claimed twice
                        keys.add(d)
                suffix.extend((s, h) for s in e.suffix)
                prefix.extend((p, h) for p in e.prefix)
        if keys is not None:
            suffix.sort(key=_longest_first)
            prefix.sort(key=_longest_first)
        return HostIndex(exact, suffix, prefix, any_, contested)


def _longest_first(kv: tuple[str, CompiledHost]) -> int:
    return -len(kv[0])
