"""Read resources from YAML or JSON: a file, a directory, or text (stdin).

Every document is parsed and validated, and every problem is kept, each with its source file
and document index.  Callers (`tulle apply`) reject the whole input when any document fails,
so they need all the errors at once, not the first.  A `kind: List` document (what `kubectl
get -o yaml` prints) contributes its `items`, with paths prefixed `items[i]`.

Input is bounded (`safeyaml`): an alias bomb, a text over 16 MiB or over 10,000 documents is
refused before anything is loaded, as an `invalid YAML` error of the source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tulle.api import safeyaml
from tulle.api.errors import FieldError, PathSegment, ValidationError, render_path
from tulle.api.meta import Resource
from tulle.api.registry import parse

SUFFIXES = (".yaml", ".yml", ".json")

_Loader: Any = safeyaml.LOADER


@dataclass(frozen=True, slots=True)
class Document:
    """One document of the input: the resource, or why it was refused."""

    source: str
    index: int
    """0-based position of the document in its source."""
    resource: Resource | None
    errors: tuple[FieldError, ...] = ()
    label: str = ""
    """`HTTPRoute shop/reviews` when the document says that much, even if it is invalid."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def describe(self) -> str:
        """`file.yaml, document 2 (HTTPRoute shop/reviews)`: where the errors are."""
        where = f"{self.source}, document {self.index}"
        return f"{where} ({self.label})" if self.label else where

    def error_lines(self) -> list[str]:
        return [f"{self.describe()}: {e}" for e in self.errors]


@dataclass(frozen=True, slots=True)
class LoadResult:
    documents: tuple[Document, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.documents)

    @property
    def resources(self) -> list[Resource]:
        """The valid resources, in input order (all of them when `ok`)."""
        return [d.resource for d in self.documents if d.resource is not None]

    @property
    def failed(self) -> list[Document]:
        return [d for d in self.documents if not d.ok]

    def error_lines(self) -> list[str]:
        return [line for d in self.failed for line in d.error_lines()]

    def raise_for_errors(self) -> None:
        """`ValidationError` whose errors carry `source, document N: path` — for all-or-nothing callers."""
        errs = [FieldError(f"{d.describe()}: {e.path}", e.message) for d in self.failed for e in d.errors]
        if errs:
            raise ValidationError(errs)


def _label(obj: Any) -> str:
    """`Kind ns/name` from a raw document, as far as it can be read."""
    if not isinstance(obj, dict):
        return ""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    if not isinstance(kind, str) or not isinstance(name, str):
        return kind if isinstance(kind, str) else ""
    return f"{kind} {ns}/{name}" if isinstance(ns, str) else f"{kind} {name}"


def _validate(source: str, index: int, obj: Any) -> Iterator[Document]:
    if obj is None:  # an empty document (a trailing `---`, a comment-only file) is not an error
        return
    if isinstance(obj, dict) and obj.get("kind") == "List" and isinstance(obj.get("items"), list):
        items: list[Any] = obj["items"]
        errors: list[FieldError] = []
        resources: list[Resource] = []
        for i, item in enumerate(items):
            try:
                resources.append(parse(item))
            except ValidationError as exc:
                prefix: list[PathSegment] = ["items", i]
                errors.extend(FieldError(_join(prefix, e.path), e.message) for e in exc.errors)
        if errors:
            yield Document(source, index, None, tuple(errors), "List")
        else:
            for r in resources:
                yield Document(source, index, r)
        return
    try:
        yield Document(source, index, parse(obj))
    except ValidationError as exc:
        yield Document(source, index, None, exc.errors, _label(obj))


def _join(prefix: list[PathSegment], path: str) -> str:
    head = render_path(prefix)
    if not path:
        return head
    return f"{head}{path}" if path.startswith("[") else f"{head}.{path}"


def load_text(text: str, source: str = "<stdin>", *, json_only: bool = False) -> LoadResult:
    """Every document in `text` (multi-document YAML, or JSON), parsed and validated."""
    docs: list[Document] = []
    limit = safeyaml.DEFAULT_LIMITS.max_bytes
    if len(text) > limit:
        err = FieldError("", f"input larger than {limit} bytes")
        return LoadResult((Document(source, 0, None, (err,)),))
    if json_only:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            err = FieldError("", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
            return LoadResult((Document(source, 0, None, (err,)),))
        return LoadResult(tuple(_validate(source, 0, obj)))
    read = 0  # documents read so far; a syntax error is in the next one and ends the stream
    refused: safeyaml.YamlLimitError | None = None
    try:
        safeyaml.check(text)
    except safeyaml.YamlLimitError as exc:
        refused = exc
    except yaml.YAMLError:
        pass  # a syntax error: loading stops at it too, and names its document
    try:
        if refused is not None:
            raise refused
        for obj in yaml.load_all(text, Loader=_Loader):
            docs.extend(_validate(source, read, obj))
            read += 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        docs.append(Document(source, read, None, (FieldError("", f"invalid YAML: {problem}{where}"),)))
    return LoadResult(tuple(docs))


def load_path(path: str | Path, *, recursive: bool = False) -> LoadResult:
    """A file, or every `*.yaml|*.yml|*.json` in a directory (sorted; subdirectories if `recursive`)."""
    p = Path(path)
    if p.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix in SUFFIXES)
    else:
        files = [p]
    docs: list[Document] = []
    for f in files:
        try:
            text = read_bounded(f)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            docs.append(Document(str(f), 0, None, (FieldError("", f"cannot read: {exc}"),)))
            continue
        docs.extend(load_text(text, str(f), json_only=f.suffix == ".json").documents)
    return LoadResult(tuple(docs))


def read_bounded(path: Path, limit: int = safeyaml.DEFAULT_LIMITS.max_bytes) -> str:
    """The file's text; `ValueError` if it is larger than `limit` bytes (never read whole)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode("utf-8")


def dump_yaml(resources: list[Resource]) -> str:
    """Resources as multi-document YAML, in the shape a user writes (no nulls, camelCase)."""
    return yaml.safe_dump_all([r.to_dict() for r in resources], sort_keys=False)
