"""Read a proxy configuration file (YAML or JSON) into a validated `ProxyConfig`.

Kept apart from the model so the proxy's hot decode of pushed snapshots (msgspec, JSON) does not
pay for YAML, and so the file watcher and `tulle proxy validate` share one entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import yaml

from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import ConfigError, FieldError, validate


def parse_text(text: str, *, source: str = "<config>") -> Any:
    """Decode YAML (a superset of JSON) into plain values; syntax errors become ConfigError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([FieldError("", f"{source}: invalid YAML at {where}: {problem}")]) from exc


def load_text(text: str, *, source: str = "<config>") -> ProxyConfig:
    raw = parse_text(text, source=source)
    if raw is None:
        raise ConfigError([FieldError("", f"{source}: empty document")])
    return validate(raw)


def load_file(path: str | Path) -> ProxyConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read {p}: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError("", f"{p} is not UTF-8 text")]) from exc
    return load_text(text, source=str(p))


def dump(cfg: ProxyConfig) -> bytes:
    """Canonical JSON of a config (sorted keys): what /config_dump serves and what diffs compare."""
    raw = msgspec.to_builtins(cfg, order="sorted")
    return msgspec.json.format(msgspec.json.encode(raw), indent=2)
