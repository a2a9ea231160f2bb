"""Training off the CPU: every tensor of a step lives on the model's device, bf16 autocast, --device checks.

No GPU here: the device plumbing is checked on PyTorch's "meta" device, where any tensor made on the CPU and
mixed into the step raises (as it would on a CUDA GPU). Values are not computed there, so the steps that read
values (the finite-gradient check, logging) are left out of those tests.
"""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from train import train as tr  # noqa: E402
from train.configs import get_config  # noqa: E402
from train.model import HarmonyModel  # noqa: E402

META = torch.device("meta")


def _setup(unison: bool = False):
    cfg = get_config("tiny", audio_streams=2 if unison else 1)
    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), batch=2, steps=10, ae_steps=1)
    clips = tr.make_clips(tc, cfg)
    model = HarmonyModel(cfg).to(META)
    return cfg, tc, clips, model


@pytest.mark.parametrize("unison", [False, True])
def test_a_denoiser_step_keeps_every_tensor_on_the_models_device(unison):
    """Latents, batches (tokens, masks, references, anchors), noise, timesteps, the denoiser's position tables,
    the losses of every stage and the backward pass: all on the model's device."""
    cfg, tc, clips, model = _setup(unison)
    lat = tr.encode_clips(model, clips)
    assert {x.device for x in (lat[0].z_v, lat[0].z_a, lat[0].grey_v, lat[0].z_mix)} == {META}
    toks = tr.build_tokenizers(cfg)
    gen = torch.Generator().manual_seed(0)
    for step in (0, 2, 9):  # audio, timbre, joint (Unison: forcing + CTS)
        stage = tr.stage_of(step, tc)
        batch = tr.make_batch(model, lat, [0, 1], toks, tc, stage, gen)
        assert {v.device for v in batch.cond.values()} == {META}, stage
        loss, logs = tr.step_loss(model, batch, tc, step, gen)
        assert loss.device == META and all(v.device == META for v in logs.values())
        loss.backward()
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())


def test_the_autoencoders_train_on_the_models_device(monkeypatch):
    cfg, tc, clips, model = _setup()
    monkeypatch.setattr(tr, "_check_finite", lambda *a: None)  # reads the gradient norm's value
    monkeypatch.setattr(tr, "_floats", lambda logs: logs)  # logging reads values
    logs = tr.train_autoencoders(model, clips, tc, torch.Generator().manual_seed(0))
    assert {v.device for v in logs.values()} == {META}
    assert model.video_ae.shift.device == META


def test_the_ema_of_a_resumed_run_is_kept_on_the_models_device():
    p = torch.nn.Parameter(torch.ones(3, device=META))
    ema = tr.EMA({"w": p}, 0.9, state={"w": torch.zeros(3)})  # as load_ema reads it: on the CPU
    assert ema.avg["w"].device == META
    ema.update(0)


def test_bf16_autocast_runs_the_denoiser_in_bf16_and_the_loss_in_fp32():
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = HarmonyModel(cfg)
    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), batch=2, steps=10)
    lat = tr.encode_clips(model, tr.make_clips(tc, cfg))
    toks = tr.build_tokenizers(cfg)
    batch = tr.make_batch(model, lat, [0, 1], toks, tc, "joint", torch.Generator().manual_seed(0))
    seen = []
    model.denoiser.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    losses = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = tr.step_loss(model, batch, tc, 9, torch.Generator().manual_seed(1))
        losses[precision] = loss
    assert seen == [torch.float32, torch.bfloat16]
    assert losses["bf16"].dtype == torch.float32
    assert abs(float(losses["bf16"]) / float(losses["fp32"]) - 1) < 0.05, losses


def test_a_bf16_run_trains_fp32_weights_and_remembers_its_precision(tmp_path):
    from train.checkpoints import load_checkpoint

    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), ae_steps=2, steps=3, batch=2,
                        precision="bf16")
    out = tr.train(tc, tmp_path / "ck")
    model, _, state = load_checkpoint(out)
    assert state["train_config"]["precision"] == "bf16" and state["step"] == 3
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        tr.TrainConfig(precision="fp8").check()


def test_devices_this_machine_lacks_are_refused():
    assert tr.resolve_device("cpu") == torch.device("cpu")
    assert tr.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device"):
        tr.resolve_device("gpu0")
    with pytest.raises(ValueError, match="cpu or cuda"):
        tr.resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            tr.resolve_device("cuda")


@pytest.mark.parametrize("module", ["train.train", "train.vocoder"])
def test_cli_refuses_a_missing_device_in_one_line(tmp_path, module):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    args = ["-o", str(tmp_path / "x")] if module == "train.train" else [str(tmp_path / "ck"), "-o", str(tmp_path / "x")]
    r = subprocess.run([sys.executable, "-m", module, *args, "--device", "cuda"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: --device cuda: no CUDA GPU here") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch with CUDA)")
def test_a_cuda_run_resumes_on_the_cpu(tmp_path):
    from train.checkpoints import load_checkpoint

    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), ae_steps=2, steps=4, batch=2,
                        stop_after=2, precision="bf16")
    out = tr.train(tc, tmp_path / "ck", device="cuda")
    tr.train(tr.TrainConfig(**{**tc.__dict__, "stop_after": 0}), out, resume=out, device="cpu")
    model, _, state = load_checkpoint(out)
    assert state["step"] == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_norms_are_computed_in_fp32_under_bf16_autocast():
    """bf16 statistics lose precision: the model's LayerNorm / RMSNorm compute in fp32 under autocast and hand
    back the input's dtype; without autocast they are the plain ops (what export traces)."""
    import warnings

    from train.model.layers import LayerNorm, RMSNorm

    x = torch.randn(2, 7, 64).bfloat16() * 3 + 1
    for norm, ref in ((LayerNorm(64, eps=1e-6), torch.nn.LayerNorm(64, eps=1e-6)),
                      (RMSNorm(64, eps=1e-6), torch.nn.RMSNorm(64, eps=1e-6))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PyTorch warns when it cannot use its fused kernel for mixed dtypes
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = norm(x)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, ref(x.float()).bfloat16())
        y = torch.randn(2, 7, 64)
        assert torch.equal(norm(y), ref(y))
