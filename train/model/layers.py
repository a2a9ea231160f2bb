"""Building blocks: rotary tables, the RoPE-aligned attention op, timestep embedding, adaLN helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# When True (set by export with --custom-op), every RoPE attention is emitted as ONE
# `com.harmony_rt::RoPEAlignedAttention` node instead of standard ONNX ops.
EMIT_CUSTOM_OP = False
CUSTOM_OP = "com.harmony_rt::RoPEAlignedAttention"


def rope_freqs(dim_half: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies [dim_half] of a rotary embedding whose table has `dim_half` columns."""
    return theta ** (-torch.arange(dim_half, dtype=torch.float32, device=device) / dim_half)


def rope_table_1d(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim/2] for 1-D positions pos [L] (float)."""
    ang = pos[:, None].float() * rope_freqs(head_dim // 2, theta, pos.device)[None, :]
    return ang.cos(), ang.sin()


def rope_split_3d(head_dim: int) -> tuple[int, int, int]:
    """Columns of the half-dim table given to the (frame, row, col) axes (Wan-style split)."""
    half = head_dim // 2
    hw = half // 3
    return half - 2 * hw, hw, hw


def rope_table_3d(f: int, h: int, w: int, head_dim: int, theta: float,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [f*h*w, head_dim/2] for a (frame, row, col) grid in row-major token order."""
    nt, nh, nw = rope_split_3d(head_dim)

    def axis(n: int, cols: int) -> torch.Tensor:  # [n, cols] angles of one axis
        return torch.arange(n, dtype=torch.float32, device=device)[:, None] * rope_freqs(cols, theta, device)[None, :]

    ft, fh, fw = axis(f, nt), axis(h, nh), axis(w, nw)  # [f, nt], [h, nh], [w, nw]
    ang = torch.cat(
        [
            ft[:, None, None, :].expand(f, h, w, nt),
            fh[None, :, None, :].expand(f, h, w, nh),
            fw[None, None, :, :].expand(f, h, w, nw),
        ],
        dim=-1,
    ).reshape(f * h * w, nt + nh + nw)
    return ang.cos(), ang.sin()


def _autocast(x: torch.Tensor) -> bool:
    """Whether x's ops run under autocast (never while exporting)."""
    return (not torch.onnx.is_in_onnx_export() and x.device.type in ("cpu", "cuda")
            and torch.is_autocast_enabled(x.device.type))


def residual(x: torch.Tensor) -> torch.Tensor:
    """x as a residual stream: fp32 under autocast (a bf16 sum drops the updates under ~1/256 of the stream,
    the zero-initialised GLDI / Bi-ACA outputs' first of all), otherwise (and while exporting) x as it is."""
    return x.float() if _autocast(x) else x


def _fp32(norm, x: torch.Tensor) -> torch.Tensor:
    """norm(x) in fp32 under autocast (bf16 statistics lose precision), cast back to x's dtype; otherwise (and
    while exporting) the plain op."""
    if not _autocast(x):
        return norm(x)
    with torch.autocast(x.device.type, enabled=False):
        return norm(x.float()).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm, computed in fp32 under mixed precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32(super().forward, x)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm, computed in fp32 under mixed precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32(super().forward, x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [N, H, L, D] with tables [L, D/2] ("half" convention)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def window_bias(t_q: torch.Tensor, t_k: torch.Tensor, window: float) -> torch.Tensor:
    """Additive mask [Lq, Lk]: 0 where |t_q - t_k| <= window, -inf elsewhere."""
    dist = (t_q[:, None] - t_k[None, :]).abs()
    return torch.where(dist <= window + 1e-6, 0.0, float("-inf"))


def rope_aligned_attention(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float) -> torch.Tensor:
    """softmax(rot(q) rot(k)^T / sqrt(D) + window mask) v.

    q [N,H,Lq,D], k/v [N,H,Lk,D], cos/sin [L,D/2], t_q [Lq], t_k [Lk]; window < 0 means no mask.
    """
    if EMIT_CUSTOM_OP and torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            CUSTOM_OP,
            (q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k),
            attrs={"window": float(window)},
            dtype=q.dtype,
            shape=q.shape,
            version=1,
        )
    qr, kr = apply_rope(q, cos_q, sin_q), apply_rope(k, cos_k, sin_k)
    mask = window_bias(t_q, t_k, window) if window >= 0 else None
    return F.scaled_dot_product_attention(qr, kr, v, attn_mask=mask)


def sdpa(q, k, v, bias=None):
    """Scaled dot-product attention; a key bias [N,1,1,Lk] is expanded over queries (ONNX Attention needs it)."""
    if bias is not None and bias.shape[-2] == 1:
        bias = bias.expand(-1, -1, q.shape[2], -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def key_mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """[N, Lk] 1/0 mask -> additive bias [N, 1, 1, Lk] (0 keep, -inf drop)."""
    return torch.where(mask[:, None, None, :] > 0.5, 0.0, float("-inf"))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of t [N] in [0, 1] (scaled by 1000 like diffusers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # t [N] -> [N, dim]
        return self.mlp(timestep_embedding(t, self.freq_dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [N, L, D], shift/scale [N, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Heads(nn.Module):
    """Splits [N, L, D] into [N, H, L, D/H] and back."""

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, L, d = x.shape
        return x.reshape(n, L, self.heads, d // self.heads).transpose(1, 2)

    @staticmethod
    def merge(x: torch.Tensor) -> torch.Tensor:
        n, h, L, d = x.shape
        return x.transpose(1, 2).reshape(n, L, h * d)


class CrossAttention(nn.Module):
    """Cross-attention with q/k RMSNorm; optional RoPE-aligned windowing; zero-init output if asked."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, zero_init: bool = False):
        super().__init__()
        self.h = Heads(heads)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(ctx_dim, dim), nn.Linear(ctx_dim, dim)
        self.norm_q, self.norm_k = RMSNorm(dim // heads, eps=1e-6), RMSNorm(dim // heads, eps=1e-6)
        self.out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def qkv(self, x, ctx):
        q = self.norm_q(self.h.split(self.q(x)))
        k = self.norm_k(self.h.split(self.k(ctx)))
        return q, k, self.h.split(self.v(ctx))

    def forward(self, x, ctx, bias=None):
        """Plain cross-attention; bias [N,1,1,Lk] or None."""
        q, k, v = self.qkv(x, ctx)
        return self.out(self.h.merge(sdpa(q, k, v, bias)))

    def forward_rope(self, x, ctx, rope_q, rope_k, t_q, t_k, window: float):
        """RoPE-aligned cross-attention; rope_* = (cos, sin) tables [L, D/2]."""
        q, k, v = self.qkv(x, ctx)
        o = rope_aligned_attention(q, k, v, *rope_q, *rope_k, t_q, t_k, window)
        return self.out(self.h.merge(o))
