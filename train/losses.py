"""Flow-matching losses: timestep sampling with shift, the CTS three-task loss (METHOD.md 1.2).

Random draws come from a CPU generator and are moved to the latents' device (`to_device`, without a host-device
sync): a run draws the same stream on any device, and a resumed run continues it exactly from its saved
generator state. Losses are computed in fp32 (under bf16 autocast the denoiser's outputs are cast up), and
their logs are detached 0-dim tensors, read (a device sync) only when the caller logs them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .configs import HarmonyConfig


def shift_t(u: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * u / (1 + (shift - 1) * u)


def sample_t(n: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps [n] in (0, 1): uniform, then shifted towards noise like the sampler."""
    u = torch.rand(n, generator=generator).clamp(1e-4, 1 - 1e-4)
    return shift_t(u, shift)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x, made on the CPU, on `device` without a host-device sync: a copy from pageable memory to a GPU first
    waits for every kernel queued before it (a dozen such copies a step would each stall the host), one from
    pinned memory is queued like a kernel (the pinned buffer is kept until the copy has run)."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def noise_like(like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped and placed like `like` (fp32), drawn on the CPU generator."""
    return to_device(torch.randn(like.shape, generator=generator), like.device)


def noise_to(z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) z_0 + t eps, t [N] broadcast over the rest."""
    tt = t.reshape(-1, *([1] * (z0.dim() - 1)))
    return (1 - tt) * z0 + tt * eps


@dataclass
class CTSBatch:
    """Clean latents and conditioning of B clips (conditioning already encoded)."""

    z_v: torch.Tensor  # [B, C_v, F, H, W]
    z_a: torch.Tensor  # [B, S, T, C_a]
    cond: dict  # text_emb, text_mask, audio_text_emb, audio_text_mask, speech_emb, speech_mask, ref_latent, ref_mask
    null_v: torch.Tensor | None = None  # static-video latent per clip (first frame repeated), like z_v
    null_a: torch.Tensor | None = None  # silence latent, like z_a


def _rows(B: int, m: int, device=None) -> torch.Tensor:
    """The clip of each row: B joint rows, then m audio-driven (clips 0..m-1), then m video-driven (the next m,
    cyclically). Made on the latents' device: a CPU index into a GPU tensor is a blocking copy per use."""
    clips = torch.arange(B, device=device)  # m <= B
    return torch.cat([clips, clips[:m], (clips[:m] + m) % B])


def _driven(batch: CTSBatch, rows: torch.Tensor, B: int, m: int, t_v: torch.Tensor, t_a: torch.Tensor,
            p_null: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean latents of `rows` (`_rows(B, m)`), the driven rows made in place in t_v / t_a: audio-driven t_a = 0,
    video-driven t_v = 0; with probability `p_null` a driven row's clean partner is its null (silence / static
    video): the SyncCFG anchors, trained in distribution."""
    ad, vd = rows[B : B + m], rows[B + m :]  # clips of the audio- / video-driven rows
    zv0, za0 = batch.z_v[rows], batch.z_a[rows]
    if m:
        t_a[B : B + m] = 0.0  # audio-driven
        t_v[B + m :] = 0.0  # video-driven
        if batch.null_a is not None and p_null > 0:
            use_null = to_device(torch.rand(m, generator=generator) < p_null, za0.device)
            use_null = use_null.reshape(m, *[1] * (za0.dim() - 1))
            za0[B : B + m] = torch.where(use_null, batch.null_a[ad], batch.z_a[ad])
        if batch.null_v is not None and p_null > 0:
            use_null = to_device(torch.rand(m, generator=generator) < p_null, zv0.device)
            use_null = use_null.reshape(m, *[1] * (zv0.dim() - 1))
            zv0[B + m :] = torch.where(use_null, batch.null_v[vd], batch.z_v[vd])
    return zv0, za0


def cts_loss(
    denoiser, batch: CTSBatch, cfg: HarmonyConfig, use_cts: bool = True, p_null: float = 0.1,
    generator: torch.Generator | None = None, driven_frac: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """L = L_joint + lambda_v L_audio-driven + lambda_a L_video-driven, in ONE denoiser call.

    joint: both noisy (all B clips); audio-driven: clean audio (t_a = 0), loss on video; video-driven: clean
    video (t_v = 0), loss on audio. Each driven task takes m = round(driven_frac * B) clips (1.0: every clip,
    3B rows; 0.25: B + B/2 rows, half the compute, each loss term still an unbiased mean over its rows); the
    audio-driven rows are clips 0..m-1, the video-driven rows the next m (cyclically). With probability
    `p_null` a driven task's clean partner is replaced by its null (silence / static video): these are the
    SyncCFG anchors, trained in distribution. With use_cts=False only the joint task is trained (the
    ablation "w/o CTS").
    """
    z_v, z_a, B = batch.z_v, batch.z_a, batch.z_v.shape[0]
    m = max(1, min(B, round(driven_frac * B))) if use_cts else 0
    rows = _rows(B, m, z_v.device)
    n = len(rows)
    eps_v = noise_like(z_v, generator)[rows]
    eps_a = noise_like(z_a, generator)[rows]
    t_v = to_device(sample_t(n, cfg.shift, generator), z_v.device)
    t_a = to_device(sample_t(n, cfg.shift, generator), z_v.device)
    zv0, za0 = _driven(batch, rows, B, m, t_v, t_a, p_null, generator)
    zt_v, zt_a = noise_to(zv0, t_v, eps_v), noise_to(za0, t_a, eps_a)
    cond = {name: x[rows] for name, x in batch.cond.items()}
    pv, pa = (p.float() for p in denoiser(zt_v, zt_a, t_v, t_a, **cond))
    err_v = ((pv - (eps_v - zv0)) ** 2).flatten(1).mean(1)  # [B + 2m]
    err_a = ((pa - (eps_a - za0)) ** 2).flatten(1).mean(1)
    l_joint = err_v[:B].mean() + err_a[:B].mean()
    logs = {"joint": l_joint.detach()}
    if not use_cts:
        return l_joint, logs
    l_ad, l_vd = err_v[B : B + m].mean(), err_a[B + m :].mean()
    logs.update(audio_driven=l_ad.detach(), video_driven=l_vd.detach())
    return l_joint + cfg.lambda_v * l_ad + cfg.lambda_a * l_vd, logs


# ----------------------------------------------------------------------------- Unison: cross-modal forcing

FORCING_PHASES = (0.3, 0.4, 0.3)  # synchronized warm-up, incremental decoupling, full independence
FORCING_MAX_GAP = 0.25


def forcing_gap(progress: float) -> float:
    """Largest |t_v - t_a| allowed at training progress in [0, 1] (the three-phase curriculum)."""
    warm, ramp, _ = FORCING_PHASES
    if progress < warm:
        return 0.0
    if progress < warm + ramp:
        return FORCING_MAX_GAP * (progress - warm) / ramp
    return FORCING_MAX_GAP


def forcing_timesteps(n: int, progress: float, shift: float, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_v, t_a) [n]: t_v from the shifted schedule, t_a = t_v + U(-gap, gap) clipped to [0, 1]."""
    t_v = sample_t(n, shift, generator)
    gap = forcing_gap(progress)
    delta = (torch.rand(n, generator=generator) * 2 - 1) * gap
    return t_v, (t_v + delta).clamp(0.0, 1.0)


def forcing_weights(t_v: torch.Tensor, t_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w_v = 1 + 0.5 d, w_a = 1 + 0.5 (1 - d), d = 1[t_a < t_v]: the cleaner modality drives the other."""
    d = (t_a < t_v).float()
    return 1 + 0.5 * d, 1 + 0.5 * (1 - d)


def forcing_loss(denoiser, batch: CTSBatch, cfg: HarmonyConfig, progress: float, generator=None,
                 use_cts: bool = True, p_null: float = 0.1, driven_frac: float = 1.0):
    """Unison's bidirectional cross-modal forcing: per-stream flow matching with weighted modalities, plus (with
    `use_cts`) the CTS driven rows of `cts_loss`, whose null partners are the anchors SyncCFG evaluates at every
    step (forcing alone never shows the model t_a = 0 beside silence, or t_v = 0 on a static video)."""
    z_v, z_a = batch.z_v, batch.z_a  # z_a [B, S, T, C_a]: speech, sfx stems
    B = z_v.shape[0]
    m = max(1, min(B, round(driven_frac * B))) if use_cts else 0
    rows = _rows(B, m, z_v.device)
    t_v, t_a = forcing_timesteps(B, progress, cfg.shift, generator)  # the joint rows'
    eps_v = noise_like(z_v, generator)[rows]
    eps_a = noise_like(z_a, generator)[rows]
    t_v = to_device(torch.cat([t_v, sample_t(2 * m, cfg.shift, generator)]), z_v.device)
    t_a = to_device(torch.cat([t_a, sample_t(2 * m, cfg.shift, generator)]), z_v.device)
    zv0, za0 = _driven(batch, rows, B, m, t_v, t_a, p_null, generator)
    cond = {name: x[rows] for name, x in batch.cond.items()}
    pv, pa = (p.float() for p in denoiser(noise_to(zv0, t_v, eps_v), noise_to(za0, t_a, eps_a), t_v, t_a, **cond))
    w_v, w_a = forcing_weights(t_v[:B], t_a[:B])
    err_v = ((pv - (eps_v - zv0)) ** 2).flatten(1).mean(1)  # [B + 2m]
    err_streams = ((pa - (eps_a - za0)) ** 2).flatten(2).mean(2)  # [B + 2m, S]: one loss per stream
    loss = (w_v * err_v[:B]).mean() + (w_a[:, None] * err_streams[:B]).sum(1).mean()
    logs = {"video": err_v[:B].mean().detach(),
            **{f"stream{k}": err_streams[:B, k].mean().detach() for k in range(z_a.shape[1])}}
    if m:
        l_ad, l_vd = err_v[B : B + m].mean(), err_streams[B + m :].sum(1).mean()
        logs.update(audio_driven=l_ad.detach(), video_driven=l_vd.detach())
        loss = loss + cfg.lambda_v * l_ad + cfg.lambda_a * l_vd
    return loss, logs
