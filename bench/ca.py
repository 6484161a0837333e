"""The CA's signing rate: workload CSRs checked and signed per second on one core.

Issue 9's target: `ca_signs_per_s` >= 1,000.  Each sign is what the stream does for a proxy's
CSR (`CertificateAuthority.sign_csr`: size and signature check, key type, SAN check, build and
ECDSA-sign the leaf).  CSRs (distinct keys) are made before the timed loop; the process is
pinned to one CPU when it can be.  Merges `ca_signs_per_s` into bench/results/mtls.json (other
mTLS figures live there too).

    python -m bench.ca [--count 3000] [--json bench/results/mtls.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.dataplane.identity import WorkloadKey


def measure(count: int) -> float:
    ca = CertificateAuthority.generate("cluster.local")
    ident = SpiffeId("cluster.local", "bench", "web")
    csrs = [WorkloadKey().csr("bench", f"w-{i}") for i in range(count)]
    for csr in csrs[:50]:  # warm up
        ca.sign_csr(csr, ident, "w")
    t0 = time.process_time()
    for i, csr in enumerate(csrs):
        ca.sign_csr(csr, ident, f"w-{i}")
    return count / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--json", default="bench/results/mtls.json")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rate = measure(args.count)
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["ca_signs_per_s"] = round(rate)
    data["ca_signs_target"] = 1000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"ca_signs_per_s: {rate:.0f} (CPU time, one core; target >= 1,000) -> {path}")


if __name__ == "__main__":
    main()
