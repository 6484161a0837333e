"""Shell completion as docs/reference/controlplane.md documents it: click's own, for bash, zsh
and fish, completing the lazily loaded commands too."""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.support.subproc import TULLE


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"),
                                               ("zsh", "#compdef tulle"),
                                               ("fish", "complete --no-files --command tulle")])
def test_the_completion_script_is_printed(shell: str, marker: str) -> None:
    r = subprocess.run([TULLE], env={**os.environ, "_TULLE_COMPLETE": f"{shell}_source"},
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and marker in r.stdout, r.stdout + r.stderr


def test_lazy_commands_and_their_options_complete() -> None:
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_TULLE_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        r = subprocess.run([TULLE], env=env, capture_output=True, text=True, timeout=30,
                           check=False)
        return [line.split(",", 1)[1] for line in r.stdout.splitlines() if "," in line]

    assert "get" in complete("tulle ge")
    assert {"api-resources", "apply", "api-token"} <= set(complete("tulle ap"))
    assert "--watch" in complete("tulle get --w")
