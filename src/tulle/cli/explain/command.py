"""`tulle explain`: fetch the snapshots the proxies run and the workloads' identities from the
control plane's REST API (GETs only: a read-only token is enough), trace the request locally
(`tulle.cli.explain`), print the trace (`render.py`) or its JSON document.

Exit status: 0 when a trace is printed (whatever the request's outcome), 2 for bad input or an
unknown workload / service / port (the message names the option), 1 when the control plane
cannot be reached or refuses the token.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from typing import Any

import click
import msgspec

from tulle.cli.client import APIError, call, server_url
from tulle.cli.explain import ExplainError, build_request, explain
from tulle.cli.explain.render import render
from tulle.cli.resources import server_option
from tulle.proxyconfig.model import ProxyConfig

DEFAULT_TRUST_DOMAIN = "cluster.local"


class _Fetch:
    """The API reads a trace needs, each once."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.configs: dict[tuple[str, str], tuple[ProxyConfig, str] | None] = {}
        self.accounts: dict[tuple[str, str], str] = {}
        self.policies: dict[str, dict[str, Any] | None] = {}
        self.domain: str | None = None

    def _get(self, path: str) -> Any:
        try:
            return call(self.server, "GET", path)
        except APIError as exc:
            if exc.status == 404:
                return None
            raise

    def config(self, ns: str, name: str) -> tuple[ProxyConfig, str] | None:
        key = (ns, name)
        if key not in self.configs:
            q = urllib.parse.quote
            out = self._get(f"/api/v1/proxies/{q(ns, safe='')}/{q(name, safe='')}/config")
            self.configs[key] = None if out is None else (
                msgspec.convert(out["config"], ProxyConfig), str(out.get("source")))
        return self.configs[key]

    def policy_spec(self, name: str) -> dict[str, Any] | None:
        """An AuthorizationPolicy as written (`namespace/name`), for rule numbers as written."""
        if name not in self.policies:
            ns, _, short = name.partition("/")
            q = urllib.parse.quote
            obj = self._get(f"/api/v1/resources/authorizationpolicies/{q(short, safe='')}"
                            f"?namespace={q(ns, safe='')}")
            spec = (obj or {}).get("spec")
            self.policies[name] = spec if isinstance(spec, dict) else None
        return self.policies[name]

    def identity(self, ns: str, name: str) -> str:
        if self.domain is None:
            meshes = self._get("/api/v1/resources/meshes") or {}
            items = meshes.get("items") or []
            self.domain = next((m["spec"]["trustDomain"] for m in items
                                if (m.get("spec") or {}).get("trustDomain")),
                               DEFAULT_TRUST_DOMAIN)
        key = (ns, name)
        if key not in self.accounts:
            q = urllib.parse.quote
            w = self._get(f"/api/v1/resources/workloads/{q(name, safe='')}"
                          f"?namespace={q(ns, safe='')}") or {}
            self.accounts[key] = (w.get("spec") or {}).get("serviceAccount") or "default"
        return f"spiffe://{self.domain}/ns/{ns}/sa/{self.accounts[key]}"


@click.command("explain")
@click.argument("what", required=False, metavar="[KIND[.FIELD...]]")
@click.option("--from", "source", default=None, metavar="WORKLOAD",
              help="The calling workload (NAME, or NAMESPACE/NAME).")
@click.option("--to", "to", default=None, metavar="SERVICE[:PORT]",
              help="The authority the caller uses: SERVICE, SERVICE.NAMESPACE, ... with the "
                   "port unless it is 80.")
@click.option("--path", default="/", show_default=True)
@click.option("--method", default="GET", show_default=True)
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="A request header (repeat).  Used for the decision only: values are never "
                   "sent to the control plane nor printed.")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace of --from when it has none.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@server_option
def explain_cmd(what: str | None, source: str | None, to: str | None, path: str, method: str,
                headers: tuple[str, ...], namespace: str, output: str,
                server: str | None) -> None:
    """Which route rule, filters, backends, mTLS mode and authorization policy apply to one
    request from a workload to a Service, and why (--from W --to S): evaluated offline by the
    proxies' own decision code over the snapshots they run.

    `tulle explain KIND[.FIELD...]` instead documents a resource kind's fields, as `kubectl
    explain` does (e.g. `tulle explain httproute.spec.rules`)."""
    if what is not None:
        if source or to:
            raise click.UsageError("give KIND[.FIELD] or --from/--to, not both")
        from tulle.cli.explain_schema import explain_kind

        click.echo(explain_kind(what), nl=False)
        return
    if not source or not to:
        raise click.UsageError("give --from WORKLOAD and --to SERVICE (a request to trace), "
                               "or KIND[.FIELD] (a resource's fields)")
    try:
        req = build_request(source, namespace, to, path, method, list(headers))
    except ExplainError as exc:
        raise click.UsageError(f"--{exc.field}: {exc.message}") from None
    fetch = _Fetch(server_url(server))
    try:
        doc = explain(req, fetch.config, fetch.identity, fetch.policy_spec)
    except ExplainError as exc:
        click.echo(f"error: --{exc.field}: {exc.message}", err=True)
        sys.exit(2)
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render(doc))
