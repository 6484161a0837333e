"""`tulle control-plane run` (the proxy's control-plane mode lives in `proxy_run.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("control-plane")
def control_plane() -> None:
    """Run the control plane."""


@control_plane.command("run")
@click.option("--store", "store_url", default="sqlite:tulle.db", show_default=True,
              envvar="TULLE_STORE",
              help="memory | sqlite:PATH | postgresql://USER@HOST:PORT/DB")
@click.option("--api-address", default="127.0.0.1", show_default=True)
@click.option("--api-port", default=15681, show_default=True, type=int)
@click.option("--stream-address", default="127.0.0.1", show_default=True)
@click.option("--stream-port", default=15680, show_default=True, type=int)
@click.option("--instance", default="", help="Name of this replica (default host-pid).")
@click.option("--debounce-ms", default=100, show_default=True, type=int,
              help="Changes arriving within this window are compiled together.")
@click.option("--stream-hello-timeout", default=5.0, show_default=True, type=float,
              envvar="TULLE_STREAM_HELLO_TIMEOUT",
              help="Seconds a new stream connection has to say hello before it is closed.")
@click.option("--stream-max-connections", default=10_000, show_default=True, type=int,
              envvar="TULLE_STREAM_MAX_CONNECTIONS",
              help="Open stream connections at most (0: no limit); more are closed at once. "
                   "Held to half the soft RLIMIT_NOFILE.")
@click.option("--stream-max-pending-hellos", default=256, show_default=True, type=int,
              envvar="TULLE_STREAM_MAX_PENDING_HELLOS",
              help="Open stream connections that have not said hello yet, at most (0: no cap "
                   "of their own); more are closed at once. Held to a quarter of the soft "
                   "RLIMIT_NOFILE.")
@click.option("--stream-liveness-timeout", default=30.0, show_default=True, type=float,
              envvar="TULLE_STREAM_LIVENESS_TIMEOUT",
              help="Seconds without a frame from a connected proxy (it answers a ping every "
                   "10 s) before its stream is closed and its workload leaves its Services' "
                   "endpoints (0: never).")
@click.option("--stream-stall-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              envvar="TULLE_STREAM_STALL_TIMEOUT",
              help="Seconds a push may go without the proxy taking any of it (it does not "
                   "read) before its stream is closed; a slow proxy that keeps reading is "
                   "never cut.")
@click.option("--stats-interval", default=5.0, show_default=True,
              type=click.FloatRange(min=0), envvar="TULLE_STATS_INTERVAL",
              help="Seconds between the traffic reports proxies send for `tulle stat` "
                   "(0: none asked for).")
@click.option("--api-max-body-bytes", default=16 * 1024 * 1024, show_default=True, type=int,
              envvar="TULLE_API_MAX_BODY_BYTES",
              help="Largest REST API request body (0: no limit); larger ones get 413.")
@click.option("--ca-cert", default="", envvar="TULLE_CA_CERT",
              help="The mesh CA's certificate (PEM, ending with its root); default: a root "
                   "made at first start and kept in the store.")
@click.option("--ca-key", default="", envvar="TULLE_CA_KEY",
              help="The mesh CA's ECDSA P-256 key (PEM, mode 0600).")
@click.option("--cert-ttl", default="24h", show_default=True, envvar="TULLE_CERT_TTL",
              help="Lifetime of workload certificates (renewed at half of it).")
@click.option("--admin-token-file", default=None, envvar="TULLE_ADMIN_TOKEN_FILE",
              type=click.Path(dir_okay=False),
              help="Where the control plane keeps an admin token for the API (mode 0600; "
                   "made at first start).  Default: next to a SQLite store (STORE.admin-token); "
                   "with other stores, none unless given.")
@click.option("--api-tls-cert", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Serve the REST API over TLS with this certificate chain (PEM).")
@click.option("--api-tls-key", default=None, type=click.Path(dir_okay=False, exists=True),
              help="The private key of --api-tls-cert (PEM).")
@click.option("--api-allow-plaintext", is_flag=True, default=False,
              help="Allow a non-loopback --api-address without TLS (tokens in plaintext on the "
                   "network; for TLS terminated in front).  Logged as a warning.")
@click.option("--stream-san", "stream_sans", multiple=True, metavar="NAME|IP",
              envvar="TULLE_STREAM_SANS",
              help="A DNS name or IP address proxies reach the stream by, added to its TLS "
                   "certificate (repeat; default: localhost, 127.0.0.1, ::1, this host's name "
                   "and --stream-address).")
@click.option("--stream-plaintext", is_flag=True, default=False,
              help="Serve the proxy stream WITHOUT TLS (development only; tokens and proofs "
                   "in the clear).  Logged as insecure.")
@click.option("--stream-fd", default=None, type=click.IntRange(min=3), metavar="FD",
              help="Serve the proxy stream on this inherited, already listening TCP socket "
                   "instead of binding --stream-address/--stream-port (socket activation; "
                   "`tulle demo` opens it inside a network namespace).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run_cmd(store_url: str, api_address: str, api_port: int, stream_address: str,
            stream_port: int, instance: str, debounce_ms: int, stream_hello_timeout: float,
            stream_max_connections: int, stream_max_pending_hellos: int,
            stats_interval: float,
            stream_liveness_timeout: float, stream_stall_timeout: float,
            api_max_body_bytes: int, ca_cert: str, ca_key: str, cert_ttl: str,
            admin_token_file: str | None, api_tls_cert: str | None,
            api_tls_key: str | None, api_allow_plaintext: bool,
            stream_sans: tuple[str, ...], stream_plaintext: bool, stream_fd: int | None,
            log_level: str) -> None:
    """Serve the REST API and the proxy stream from a store.

    The API needs a token on every call but /healthz and /readyz; the first admin token is
    written to --admin-token-file, which `tulle` reads for a local control plane."""
    import datetime as dt

    from tulle.cli.token import parse_duration
    from tulle.controlplane.api.admin_token import default_admin_token_file
    from tulle.controlplane.ca.authority import CAError
    from tulle.controlplane.main import main
    from tulle.controlplane.store.factory import quiet_drivers
    from tulle.dataplane.runner import configure_logging

    configure_logging(log_level)
    quiet_drivers()  # whatever --log-level says: their debug lines hold the CA key
    ca_files_usable(ca_cert, ca_key)
    ports_free([("the REST API", api_address, api_port, "--api-port")]
               + ([] if stream_fd is not None else  # (a handed-over socket is bound already)
                  [("the proxy stream", stream_address, stream_port, "--stream-port")]))
    token_file = Path(admin_token_file) if admin_token_file else \
        default_admin_token_file(store_url)
    try:
        code = main(store_url, api_host=api_address, api_port=api_port,
                    stream_host=stream_address, stream_port=stream_port, instance=instance,
                    debounce=debounce_ms / 1000, stream_hello_timeout=stream_hello_timeout,
                    stream_max_connections=stream_max_connections,
                    stream_max_pending_hellos=stream_max_pending_hellos,
                    api_max_body_bytes=api_max_body_bytes, ca_cert=ca_cert, ca_key=ca_key,
                    cert_ttl=dt.timedelta(seconds=parse_duration(cert_ttl)),
                    admin_token_file=token_file,
                    api_tls_cert=Path(api_tls_cert) if api_tls_cert else None,
                    api_tls_key=Path(api_tls_key) if api_tls_key else None,
                    api_allow_plaintext=api_allow_plaintext, stream_sans=stream_sans,
                    stream_plaintext=stream_plaintext,
                    stream_liveness_timeout=stream_liveness_timeout,
                    stream_stall_timeout=stream_stall_timeout,
                    stats_interval=stats_interval, stream_fd=stream_fd)
    except CAError as exc:
        # A damaged CA record in the store (the files were checked above): one line and
        # exit 1, not a traceback; nothing was served.
        raise click.ClickException(
            f"{exc}: the store's CA record is damaged; restore the store from a backup (a new "
            "CA would mean re-issuing every workload certificate)") from None
    sys.exit(code)


def ports_free(wanted: list[tuple[str, str, int, str]]) -> None:
    """`proxy_run.ports_free` for a click command: a taken port exits 1 with one line."""
    from tulle.cli import proxy_run

    try:
        proxy_run.ports_free(wanted)
    except proxy_run.StartError as exc:
        raise click.ClickException(str(exc)) from None


class BadStartOption(click.ClickException):
    """An option found bad when the command starts (a file it names): one `Error:` line on
    stderr, like the other start errors, and exit status 2, a bad option's.  Not click's usage
    error: its usage text would bury the one line that says what to do."""

    exit_code = 2


def ca_files_usable(ca_cert: str, ca_key: str) -> None:
    """Load the operator's CA files (`--ca-cert`, `--ca-key`) before anything starts, so that a
    key others can read, a key of the wrong kind or curve, a key not matching its certificate,
    a certificate that is not a CA or a missing file is one line naming the option and the
    reason (BadStartOption), not a traceback from inside the started control plane."""
    if not ca_cert and not ca_key:
        return
    if not ca_cert or not ca_key:
        raise BadStartOption("give both --ca-cert and --ca-key, or neither")
    from tulle.controlplane.ca.authority import CAError
    from tulle.controlplane.ca.persist import load_files

    try:
        load_files(Path(ca_cert), Path(ca_key))
    except CAError as exc:
        raise BadStartOption(str(exc)) from None
