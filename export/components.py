"""One torch module per bundle component, with the contract's input order, plus example inputs."""

from __future__ import annotations

import torch
from torch import nn

from harmony_rt.contract import ComponentSpec, example_feeds
from train.model import HarmonyModel


class _Call(nn.Module):
    """Wraps the one-input method `fn` of a submodule so each component exports as its own graph."""

    def __init__(self, owner: nn.Module, fn: str):
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, x):
        return getattr(self.owner, self.fn)(x)


def component_modules(model: HarmonyModel) -> dict[str, nn.Module]:
    return {
        "text_encoder": model.text_encoder,
        "speech_encoder": model.speech_encoder,
        "denoiser": model.denoiser,
        "video_decoder": _Call(model.video_ae, "decode"),
        "video_encoder": _Call(model.video_ae, "encode"),
        "audio_decoder": _Call(model.audio_ae, "decode"),
        "audio_encoder": _Call(model.audio_ae, "encode"),
    }


def symbol_sizes(model: HarmonyModel, variant: int) -> dict[str, int]:
    """Concrete sizes for the symbolic dims; `variant` 0 is the export shape, 1 a different one for parity."""
    cfg = model.cfg
    g = cfg.geometry()
    f = min(cfg.max_latent_frames, 3 + 2 * variant)
    t = g.audio_frames_for(f)
    return dict(
        N=2 + variant, F=f, T=t, S=cfg.audio_streams, R=5 + 3 * variant, L=6 + 2 * variant,
        LA=4 + 3 * variant, P=9 + 4 * variant, FP=f * cfg.video_t_stride, W=t * cfg.audio_hop,
    )


def example_inputs(name: str, spec: ComponentSpec, model: HarmonyModel, sizes: dict[str, int], seed: int):
    """harmony_rt.contract.example_feeds as torch tensors, ids in the model's vocabulary."""
    vocab = model.cfg.text_vocab if name == "text_encoder" else model.cfg.speech_vocab
    feeds = example_feeds(spec, sizes, vocab, seed)
    return tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
