"""The joint audio-video denoiser: a Wan-style video DiT, an MM-DiT audio DiT and GLDI between them.

One call predicts both velocities with per-sample, per-modality timesteps, so the joint task, the
audio-driven task (t_audio = 0) and the video-driven task (t_video = 0) are the same graph.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import HarmonyConfig
from .unison import BiACA, SemanticGates
from .layers import (
    CrossAttention,
    FeedForward,
    Heads,
    TimestepEmbedder,
    apply_rope,
    key_mask_bias,
    modulate,
    rope_aligned_attention,
    rope_table_1d,
    rope_table_3d,
    sdpa,
)


class VideoBlock(nn.Module):
    """Wan2.2-style block: adaLN(t_v), self-attention with 3D RoPE + q/k RMSNorm, text cross-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn: int, text_dim: int):
        super().__init__()
        self.h = Heads(heads)
        self.ada = nn.Linear(dim, 6 * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, text_dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(dim, ffn)

    def forward(self, x, e, text, text_bias, rope, t_tok):
        """x [N, Lv, D], e [N, D], text [N, L, Dt], text_bias [N,1,1,L], rope (cos, sin) [Lv, Dh/2]."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(nn.functional.silu(e)).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm1(x), sh1, sc1)).chunk(3, dim=-1)
        q, k, v = self.norm_q(self.h.split(q)), self.norm_k(self.h.split(k)), self.h.split(v)
        a = rope_aligned_attention(q, k, v, *rope, *rope, t_tok, t_tok, -1.0)
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
                norm1=nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6),
                qkv=nn.Linear(dim, 3 * dim),
                norm_q=nn.RMSNorm(dim // heads, eps=1e-6),
                norm_k=nn.RMSNorm(dim // heads, eps=1e-6),
                proj=nn.Linear(dim, dim),
                norm2=nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6),
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
        qs[0], ks[0] = apply_rope(qs[0], *rope_x), apply_rope(ks[0], *rope_x)
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
        self.norm_v, self.norm_a = nn.LayerNorm(dv, eps=1e-6), nn.LayerNorm(da, eps=1e-6)
        self.norm_r = nn.LayerNorm(da, eps=1e-6)
        self.a2v = CrossAttention(dv, da, heads, zero_init=True)
        self.v2a = CrossAttention(da, dv, heads, zero_init=True)
        self.style = CrossAttention(da, dv, heads, zero_init=True)
        self.heads = heads

    def forward(self, xv, xa, xr, tv, ta, gates=None):
        """xv [N, Lv, Dv] (t per token tv [Lv]); xa [N, La, Da] (ta [La]); xr [N, R, Da] -> deltas.

        gates [N, S] (Unison SCG): the video attends to each audio stream separately and the results are
        weighted by the stream's gate."""
        nv, na = self.norm_v(xv), self.norm_a(xa)
        dhv, dha = xv.shape[-1] // self.heads, xa.shape[-1] // self.heads
        if gates is None:
            dv = self.a2v.forward_rope(
                nv, na, rope_table_1d(tv, dhv, self.theta), rope_table_1d(ta, dhv, self.theta), tv, ta, self.window
            )
        else:
            s = gates.shape[1]
            t = na.shape[1] // s
            ta1 = ta[:t]
            rope_q, rope_k = rope_table_1d(tv, dhv, self.theta), rope_table_1d(ta1, dhv, self.theta)
            dv = sum(
                gates[:, k, None, None] * self.a2v.forward_rope(nv, na[:, k * t : (k + 1) * t], rope_q, rope_k, tv, ta1, self.window)
                for k in range(s)
            )
        da = self.v2a.forward_rope(
            na, nv, rope_table_1d(ta, dha, self.theta), rope_table_1d(tv, dha, self.theta), ta, tv, self.window
        )
        dr = self.style(self.norm_r(xr), nv)
        return dv, da, dr


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
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

        # time axis shared by both streams, in video latent frames: video frame i at i, audio frame j at j*F/T
        tv = torch.arange(fp, dtype=torch.float32)[:, None].expand(fp, hp * wp).reshape(-1) * pt  # [Lv]
        ta = (torch.arange(t, dtype=torch.float32) * (f / t)).repeat(s)  # [S*T]
        rope_v = rope_table_3d(fp, hp, wp, cfg.video_dim // cfg.video_heads, cfg.rope_theta)
        dha = cfg.audio_dim // cfg.audio_heads
        pos_x = torch.cat([torch.arange(r, dtype=torch.float32), torch.arange(t, dtype=torch.float32).repeat(s)])
        rope_x = rope_table_1d(pos_x, dha, cfg.rope_theta)  # reference and audio frames by index
        text_bias = key_mask_bias(text_mask)
        ones = torch.ones(n, s * t, dtype=text_mask.dtype)
        joint_bias = key_mask_bias(torch.cat([ref_mask, ones, speech_mask, audio_text_mask], dim=1))

        unison = cfg.audio_streams == 2
        gates = self.gates(speech_emb, speech_mask, audio_text_emb, audio_text_mask) if unison else None  # [N, 2]
        for i in range(cfg.layers):
            xv = self.video_blocks[i](xv, ev, text_emb, text_bias, rope_v, tv)
            seq, ctx = self.audio_blocks[i](torch.cat([xr, xa], dim=1), ctx, ea, joint_bias, rope_x)
            xr, xa = seq[:, :r], seq[:, r:]
            if unison:
                xa = self.biaca[i](xa, s)
            if str(i) in self.gldi:
                dv, da, dr = self.gldi[str(i)](xv, xa, xr, tv, ta, gates)
                xv, xa, xr = xv + dv, xa + da, xr + dr

        ov = self.final_v(xv, ev)  # [N, Lv, C_v*pt*ph*pw]
        ov = ov.reshape(n, fp, hp, wp, cv, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(n, cv, f, hh, ww)
        oa = self.final_a(xa, ea).reshape(n, s, t, -1)  # [N, S, T, C_a]
        return ov, oa
