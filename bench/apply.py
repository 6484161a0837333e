"""`endpoint_change_apply_ms`: what one endpoint change costs a proxy holding the whole snapshot.

At 1,000 services an endpoint change (a workload joins or leaves a Service) reaches every
proxy as a small delta; the proxy's event loop then stops serving while it applies it.  This
measures that time with the real code, in-process:

1. The mesh of `bench.controlplane` (N Services, 2N Workloads) compiled by the real compiler;
   one proxy's snapshot (`svc-0`'s first workload: every Service's cluster and the outbound
   route table) put in force on a real `ProxyServer` (its listeners moved to 127.0.0.1, port 0).
2. Each round, a workload joins Service `svc-3` (then leaves it, next round): the control
   plane's delta for this proxy (`diff`), encoded as the stream's frame, is handed to the real
   agent's handler (frame decode, then `Agent._handle`: delta decode, `apply_delta`, `check`,
   `ProxyServer.apply`; no disk cache).  Timed (perf_counter; nothing else runs on the loop):

   * `endpoint_change_apply_ms`: `ProxyServer.apply` (build what changed, commit) — the
     issue's figure, target ≤ 5 ms;
   * `endpoint_change_agent_ms`: the agent's whole step, frame in to ACK out;
   * `endpoint_change_full_apply_ms`: `ProxyServer.apply` of the same change arriving as a whole
     snapshot decoded anew (a file reload: structs equal, not identical).
3. `route_change_apply_ms`: the same for a canary weight change (an HTTPRoute on `svc-1`
   re-weighted), which reaches the proxy as one virtual host (ADR 0018); every other virtual
   host is the same struct as before, and the router compiles that one host only and patches
   its host index (ADR 0022), target ≤ 1 ms.  `route_change_hosts_built` says how many virtual
   hosts the last round compiled (1 when the incremental path was taken).

Medians of `--rounds` rounds, with min and max.  Compiling happens outside the timed window.

    .venv/bin/python -m bench.apply [--services 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tulle.controlplane.compiler import MeshInputs, PartCache, compile_mesh
from tulle.dataplane.agent import Agent
from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import (
    Certificate,
    FrameDecoder,
    WorkloadInfo,
    delta_message,
    encode,
)

NS = "bench"
TARGET_MS = 5.0
ROUTE_TARGET_MS = 1.0


def _resources(services: int, extra: bool) -> list[dict[str, Any]]:
    from bench.controlplane import service_doc, workload_doc

    docs = [service_doc(f"svc-{i}") for i in range(services)]
    docs += [workload_doc(f"w-{i}-{j}", f"svc-{i}", 2 * i + j)
             for i in range(services) for j in range(2)]
    if extra:
        docs.append(workload_doc("extra-0", "svc-3", 2 * services))
    return docs


def held_identity() -> HeldIdentity:
    """An SVID as the proxy holds one (its key, a certificate from a throwaway root): compiled
    snapshots use mesh mTLS (STRICT by default, ADR 0033) and name the proxy's own `workload`
    identity and `mesh` bundle, which the agent injects before applying."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = WorkloadKey()
    root_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    csr = x509.load_pem_x509_csr(key.csr(NS, "w-0-0").encode())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                f"spiffe://cluster.local/ns/{NS}/sa/default")]), critical=True)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return HeldIdentity(key, Certificate(
        cert_chain=leaf.public_bytes(pem).decode(), trust_bundle=[root.public_bytes(pem).decode()],
        not_before=int(now.timestamp()), not_after=int(now.timestamp()) + 86400))


def _local(cfg: ProxyConfig) -> ProxyConfig:
    """The snapshot with its listeners on loopback port 0 (nothing else changes)."""
    return msgspec.structs.replace(cfg, listeners=[
        msgspec.structs.replace(lc, address="127.0.0.1", port=0) for lc in cfg.listeners])


def route_snapshots(services: int) -> tuple[ProxyConfig, ProxyConfig]:
    """svc-0's proxy with a route on svc-1 at two weightings."""
    from bench.controlplane import route_doc

    cache = PartCache()
    docs = _resources(services, False)
    out = []
    for w in (1, 3):
        res = compile_mesh(MeshInputs.from_resources(
            [*docs, route_doc("svc-1", [("svc-1", w), ("svc-2", 1)])]), cache)
        out.append(_local(res.snapshots[(NS, "w-0-0")]))
    return out[0], out[1]


def snapshots(services: int) -> tuple[ProxyConfig, ProxyConfig]:
    """svc-0's proxy without and with one more endpoint in svc-3."""
    cache = PartCache()
    out = []
    for extra in (False, True):
        res = compile_mesh(MeshInputs.from_resources(_resources(services, extra)), cache)
        out.append(_local(res.snapshots[(NS, "w-0-0")]))
    return out[0], out[1]


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


async def measure(services: int, rounds: int) -> dict[str, Any]:
    base, grown = snapshots(services)
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="w-0-0", namespace=NS))
    apply_ms: list[float] = []
    agent_ms: list[float] = []
    full_ms: list[float] = []
    real_apply: Callable[[ProxyConfig], Awaitable[None]] = server.apply

    async def timed_apply(cfg: ProxyConfig) -> None:
        t0 = time.perf_counter()
        await real_apply(cfg)
        apply_ms.append((time.perf_counter() - t0) * 1000)

    held = agent.held = held_identity()
    try:
        await server.apply(held.inject(base))
        agent.current = base
        server.apply = timed_apply  # type: ignore[method-assign]
        for i in range(rounds):
            target = grown if i % 2 == 0 else base
            assert agent.current is not None
            frame = encode(delta_message(diff(agent.current, target)))
            t0 = time.perf_counter()
            (msg,) = FrameDecoder().feed(frame)
            reply = await agent._handle(msg)
            agent_ms.append((time.perf_counter() - t0) * 1000)
            if type(reply).__name__ != "Ack":
                raise RuntimeError(f"the proxy did not take the change: {reply}")
        server.apply = real_apply  # type: ignore[method-assign]
        for i in range(rounds):
            # The same change as a whole snapshot, decoded anew (no struct shared).
            target = grown if i % 2 == 0 else base
            fresh = msgspec.json.decode(msgspec.json.encode(target), type=ProxyConfig)
            t0 = time.perf_counter()
            await server.apply(held.inject(fresh))
            full_ms.append((time.perf_counter() - t0) * 1000)
        clusters = len(base.clusters)
    finally:
        await server.close()
    route_ms, hosts_built = await _route_change(services, rounds)
    apply = _summary(apply_ms)
    return {
        "endpoint_change_apply_ms": apply["median"],
        "endpoint_change_apply_spread_ms": [apply["min"], apply["max"]],
        "endpoint_change_agent_ms": _summary(agent_ms)["median"],
        "endpoint_change_agent_spread_ms": [_summary(agent_ms)["min"], _summary(agent_ms)["max"]],
        "endpoint_change_full_apply_ms": _summary(full_ms)["median"],
        "endpoint_change_rounds": rounds,
        "endpoint_change_proxy_clusters": clusters,
        "route_change_apply_ms": _summary(route_ms)["median"],
        "route_change_apply_spread_ms": [_summary(route_ms)["min"], _summary(route_ms)["max"]],
        "route_change_rounds": rounds,
        "route_change_hosts_built": hosts_built,
    }


async def _route_change(services: int, rounds: int) -> tuple[list[float], int]:
    """`ProxyServer.apply` of a canary weight change, applied from its delta; and how many
    virtual hosts the last one compiled."""
    base, moved = route_snapshots(services)
    server = ProxyServer()
    out: list[float] = []
    built = -1
    held = held_identity()
    try:
        await server.apply(held.inject(base))
        current = base
        for i in range(rounds):
            target = moved if i % 2 == 0 else base
            cfg = apply_delta(current, diff(current, target))
            full = held.inject(cfg)
            t0 = time.perf_counter()
            await server.apply(full)
            out.append((time.perf_counter() - t0) * 1000)
            current = cfg
            counts = server.runtime.counts
            built = counts.hosts_built if counts is not None else -1
    finally:
        await server.close()
    return out, built


def run(services: int = 1000, rounds: int = 7) -> dict[str, Any]:
    import uvloop

    return uvloop.run(measure(services, rounds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    res = run(args.services, args.rounds)
    print(json.dumps(res, indent=2))
    return 0 if (res["endpoint_change_apply_ms"] <= TARGET_MS
                 and res["route_change_apply_ms"] <= ROUTE_TARGET_MS) else 1


if __name__ == "__main__":
    sys.exit(main())
