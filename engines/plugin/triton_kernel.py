"""Triton kernel of RoPEAlignedAttention (flash-attention style) and a launcher on torch tensors.

One program per (q block, n * H + h): the q tile is loaded, rotated and scaled once; k / v tiles stream
through an online softmax. Rotary is applied to each tile on load as two half-width tiles
(x1, x2) -> (x1*c - x2*s, x2*c + x1*s), so rot(q).rot(k) = r1(q).r1(k) + r2(q).r2(k) needs no permute.

Kernel argument order is (input pointers..., int32 scalars..., output pointer) with everything else a
constexpr, the calling convention of TensorRT AOT plugins (see trt_plugin.py). `window` is a build-time
constant (an attribute of the ONNX node), so it is a constexpr too.

For tests on CPU set TRITON_INTERPRET=1 before importing triton (this module imports it).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

SLACK = 1e-6  # same window slack as reference.py / rope_attention_core.h


@triton.jit
def rope_attn_fwd(
    Q, K, V, COS_Q, SIN_Q, COS_K, SIN_K, T_Q, T_K,  # q/k/v [N,H,L,D] contiguous; tables [L, D/2]; t [L]
    H, Lq, Lk,  # int32
    O,  # out [N,H,Lq,D]  # noqa: E741 (named in trt_plugin.kernel_signature / KERNEL_OUTPUTS)
    HALF: tl.constexpr,  # D / 2
    HALF_P: tl.constexpr,  # HALF rounded up to a power of two (>= 16 for tl.dot on GPUs)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WINDOW: tl.constexpr,  # < 0: no mask
    SM_SCALE: tl.constexpr,  # 1 / sqrt(D)
    DOT_PREC: tl.constexpr,  # "ieee" for fp32 inputs (exact), "tf32" otherwise (ignored for fp16)
):
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1).to(tl.int64)
    D: tl.constexpr = 2 * HALF
    q_base = pid_nh * Lq * D
    kv_base = pid_nh * Lk * D

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_h = tl.arange(0, HALF_P)  # [HP]
    m_ok = offs_m < Lq
    h_ok = offs_h < HALF
    mh_ok = m_ok[:, None] & h_ok[None, :]

    # q tile, rotated and scaled: r1, r2 [BM, HP] in fp32
    q_ptr = Q + q_base + offs_m[:, None] * D + offs_h[None, :]
    q1 = tl.load(q_ptr, mask=mh_ok, other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + HALF, mask=mh_ok, other=0.0).to(tl.float32)
    t_ptr = offs_m[:, None] * HALF + offs_h[None, :]
    cq = tl.load(COS_Q + t_ptr, mask=mh_ok, other=0.0)
    sq = tl.load(SIN_Q + t_ptr, mask=mh_ok, other=0.0)
    qr1 = ((q1 * cq - q2 * sq) * SM_SCALE).to(Q.dtype.element_ty)
    qr2 = ((q2 * cq + q1 * sq) * SM_SCALE).to(Q.dtype.element_ty)
    tq = tl.load(T_Q + offs_m, mask=m_ok, other=0.0)  # [BM]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HALF_P], tl.float32)
    acc2 = tl.zeros([BLOCK_M, HALF_P], tl.float32)

    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # [BN]
        n_ok = offs_n < Lk
        nh_ok = n_ok[:, None] & h_ok[None, :]
        k_ptr = K + kv_base + offs_n[:, None] * D + offs_h[None, :]
        k1 = tl.load(k_ptr, mask=nh_ok, other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + HALF, mask=nh_ok, other=0.0).to(tl.float32)
        tk_ptr = offs_n[:, None] * HALF + offs_h[None, :]
        ck = tl.load(COS_K + tk_ptr, mask=nh_ok, other=0.0)
        sk = tl.load(SIN_K + tk_ptr, mask=nh_ok, other=0.0)
        kr1 = (k1 * ck - k2 * sk).to(K.dtype.element_ty)
        kr2 = (k2 * ck + k1 * sk).to(K.dtype.element_ty)

        s = tl.dot(qr1, tl.trans(kr1), input_precision=DOT_PREC)  # [BM, BN]
        s += tl.dot(qr2, tl.trans(kr2), input_precision=DOT_PREC)
        valid = m_ok[:, None] & n_ok[None, :]
        if WINDOW >= 0:
            tk = tl.load(T_K + offs_n, mask=n_ok, other=0.0)
            valid = valid & (tl.abs(tq[:, None] - tk[None, :]) <= WINDOW + 1e-6)
        s = tl.where(valid, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))  # [BM]
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: keep exp() finite
        alpha = tl.exp(m_i - m_sub)  # exp(-inf) = 0 before the first live key
        p = tl.exp(s - m_sub[:, None])  # masked -> 0
        l_i = l_i * alpha + tl.sum(p, 1)

        v_ptr = V + kv_base + offs_n[:, None] * D + offs_h[None, :]
        v1 = tl.load(v_ptr, mask=nh_ok, other=0.0)
        v2 = tl.load(v_ptr + HALF, mask=nh_ok, other=0.0)
        pv = p.to(V.dtype.element_ty)
        acc1 = acc1 * alpha[:, None] + tl.dot(pv, v1, input_precision=DOT_PREC)
        acc2 = acc2 * alpha[:, None] + tl.dot(pv, v2, input_precision=DOT_PREC)
        m_i = m_new

    inv = tl.where(l_i > 0.0, 1.0 / tl.where(l_i > 0.0, l_i, 1.0), 0.0)  # all-masked rows -> 0
    o_ptr = O + q_base + offs_m[:, None] * D + offs_h[None, :]
    tl.store(o_ptr, (acc1 * inv[:, None]).to(O.dtype.element_ty), mask=mh_ok)
    tl.store(o_ptr + HALF, (acc2 * inv[:, None]).to(O.dtype.element_ty), mask=mh_ok)


def kernel_constants(D: int, window: float, dtype_is_fp32: bool, block_m: int = 64, block_n: int = 64) -> dict:
    """The constexpr arguments for head dim D (shared by the launcher and the AOT compile)."""
    if D % 2 or D < 2:
        raise ValueError(f"head dim must be even, got {D}")
    half = D // 2
    return dict(
        HALF=half,
        HALF_P=max(16, triton.next_power_of_2(half)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        WINDOW=float(window),
        SM_SCALE=1.0 / math.sqrt(D),
        DOT_PREC="ieee" if dtype_is_fp32 else "tf32",
    )


def rope_aligned_attention(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float = -1.0, out=None,
                           block_m: int = 64, block_n: int = 64):
    """Torch tensors (CUDA, or CPU under TRITON_INTERPRET=1): q [N,H,Lq,D], k/v [N,H,Lk,D] fp32 or fp16;
    cos/sin [L, D/2] and t [L] fp32. Returns out [N,H,Lq,D] in q's dtype."""
    import torch

    N, H, Lq, D = q.shape
    Lk = k.shape[2]
    if k.shape != (N, H, Lk, D) or v.shape != k.shape:
        raise ValueError(f"k, v must be [N,H,Lk,D] matching q {tuple(q.shape)}: got {tuple(k.shape)}, {tuple(v.shape)}")
    tables = (cos_q.shape, sin_q.shape, cos_k.shape, sin_k.shape)
    if tables != ((Lq, D // 2),) * 2 + ((Lk, D // 2),) * 2:
        raise ValueError("rotary tables must be [Lq, D/2] and [Lk, D/2]")
    if t_q.shape != (Lq,) or t_k.shape != (Lk,):
        raise ValueError("t_q, t_k must be [Lq] and [Lk]")

    def f32(x):
        return x.contiguous().to(torch.float32)

    q, k, v = q.contiguous(), k.contiguous().to(q.dtype), v.contiguous().to(q.dtype)
    if out is None:
        out = torch.empty_like(q)
    consts = kernel_constants(D, window, q.dtype == torch.float32, block_m, block_n)
    grid = (triton.cdiv(Lq, block_m), N * H)
    rope_attn_fwd[grid](q, k, v, f32(cos_q), f32(sin_q), f32(cos_k), f32(sin_k), f32(t_q), f32(t_k),
                        H, Lq, Lk, out, **consts)
    return out
