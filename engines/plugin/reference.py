"""Numpy reference of `com.harmony_rt::RoPEAlignedAttention`: the source of truth for every kernel.

    rot(x) = concat(x1*cos - x2*sin, x2*cos + x1*sin),  x1 = x[..., :D/2], x2 = x[..., D/2:]
    s[i, j] = rot(q)[i] . rot(k)[j] / sqrt(D), masked to -inf where |t_q[i] - t_k[j]| > window + 1e-6
    out = softmax_j(s) @ v; a row whose keys are all masked is 0.
"""

from __future__ import annotations

import numpy as np

WINDOW_SLACK = 1e-6  # keys exactly `window` apart stay in despite float rounding of t_q / t_k


def rotate_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding, "half" convention. x [..., L, D]; cos, sin [L, D/2]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def window_mask(t_q: np.ndarray, t_k: np.ndarray, window: float) -> np.ndarray | None:
    """Boolean [Lq, Lk], True where key j is visible to query i; None when window < 0 (no mask)."""
    if window < 0:
        return None
    tq = np.asarray(t_q, np.float64)[:, None]
    tk = np.asarray(t_k, np.float64)[None, :]
    return np.abs(tq - tk) <= window + WINDOW_SLACK


def rope_aligned_attention(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float = -1.0) -> np.ndarray:
    """q [N,H,Lq,D], k/v [N,H,Lk,D], cos_q/sin_q [Lq,D/2], cos_k/sin_k [Lk,D/2], t_q [Lq], t_k [Lk].

    Returns out [N,H,Lq,D] in q's dtype; computed in float64.
    """
    q = np.asarray(q)
    out_dtype = q.dtype

    def f(a):
        return np.asarray(a, np.float64)

    q, k, v = f(q), f(k), f(v)
    D = q.shape[-1]
    if D % 2 or k.shape[-1] != D or v.shape[-1] != D:
        raise ValueError(f"head dim must be even and equal for q, k, v (got {q.shape}, {k.shape}, {v.shape})")
    qr = rotate_half(q, f(cos_q), f(sin_q))  # [N,H,Lq,D]
    kr = rotate_half(k, f(cos_k), f(sin_k))  # [N,H,Lk,D]
    s = qr @ np.swapaxes(kr, -1, -2) / np.sqrt(D)  # [N,H,Lq,Lk]
    mask = window_mask(t_q, t_k, float(window))
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)  # [N,H,Lq,1]
    live = np.isfinite(m)
    p = np.exp(s - np.where(live, m, 0.0))  # masked -> exp(-inf) = 0
    denom = p.sum(axis=-1, keepdims=True)
    p = p / np.where(denom > 0, denom, 1.0)
    out = p @ v  # [N,H,Lq,D]; all-masked rows are exactly 0
    return out.astype(out_dtype)


def rope_aligned_attention_half(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float = -1.0) -> np.ndarray:
    """The reference with the fp16 kernels' roundings: q, k, v taken as fp16, rot(q)/sqrt(D) and rot(k) rounded
    to fp16 before the score dot, the softmax weights (fp32 statistics) rounded to fp16 before the dot with v,
    the output rounded to fp16. Dots accumulate wide, as the kernels' fp32 accumulators do. Emulates
    triton_kernel.py's arithmetic up to its online-softmax order (weights relative to the running, not the
    final, row max). Shapes as `rope_aligned_attention`; returns float16."""
    h16 = lambda a: np.asarray(a, np.float16).astype(np.float64)  # noqa: E731
    q, k, v = h16(q), h16(k), h16(v)
    D = q.shape[-1]
    f = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    qr = h16(rotate_half(q, f(cos_q), f(sin_q)) / np.sqrt(D))  # [N,H,Lq,D]
    kr = h16(rotate_half(k, f(cos_k), f(sin_k)))  # [N,H,Lk,D]
    s = qr @ np.swapaxes(kr, -1, -2)  # [N,H,Lq,Lk]
    mask = window_mask(t_q, t_k, float(window))
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)  # [N,H,Lq,1]
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    denom = p.sum(axis=-1, keepdims=True)
    out = (h16(p) @ v) / np.where(denom > 0, denom, 1.0)  # all-masked rows: 0 / 1
    return out.astype(np.float16)


def rope_tables(pos: np.ndarray, dim: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [L, dim/2] for 1D positions `pos` [L] (test helper; the graph builds its own tables)."""
    inv = 1.0 / theta ** (np.arange(0, dim // 2, dtype=np.float64) * 2 / dim)  # [dim/2]
    ang = np.asarray(pos, np.float64)[:, None] * inv[None, :]  # [L, dim/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def random_case(rng: np.random.Generator, N=1, H=2, Lq=5, Lk=7, D=8, T_v=4, dtype=np.float32):
    """A random op input set: q from video frames 0..T_v-1, k from Lk audio frames on the same time axis."""
    q = rng.standard_normal((N, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((N, H, Lk, D)).astype(dtype)
    v = rng.standard_normal((N, H, Lk, D)).astype(dtype)
    t_q = (np.arange(Lq) * T_v / Lq).astype(np.float32)
    t_k = (np.arange(Lk) * T_v / Lk).astype(np.float32)
    cos_q, sin_q = rope_tables(t_q, D)
    cos_k, sin_k = rope_tables(t_k, D)
    return {"q": q, "k": k, "v": v, "cos_q": cos_q, "sin_q": sin_q, "cos_k": cos_k, "sin_k": sin_k,
            "t_q": t_q, "t_k": t_k}
