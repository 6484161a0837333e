"""`tulle demo`: build the meshed shop, print what runs, summarize live, clean up on the way out.

Ends on Ctrl-C, SIGTERM or `--duration`; whichever, everything the demo made is removed
(`Topology.close`).  Without root, or with `--loopback`, it runs the loopback demo instead
and says why.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType

import click

from tulle.demo import report
from tulle.demo.mesh import NAMESPACE
from tulle.demo.topology import CP_ADDRESS, DemoError, Topology
from tulle.net.netns import missing_requirements


@click.command("demo")
@click.option("--duration", default=0.0, show_default=True, type=click.FloatRange(min=0),
              envvar="DEMO_SECONDS", show_envvar=True, help="Seconds of traffic, then clean up and exit "
              "(0: until Ctrl-C).")
@click.option("--rps", default=20.0, show_default=True, type=click.FloatRange(0.1, 2000),
              envvar="DEMO_RPS", show_envvar=True,
              help="Requests per second the load generator sends to web.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds between live summaries.")
@click.option("--loopback", is_flag=True, default=False,
              help="Processes on 127.0.0.1 with explicit listeners (no namespaces; what runs "
                   "without root).")
@click.option("--api-port", default=15681, show_default=True, type=click.IntRange(1, 65535),
              help="The control plane's REST API on 127.0.0.1 (the CLI's default).")
@click.option("--stream-port", default=15680, show_default=True,
              type=click.IntRange(1, 65535),
              help="The proxy stream's port, inside the testbed.")
def demo_cmd(duration: float, rps: float, interval: float, loopback: bool, api_port: int,
             stream_port: int) -> None:
    """A sample application meshed in network namespaces: sidecars, a node agent, mTLS,
    a canary, retries, gRPC; live traffic until Ctrl-C (or --duration)."""
    why = "--loopback was given" if loopback else missing_requirements()
    if why is None and _missing_tools():
        why = f"not installed: {', '.join(_missing_tools())}"
    if why is not None:
        from tulle.demo.loopback import run_loopback
        click.echo(f"tulle demo: running on loopback with explicit listeners ({why}); the "
                   "network-namespace demo needs root, iproute2 and iptables.", err=True)
        sys.exit(run_loopback(duration, rps))
    sys.exit(run_namespaces(duration, rps, interval, api_port, stream_port))


def _missing_tools() -> list[str]:
    import shutil
    return [t for t in ("ip", "iptables", "iptables-restore", "ss", "setpriv")
            if shutil.which(t) is None]


def run_namespaces(duration: float, rps: float, interval: float, api_port: int,
                   stream_port: int) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    topo = Topology(api_port=api_port, stream_port=stream_port, rps=rps, stop=stop)
    code = 0
    try:
        print("tulle demo: building the network (namespaces, control plane, proxies) ...",
              flush=True)
        topo.progress = lambda line: print(line, flush=True)
        topo.start()
        netns = {n: ns.name for n, ns in topo.ns.items()}
        print(report.banner(topo.pods, netns, topo.api, f"{CP_ADDRESS}:{stream_port}",
                            str(topo.state), str(topo.token_file), api_port == 15681),
              flush=True)
        started = time.monotonic()
        end = started + duration if duration else None
        window = f"{max(2, int(interval * 2))}s"
        while not stop.is_set():
            wait = interval if end is None else min(interval, end - time.monotonic())
            if wait <= 0 or stop.wait(wait):
                break
            try:
                line = report.live_line(time.monotonic() - started,
                                        topo.stat("Service", window),
                                        topo.stat("Workload", window))
            except OSError as exc:
                line = f"  (stat not available: {exc})"
            print(line, flush=True)
        print("\n" + report.mtls_table({p.name: report.chains(topo.metrics(p), p.name,
                                                          p.agent_ports is not None)
                                         for p in topo.pods if p.port is not None}))
        print(f"\n$ tulle stat svc -n {NAMESPACE} --window 30s\n"
              + topo.tulle("stat", "svc", "-n", NAMESPACE, "--window", "30s").rstrip(),
              flush=True)
    except DemoError as exc:
        # Ctrl-C reaches the short commands the build runs too; say what happened, not what
        # the interrupted command said.
        why = "interrupted while building" if stop.is_set() else str(exc)
        print(f"tulle demo: {why}", file=sys.stderr, flush=True)
        code = 130 if stop.is_set() else 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        # Ctrl-C again while cleaning up must not leave half the network behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        made = topo.made_anything()
        try:
            topo.close()
        finally:
            signal.signal(signal.SIGINT, old[signal.SIGINT])
        if made:  # (a demo refused at its start removed nothing: it does not say it did)
            print("tulle demo: stopped every process, removed the namespaces and "
                  f"{topo.state}", flush=True)
    return code
