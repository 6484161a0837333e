"""`tulle check --pre`: can this machine run Tulle, before anything is installed or started?

Like `linkerd check --pre`: each check is local (no control plane needed), says what it looked
at, and on failure what to do.  Errors are what stops Tulle from running at all; warnings are
what stops one mode (transparent interception, the namespace demo) or a default port.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from tulle.net.ports import Wanted, first_taken

Result = dict[str, str]

DEFAULT_PORTS = (
    ("proxy admin", 15000, "--admin-port"), ("transparent outbound", 15001, "--outbound-port"),
    ("transparent inbound", 15006, "the Workload's inboundPort"),
    ("mesh DNS", 15053, "--dns-port"), ("control-plane proxy stream", 15680, "--stream-port"),
    ("control-plane REST API", 15681, "--api-port"),
)


def _f(severity: str, code: str, obj: str, message: str, hint: str = "") -> Result:
    out = {"severity": severity, "code": code, "object": obj, "message": message}
    if hint:
        out["hint"] = hint
    return out


def checks() -> tuple[list[Result], list[str]]:
    """(findings, what was checked)."""
    found: list[Result] = []
    checked: list[str] = []
    checked.append(f"python {sys.version.split()[0]}")  # pyproject refuses < 3.11 at install
    checked.append("platform")
    if not sys.platform.startswith("linux"):
        found.append(_f("error", "NotLinux", "platform", f"{sys.platform}: interception, "
                        "SO_ORIGINAL_DST and os.splice need Linux"))
    checked.append("native modules")
    for mod, why in (("uvloop", "the event loop"), ("httptools", "the HTTP/1.1 parser")):
        if importlib.util.find_spec(mod) is None:
            found.append(_f("error", "ModuleMissing", mod, f"{mod} ({why}) is not installed",
                            "run `make deps` (or `pip install -e .`)"))
    checked.append("PATH")
    if shutil.which("tulle") is None:
        found.append(_f("warning", "NotOnPath", "tulle",
                        "the `tulle` command is not on PATH",
                        "`source .venv/bin/activate` or run `.venv/bin/tulle`"))
    checked.append("iptables")
    for tool in ("iptables", "ip6tables", "ip"):
        if shutil.which(tool) is None:
            found.append(_f("warning", "ToolMissing", tool,
                            f"{tool} not found: transparent interception and the namespace "
                            "demo need it (explicit listeners work without)",
                            "`scripts/install-system-deps.sh test` as root"))
    checked.append("privileges")
    if os.geteuid() != 0:
        found.append(_f("warning", "NotRoot", "privileges",
                        "not root: `tulle iptables apply` and `tulle demo` in network namespaces "
                        "need CAP_NET_ADMIN; the demo falls back to loopback",
                        "run those as root"))
    checked.append("default ports")
    for what, port, flag in DEFAULT_PORTS:
        msg = first_taken([Wanted("127.0.0.1", port, what, flag)])
        if msg:
            found.append(_f("warning", "PortInUse", f"port {port}", msg))
    return found, checked


__all__ = ["DEFAULT_PORTS", "checks"]
