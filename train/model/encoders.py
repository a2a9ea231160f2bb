"""Conditioning encoders: caption (word tokens) and transcript (characters, F5-TTS style ConvNeXt)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import FeedForward, LayerNorm, key_mask_bias, sdpa


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer with key-padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm(dim), LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = FeedForward(dim, 2 * dim)
        self.heads = heads

    def forward(self, x, bias):  # x [N, L, D], bias [N, 1, 1, L]
        h = self.norm1(x)
        n, L, d = h.shape
        q, k, v = nn.functional.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        split = lambda z: z.reshape(n, L, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        a = sdpa(split(q), split(k), split(v), bias)
        x = x + self.attn.out_proj(a.transpose(1, 2).reshape(n, L, d))
        return x + self.ffn(self.norm2(x))


class TextEncoder(nn.Module):
    """Caption token ids [N, L] + mask -> embeddings [N, L, D] (zeros at padding)."""

    def __init__(self, vocab: int, dim: int, layers: int, max_len: int, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))
        self.norm = LayerNorm(dim)

    def forward(self, ids, mask):
        x = self.embed(ids) + self.pos[: ids.shape[1]][None]
        bias = key_mask_bias(mask)
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x) * mask[..., None]


class ConvNeXt1d(nn.Module):
    def __init__(self, dim: int, kernel: int = 7):
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = LayerNorm(dim)
        self.ffn = FeedForward(dim, 2 * dim)

    def forward(self, x, mask):  # x [N, P, D], mask [N, P]
        h = self.dw((x * mask[..., None]).transpose(1, 2)).transpose(1, 2)
        return x + self.ffn(self.norm(h))


class SpeechEncoder(nn.Module):
    """Transcript character ids [N, P] + mask -> [N, P, D]; works for any script (EN, ZH)."""

    def __init__(self, vocab: int, dim: int, layers: int, max_len: int, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.convs = nn.ModuleList(ConvNeXt1d(dim) for _ in range(2))
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))
        self.norm = LayerNorm(dim)

    def forward(self, ids, mask):
        x = self.embed(ids) + self.pos[: ids.shape[1]][None]
        for conv in self.convs:
            x = conv(x, mask)
        bias = key_mask_bias(mask)
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x) * mask[..., None]
