"""Unison parts (METHOD.md section 2): Bi-ACA between the speech and SFX streams, and the semantic
gates (SCG) that scale each stream's contribution to the video. Only built when audio_streams == 2."""

from __future__ import annotations

import torch
from torch import nn

from .layers import CrossAttention, LayerNorm


class BiACA(nn.Module):
    """Bidirectional audio cross-attention: speech tokens attend to SFX tokens and vice versa
    (same time axis, zero-initialised outputs)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = LayerNorm(dim, eps=1e-6)
        self.sp_from_sfx = CrossAttention(dim, dim, heads, zero_init=True)
        self.sfx_from_sp = CrossAttention(dim, dim, heads, zero_init=True)

    def forward(self, xa: torch.Tensor, s: int) -> torch.Tensor:
        """xa [N, S*T, D] stream-major (speech first) -> xa with the exchange added."""
        n, st, d = xa.shape
        x = self.norm(xa).reshape(n, s, st // s, d)
        sp, sfx = x[:, 0], x[:, 1]
        delta = torch.stack([self.sp_from_sfx(sp, sfx), self.sfx_from_sp(sfx, sp)], dim=1)  # [N, 2, T, D]
        return xa + delta.reshape(n, st, d)


class SemanticGates(nn.Module):
    """[g_sp, g_sfx] = sigmoid(MLP([c_s; c_a])) from the pooled transcript and audio-caption embeddings."""

    def __init__(self, speech_dim: int, text_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(speech_dim + text_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, 2.0)  # gates start open (~0.88)

    def forward(self, speech_emb, speech_mask, text_emb, text_mask) -> torch.Tensor:
        """-> gates [N, 2] (speech, sfx)."""
        c_s = (speech_emb * speech_mask[..., None]).sum(1) / speech_mask.sum(1, keepdim=True).clamp_min(1.0)
        c_a = (text_emb * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True).clamp_min(1.0)
        return torch.sigmoid(self.mlp(torch.cat([c_s, c_a], dim=-1)))
