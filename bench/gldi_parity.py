"""Block-local GLDI vs the masked full attention it replaces: max abs difference of the denoiser outputs.

    python -m bench.gldi_parity [--checkpoint DIR ...] [--onnx]

PyTorch eager, same weights and inputs, `train.model.dit.BLOCK_LOCAL_GLDI` False (masked full attention:
the formulation before, and what eager runs by default) vs True. Random weights (every parameter, the
zero-initialised GLDI outputs too, small random values) at the tiny, demo-like (64x64, video_s_stride 8,
video_t_stride 1, 16 latent frames) and bench-large shapes, at several frame counts; trained weights from any
checkpoint folders given. With --onnx the denoiser is also exported as before (masked GLDI, element-wise RoPE)
and as now (block-local, RotaryEmbedding nodes) and both ORT graphs compared, with each other and with the
masked PyTorch model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from train.model import dit

SHAPES = {  # name: (registry size, overrides, latent frame counts to try)
    "tiny": ("tiny", {}, (1, 2, 3, 5, 8)),
    "demo-like": ("demo", dict(video_t_stride=1, max_latent_frames=16), (1, 4, 7, 16)),
    "bench-large": ("bench-large", {}, (3, 16)),
}


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (as bench/models.py): zero-initialised GLDI outputs would hide a difference."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / np.sqrt(p.shape[1] * int(np.prod(p.shape[2:]))))
            elif "norm" not in name:
                p.normal_(0.0, 0.02)


def feeds(cfg, n: int, f: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    geo = cfg.geometry()
    t = geo.audio_frames_for(f)
    mask = torch.ones(n, 7)
    mask[1:, -2:] = 0
    return dict(
        video_latent=torch.randn(n, cfg.C_v, f, geo.H_lat, geo.W_lat, generator=g),
        audio_latent=torch.randn(n, cfg.audio_streams, t, cfg.C_a, generator=g),
        t_video=torch.rand(n, generator=g), t_audio=torch.rand(n, generator=g),
        text_emb=torch.randn(n, 7, cfg.text_dim, generator=g), text_mask=mask,
        audio_text_emb=torch.randn(n, 7, cfg.text_dim, generator=g), audio_text_mask=mask,
        speech_emb=torch.randn(n, 9, cfg.speech_dim, generator=g), speech_mask=torch.ones(n, 9),
        ref_latent=torch.randn(n, 4, cfg.C_a, generator=g), ref_mask=torch.ones(n, 4),
    )


def run(denoiser, x: dict, block_local: bool | str):
    old = dit.BLOCK_LOCAL_GLDI
    dit.BLOCK_LOCAL_GLDI = block_local
    try:
        with torch.no_grad():
            return denoiser(**x)
    finally:
        dit.BLOCK_LOCAL_GLDI = old


def compare(denoiser, frames, n: int = 3, seed: int = 0) -> list[tuple[int, int, float, float]]:
    """[(F, T, max abs diff, max abs output)] per frame count."""
    out = []
    for f in frames:
        x = feeds(denoiser.cfg, n, f, seed + f)
        ref, got = run(denoiser, x, False), run(denoiser, x, True)
        err = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        scale = max(float(a.abs().max()) for a in ref)
        out.append((f, x["audio_latent"].shape[2], err, scale))
    return out


def export_denoiser(denoiser, path: Path, form: str) -> Path:
    """The denoiser graph as the bundle exporter writes it, in one of bench.graph_ab.FORMS."""
    from export.bundle_writer import export_component
    from harmony_rt.contract import resolve

    from .graph_ab import formulation

    class _M:  # what export_component reads from a HarmonyModel
        cfg = denoiser.cfg

    with formulation(form):
        export_component("denoiser", denoiser, resolve(denoiser.cfg.geometry().to_dict())["denoiser"], _M(), path)
    return path


def onnx_check(denoiser, f: int, n: int = 2) -> dict[str, float]:
    """Export the graph as before (masked GLDI, RoPE as element-wise ops) and as now (block-local GLDI,
    RotaryEmbedding nodes); at a shape the exporter never saw, max abs differences between ORT (both
    graphs) and the masked PyTorch model."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        sess = {}
        for name, form in (("masked", "before"), ("block", "block+rope")):
            path = export_denoiser(denoiser, Path(d) / f"{name}.onnx", form)
            sess[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = feeds(denoiser.cfg, n, f, 99)
        ref = [a.numpy() for a in run(denoiser, x, False)]
        got = {k: s.run(None, {k2: v.numpy() for k2, v in x.items()}) for k, s in sess.items()}

    def diff(a, b):
        return max(float(np.abs(u - v).max()) for u, v in zip(a, b))

    return {"ORT now vs ORT before": diff(got["block"], got["masked"]),
            "ORT before vs torch masked": diff(got["masked"], ref),
            "ORT now vs torch masked": diff(got["block"], ref)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="trained checkpoint folder(s)")
    ap.add_argument("--only", default=None, help="comma list of shapes (%s)" % ", ".join(SHAPES))
    ap.add_argument("--onnx", action="store_true", help="also export and compare ORT (slow at bench-large)")
    a = ap.parse_args(argv)
    from train.configs import get_config
    from train.model import HarmonyDenoiser

    torch.set_num_threads(max(1, torch.get_num_threads()))
    worst = 0.0
    for name, (size, over, frames) in SHAPES.items():
        if a.only and name not in a.only.split(","):
            continue
        den = HarmonyDenoiser(get_config(size, **over)).eval()
        randomise(den)
        for f, t, err, scale in compare(den, frames):
            worst = max(worst, err)
            print(f"random  {name:12s} F={f:2d} T={t:3d}  max abs diff {err:.2e}  (outputs up to {scale:.2f})")
        if a.onnx:
            f = frames[-1] if name != "bench-large" else 4
            errs = onnx_check(den, f)
            for what, err in errs.items():
                print(f"onnx    {name:12s} F={f:2d}  {what}: max abs diff {err:.2e}")
            worst = max(worst, errs["ORT now vs ORT before"])
    for ck in a.checkpoint:
        from train.checkpoints import load_checkpoint

        model, _, _ = load_checkpoint(ck)
        den = model.denoiser.eval()
        cfg = den.cfg
        frames = sorted({1, 3, cfg.max_latent_frames // 2, cfg.max_latent_frames} - {0})
        for f, t, err, scale in compare(den, frames):
            worst = max(worst, err)
            print(f"trained {ck}  S={cfg.audio_streams} F={f:2d} T={t:3d}  max abs diff {err:.2e}  "
                  f"(outputs up to {scale:.2f})")
        if a.onnx:
            errs = onnx_check(den, frames[-1])
            for what, err in errs.items():
                print(f"onnx    {ck}  F={frames[-1]:2d}  {what}: max abs diff {err:.2e}")
            worst = max(worst, errs["ORT now vs ORT before"])
    print(f"worst formulation difference (torch vs torch, ORT vs ORT) {worst:.2e}")


if __name__ == "__main__":
    main()
