"""The joint audio-video denoiser: a Wan-style video DiT, an MM-DiT audio DiT and GLDI between them.

One call predicts both velocities with per-sample, per-modality timesteps, so the joint task, the
audio-driven task (t_audio = 0) and the video-driven task (t_video = 0) are the same graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..configs import HarmonyConfig
from . import layers
from .layers import (
    CrossAttention,
    FeedForward,
    Heads,
    LayerNorm,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    key_mask_bias,
    modulate,
    residual,
    rope_aligned_attention,
    rope_table_1d,
    rope_table_3d,
    sdpa,
)
from .unison import BiACA, SemanticGates

# GLDI's +-window attention computed block by block (each video frame with the audio frames of its window,
# each group of audio frames with its window of video frames) instead of as a mask over full attention.
# Same outputs (the kept score entries and the mask test are the same; only the skipped entries are not
# computed: 12-18 % of the scores are kept at the benchmark shapes). "export": in ONNX export only, where ORT
# gains from it; PyTorch eager (training, the torch sampler) keeps the masked form, which its SDPA kernel
# runs as fast (measured 0.94-1.01x for block-local), so its results stay bit for bit what they were.
# True / False: always / never. The custom-op export (layers.EMIT_CUSTOM_OP) always uses the masked form:
# one RoPEAlignedAttention node per direction.
BLOCK_LOCAL_GLDI: bool | str = "export"


def _block_local() -> bool:
    if BLOCK_LOCAL_GLDI == "export":
        return torch.onnx.is_in_onnx_export()
    return bool(BLOCK_LOCAL_GLDI)


# In ONNX export, each RoPE rotation becomes one ONNX RotaryEmbedding node (opset 23) instead of the
# slice / multiply / subtract / add / concatenate chain of layers.apply_rope (same math; PyTorch eager
# always runs apply_rope). The custom-op (TensorRT plugin) export is left as it was: RoPEAlignedAttention
# nodes, the audio block's rotation decomposed.
ROPE_NODE = True


# In ONNX export, GLDI's style attention (reference tokens attending to the video) runs inside an If on
# "does any row carry a reference": without one (ref_mask all 0, what generate feeds when no voice is given)
# the reference tokens are masked out of every attention that reaches an output, so their update is dead
# work (at the benchmark shapes its K / V projections of all video tokens are ~5 % of a step). The outputs
# are the same either way. PyTorch eager and the custom-op (TensorRT plugin) export always compute it.
SKIP_DEAD_STYLE = True


def _skip_dead_style() -> bool:
    return SKIP_DEAD_STYLE and torch.onnx.is_in_onnx_export() and not layers.EMIT_CUSTOM_OP


def _rope_node() -> bool:
    return ROPE_NODE and torch.onnx.is_in_onnx_export() and not layers.EMIT_CUSTOM_OP


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """layers.apply_rope: x [N, H, L, D] rotated by tables [L, D/2] ("half" convention)."""
    if _rope_node():
        n, _, L, _ = x.shape
        ids = torch.arange(L, device=x.device)[None].expand(n, L)
        return torch.onnx.ops.rotary_embedding(x, cos, sin, ids)
    return apply_rope(x, cos, sin)


def rope_attention(q, k, v, rope_q, rope_k, t_q, t_k, window: float) -> torch.Tensor:
    """layers.rope_aligned_attention, with the rotations through `rope`; window < 0: no mask."""
    if not _rope_node():
        return rope_aligned_attention(q, k, v, *rope_q, *rope_k, t_q, t_k, window)
    mask = layers.window_bias(t_q, t_k, window) if window >= 0 else None
    return nn.functional.scaled_dot_product_attention(rope(q, *rope_q), rope(k, *rope_k), v, attn_mask=mask)


@dataclass
class GLDIBlocks:
    """Static gather indices and masks of the block-local GLDI attention, computed once per forward from the
    shapes only (so dynamic frame / audio lengths keep working in the exported graph).

    a2v (video queries): video frame i attends audio frames a2v_idx[i*ka : (i+1)*ka] (clamped into range),
    a2v_bias [1, fp, hw, ka] 0 / -inf. v2a (audio queries): audio frames are grouped by their nearest video
    frame (G = fp + 1 groups of qa query slots: at most qa / S frames of each stream); group g attends video
    frames v2a_frames[g*kf : (g+1)*kf]; v2a_bias [1, G, qa, kf*hw]; v2a_q [G*qa] gathers the queries and
    v2a_inv [S*T] puts the outputs back in token order.
    """

    fp: int
    hw: int
    ka: int
    a2v_idx: torch.Tensor
    a2v_bias: torch.Tensor
    groups: int
    qa: int
    kf: int
    v2a_q: torch.Tensor
    v2a_frames: torch.Tensor
    v2a_bias: torch.Tensor
    v2a_inv: torch.Tensor


def _window_ok(t_q: torch.Tensor, t_k: torch.Tensor, window: float) -> torch.Tensor:
    """The test of layers.window_bias, elementwise on broadcast times (same floats, same result)."""
    return (t_q - t_k).abs() <= window + 1e-6


def gldi_blocks(fp: int, hw: int, pt: int, f: int, t: int, s: int, tv: torch.Tensor, ta: torch.Tensor,
                window: float) -> GLDIBlocks:
    """Index tensors for GLDI at fp video latent frames of hw tokens (time i*pt), t audio frames per stream
    (time j*f/t), s streams; tv [fp*hw], ta [s*t] the token times the masked form compares.

    Which entries are kept is decided by the same float test as the masked form; the integer bounds below
    only have to contain every kept entry (they carry a margin of >= 1/64 latent frame)."""
    dev = tv.device
    t_frame = tv.reshape(fp, hw)[:, 0]  # [fp] time of each video frame
    # ---- a2v: frame i takes audio frames j in [lo_i, lo_i + ka) with lo_i = ceil((i*pt - w') t / f),
    # w' = wq / 64 >= window + 1/64; ka = floor(2 w' t / f) + 1 bounds the integers of that interval.
    wq = math.ceil(window * 64) + 1
    ka = (2 * wq * t) // (64 * f) + 1
    i = torch.arange(fp, device=dev)
    lo = torch.ceil((i * pt - wq / 64.0) * t / f).long()  # [fp]
    j = lo[:, None] + torch.arange(ka, device=dev)[None, :]  # [fp, ka], possibly out of range
    in_range = (j >= 0) & (j < t)
    j = j.clamp(0, t - 1).reshape(-1)
    t_audio = ta.index_select(0, j).reshape(fp, 1, ka)
    keep = in_range[:, None, :] & _window_ok(t_frame[:, None, None], t_audio, window)  # [fp, 1, ka]
    a2v_bias = torch.where(keep, 0.0, float("-inf")).expand(fp, hw, ka)[None]
    # ---- v2a: audio frame j belongs to group round(j f / (t pt)) (exact integer arithmetic), i.e. its time
    # is within pt/2 of group g's video frame; the window then needs frames g-r .. g+r only.
    r = math.floor(0.5 + window / pt + 1e-3)
    kf = 2 * r + 1
    groups = fp + 1  # rounding sends the last half frame of audio to a group past the last video frame
    qa = (t // f + 1) if pt == 1 else ((3 * t * pt) // (2 * f) + 2)  # bound on a group's size
    g = torch.arange(groups, device=dev)
    first = ((2 * g - 1) * (t * pt) + (2 * f - 1)).clamp(min=0) // (2 * f)  # first audio frame of group g
    size = torch.cat([first[1:], first.new_full((1,), t)]) - first
    p = torch.arange(qa, device=dev)
    q_valid = p[None, :] < size[:, None]  # [G, qa]
    jq = (first[:, None] + p[None, :]).clamp(max=t - 1)  # [G, qa]
    v2a_q = (jq[:, None, :] + (torch.arange(s, device=dev) * t)[None, :, None]).reshape(-1)  # [G*S*qa]
    frames = g[:, None] - r + torch.arange(kf, device=dev)[None, :]  # [G, kf]
    f_valid = (frames >= 0) & (frames < fp)
    frames = frames.clamp(0, fp - 1).reshape(-1)
    t_q = ta.index_select(0, v2a_q).reshape(groups, s, qa, 1)
    t_k = t_frame.index_select(0, frames).reshape(groups, 1, 1, kf)
    keep = f_valid[:, None, None, :] & _window_ok(t_q, t_k, window)  # [G, S, qa, kf]
    keep = keep | ~q_valid[:, None, :, None]  # padding query slots: any finite row (never read back)
    v2a_bias = torch.where(keep, 0.0, float("-inf")).reshape(groups, s * qa, kf, 1)
    v2a_bias = v2a_bias.expand(groups, s * qa, kf, hw).reshape(1, groups, s * qa, kf * hw)
    ja = torch.arange(t, device=dev)
    gj = ((2 * f) * ja + t * pt) // (2 * t * pt)  # group of audio frame j
    gj = gj.clamp(max=groups - 1)
    pos = gj * (s * qa) + (ja - first.index_select(0, gj))  # [t] slot of (stream 0, frame j)
    v2a_inv = (pos[None, :] + (torch.arange(s, device=dev) * qa)[:, None]).reshape(-1)  # [S*t]
    return GLDIBlocks(fp, hw, ka, j, a2v_bias, groups, s * qa, kf, v2a_q, frames, v2a_bias, v2a_inv)


def a2v_block_attention(q, k, v, b: GLDIBlocks) -> torch.Tensor:
    """q [N,H,fp*hw,D] video (rotated), k/v [N,H,T,D] one audio stream (rotated) -> [N,H,fp*hw,D].
    Attention batch N*H, the fp frames as heads."""
    n, h, lv, d = q.shape
    kb = k.index_select(2, b.a2v_idx).reshape(n * h, b.fp, b.ka, d)
    vb = v.index_select(2, b.a2v_idx).reshape(n * h, b.fp, b.ka, d)
    o = nn.functional.scaled_dot_product_attention(q.reshape(n * h, b.fp, b.hw, d), kb, vb, attn_mask=b.a2v_bias)
    return o.reshape(n, h, lv, d)


def v2a_block_attention(q, k, v, b: GLDIBlocks) -> torch.Tensor:
    """q [N,H,S*T,D] audio (rotated), k/v [N,H,fp*hw,D] video (rotated) -> [N,H,S*T,D].
    Attention batch N*H, the G audio groups as heads (S*qa queries each, all streams)."""
    n, h, _, d = q.shape
    qb = q.index_select(2, b.v2a_q).reshape(n * h, b.groups, b.qa, d)
    kb = k.reshape(n * h, b.fp, b.hw * d).index_select(1, b.v2a_frames).reshape(n * h, b.groups, b.kf * b.hw, d)
    vb = v.reshape(n * h, b.fp, b.hw * d).index_select(1, b.v2a_frames).reshape(n * h, b.groups, b.kf * b.hw, d)
    o = nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=b.v2a_bias)
    return o.reshape(n, h, b.groups * b.qa, d).index_select(2, b.v2a_inv)


def _cross_rope(att, x, ctx, rope_q, rope_k, t_q, t_k, window, blocks, block_fn):
    """CrossAttention.forward_rope (the same steps), the attention block-local when `blocks` is given."""
    q, k, v = att.qkv(x, ctx)
    if blocks is None:
        o = rope_attention(q, k, v, rope_q, rope_k, t_q, t_k, window)
    else:
        o = block_fn(rope(q, *rope_q), rope(k, *rope_k), v, blocks)
    return att.out(att.h.merge(o))


class VideoBlock(nn.Module):
    """Wan2.2-style block: adaLN(t_v), self-attention with 3D RoPE + q/k RMSNorm, text cross-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn: int, text_dim: int):
        super().__init__()
        self.h = Heads(heads)
        self.ada = nn.Linear(dim, 6 * dim)
        self.norm1 = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = RMSNorm(dim // heads, eps=1e-6), RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, text_dim, heads)
        self.norm3 = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(dim, ffn)

    def forward(self, x, e, text, text_bias, rope, t_tok):
        """x [N, Lv, D], e [N, D], text [N, L, Dt], text_bias [N,1,1,L], rope (cos, sin) [Lv, Dh/2]."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(nn.functional.silu(e)).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm1(x), sh1, sc1)).chunk(3, dim=-1)
        q, k, v = self.norm_q(self.h.split(q)), self.norm_k(self.h.split(k)), self.h.split(v)
        a = rope_attention(q, k, v, rope, rope, t_tok, t_tok, -1.0)
        x = x + g1[:, None] * self.proj(self.h.merge(a))
        x = x + self.cross(self.norm2(x), text, text_bias)
        return x + g2[:, None] * self.ffn(modulate(self.norm3(x), sh2, sc2))


class AudioBlock(nn.Module):
    """MM-DiT block: joint attention over [reference + audio] tokens and [speech + caption] tokens,
    each side with its own weights and adaLN(t_a) modulation."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.h = Heads(heads)
        self.sides = nn.ModuleList([self._side(dim, heads, ffn) for _ in range(2)])  # 0: audio, 1: context

    @staticmethod
    def _side(dim, heads, ffn):
        return nn.ModuleDict(
            dict(
                ada=nn.Linear(dim, 6 * dim),
                norm1=LayerNorm(dim, elementwise_affine=False, eps=1e-6),
                qkv=nn.Linear(dim, 3 * dim),
                norm_q=RMSNorm(dim // heads, eps=1e-6),
                norm_k=RMSNorm(dim // heads, eps=1e-6),
                proj=nn.Linear(dim, dim),
                norm2=LayerNorm(dim, elementwise_affine=False, eps=1e-6),
                ffn=FeedForward(dim, ffn),
            )
        )

    def forward(self, x, c, e, bias, rope_x):
        """x [N, Lx, D] audio side, c [N, Lc, D] context, e [N, D], bias [N,1,1,Lx+Lc], rope_x tables [Lx, Dh/2]."""
        mods, qs, ks, vs = [], [], [], []
        for side, tokens in zip(self.sides, (x, c)):
            m = side["ada"](nn.functional.silu(e)).chunk(6, dim=-1)
            q, k, v = side["qkv"](modulate(side["norm1"](tokens), m[0], m[1])).chunk(3, dim=-1)
            mods.append(m)
            qs.append(side["norm_q"](self.h.split(q)))
            ks.append(side["norm_k"](self.h.split(k)))
            vs.append(self.h.split(v))
        qs[0], ks[0] = rope(qs[0], *rope_x), rope(ks[0], *rope_x)
        a = sdpa(torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2), bias)
        a = self.h.merge(a)
        lx = x.shape[1]
        outs = []
        for side, tokens, m, ai in zip(self.sides, (x, c), mods, (a[:, :lx], a[:, lx:])):
            tokens = tokens + m[2][:, None] * side["proj"](ai)
            tokens = tokens + m[5][:, None] * side["ffn"](modulate(side["norm2"](tokens), m[3], m[4]))
            outs.append(tokens)
        return outs[0], outs[1]


class GLDI(nn.Module):
    """Global-Local Decoupled Interaction: RoPE-aligned frame-wise cross-attention in both directions
    (local, windowed on a shared time axis) and global style attention from the reference tokens.
    All output projections start at zero so a pretrained backbone starts unchanged."""

    def __init__(self, dv: int, da: int, heads: int, window: float, theta: float):
        super().__init__()
        self.window, self.theta = window, theta
        self.norm_v, self.norm_a = LayerNorm(dv, eps=1e-6), LayerNorm(da, eps=1e-6)
        self.norm_r = LayerNorm(da, eps=1e-6)
        self.a2v = CrossAttention(dv, da, heads, zero_init=True)
        self.v2a = CrossAttention(da, dv, heads, zero_init=True)
        self.style = CrossAttention(da, dv, heads, zero_init=True)
        self.heads = heads

    def forward(self, xv, xa, xr, tv, ta, gates=None, blocks: GLDIBlocks | None = None, has_ref=None):
        """xv [N, Lv, Dv] (t per token tv [Lv]); xa [N, La, Da] (ta [La]); xr [N, R, Da] -> deltas.

        gates [N, S] (Unison SCG): the video attends to each audio stream separately and the results are
        weighted by the stream's gate. blocks (gldi_blocks for this window): the window attention is computed
        block by block (same result as the masked full attention). has_ref (bool scalar tensor, export only):
        when False the style delta is zeros instead of computed (see SKIP_DEAD_STYLE)."""
        nv, na = self.norm_v(xv), self.norm_a(xa)
        dhv, dha = xv.shape[-1] // self.heads, xa.shape[-1] // self.heads
        if gates is None:
            dv = _cross_rope(
                self.a2v, nv, na, rope_table_1d(tv, dhv, self.theta), rope_table_1d(ta, dhv, self.theta), tv, ta,
                self.window, blocks, a2v_block_attention,
            )
        else:
            s = gates.shape[1]
            t = na.shape[1] // s
            ta1 = ta[:t]
            rope_q, rope_k = rope_table_1d(tv, dhv, self.theta), rope_table_1d(ta1, dhv, self.theta)
            dv = sum(
                gates[:, k, None, None] * _cross_rope(
                    self.a2v, nv, na[:, k * t : (k + 1) * t], rope_q, rope_k, tv, ta1, self.window, blocks,
                    a2v_block_attention,
                )
                for k in range(s)
            )
        da = _cross_rope(
            self.v2a, na, nv, rope_table_1d(ta, dha, self.theta), rope_table_1d(tv, dha, self.theta), ta, tv,
            self.window, blocks, v2a_block_attention,
        )
        if has_ref is None:
            dr = self._style(xr, nv)
        else:
            dr = torch.cond(has_ref, self._style, lambda xr, nv: torch.zeros_like(xr), (xr, nv))
        return dv, da, dr

    def _style(self, xr, nv):
        return self.style(self.norm_r(xr), nv)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, e):
        shift, scale = self.ada(nn.functional.silu(e)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class HarmonyDenoiser(nn.Module):
    """v_theta(z_v, z_a, t_v, t_a | captions, transcript, reference) -> (video velocity, audio velocity)."""

    def __init__(self, cfg: HarmonyConfig):
        super().__init__()
        self.cfg = cfg
        pt, ph, pw = cfg.patch
        dv, da = cfg.video_dim, cfg.audio_dim
        self.patch_embed = nn.Conv3d(cfg.C_v, dv, kernel_size=cfg.patch, stride=cfg.patch)
        self.t_video, self.t_audio = TimestepEmbedder(dv), TimestepEmbedder(da)
        self.audio_in = nn.Linear(cfg.C_a, da)
        self.ref_in = nn.Linear(cfg.C_a, da)
        self.stream_emb = nn.Parameter(torch.zeros(cfg.audio_streams, da))  # speech / sfx (Unison)
        self.speech_in = nn.Linear(cfg.speech_dim, da)
        self.caption_in = nn.Linear(cfg.text_dim, da)
        self.video_blocks = nn.ModuleList(
            VideoBlock(dv, cfg.video_heads, cfg.video_ffn, cfg.text_dim) for _ in range(cfg.layers)
        )
        self.audio_blocks = nn.ModuleList(AudioBlock(da, cfg.audio_heads, cfg.audio_ffn) for _ in range(cfg.layers))
        self.gldi = nn.ModuleDict(
            {
                str(i): GLDI(dv, da, cfg.audio_heads, cfg.gldi_window, cfg.rope_theta)
                for i in range(cfg.layers)
                if i % cfg.gldi_every == 0
            }
        )
        if cfg.audio_streams == 2:  # Unison: speech / SFX exchange and semantic gates
            self.biaca = nn.ModuleList(BiACA(da, cfg.audio_heads) for _ in range(cfg.layers))
            self.gates = SemanticGates(cfg.speech_dim, cfg.text_dim, da)
        self.final_v = FinalLayer(dv, cfg.C_v * pt * ph * pw)
        self.final_a = FinalLayer(da, cfg.C_a)

    def forward(
        self, video_latent, audio_latent, t_video, t_audio, text_emb, text_mask, audio_text_emb,
        audio_text_mask, speech_emb, speech_mask, ref_latent, ref_mask,
    ):
        cfg = self.cfg
        pt, ph, pw = cfg.patch
        n, cv, f, hh, ww = video_latent.shape  # [N, C_v, F, H, W]
        s, t = audio_latent.shape[1], audio_latent.shape[2]  # [N, S, T, C_a]
        r = ref_latent.shape[1]  # [N, R, C_a]
        fp, hp, wp = f // pt, hh // ph, ww // pw

        xv = self.patch_embed(video_latent).flatten(2).transpose(1, 2)  # [N, Lv=F*h*w, Dv]
        ev, ea = self.t_video(t_video), self.t_audio(t_audio)  # [N, D]
        xa = self.audio_in(audio_latent) + self.stream_emb[None, :, None, :]  # [N, S, T, Da]
        xa = xa.reshape(n, s * t, -1)  # streams share time positions (Unison's shared RoPE indices)
        xr = self.ref_in(ref_latent)  # [N, R, Da]
        ctx = torch.cat([self.speech_in(speech_emb), self.caption_in(audio_text_emb)], dim=1)  # [N, P+LA, Da]
        # the residual streams: fp32 under autocast (the layers' outputs added to them come in bf16)
        xv, xa, xr, ctx = residual(xv), residual(xa), residual(xr), residual(ctx)

        # time axis shared by both streams, in video latent frames: video frame i at i, audio frame j at j*F/T
        dev = video_latent.device
        f32 = dict(dtype=torch.float32, device=dev)
        tv = torch.arange(fp, **f32)[:, None].expand(fp, hp * wp).reshape(-1) * pt  # [Lv]
        ta = (torch.arange(t, **f32) * (f / t)).repeat(s)  # [S*T]
        rope_v = rope_table_3d(fp, hp, wp, cfg.video_dim // cfg.video_heads, cfg.rope_theta, dev)
        dha = cfg.audio_dim // cfg.audio_heads
        pos_x = torch.cat([torch.arange(r, **f32), torch.arange(t, **f32).repeat(s)])
        rope_x = rope_table_1d(pos_x, dha, cfg.rope_theta)  # reference and audio frames by index
        text_bias = key_mask_bias(text_mask)
        ones = torch.ones(n, s * t, dtype=text_mask.dtype, device=dev)
        joint_bias = key_mask_bias(torch.cat([ref_mask, ones, speech_mask, audio_text_mask], dim=1))

        unison = cfg.audio_streams == 2
        gates = self.gates(speech_emb, speech_mask, audio_text_emb, audio_text_mask) if unison else None  # [N, 2]
        blocks = None
        custom_op = layers.EMIT_CUSTOM_OP and torch.onnx.is_in_onnx_export()  # one node per attention
        if _block_local() and len(self.gldi) and cfg.gldi_window >= 0 and not custom_op:
            blocks = gldi_blocks(fp, hp * wp, pt, f, t, s, tv, ta, cfg.gldi_window)
        has_ref = (ref_mask.abs().sum() > 0) if _skip_dead_style() and len(self.gldi) else None
        for i in range(cfg.layers):
            xv = self.video_blocks[i](xv, ev, text_emb, text_bias, rope_v, tv)
            seq, ctx = self.audio_blocks[i](torch.cat([xr, xa], dim=1), ctx, ea, joint_bias, rope_x)
            xr, xa = seq[:, :r], seq[:, r:]
            if unison:
                xa = self.biaca[i](xa, s)
            if str(i) in self.gldi:
                dv, da, dr = self.gldi[str(i)](xv, xa, xr, tv, ta, gates, blocks, has_ref)
                xv, xa, xr = xv + dv, xa + da, xr + dr

        ov = self.final_v(xv, ev)  # [N, Lv, C_v*pt*ph*pw]
        ov = ov.reshape(n, fp, hp, wp, cv, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(n, cv, f, hh, ww)
        oa = self.final_a(xa, ea).reshape(n, s, t, -1)  # [N, S, T, C_a]
        return ov, oa
