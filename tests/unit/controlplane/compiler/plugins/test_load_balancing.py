"""What the load_balancing plugin's values become in every proxy's snapshot: the Service
cluster's `lb_policy`, `lb` and endpoint weights, as the proxy validates them."""

from __future__ import annotations

from pathlib import Path

import yaml

from tulle.controlplane.compiler import MeshInputs, compile_mesh

CASES = Path(__file__).parent / "testdata" / "load_balancing"


def test_a_proxy_gets_the_merged_balancer_and_the_workload_weights() -> None:
    docs = [d for d in yaml.safe_load_all((CASES / "precedence.yaml").read_text()) if d]
    result = compile_mesh(MeshInputs.from_resources(docs))
    assert not result.errors
    cfg = result.snapshots[("shop", "cart-0")]
    by_name = {c.name: c for c in cfg.clusters}
    cart = by_name["outbound|80||cart.shop"]
    assert cart.lb_policy == "maglev" and cart.lb is not None
    assert [(h.type, h.name) for h in cart.lb.hash_policies] == [("header", "x-user"),
                                                                 ("source_ip", "")]
    assert cart.lb.panic_threshold_percent == 30 and cart.lb.slow_start_window_ms == 0
    assert sorted((e.address, e.weight, e.zone) for e in cart.endpoints) == [
        ("127.0.0.1", 1, "eu-1a"), ("127.0.0.2", 3, "eu-1b")]
    web = by_name["outbound|8080||web.shop"]
    assert web.lb_policy == "random" and web.lb is not None
    assert web.lb.slow_start_window_ms == 30_000
    api = by_name["outbound|80||api.other"]
    assert api.lb_policy == "least_request" and api.lb is not None and api.lb.choice_count == 3
    inbound = [c for c in cfg.clusters if not c.name.startswith("outbound|")]
    assert all(c.lb_policy == "round_robin" for c in inbound)  # the local app: one endpoint
