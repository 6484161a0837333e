"""Read a proxy configuration file (YAML or JSON) into a validated `ProxyConfig`.

Kept apart from the model so the proxy's hot decode of pushed snapshots (msgspec, JSON) does not
pay for YAML, and so the file watcher and `tulle proxy validate` share one entry point.

JSON is decoded with msgspec; PyYAML is imported only when a document actually needs the YAML
parser (it adds about 1 MB to the proxy's resident memory, and a proxy run from a JSON file, as
every generated or pushed config is, never needs it).  A source named `*.json` must be JSON;
any other source is YAML, except that a document that parses as JSON is taken as such (YAML is
a superset of JSON, so the result is the same, without the import).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import ConfigError, FieldError, validate


def _json_error(exc: msgspec.DecodeError, text: str, source: str) -> ConfigError:
    """msgspec reports a byte offset ("... (byte 12)"); operators want a line and column."""
    message = str(exc)
    where = ""
    head, sep, tail = message.rpartition(" (byte ")
    if sep and tail.endswith(")") and tail[:-1].isdigit():
        offset = int(tail[:-1])
        prefix = text.encode("utf-8")[:offset].decode("utf-8", "replace")
        line = prefix.count("\n") + 1
        column = len(prefix) - (prefix.rfind("\n") + 1) + 1
        message, where = head, f"line {line}, column {column}"
    return ConfigError([FieldError("", f"{source}: invalid JSON at {where or source}: "
                                       f"{message}")])


def _parse_yaml(text: str, source: str) -> Any:
    import yaml  # only here: see the module docstring

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([FieldError("", f"{source}: invalid YAML at {where}: {problem}")]) from exc


def parse_text(text: str, *, source: str = "<config>") -> Any:
    """Decode JSON or YAML into plain values; syntax errors become ConfigError."""
    is_json_file = source.endswith(".json")
    if not text.strip():
        return None
    if is_json_file or text.lstrip()[:1] in ("{", "["):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            if is_json_file:
                raise _json_error(exc, text, source) from exc
            # Not JSON after all (e.g. a YAML flow mapping `{name: x}`): YAML decides.
    return _parse_yaml(text, source)


def load_text(text: str, *, source: str = "<config>") -> ProxyConfig:
    raw = parse_text(text, source=source)
    if raw is None:
        raise ConfigError([FieldError("", f"{source}: empty document")])
    return validate(raw)


def load_file(path: str | os.PathLike[str]) -> ProxyConfig:
    p = os.fspath(path)  # not pathlib: it is not on a proxy's import path (ADR 0068)
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read {p}: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError("", f"{p} is not UTF-8 text")]) from exc
    return load_text(text, source=p)


REDACTED = "<redacted>"


def dump(cfg: ProxyConfig) -> bytes:
    """Canonical JSON of a config (sorted keys): what /config_dump serves and what diffs compare.
    Private keys of `identities` are replaced by `<redacted>`: key material never leaves the
    proxy through its admin endpoint."""
    raw = msgspec.to_builtins(cfg, order="sorted")
    for ident in raw.get("identities") or ():
        ident["private_key_pem"] = REDACTED
    return msgspec.json.format(msgspec.json.encode(raw), indent=2)
