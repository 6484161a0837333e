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
    _BASE: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _BASE = yaml.SafeLoader


class JsonLoader(_BASE):  # type: ignore[misc]
    """The safe loader, building only what JSON holds and what the API sends on.

    * A key given twice in one mapping is an error with its line (PyYAML keeps the last one
      and drops the first without a word; Kubernetes' reader refuses it).
    * A timestamp stays the text written (`name: 2001-12-14` is the string, as in Kubernetes'
      reader): a `datetime` cannot be sent as JSON and `tulle apply` died on it.
    * `!!binary` and `!!set` are refused: bytes and sets are not JSON.
    * An integer of more than `sys.get_int_max_str_digits()` digits is an error with its line,
      not a `ValueError` out of the loader.
    (ADR 0102.)"""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            # The keys written here only: a key that overrides one merged in by `<<` is
            # YAML's own rule, not a duplicate.
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    fresh = key not in seen
                except TypeError:  # an unhashable key: the base class says so
                    break
                if not fresh:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"key {key!r} given twice", key_node.start_mark)
                seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))


def _as_text(loader: Any, node: Any) -> str:
    return str(loader.construct_scalar(node))


def _not_json(loader: Any, node: Any) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"{node.tag.rsplit(':', 1)[-1]} values cannot be sent as JSON",
        node.start_mark)


def _int(loader: Any, node: Any) -> int:
    try:
        return int(yaml.constructor.SafeConstructor.construct_yaml_int(loader, node))
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of too many digits ({str(exc).split(':')[0]})",
            node.start_mark) from None


JsonLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_text)
JsonLoader.add_constructor("tag:yaml.org,2002:binary", _not_json)
JsonLoader.add_constructor("tag:yaml.org,2002:set", _not_json)
JsonLoader.add_constructor("tag:yaml.org,2002:int", _int)

LOADER: Any = JsonLoader


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
