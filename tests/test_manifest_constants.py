"""Constants the runtime takes from the bundle manifest rather than from its own code (DESIGN: the bundle
contract), and the exporter writing them as the trained model has them."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from harmony_rt.bundle import MANIFEST, default_bundle_path
from harmony_rt.errors import HarmonyError
from harmony_rt.pipeline import Pipeline


@pytest.fixture(scope="module")
def long_ref_pipe(tmp_path_factory):
    """The shipped bundle, its manifest saying the model was trained on references up to 12 s."""
    dst = tmp_path_factory.mktemp("bundle") / "long_ref"
    shutil.copytree(default_bundle_path(), dst)
    m = json.loads((dst / MANIFEST).read_text("utf-8"))
    m["sampling"]["max_ref_seconds"] = 12.0
    (dst / MANIFEST).write_text(json.dumps(m), "utf-8")
    return Pipeline.from_bundle(dst, threads=1, split="batched")


def test_reference_longer_than_10_s_is_taken_when_the_model_uses_it(long_ref_pipe, monkeypatch):
    """A model trained on 12 s references is given an 11 s one whole (it was refused: 0.5-10 s was fixed)."""
    pipe = long_ref_pipe
    sr = pipe.geometry.sample_rate
    seen = []
    real = pipe.encode_audio
    monkeypatch.setattr(pipe, "encode_audio", lambda wav: seen.append(len(wav)) or real(wav))
    ref = (np.random.default_rng(0).standard_normal(11 * sr) * 0.1).astype(np.float32)
    pipe.generate("a man speaks", ref_audio=ref, steps=1, guidance="none", seconds=0.25)
    assert 11 * sr in seen  # the whole reference went to the audio encoder
    with pytest.raises(HarmonyError, match="reference audio must be 0.5-12 s"):
        pipe.generate("a man speaks", ref_audio=np.zeros(13 * sr, np.float32), steps=1, guidance="none")


def test_exported_max_ref_seconds_is_the_longest_reference_training_saw():
    """Training crops references from its clips, so a model trained on 2 s clips with ref_seconds up to 3 s
    never saw more than 2 s: the manifest says 2, not 3 (the runtime would feed 3 s)."""
    pytest.importorskip("torch")
    from export.bundle_writer import manifest_for
    from train.configs import get_config

    model = SimpleNamespace(cfg=get_config("tiny"))

    def max_ref(train_config):
        extra = {"training": {"train_config": train_config}} if train_config is not None else {}
        return manifest_for(model, {}, {}, extra)["sampling"]["max_ref_seconds"]

    assert max_ref({"ref_seconds": [0.5, 3.0], "seconds": 2.0}) == 2.0
    assert max_ref({"ref_seconds": [0.5, 1.0], "seconds": 2.0}) == 1.0
    assert max_ref(None) == 3.0  # no training record: as before
