"""Shared fixtures: one tiny checkpoint and its exported bundle per test session (about a minute)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# guidance split decisions and bundle digests (harmony_rt.usercache) go to a folder of this run, not the user's cache
os.environ["HARMONY_RT_CACHE"] = tempfile.mkdtemp(prefix="harmony-rt-test-cache-")


def _have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


requires_torch = pytest.mark.skipif(not _have("torch"), reason="needs the [train] extra (torch)")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from train.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    tc = TrainConfig(size="tiny", clips=6, seconds=2.0, kinds=("ambient",), ae_steps=8, steps=6, batch=2, seed=0)
    return train(tc, out)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from export.bundle_writer import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny_bundle")
