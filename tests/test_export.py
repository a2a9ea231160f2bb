"""Export: every component matches PyTorch, the manifest is complete, dims are symbolic."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from harmony_rt.bundle import Bundle, sha256_file  # noqa: E402
from harmony_rt.contract import COMPONENTS  # noqa: E402


def test_bundle_has_every_component_within_tolerance(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert set(m["components"]) == set(COMPONENTS)
    for name, c in m["components"].items():
        assert c["parity_max_abs_err"] <= c["parity_tolerance"] <= 1e-3, name
        assert sha256_file(tiny_bundle / c["file"]) == c["sha256"]
    b = Bundle.load(tiny_bundle)
    assert b.geometry.sample_rate == 16000 and b.sampling["shift"] == 5.0


def test_graph_dims_are_symbolic_and_named(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    for name in COMPONENTS:
        g = onnx.load(str(b.component_path(name)), load_external_data=False).graph
        for vi, spec in zip(list(g.input) + list(g.output), b.specs[name].inputs + b.specs[name].outputs):
            dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert vi.name == spec.name
            assert dims == list(spec.shape), (name, vi.name, dims, spec.shape)


def test_onnx_matches_torch_at_a_new_shape(tiny_checkpoint, tiny_bundle):
    """Independent of the exporter's own check: a batch / length never seen at export time."""
    import torch

    from harmony_rt.backends.ort import OrtBackend
    from train.checkpoints import load_checkpoint

    model, _, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    be = OrtBackend(Bundle.load(tiny_bundle))
    cfg = model.cfg
    F, B = 5, 4
    T = cfg.geometry().audio_frames_for(F)
    g = torch.Generator().manual_seed(5)
    feeds = dict(
        video_latent=torch.randn(B, cfg.C_v, F, *cfg.video_latent_hw, generator=g),
        audio_latent=torch.randn(B, 1, T, cfg.C_a, generator=g),
        t_video=torch.tensor([0.0, 0.3, 0.9, 1.0]), t_audio=torch.tensor([0.5, 0.0, 0.2, 1.0]),
        text_emb=torch.randn(B, 3, cfg.text_dim, generator=g), text_mask=torch.tensor([[1.0, 1, 1]] * 3 + [[1.0, 0, 0]]),
        audio_text_emb=torch.randn(B, 2, cfg.text_dim, generator=g), audio_text_mask=torch.ones(B, 2),
        speech_emb=torch.randn(B, 11, cfg.speech_dim, generator=g), speech_mask=torch.ones(B, 11),
        ref_latent=torch.randn(B, 2, cfg.C_a, generator=g), ref_mask=torch.tensor([[1.0, 1]] * 2 + [[0.0, 0]] * 2),
    )
    with torch.no_grad():
        ref = model.denoiser(**feeds)
    got = be.run("denoiser", {k: v.numpy() for k, v in feeds.items()})
    assert np.abs(got["video_velocity"] - ref[0].numpy()).max() < 1e-4
    assert np.abs(got["audio_velocity"] - ref[1].numpy()).max() < 1e-4


def test_export_is_atomic_and_refuses_a_bad_checkpoint(tmp_path):
    from export.bundle_writer import ExportError, export_bundle

    (tmp_path / "ck").mkdir()
    with pytest.raises(ExportError):
        export_bundle(tmp_path / "ck", tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
