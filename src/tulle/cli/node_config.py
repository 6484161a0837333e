"""`tulle proxy run --node-config FILE`: one proxy for every workload of a node (ADR 0047).

The file lists the workloads the node agent fronts, each with its own bootstrap token (ADR
0032: a node proves every workload it serves; nothing is trusted because it arrives on one
stream).  The first is the hello's own workload; the others ride in `Hello.workloads`.

    workloads:
    - name: pod-a
      namespace: shop
      address: 10.232.0.2          # the pod's address
      serviceAccount: pod-a
      outboundPort: 15001          # the pod's outbound listener on the agent
      tokenFile: /etc/tulle/pod-a.token
      labels: {app: a}
      ports: []                    # as the Workload's spec.ports

Every pod needs an `outboundPort` of its own: the agent tells pods apart by the listener their
traffic is steered to (`tulle iptables node apply --pod ADDRESS=PORT`).  Errors name the field
path; unknown fields are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tulle.proxyconfig.stream import WorkloadInfo

_FIELDS = {"name", "namespace", "address", "serviceAccount", "outboundPort", "tokenFile",
           "labels", "ports"}


class NodeConfigError(ValueError):
    """The node config file is wrong; the message names the field path."""


@dataclass(frozen=True, slots=True)
class NodeWorkload:
    info: WorkloadInfo
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"NodeWorkload({self.info.namespace}/{self.info.name}, token=<redacted>)"


def _str(doc: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    v = doc.get(key, default)
    if not isinstance(v, str) or not v:
        raise NodeConfigError(f"{path}.{key}: must be a non-empty string")
    return v


def _workload(doc: Any, path: str, base: Path) -> NodeWorkload:
    if not isinstance(doc, dict):
        raise NodeConfigError(f"{path}: must be a mapping")
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise NodeConfigError(f"{path}.{unknown[0]}: unknown field")
    port = doc.get("outboundPort")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise NodeConfigError(f"{path}.outboundPort: must be a port (1-65535), one per workload")
    labels = doc.get("labels", {})
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise NodeConfigError(f"{path}.labels: must map strings to strings")
    ports = doc.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise NodeConfigError(f"{path}.ports: must be a list of Workload ports")
    token_path = Path(_str(doc, "tokenFile", path))
    if not token_path.is_absolute():
        token_path = base / token_path
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise NodeConfigError(f"{path}.tokenFile: {token_path}: {exc.strerror}") from None
    if not token:
        raise NodeConfigError(f"{path}.tokenFile: {token_path} is empty")
    info = WorkloadInfo(name=_str(doc, "name", path),
                        namespace=_str(doc, "namespace", path, "default"),
                        address=str(doc.get("address", "")),
                        service_account=_str(doc, "serviceAccount", path, "default"),
                        labels=dict(labels), ports=list(ports), outbound_port=port)
    return NodeWorkload(info, token)


def load(path: Path) -> list[NodeWorkload]:
    """The node's workloads from `path`, the hello's own first."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise NodeConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise NodeConfigError(f"{path}: not YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"workloads"}:
        raise NodeConfigError("workloads: the file must hold exactly one key, `workloads`")
    items = doc["workloads"]
    if not isinstance(items, list) or not items:
        raise NodeConfigError("workloads: must be a non-empty list")
    out = [_workload(w, f"workloads[{i}]", path.parent) for i, w in enumerate(items)]
    seen: dict[str, int] = {}
    ports: dict[int, int] = {}
    for i, w in enumerate(out):
        key = f"{w.info.namespace}/{w.info.name}"
        if key in seen:
            raise NodeConfigError(f"workloads[{i}]: {key} is already workloads[{seen[key]}]")
        if w.info.outbound_port in ports:
            raise NodeConfigError(
                f"workloads[{i}].outboundPort: {w.info.outbound_port} is already "
                f"workloads[{ports[w.info.outbound_port]}]'s (the agent tells pods apart by it)")
        seen[key] = i
        ports[w.info.outbound_port] = i
    return out
