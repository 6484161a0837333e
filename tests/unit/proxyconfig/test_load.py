"""Reading config files: JSON through msgspec, YAML through PyYAML, one error form for both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tulle.proxyconfig import ConfigError, load_file, load_text
from tulle.proxyconfig.load import parse_text

CFG = {"listeners": [{"name": "out", "port": 18080, "protocol": "http1", "cluster": "b"}],
       "clusters": [{"name": "b", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}


def test_json_and_yaml_files_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(CFG))
    (tmp_path / "c.yaml").write_text(
        "listeners:\n- {name: out, port: 18080, protocol: http1, cluster: b}\n"
        "clusters:\n- name: b\n  endpoints: [{address: 127.0.0.1, port: 9}]\n")
    assert load_file(tmp_path / "c.json") == load_file(tmp_path / "c.yaml")


def test_a_json_file_is_read_without_importing_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CFG))
    code = ("import sys; from tulle.proxyconfig.load import load_file; "
            f"load_file({str(path)!r}); print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def test_a_broken_json_file_reports_line_and_column() -> None:
    with pytest.raises(ConfigError) as err:
        load_text('{\n  "listeners": [\n    {"name": }\n  ]\n}\n', source="p.json")
    assert str(err.value).startswith("<root>: p.json: invalid JSON at line 3, column 14:")


def test_a_yaml_flow_mapping_that_is_not_json_is_read_as_yaml() -> None:
    assert parse_text("{name: x, port: 1}", source="p.yaml") == {"name": "x", "port": 1}


def test_a_json_file_must_be_json() -> None:
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_text("name: x\n", source="p.json")


def test_an_empty_json_file_is_an_empty_document() -> None:
    with pytest.raises(ConfigError, match="p.json: empty document"):
        load_text("  \n", source="p.json")
