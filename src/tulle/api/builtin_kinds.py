"""Imports every built-in kind so that each registers itself (loaded by the registry on first use).

Named `builtin_kinds`, not `kinds`: importing a submodule sets it as an attribute of its package,
which would replace the `tulle.api.kinds()` function the package exports.

A new kind is one module plus one line here.
"""

from __future__ import annotations

from tulle.api import mesh, service, workload
from tulle.api.gateway import grpcroute, httproute, referencegrant, tcproute
from tulle.api.policies import (
    authorization,
    fault_injection,
    health_check,
    load_balancing,
    mtls,
    outlier_detection,
    rate_limit,
    retry,
    timeout,
)

__all__ = ["authorization", "fault_injection", "grpcroute", "health_check", "httproute",
           "load_balancing", "mesh", "mtls", "outlier_detection", "rate_limit", "referencegrant",
           "retry", "service", "tcproute", "timeout", "workload"]
