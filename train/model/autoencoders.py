"""Small deterministic autoencoders: RGB frames <-> video latent, waveform <-> audio latent.

Both carry their latent normalisation (a per-channel scale and shift fitted on data) as buffers inside
the graphs, so the runtime sees unit-scale latents and knows nothing of it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configs import HarmonyConfig


class VideoAutoencoder(nn.Module):
    """frames [N, 3, FP, H, W] in [-1, 1] <-> latent [N, C_v, FP/t_stride, H/s, W/s]."""

    def __init__(self, cfg: HarmonyConfig):
        super().__init__()
        ch, ts = cfg.vae_video_ch, cfg.video_t_stride
        n_down = int(math.log2(cfg.video_s_stride))
        assert 2**n_down == cfg.video_s_stride, "video_s_stride must be a power of two"
        enc = [nn.Conv3d(3, ch, (ts, 3, 3), stride=(ts, 1, 1), padding=(0, 1, 1)), nn.SiLU()]
        for _ in range(n_down):
            enc += [nn.Conv3d(ch, ch, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)), nn.SiLU()]
        enc += [nn.Conv3d(ch, cfg.C_v, (1, 3, 3), padding=(0, 1, 1))]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv3d(cfg.C_v, ch, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU()]
        for _ in range(n_down):
            dec += [nn.ConvTranspose3d(ch, ch, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)), nn.SiLU()]
        dec += [nn.ConvTranspose3d(ch, 3, (ts, 3, 3), stride=(ts, 1, 1), padding=(0, 1, 1))]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("shift", torch.zeros(cfg.C_v))
        self.register_buffer("scale", torch.ones(cfg.C_v))

    def encode(self, frames):
        z = self.encoder(frames)
        return (z - self.shift[None, :, None, None, None]) / self.scale[None, :, None, None, None]

    def decode(self, z):
        z = z * self.scale[None, :, None, None, None] + self.shift[None, :, None, None, None]
        return torch.tanh(self.decoder(z))


class AudioAutoencoder(nn.Module):
    """waveform [N, W] in [-1, 1] <-> latent [N, W/hop, C_a] (the decoder is the vocoder)."""

    def __init__(self, cfg: HarmonyConfig):
        super().__init__()
        ch, hop = cfg.vae_audio_ch, cfg.audio_hop
        strides = []
        while hop > 1:
            s = 4 if hop % 4 == 0 else 2
            strides.append(s)
            hop //= s
        assert math.prod(strides) == cfg.audio_hop, "audio_hop must be a product of 2s and 4s"
        enc = [nn.Conv1d(1, ch, 7, padding=3), nn.SiLU()]
        for s in strides:
            enc += [nn.Conv1d(ch, ch, 2 * s, stride=s, padding=s // 2), nn.SiLU()]
        enc += [nn.Conv1d(ch, cfg.C_a, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv1d(cfg.C_a, ch, 3, padding=1), nn.SiLU()]
        for s in reversed(strides):
            dec += [nn.ConvTranspose1d(ch, ch, 2 * s, stride=s, padding=s // 2), nn.SiLU()]
            dec += [nn.Conv1d(ch, ch, 7, padding=3), nn.SiLU()]
        dec += [nn.Conv1d(ch, 1, 7, padding=3)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("shift", torch.zeros(cfg.C_a))
        self.register_buffer("scale", torch.ones(cfg.C_a))

    def encode(self, wav):  # [N, W] -> [N, T, C_a]
        z = self.encoder(wav[:, None, :]).transpose(1, 2)
        return (z - self.shift) / self.scale

    def decode(self, z):  # [N, T, C_a] -> [N, W]
        z = (z * self.scale + self.shift).transpose(1, 2)
        return torch.tanh(self.decoder(z))[:, 0, :]


@torch.no_grad()
def fit_latent_norm(ae: nn.Module, raw_latents: torch.Tensor, channel_dim: int) -> None:
    """Set shift/scale so that latents come out zero-mean, unit-variance per channel."""
    dims = [d for d in range(raw_latents.dim()) if d != channel_dim]
    ae.shift.copy_(raw_latents.mean(dim=dims))
    ae.scale.copy_(raw_latents.std(dim=dims).clamp_min(1e-3))
