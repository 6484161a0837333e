"""YAML with bounded expansion: what `tulle apply` and `tulle.api.load_*` read input with.

PyYAML's safe loader shares the object an alias points to instead of copying it, so a
"billion laughs" document (ten anchors, each a list of ten aliases to the previous one) loads
in microseconds -- and then every consumer that walks it (validation, JSON encoding) sees 10^9
nodes and never returns.  The same text through libyaml's composer also recurses once per
nesting level, in C.

So before loading, the text's event stream (libyaml's parser: iterative, no objects built) is
walked once, counting what the loaded data would contain *expanded*: every scalar is one node,
every collection one plus its children, every alias the full size of what its anchor names.
The text is refused, with the line of the offending event, as soon as

* it is larger than `max_bytes`,
* it holds more than `max_documents` documents,
* the expanded node count passes `max_nodes` (an alias bomb is caught at the first alias that
  tips the count, after reading a few hundred bytes),
* collections nest deeper than `max_depth`, or
* an alias refers to its own anchor from inside it (a recursive structure, which JSON cannot
  hold anyway).

Only then is the text loaded (still with the safe loader).  The walk costs about as much as
the parse itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

try:
    LOADER: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    LOADER = yaml.SafeLoader


@dataclass(frozen=True, slots=True)
class YamlLimits:
    """Bounds for one input text (a file, stdin)."""

    max_bytes: int = 16 * 1024 * 1024
    max_documents: int = 10_000
    max_nodes: int = 2_000_000
    """Scalars + collections after alias expansion, over all documents of the text."""
    max_depth: int = 100


DEFAULT_LIMITS = YamlLimits()


class YamlLimitError(yaml.MarkedYAMLError):
    """The text is refused before loading; `problem` says which bound, `problem_mark` where."""


def _refuse(problem: str, event: Any = None) -> YamlLimitError:
    mark = getattr(event, "start_mark", None)
    return YamlLimitError(problem=problem, problem_mark=mark)


def check(text: str, limits: YamlLimits = DEFAULT_LIMITS) -> None:
    """Raise `YamlLimitError` if loading `text` would exceed `limits`; `yaml.YAMLError` for a
    syntax error met on the way."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise _refuse(f"input larger than {limits.max_bytes} bytes")
    anchors: dict[str, int] = {}  # anchor -> expanded size; -1 while its node is still open
    stack: list[list[Any]] = []  # open collections: [expanded size so far, anchor]
    total = documents = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            if isinstance(event, yaml.AliasEvent):
                size = anchors.get(event.anchor or "", 1)  # an unknown alias: the loader reports it
                if size < 0:
                    raise _refuse(f"recursive alias *{event.anchor} (refers to its own anchor)",
                                  event)
            else:
                size = 1
                if event.anchor:
                    anchors[event.anchor] = 1
            total += size
            if stack:
                stack[-1][0] += size
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            if len(stack) >= limits.max_depth:
                raise _refuse(f"collections nested deeper than {limits.max_depth}", event)
            if event.anchor:
                anchors[event.anchor] = -1
            stack.append([1, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
            if anchor:
                anchors[anchor] = size
            if stack:
                stack[-1][0] += size
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            anchors.clear()  # anchors are scoped to their document
            if documents > limits.max_documents:
                raise _refuse(f"more than {limits.max_documents} documents", event)
        if total > limits.max_nodes:
            raise _refuse(f"the input expands to more than {limits.max_nodes} nodes "
                          "(aliases counted at their full size)", event)


def load_all(text: str, limits: YamlLimits = DEFAULT_LIMITS) -> list[Any]:
    """Every document of `text` (safe loader), after `check`."""
    check(text, limits)
    return list(yaml.load_all(text, Loader=LOADER))
