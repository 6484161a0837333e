"""Attack review A2 (ADR 0060): `tulle dashboard` must not put the API token on a browser's
command line, where every local user reads it (`/proc/PID/cmdline`, `ps`).

The real `tulle` runs against a real control plane with `BROWSER` set to a recorder that
keeps the arguments it was started with (as a browser would show them in `ps`); then a real
headless Chromium follows what the recorder got to the dashboard, which holds the token.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path

from tests.support.chromium import headless_page
from tests.support.cli import tulle
from tests.support.controlplane import admin_token, eventually, running_control_plane


async def test_the_token_never_reaches_a_browsers_command_line(tmp_path: Path) -> None:
    recorder = tmp_path / "browser.sh"
    argv = tmp_path / "argv"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\n')
    recorder.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    async with running_control_plane() as cp:
        token = admin_token(cp.api_url)
        code, out, err = await tulle(cp.api_url, "dashboard", env={
            "BROWSER": str(recorder), "XDG_RUNTIME_DIR": str(run)})
        assert code == 0, err
        assert token not in out and "opened" in out
        args = argv.read_text()
        secret = token.split("_", 2)[2]
        assert secret not in args and urllib.parse.quote(secret, safe="") not in args, args
        (opened,) = args.split()
        assert opened.startswith("file://")
        launcher = Path(urllib.parse.urlsplit(opened).path)
        st = launcher.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(launcher.parent.stat().st_mode) == 0o700

        async with headless_page(tmp_path / "profile") as page:
            await page.send("Page.navigate", url=opened)

            async def arrived() -> bool:
                return bool(await page.poll(
                    "location.pathname === '/dashboard/' && "
                    "sessionStorage.getItem('tulle-token') !== null"))

            await eventually(arrived, timeout=20, interval=0.2)
            assert await page.evaluate("sessionStorage.getItem('tulle-token')") == token
            assert await page.evaluate("window.location.href") == f"{cp.api_url}/dashboard/"


async def test_without_a_token_the_dashboard_url_is_opened_as_it_is(tmp_path: Path) -> None:
    recorder = tmp_path / "browser.sh"
    argv = tmp_path / "argv"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\n')
    recorder.chmod(0o755)
    async with running_control_plane() as cp:
        # (`tulle dashboard` checks the token first: with none it stops before any browser)
        code, _, err = await tulle(cp.api_url, "dashboard", token=None,
                                   env={"BROWSER": str(recorder)})
        assert code == 1 and "token" in err and not argv.exists()
