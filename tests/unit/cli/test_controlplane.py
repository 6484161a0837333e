"""`tulle control-plane run`'s start checks (cli/controlplane.py): the operator's CA files are
loaded before anything starts; a usable pair passes, a bad one is a `BadStartOption` (exit 2).
The refusals through the real CLI: tests/integration/cli/test_control_plane_ca_files.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.certs import operator_root, write_ca_files

from tulle.cli.controlplane import BadStartOption, ca_files_usable


def _files(tmp: Path, mode: int = 0o600) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = write_ca_files(tmp, operator_root(key), key, mode)
    return str(cert_path), str(key_path)


def test_a_usable_pair_and_no_pair_pass(tmp_path: Path) -> None:
    ca_files_usable(*_files(tmp_path))
    ca_files_usable("", "")  # neither: the control plane makes its own CA


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o700])
def test_a_key_file_not_owner_only_is_a_bad_option(tmp_path: Path, mode: int) -> None:
    cert, key = _files(tmp_path, mode)
    if mode == 0o700:  # owner-only, even executable: fine
        ca_files_usable(cert, key)
        return
    with pytest.raises(BadStartOption) as raised:
        ca_files_usable(cert, key)
    assert raised.value.exit_code == 2
    assert raised.value.message == f"--ca-key {key}: mode {mode:04o} lets others read it; " \
                                   f"chmod 600 it"
