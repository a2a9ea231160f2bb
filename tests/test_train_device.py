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
    monkeypatch.setattr(tr, "_flat_decoder_warning", lambda *a: None)  # so does the collapse check
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


class _HostCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what would make a GPU run's host wait, tensor by tensor, on the meta device: copies from the CPU
    that are not asynchronous (from pageable memory a copy to a GPU first waits for all the work queued before
    it), and ops given CPU tensors beside device tensors (a CPU index into a GPU tensor is such a copy, made
    inside the op: meta, like CUDA, accepts it)."""

    def __init__(self):
        super().__init__()
        self.blocking, self.mixed = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._to_copy.default:
            if args[0].device.type == "cpu" and kwargs.get("device") == META and not kwargs.get("non_blocking"):
                self.blocking.append(tuple(args[0].shape))
        elif any(t.device == META for t in tensors):  # 0-dim CPU tensors are scalars to a GPU kernel: no copy
            self.mixed += [(str(func), tuple(t.shape)) for t in tensors if t.device.type == "cpu" and t.dim()]
        return func(*args, **kwargs)


@pytest.mark.parametrize("unison", [False, True])
def test_a_denoiser_step_copies_nothing_to_the_device_synchronously(unison):
    """Noise, timesteps, tokens, masks and the CTS rows' index reach the device without a host-device sync:
    each blocking copy (29 a joint step before) would stall the host until the GPU had caught up."""
    cfg, tc, clips, model = _setup(unison)
    lat = tr.encode_clips(model, clips)
    toks, gen = tr.build_tokenizers(cfg), torch.Generator().manual_seed(0)
    for step in (0, 9):  # audio-only, joint (Unison: forcing + CTS)
        with _HostCopies() as seen:
            batch = tr.make_batch(model, lat, [0, 1], toks, tc, tr.stage_of(step, tc), gen)
            tr.step_loss(model, batch, tc, step, gen)[0].backward()
        assert (seen.blocking, seen.mixed) == ([], []), step


def test_the_autoencoder_and_vocoder_steps_copy_nothing_to_the_device_synchronously(monkeypatch):
    """Their random crops index the clips on the device with device indices (the clips are copied once)."""
    from train import vocoder

    cfg, tc, clips, model = _setup()
    monkeypatch.setattr(tr, "_check_finite", lambda *a: None)  # reads the gradient norm's value
    monkeypatch.setattr(tr, "_floats", lambda logs: logs)  # logging reads values
    monkeypatch.setattr(vocoder, "_floats", lambda logs: logs)
    monkeypatch.setattr(tr, "_flat_decoder_warning", lambda *a: None)  # reads values, once after the stage
    copies = {}
    for n in (1, 3):
        with _HostCopies() as seen:
            tr.train_autoencoders(model, clips, tr.TrainConfig(**{**tc.__dict__, "ae_steps": n}), torch.Generator())
        copies[n] = (len(seen.blocking), seen.mixed)
    assert copies[1] == copies[3] and copies[3][1] == []  # the clips' one copy, none a step
    wavs = torch.zeros(2, 4 * 32 * cfg.audio_hop, device=META)
    with _HostCopies() as seen:
        vocoder.finetune_decoder(model, wavs, steps=2, batch=2)
    assert (seen.blocking, seen.mixed) == ([], [])


def test_the_silence_anchor_is_encoded_in_fp32_under_bf16_autocast():
    """The null audio of the driven rows is audio_encoder(silence), cached on the first batch: made under the
    step's autocast it was the encoder's bf16 output (the clips' latents, and the runtime's, are fp32)."""
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = HarmonyModel(cfg)
    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), batch=2, steps=10)
    lat = tr.encode_clips(model, tr.make_clips(tc, cfg))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        batch = tr.make_batch(model, lat, [0, 1], tr.build_tokenizers(cfg), tc, "joint", torch.Generator())
    with torch.no_grad():
        want = model.audio_ae.encode(torch.zeros(1, batch.z_a.shape[2] * cfg.audio_hop))
    assert torch.equal(batch.null_a[0], want.expand_as(batch.null_a[0]))


@pytest.mark.parametrize("unison", [False, True])
def test_the_denoisers_residual_streams_stay_fp32_under_bf16_autocast(unison):
    """Each block adds its bf16 output to fp32 streams (video, audio, reference, context): in bf16 the video and
    context streams rounded away every update under ~1/256 of their size, the zero-initialised GLDI first.
    Without autocast (training in fp32, export) nothing changes."""
    cfg = get_config("tiny", audio_streams=2 if unison else 1)
    torch.manual_seed(0)
    model = HarmonyModel(cfg)
    tc = tr.TrainConfig(size="tiny", clips=2, seconds=1.0, kinds=("ambient",), batch=2, steps=10)
    lat = tr.encode_clips(model, tr.make_clips(tc, cfg))
    batch = tr.make_batch(model, lat, [0, 1], tr.build_tokenizers(cfg), tc, "joint", torch.Generator())
    seen = {"video": [], "audio": []}
    for block in model.denoiser.video_blocks:  # x (e, the timestep embedding, is bf16)
        block.register_forward_pre_hook(lambda mod, args: seen["video"].append(args[0].dtype))
    for block in model.denoiser.audio_blocks:  # x (reference + audio), c (context)
        block.register_forward_pre_hook(lambda mod, args: seen["audio"].extend(a.dtype for a in args[:2]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tr.step_loss(model, batch, tc, 9, torch.Generator())
    assert seen == {"video": [torch.float32] * cfg.layers, "audio": [torch.float32] * 2 * cfg.layers}, seen


def test_the_silence_anchor_cache_goes_with_its_model():
    """Cached per autoencoder object, not per id(): a later model could be given a freed one's id (and its
    stale latent), and the cache kept every model's latents (GPU memory) alive."""
    import gc

    model = HarmonyModel(get_config("tiny"))
    with torch.no_grad():
        z = tr._silence_latent(model, 5)
    assert model.audio_ae in tr._SILENCE and z.shape[1] == 5
    before = len(tr._SILENCE)
    del model
    gc.collect()
    assert len(tr._SILENCE) == before - 1


def test_gradients_are_averaged_in_buckets(monkeypatch):
    """One all-reduce per bucket of gradients, not per parameter (thousands of calls a step on a large model);
    the average is unchanged: with two identical ranks every gradient comes back as it was."""
    calls = []

    def all_reduce(t):
        calls.append(t.numel())
        t.mul_(2)  # the sum over two ranks holding the same gradients

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(tr, "SYNC_BUCKET", 100)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (30, 50, 40, 120, 5)]
    params.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient: skipped
    for p in params[:-1]:
        p.grad = torch.randn(p.shape)
    want = [p.grad.clone() for p in params[:-1]]
    tr._sync_grads(params)
    assert calls == [80, 40, 120, 5]  # 30+50 | 40 (+120 is over) | 120 alone | 5
    assert all(torch.equal(p.grad, w) for p, w in zip(params, want))
