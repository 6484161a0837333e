"""The agent of a node fronting several workloads notices a config that serves only some."""

from __future__ import annotations

import logging

import pytest

from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.stream import WorkloadInfo


async def test_a_workload_without_a_listener_in_force_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(ProxyServer(), [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace="ns"),
                  workloads=[WorkloadInfo(name="api-0", namespace="ns")])
    old_cp = validate({"version": "v1", "clusters": [{"name": "c"}],
                       "listeners": [{"name": "in", "port": 1, "cluster": "c"}]})
    with caplog.at_level(logging.WARNING, "tulle.agent"):
        agent._check_served(old_cp)
        agent._check_served(old_cp)  # said once, not at every apply
    assert agent.unserved == ["ns/api-0"]
    assert [r.message for r in caplog.records].count(
        "config version v1 has no listener for ns/api-0: the control plane may predate "
        "nodes with several workloads") == 1
    node = validate({"version": "v2", "clusters": [{"name": "c"}], "listeners": [
        {"name": "in", "port": 1, "cluster": "c", "workload": "ns/web-0"},
        {"name": "in2", "port": 2, "cluster": "c", "workload": "ns/api-0"}]})
    agent._check_served(node)
    assert agent.unserved == []
