"""The profile-guided build's workload (scripts/native_training.py, ADR 0083) still runs every
kind of traffic through real proxies: a kind that stops completing (a config the proxy now
refuses, a client that no longer matches) would leave its path without a profile, and a
failure would leave the whole build without one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "native_training.py"


def _training() -> ModuleType:
    spec = importlib.util.spec_from_file_location("native_training", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_kind_of_training_traffic_completes() -> None:
    training = _training()
    done = training.train(seconds=1.0)
    assert training.missing(done) == [], done
    assert set(done) <= set(training.KINDS)


def test_missing_names_the_kinds_that_completed_nothing() -> None:
    training = _training()
    from collections import Counter

    done = Counter({k: 3 for k in training.KINDS if k != "grpc"})
    assert training.missing(done) == ["grpc"]
