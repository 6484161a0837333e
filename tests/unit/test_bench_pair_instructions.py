"""`bench.pair_instructions.parse`: self instructions per function from callgrind's format."""

from __future__ import annotations

from pathlib import Path

from bench.pair_instructions import parse

SAMPLE = """version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /usr/lib/libssl.so.3
fl=(1) ???
fn=(1) SSL_write_ex
0 100
cob=(2) /usr/lib/libcrypto.so.3
cfl=(1)
cfn=(2) EVP_EncryptUpdate
calls=3 0
0 5000
+1 20
ob=(2)
fn=(2)
0 4000
fn=(3) BIO_ctrl
* 7
ob=(1)
fn=(1)
0 1
"""


def test_self_costs_skip_the_inclusive_cost_of_calls_and_resolve_compressed_names(
        tmp_path: Path) -> None:
    f = tmp_path / "callgrind.out"
    f.write_text(SAMPLE)
    costs = parse(f)
    assert costs == {
        ("/usr/lib/libssl.so.3", "SSL_write_ex"): 121,  # 100 + 20 + 1, not the call's 5000
        ("/usr/lib/libcrypto.so.3", "EVP_EncryptUpdate"): 4000,
        ("/usr/lib/libcrypto.so.3", "BIO_ctrl"): 7,
    }
