"""Where the REST API may listen: loopback by default; beyond it only with TLS, or on purpose.

Bearer tokens sent in plaintext over a network are anyone's who can watch it.  So an
`--api-address` that is not loopback (`0.0.0.0`, `::`, a host's address, a name) is refused at
start unless the API serves TLS (`--api-tls-cert`/`--api-tls-key`), or the operator says
`--api-allow-plaintext` (e.g. a TLS-terminating sidecar in front), which is logged as a warning
at every start.
"""

from __future__ import annotations

import ipaddress


class ExposureError(ValueError):
    """The API would carry tokens in plaintext beyond this host."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def check_api_address(host: str, *, tls: bool, allow_plaintext: bool) -> str | None:
    """None when `host` is fine as it is; a warning to log when plaintext beyond loopback was
    allowed explicitly; `ExposureError` when it was not."""
    if tls or is_loopback(host):
        return None
    if allow_plaintext:
        return (f"REST API listens on {host} WITHOUT TLS: API tokens cross the network in "
                "plaintext (--api-allow-plaintext); put TLS in front of it or use "
                "--api-tls-cert/--api-tls-key")
    raise ExposureError(
        f"--api-address {host} is not loopback and the API has no TLS: API tokens would "
        "cross the network in plaintext.  Give --api-tls-cert and --api-tls-key, or "
        "--api-allow-plaintext if TLS is terminated in front of the control plane")
