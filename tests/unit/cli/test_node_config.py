"""`tulle proxy run --node-config`: a node agent's workloads, each with its own token and
outbound port; mistakes named by field path, tokens never printed (ADR 0047)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tulle.cli.commands import cli
from tulle.cli.node_config import NodeConfigError, load

SECRET = "tok-SECRET-value"


def write(tmp_path: Path, workloads: Any) -> Path:
    (tmp_path / "a.token").write_text(SECRET + "\n")
    (tmp_path / "b.token").write_text("tok-b")
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump({"workloads": workloads}))
    return p


def pod(name: str, port: int, token: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "shop", "address": "10.232.0.2",
            "serviceAccount": name, "outboundPort": port, "tokenFile": token, **more}


def test_a_node_config_gives_each_workload_its_token_and_port(tmp_path: Path) -> None:
    got = load(write(tmp_path, [pod("pod-a", 15001, "a.token", labels={"app": "a"}),
                                pod("pod-b", 15002, str(tmp_path / "b.token"))]))
    assert [(w.info.name, w.info.outbound_port, w.token) for w in got] == [
        ("pod-a", 15001, SECRET), ("pod-b", 15002, "tok-b")]
    assert got[0].info.labels == {"app": "a"} and got[0].info.service_account == "pod-a"
    assert SECRET not in repr(got)


@pytest.mark.parametrize(("workloads", "error"), [
    ([], r"^workloads: must be a non-empty list"),
    ([pod("a", 15001, "a.token", extra=1)], r"^workloads\[0\]\.extra: unknown field"),
    ([pod("a", 0, "a.token")], r"^workloads\[0\]\.outboundPort: must be a port"),
    ([{**pod("a", 15001, "a.token"), "outboundPort": None}],
     r"^workloads\[0\]\.outboundPort: must be a port"),
    ([pod("a", 15001, "missing.token")], r"^workloads\[0\]\.tokenFile: .*missing\.token"),
    ([pod("a", 15001, "a.token"), pod("b", 15001, "b.token")],
     r"^workloads\[1\]\.outboundPort: 15001 is already workloads\[0\]'s"),
    ([pod("a", 15001, "a.token"), pod("a", 15002, "b.token")],
     r"^workloads\[1\]: shop/a is already workloads\[0\]"),
    ([pod("a", 15001, "a.token", labels={"x": 1})], r"^workloads\[0\]\.labels: must map"),
    (["a"], r"^workloads\[0\]: must be a mapping"),
])
def test_mistakes_are_named_by_field_path(tmp_path: Path, workloads: Any, error: str) -> None:
    with pytest.raises(NodeConfigError, match=error) as info:
        load(write(tmp_path, workloads))
    assert SECRET not in str(info.value)


def test_the_cli_takes_workload_or_node_config_not_both(tmp_path: Path) -> None:
    cfg = write(tmp_path, [pod("a", 15001, "a.token")])
    r = CliRunner().invoke(cli, ["proxy", "run", "--control-plane", "127.0.0.1:1",
                                 "--workload", "a", "--node-config", str(cfg)])
    assert r.exit_code == 2 and "--workload NAME or --node-config FILE" in r.output
    bad = write(tmp_path, [pod("a", 15001, "a.token", extra=1)])
    r = CliRunner().invoke(cli, ["proxy", "run", "--control-plane", "127.0.0.1:1",
                                 "--node-config", str(bad)])
    assert r.exit_code == 2 and "workloads[0].extra: unknown field" in r.output
    assert SECRET not in r.output


def test_iptables_node_dry_run_needs_no_root_and_bad_pods_exit_2() -> None:
    r = CliRunner().invoke(cli, ["iptables", "node", "apply", "--dry-run",
                                 "--pod", "10.232.0.2=15001", "--pod", "10.232.0.3=15002"])
    assert r.exit_code == 0, r.output
    assert "-A TULLE_NODE -i <dev> -s 10.232.0.3/32 -p tcp -j DNAT --to-destination " \
           "127.0.0.1:15002" in r.output
    r = CliRunner().invoke(cli, ["iptables", "node", "apply", "--dry-run",
                                 "--pod", "10.232.0.2=15001", "--pod", "10.232.0.3=15001"])
    assert r.exit_code == 2 and "agent ports of its own" in r.output
