"""Unison variant: forcing curriculum and weights, dual-stream model, export and stems through the runtime."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.configs import get_config, unison  # noqa: E402
from train.losses import (  # noqa: E402
    FORCING_MAX_GAP,
    CTSBatch,
    forcing_gap,
    forcing_loss,
    forcing_timesteps,
    forcing_weights,
)
from train.model import HarmonyModel  # noqa: E402


@pytest.mark.parametrize("progress,gap", [(0.0, 0.0), (0.29, 0.0), (0.5, 0.125), (0.7, 0.25), (0.99, 0.25)])
def test_curriculum_gap(progress, gap):
    assert forcing_gap(progress) == pytest.approx(gap)


def test_timestep_sampler_per_phase():
    g = torch.Generator().manual_seed(0)
    t_v, t_a = forcing_timesteps(4000, 0.1, 5.0, g)  # synchronized warm-up
    assert torch.equal(t_v, t_a)
    t_v, t_a = forcing_timesteps(4000, 0.5, 5.0, g)  # decoupling: |gap| <= 0.125
    d = (t_v - t_a).abs()
    assert d.max() <= 0.125 + 1e-6 and d.max() > 0.1
    t_v, t_a = forcing_timesteps(4000, 0.9, 5.0, g)  # independence up to the bound
    d = (t_v - t_a).abs()
    assert d.max() <= FORCING_MAX_GAP + 1e-6 and d.max() > 0.2
    assert ((t_a >= 0) & (t_a <= 1)).all()
    # t_a earlier / later than t_v in similar proportions (clipping at 0 / 1 aside)
    frac = (t_a < t_v).float().mean().item()
    assert 0.35 < frac < 0.65


def test_phase_proportions_over_training():
    phases = [("sync" if forcing_gap(p) == 0 else "ramp" if forcing_gap(p) < FORCING_MAX_GAP else "free")
              for p in np.linspace(0, 1, 1000, endpoint=False)]
    counts = {k: phases.count(k) / 1000 for k in ("sync", "ramp", "free")}
    assert counts["sync"] == pytest.approx(0.3, abs=0.01)
    assert counts["ramp"] == pytest.approx(0.4, abs=0.01)
    assert counts["free"] == pytest.approx(0.3, abs=0.01)


def test_forcing_weights():
    w_v, w_a = forcing_weights(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.2, 0.8, 0.5]))
    assert w_v.tolist() == [1.5, 1.0, 1.0] and w_a.tolist() == [1.0, 1.5, 1.5]


def _batch(cfg, B=2, F=3):
    g = torch.Generator().manual_seed(0)
    T = cfg.geometry().audio_frames_for(F)
    cond = dict(
        text_emb=torch.randn(B, 5, cfg.text_dim, generator=g), text_mask=torch.ones(B, 5),
        audio_text_emb=torch.randn(B, 4, cfg.text_dim, generator=g), audio_text_mask=torch.ones(B, 4),
        speech_emb=torch.randn(B, 6, cfg.speech_dim, generator=g), speech_mask=torch.ones(B, 6),
        ref_latent=torch.randn(B, 2, cfg.C_a, generator=g), ref_mask=torch.ones(B, 2),
    )
    return CTSBatch(torch.randn(B, cfg.C_v, F, *cfg.video_latent_hw, generator=g),
                    torch.randn(B, 2, T, cfg.C_a, generator=g), cond)


def test_unison_training_step_decreases_loss():
    torch.manual_seed(0)
    cfg = unison(get_config("tiny"))
    model = HarmonyModel(cfg)
    assert hasattr(model.denoiser, "biaca") and hasattr(model.denoiser, "gates")
    batch = _batch(cfg)
    opt = torch.optim.AdamW(model.denoiser.parameters(), lr=2e-3)

    def loss_now():
        return forcing_loss(model.denoiser, batch, cfg, 0.9, torch.Generator().manual_seed(2))

    with torch.no_grad():
        before, logs = loss_now()
    assert {"stream0", "stream1", "video"} <= set(logs)
    for _ in range(8):
        loss, _ = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, _ = loss_now()
    assert after < 0.9 * before


def test_forcing_trains_the_synccfg_anchors_of_the_runtime():
    """With CTS (the default) the forcing loss adds the driven rows: audio-driven (t_a = 0) and video-driven
    (t_v = 0), whose clean partner is at times its null (silence in both streams / a static video): the anchors
    a Unison bundle's SyncCFG evaluates every step. Without CTS only the B forcing rows are run."""
    from dataclasses import replace

    cfg = unison(get_config("tiny"))
    seen = {}

    def denoiser(zt_v, zt_a, t_v, t_a, **cond):
        seen.update(zt_v=zt_v, zt_a=zt_a, t_v=t_v, t_a=t_a, text=cond["text_emb"])
        return torch.zeros_like(zt_v), torch.zeros_like(zt_a)

    b = _batch(cfg, B=4)
    b = replace(b, null_v=torch.full_like(b.z_v, 7.0), null_a=torch.full_like(b.z_a, -7.0))
    loss, logs = forcing_loss(denoiser, b, cfg, 0.9, torch.Generator().manual_seed(0), p_null=1.0, driven_frac=0.5)
    assert seen["zt_v"].shape[0] == 4 + 2 * 2 and {"audio_driven", "video_driven"} <= set(logs)
    assert torch.all(seen["t_a"][4:6] == 0) and torch.all(seen["t_v"][6:] == 0) and torch.all(seen["t_v"][4:6] > 0)
    assert torch.all(seen["zt_a"][4:6] == -7.0) and torch.all(seen["zt_v"][6:] == 7.0)  # the anchors' nulls
    assert torch.equal(seen["text"], b.cond["text_emb"][[0, 1, 2, 3, 0, 1, 2, 3]])
    loss, logs = forcing_loss(denoiser, b, cfg, 0.9, torch.Generator().manual_seed(0), use_cts=False)
    assert seen["zt_v"].shape[0] == 4 and "audio_driven" not in logs


def test_scg_gates_scale_each_streams_contribution():
    cfg = unison(get_config("tiny"))
    model = HarmonyModel(cfg).eval()
    b = _batch(cfg)
    with torch.no_grad():
        for gl in model.denoiser.gldi.values():
            gl.a2v.out.weight.normal_()
        model.denoiser.final_v.linear.weight.normal_()
        t = torch.full((2,), 0.5)
        v1, _ = model.denoiser(b.z_v, b.z_a, t, t, **b.cond)
        z_a2 = b.z_a.clone()
        z_a2[:, 1] *= 3  # change only the SFX stream
        v2, _ = model.denoiser(b.z_v, z_a2, t, t, **b.cond)
        assert not torch.equal(v1, v2)
        # shut both gates: the video no longer hears either stream (Bi-ACA / V2A only feed the audio side)
        model.denoiser.gates.mlp[2].bias.copy_(torch.tensor([-1e4, -1e4]))
        v3, _ = model.denoiser(b.z_v, b.z_a, t, t, **b.cond)
        v4, _ = model.denoiser(b.z_v, z_a2, t, t, **b.cond)
        torch.testing.assert_close(v3, v4)
        # one gate open: the video depends on the audio again, and differs from both-open
        model.denoiser.gates.mlp[2].bias.copy_(torch.tensor([5.0, -1e4]))
        v5, _ = model.denoiser(b.z_v, b.z_a, t, t, **b.cond)
        assert not torch.allclose(v5, v3) and not torch.allclose(v5, v1)


@pytest.fixture(scope="module")
def unison_bundle(tmp_path_factory):
    from export.bundle_writer import export_bundle
    from train.train import TrainConfig, train

    out = tmp_path_factory.mktemp("unison")
    tc = TrainConfig(size="tiny", clips=4, kinds=("complex",), ae_steps=4, steps=4, batch=2,
                     stage_fractions=(0.0, 0.0, 1.0), overrides={"audio_streams": 2})
    from train.data.speech import have_espeak

    if not have_espeak():
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    ck = train(tc, out / "ck")
    return export_bundle(ck, out / "bundle")


def test_unison_bundle_generates_stems(unison_bundle, tmp_path):
    import json

    from harmony_rt.pipeline import Pipeline

    man = json.loads((unison_bundle / "manifest.json").read_text())
    assert man["variant"] == "unison" and man["geometry"]["S"] == 2
    for c in man["components"].values():
        assert c["parity_max_abs_err"] <= c["parity_tolerance"]
    pipe = Pipeline.from_bundle(unison_bundle, backend="ort")
    r = pipe.generate("a man speaks while a red ball bounces once", speech="hello", steps=2, seconds=1.0)
    assert set(r.stems) == {"speech", "sfx"}
    mix = np.clip(r.stems["speech"] + r.stems["sfx"], -1, 1)
    assert np.abs(mix - r.audio).max() < 1e-6
    r.save(tmp_path / "u.mp4", stems_dir=tmp_path / "stems")
    assert sorted(p.name for p in (tmp_path / "stems").iterdir()) == ["mix.wav", "sfx.wav", "speech.wav"]


def test_the_cli_says_where_the_stems_went(unison_bundle, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "harmony_rt.cli", "generate", "a ball", "--bundle", str(unison_bundle),
                        "--steps", "1", "--num-samples", "2", "-o", str(tmp_path / "o.mp4"), "--stems",
                        str(tmp_path / "st"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    said = r.stdout + r.stderr
    for i in (0, 1):
        assert f"o_{i}.wav and stems in {tmp_path / 'st' / str(i)} (" in said, said
        assert (tmp_path / "st" / str(i) / "mix.wav").is_file()


def test_a_failed_save_removes_the_stems_folders_it_made(unison_bundle, tmp_path, monkeypatch):
    from harmony_rt import media
    from harmony_rt.errors import MediaError
    from harmony_rt.pipeline import Pipeline, save_all

    clips = Pipeline.from_bundle(unison_bundle).generate_batch("a ball", speech="hi", steps=1, seconds=1.0,
                                                               num_samples=2)

    def failing(*a, **kw):
        raise MediaError("disk full (simulated)")

    monkeypatch.setattr(media, "write_wav", failing)
    (tmp_path / "kept").mkdir()
    with pytest.raises(MediaError, match="simulated"):
        save_all(clips, tmp_path / "o.mp4", stems_dir=tmp_path / "kept" / "new" / "stems")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not list((tmp_path / "kept").iterdir())
