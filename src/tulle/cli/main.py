"""The `tulle` script's entry point: `tulle proxy run` without click, everything else with it.

A proxy runs in every pod, and click with what it imports costs each one ~1.3 MB of resident
memory for a command line read once, so `tulle proxy run ...` goes to `tulle.cli.proxy_run`
(the same options, from one table) and never imports click; `--help` and every other command
go to the click group in `tulle.cli.commands` (ADR 0068).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def wants_lean_proxy(argv: Sequence[str]) -> bool:
    """`proxy run` with options, none of them a request for help."""
    return list(argv[:2]) == ["proxy", "run"] and "--help" not in argv[2:]


def main() -> None:
    argv = sys.argv[1:]
    if wants_lean_proxy(argv):
        from tulle.cli.proxy_run import main as run_proxy

        sys.exit(run_proxy(argv[2:]))
    from tulle.cli.commands import cli

    cli()


if __name__ == "__main__":
    main()
