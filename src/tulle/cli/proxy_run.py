"""`tulle proxy run` without click: the options, their parser and what the command does.

A proxy runs in every pod, so what its process imports is paid once per pod.  click (and
what it pulls in: `inspect`, `uuid`, `datetime`, `gettext`) costs a running proxy ~1.3 MB of
resident memory for a command line read once (ADR 0068).  `tulle.cli.main.main` hands
`tulle proxy run ...` to `main` here before click is imported; `--help` and every other command
still go through click, whose `proxy run` is built from the same `OPTIONS` table
(`tulle.cli.commands`), so the two parsers cannot drift apart.

Errors read as click's do: a usage error prints the usage line and exits 2, a refusal to start
(a port in use, an unreadable token file) prints `Error: ...` and exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from types import ModuleType

    from tulle.dataplane.stream_tls import StreamTrust

PROG = "tulle proxy run"


class UsageError(Exception):
    """Bad options (exit status 2); `hint` names the option when there is one."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def render(self) -> str:
        msg = str(self)
        return f"Invalid value for '{self.hint}': {msg}" if self.hint else msg


class StartError(Exception):
    """Valid options, but the proxy cannot start (exit status 1)."""


class Opt(NamedTuple):
    """One option of `tulle proxy run`.  `kind`: str, file, dir, int, float, choice or flag;
    `low` / `high` bound an int or float; `envvar` is read when the option is not given."""

    flags: tuple[str, ...]
    dest: str
    kind: str = "str"
    default: object = None
    help: str = ""
    multiple: bool = False
    metavar: str | None = None
    envvar: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    show_default: bool = False


OPTIONS: tuple[Opt, ...] = (
    Opt(("--config",), "config", "file",
        help="Proxy configuration (YAML or JSON, proxyconfig format)."),
    Opt(("--control-plane",), "control_planes", multiple=True, metavar="HOST:PORT",
        help="Subscribe to this control plane's proxy stream instead of reading a file "
             "(repeat for replicas; tried in order)."),
    Opt(("--workload",), "workload", help="With --control-plane: the workload's name."),
    Opt(("--node-config",), "node_config", "file",
        help="With --control-plane, instead of --workload: run as a node agent for every "
             "workload this file lists, each with its own token (ADR 0047)."),
    Opt(("-n", "--namespace"), "namespace", default="default", show_default=True),
    Opt(("--address",), "address", default="",
        help="The workload's address (default: as seen by the control plane)."),
    Opt(("--additional-address",), "additional_addresses", multiple=True, metavar="ADDRESS",
        help="With --workload: a dual-stack pod's address of the other family (Kubernetes' "
             "second pod IP); registered with the Workload the first hello creates, so a "
             "mesh client's call to it goes over mTLS (ADR 0088)."),
    Opt(("--port",), "ports", multiple=True, metavar="NAME:PORT[:TARGET[:APP_PROTOCOL]]",
        help="A workload port: the proxy listens on PORT, the app on 127.0.0.1:TARGET."),
    Opt(("--label",), "labels", multiple=True, metavar="KEY=VALUE"),
    Opt(("--service-account",), "service_account", default="default", show_default=True),
    Opt(("--outbound-port",), "outbound_port", "int", default=0,
        help="Loopback port of the outbound listener (default 15001)."),
    Opt(("--dns-port",), "dns_port", "int", default=0, low=0, high=65535,
        help="Loopback port of the mesh DNS resolver (15053 in a pod whose port 53 "
             "`tulle iptables` redirects); 0: no resolver."),
    Opt(("--cache-dir",), "cache_dir", "dir",
        help="Keep the last good snapshot here, and the workload certificates with their "
             "keys (identity/, 0700, files 0600), to serve them after a restart even when "
             "the control plane is down (ADR 0123)."),
    Opt(("--admin-port",), "admin_port", "int", default=15000, show_default=True,
        help="With --control-plane: the admin port (0 disables)."),
    Opt(("--watch-interval",), "watch_interval", "float", default=1.0, low=0.0,
        show_default=True,
        help="Seconds between checks of the config file for changes; 0 disables (SIGHUP "
             "still reloads)."),
    Opt(("--token-file",), "token_file", "file", envvar="TULLE_BOOTSTRAP_TOKEN_FILE",
        help="With --control-plane: a file holding the bootstrap token (tulle token issue); "
             "also read from $TULLE_BOOTSTRAP_TOKEN.  Not $TULLE_TOKEN_FILE: that is the "
             "CLI's API token, which must never go to the stream."),
    Opt(("--ca-file",), "ca_file", "file", envvar="TULLE_STREAM_CA_FILE",
        help="With --control-plane: the mesh CA certificate(s) (PEM) to verify the control "
             "plane by, instead of the pin in the bootstrap token."),
    Opt(("--stream-plaintext",), "stream_plaintext", "flag", default=False,
        help="With --control-plane: talk to a control plane run with --stream-plaintext (no "
             "TLS; development only).  Logged as insecure."),
    Opt(("--log-level",), "log_level", "choice", default="info", show_default=True,
        choices=("debug", "info", "warning", "error")),
)
"""Every option of `tulle proxy run`, for both parsers."""

_BY_FLAG = {flag: opt for opt in OPTIONS for flag in opt.flags}


def _convert(opt: Opt, flag: str, raw: str) -> object:
    """One value as click would convert it (same checks, same words)."""
    if opt.kind in ("int", "float"):
        try:
            value: float = int(raw) if opt.kind == "int" else float(raw)
        except ValueError:
            what = "integer" if opt.kind == "int" else "float"
            raise UsageError(f"{raw!r} is not a valid {what}.", flag) from None
        if (opt.low is not None and value < opt.low) or (opt.high is not None and value > opt.high):
            lo = "" if opt.low is None else f"{opt.low:g}<="
            hi = "" if opt.high is None else f"<={opt.high:g}"
            raise UsageError(f"{raw} is not in the range {lo}x{hi}.", flag)
        return value
    if opt.kind == "choice" and raw not in opt.choices:
        raise UsageError(f"{raw!r} is not one of {', '.join(map(repr, opt.choices))}.", flag)
    if opt.kind == "file" and os.path.isdir(raw):
        raise UsageError(f"File {raw!r} is a directory.", flag)
    if opt.kind == "dir" and os.path.isfile(raw):
        raise UsageError(f"Directory {raw!r} is a file.", flag)
    return raw


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """`argv` (after `proxy run`) as {dest: value}, every option present (defaults filled in)."""
    env = os.environ if environ is None else environ
    given: dict[str, list[object]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise UsageError(f"Got unexpected extra argument ({argv[i]})")
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"Got unexpected extra argument ({arg})")
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
        opt = _BY_FLAG.get(flag)
        if opt is None:
            raise UsageError(f"No such option: {flag}")
        if opt.kind == "flag":
            if eq or inline:
                raise UsageError(f"Option '{flag}' does not take a value.")
            given.setdefault(opt.dest, []).append(True)
            continue
        if eq or inline:
            raw = inline
        elif i < len(argv):
            raw = argv[i]
            i += 1
        else:
            raise UsageError(f"Option '{flag}' requires an argument.")
        given.setdefault(opt.dest, []).append(_convert(opt, opt.flags[-1], raw))
    out: dict[str, object] = {}
    for opt in OPTIONS:
        values = given.get(opt.dest)
        if values is None and opt.envvar and env.get(opt.envvar):
            values = [_convert(opt, opt.flags[-1], env[opt.envvar])]
        if opt.multiple:
            out[opt.dest] = tuple(values or ())
        else:
            out[opt.dest] = values[-1] if values else opt.default
    return out


def run(opts: Mapping[str, object]) -> int:
    """What `tulle proxy run` does with its options; the exit status."""
    from tulle.dataplane import runner
    from tulle.proxyconfig.validate import ConfigError

    o = _Typed(opts)
    runner.configure_logging(o.text("log_level"))
    config, control_planes = o.maybe("config"), o.many("control_planes")
    if bool(config) == bool(control_planes):
        raise UsageError("give exactly one of --config FILE or --control-plane ADDR")
    if control_planes:
        workload, node_config = o.maybe("workload"), o.maybe("node_config")
        if bool(workload) == bool(node_config):
            raise UsageError("--control-plane needs --workload NAME or --node-config FILE")
        if node_config:
            return run_node(control_planes, node_config, o.maybe("cache_dir"), o.integer("admin_port"),
                            o.maybe("ca_file"), bool(opts["stream_plaintext"]))
        return run_subscribed(
            control_planes, o.text("workload"), o.text("namespace"), o.text("address"),
            o.many("ports"), o.many("labels"), o.text("service_account"), o.integer("outbound_port"),
            o.maybe("cache_dir"), o.integer("admin_port"), o.maybe("token_file"), o.maybe("ca_file"),
            bool(opts["stream_plaintext"]), dns_port=o.integer("dns_port"),
            additional_addresses=o.many("additional_addresses"))
    assert config is not None
    try:
        return runner.run(config, watch_interval=o.number("watch_interval"))
    except ConfigError as exc:
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
        return 2


class _Typed:
    """Typed reads of the option map (click hands the same values as keyword arguments)."""

    def __init__(self, opts: Mapping[str, object]) -> None:
        self.opts = opts

    def text(self, key: str) -> str:
        return str(self.opts[key])

    def maybe(self, key: str) -> str | None:
        v = self.opts.get(key)
        return None if v is None or v == "" else str(v)

    def integer(self, key: str) -> int:
        v = self.opts[key]
        assert isinstance(v, int)
        return v

    def number(self, key: str) -> float:
        v = self.opts[key]
        assert isinstance(v, (int, float))
        return float(v)

    def many(self, key: str) -> tuple[str, ...]:
        v = self.opts.get(key) or ()
        assert isinstance(v, (tuple, list))
        return tuple(str(x) for x in v)


class _NoDecimal:
    """What msgspec takes for `decimal.Decimal` in a proxy (ADR 0084): a type no value is an
    instance of, so msgspec refuses a real `Decimal` (TypeError) instead of encoding it."""


class _NoUUID:
    """What msgspec takes for `uuid.UUID` in a proxy (ADR 0084), as `_NoDecimal`."""


def _placeholders() -> dict[str, ModuleType]:
    """The modules msgspec's import gets instead of `decimal` and `uuid` (ADR 0084): each with
    the names msgspec reads from it (`uuid.SafeUUID.unknown` too)."""
    import enum
    import types

    decimal = types.ModuleType("decimal", "a placeholder for msgspec's import (ADR 0084)")
    decimal.Decimal = _NoDecimal  # type: ignore[attr-defined]
    uuid = types.ModuleType("uuid", "a placeholder for msgspec's import (ADR 0084)")
    uuid.UUID = _NoUUID  # type: ignore[attr-defined]
    SafeUUID = enum.Enum("SafeUUID", [("safe", 0), ("unsafe", -1), ("unknown", None)])
    uuid.SafeUUID = SafeUUID  # type: ignore[attr-defined]
    return {"decimal": decimal, "uuid": uuid}


def import_msgspec_alone() -> None:
    """Import msgspec without `typing_extensions`, `decimal` and `uuid`, which the proxy has no use
    for (ADR 0081, ADR 0084).

    msgspec does not depend on `typing_extensions`; when it can import it, it takes its
    `get_type_hints` and `Required` / `NotRequired` from there, and falls back to `typing`'s,
    which on Python >= 3.11 are the same for everything the proxy's contract uses (0.3 MB of
    resident memory in every proxy).  `decimal` (the C `_decimal` library and `numbers`) and
    `uuid` (with `platform` and `_uuid`), ~0.7 MB together, msgspec imports only to know the
    `Decimal` and `UUID` types; no field of the proxy's contract or of its stream messages is
    either, so it gets modules whose types are `_NoDecimal` and `_NoUUID` for the length of
    its import.  All of it lasts only for msgspec's own import: a later import of any of these
    modules (a library's) gets the real one; only msgspec in this process cannot encode or
    decode a `Decimal` or a `UUID`.
    """
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    placeholders = {name: module for name, module in _placeholders().items()
                    if name not in sys.modules}  # one already imported is left alone
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # refuse, for now
    sys.modules.update(placeholders)
    try:
        import msgspec  # noqa: F401
    finally:
        if sys.modules.get("typing_extensions", 0) is None:
            del sys.modules["typing_extensions"]
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def main(argv: Sequence[str]) -> int:
    """`tulle proxy run ARGV...` as the `tulle` script runs it; the exit status."""
    import_msgspec_alone()
    try:
        return run(parse(argv))
    except UsageError as exc:
        print(f"Usage: {PROG} [OPTIONS]\nTry '{PROG} --help' for help.\n\nError: "
              f"{exc.render()}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def ports_free(wanted: list[tuple[str, str, int, str]]) -> None:
    """Refuse to start, naming the port, the process holding it and the flag that moves it,
    when another process listens on one of `wanted` (what, address, port, flag): one line and
    exit status 1, never a traceback from deep inside the server."""
    from tulle.net.ports import Wanted, first_taken

    msg = first_taken([Wanted(a, p, what, flag) for what, a, p, flag in wanted])
    if msg:
        raise StartError(msg)


def parse_ports(values: tuple[str, ...]) -> list[dict[str, object]]:
    """`--port http:18001:8001[:appProtocol]` -> Workload ports (name:port[:targetPort[:proto]])."""
    out: list[dict[str, object]] = []
    for v in values:
        parts = v.split(":")
        if len(parts) < 2 or not parts[1].isdigit() or not all(
                p.isdigit() for p in parts[2:3] if p):
            raise UsageError(f"{v!r}: use NAME:PORT[:TARGET_PORT[:APP_PROTOCOL]]", "--port")
        port: dict[str, object] = {"name": parts[0], "port": int(parts[1])}
        if len(parts) > 2 and parts[2]:
            port["targetPort"] = int(parts[2])
        if len(parts) > 3 and parts[3]:
            port["appProtocol"] = parts[3]
        out.append(port)
    return out


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    """`--label KEY=VALUE` options as a map (a later KEY wins); UsageError without `=`."""
    out: dict[str, str] = {}
    for lv in values:
        k, sep, v = lv.partition("=")
        if not sep:
            raise UsageError(f"{lv!r}: use KEY=VALUE", "--label")
        out[k] = v
    return out


def _trust(token: str, ca_file: str | None, stream_plaintext: bool) -> StreamTrust:
    from pathlib import Path

    from tulle.dataplane.stream_tls import StreamTrust

    if stream_plaintext:
        return StreamTrust.insecure_plaintext()
    try:
        return StreamTrust.from_options(token, Path(ca_file) if ca_file else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_node(control_planes: tuple[str, ...], node_config: str, cache_dir: str | None,
             admin_port: int, ca_file: str | None = None,
             stream_plaintext: bool = False) -> int:
    """A node agent: one proxy for every workload of `node_config` (ADR 0047)."""
    from pathlib import Path

    from tulle.cli.node_config import NodeConfigError, load
    from tulle.dataplane.subscribed import run as run_stream

    try:
        node = load(Path(node_config))
    except NodeConfigError as exc:
        raise UsageError(str(exc), "--node-config") from None
    first, rest = node[0], node[1:]
    ports_free([("the admin port", "127.0.0.1", admin_port, "--admin-port (0 disables it)")])
    trust = _trust(first.token, ca_file, stream_plaintext)
    return run_stream(control_planes, first.info,
                      cache_dir=Path(cache_dir) if cache_dir else None,
                      admin_port=admin_port, token=first.token, trust=trust,
                      workloads=[w.info for w in rest],
                      node_tokens={f"{w.info.namespace}/{w.info.name}": w.token for w in rest})


def run_subscribed(control_planes: tuple[str, ...], workload: str, namespace: str,
                   address: str, ports: tuple[str, ...], labels: tuple[str, ...],
                   service_account: str, outbound_port: int, cache_dir: str | None,
                   admin_port: int, token_file: str | None = None,
                   ca_file: str | None = None, stream_plaintext: bool = False,
                   dns_port: int = 0, additional_addresses: tuple[str, ...] = ()) -> int:
    """A sidecar subscribed to the control plane for one workload."""
    from pathlib import Path

    from tulle.dataplane.subscribed import run as run_stream
    from tulle.proxyconfig.stream import WorkloadInfo

    info = WorkloadInfo(name=workload, namespace=namespace, address=address,
                        additional_addresses=list(additional_addresses),
                        service_account=service_account, labels=parse_labels(labels),
                        ports=parse_ports(ports), outbound_port=outbound_port,
                        dns_port=dns_port, admin_port=admin_port)
    token = os.environ.get("TULLE_BOOTSTRAP_TOKEN", "")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"{token_file}: {exc.strerror}", "--token-file") from None
    trust = _trust(token, ca_file, stream_plaintext)
    wanted = [("the admin port", "127.0.0.1", admin_port, "--admin-port (0 disables it)")]
    if dns_port:
        wanted.append(("the mesh DNS port", "127.0.0.1", dns_port, "--dns-port"))
    ports_free(wanted)
    return run_stream(control_planes, info, cache_dir=Path(cache_dir) if cache_dir else None,
                      admin_port=admin_port, token=token, trust=trust)
