"""TensorRT optimization profiles derived from the bundle's I/O contract (pure Python, no TensorRT).

Every symbolic dimension of `harmony_rt.contract` gets a (min, opt, max) range from the manifest geometry
and the build limits; every input of a component then gets per-axis ranges. One profile per component.

    N   batch = guidance branches x samples     1 .. max_batch (opt: the SyncCFG batch, 3, capped)
    F   video latent frames                     1 .. max_frames (<= geometry.max_latent_frames)
    T   audio latent frames                     1 .. audio_frames_for(max F)
    R   reference audio latent frames           1 .. geometry max_ref_frames, else the larger of T max and the
                                                frames of sampling.max_ref_seconds (what the runtime encodes)
    L   video-caption tokens                    1 .. max_text_tokens
    LA  audio-caption tokens                    1 .. max_audio_text_tokens (geometry), else max_text_tokens
    P   transcript characters                   1 .. max_speech_chars
    FP  pixel frames                            1 .. max F * video_t_stride + 1 (F*s and causal (F-1)*s+1)
    W   waveform samples                        1 .. (max T + 1) * audio_hop, and at least R max * audio_hop (the
                                                reference voice goes through the audio encoder too)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harmony_rt.contract import ComponentSpec, Geometry
from harmony_rt.errors import HarmonyError

DEFAULT_MAX_BATCH = 4  # SyncCFG: joint + audio-driven + video-driven anchors, + text-unconditional
SYNCCFG_BATCH = 3

Range = tuple[int, int, int]  # (min, opt, max)


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_frames: int

    def to_dict(self) -> dict:
        return {"max_batch": self.max_batch, "max_frames": self.max_frames}


def resolve_limits(manifest: dict, geometry: Geometry, max_frames: int | None = None,
                   max_batch: int | None = None) -> Limits:
    """Build limits: arguments, else the manifest (`engines.max_batch` / `sampling.max_batch`), else defaults."""
    if max_batch is None:
        max_batch = manifest.get("engines", {}).get("max_batch") or manifest.get("sampling", {}).get("max_batch")
        max_batch = int(max_batch) if max_batch else DEFAULT_MAX_BATCH
    if max_frames is None:
        max_frames = geometry.max_latent_frames
    if not (isinstance(max_batch, int) and max_batch >= 1):
        raise HarmonyError(f"max batch must be a positive integer, got {max_batch!r}")
    if not (isinstance(max_frames, int) and 1 <= max_frames <= geometry.max_latent_frames):
        raise HarmonyError(f"max frames must be 1..{geometry.max_latent_frames} (the model's max_latent_frames), "
                           f"got {max_frames!r}")
    return Limits(max_batch=max_batch, max_frames=max_frames)


def dim_ranges(geometry: Geometry, limits: Limits, manifest: dict | None = None) -> dict[str, Range]:
    """(min, opt, max) of every symbolic dimension name of the contract (a new name fails loudly in
    `component_profile` until it gets a range here). `manifest`: the bundle's (its reference length)."""
    g = geometry
    F = limits.max_frames
    T = max(1, g.audio_frames_for(F))
    manifest = manifest or {}
    # the runtime encodes the first max_ref_seconds of a reference voice, whatever --max-frames allows
    ref_s = float(manifest.get("sampling", {}).get("max_ref_seconds", 0.0))
    R = int(manifest.get("geometry", {}).get("max_ref_frames")
            or max(T, math.ceil(ref_s * g.sample_rate / g.audio_hop)))
    LA = int(getattr(g, "max_audio_text_tokens", 0) or g.max_text_tokens)
    ranges = {
        "N": (1, min(SYNCCFG_BATCH, limits.max_batch), limits.max_batch),
        "F": (1, F, F),
        "T": (1, T, T),
        "R": (1, R, R),
        "L": (1, g.max_text_tokens, g.max_text_tokens),
        "LA": (1, LA, LA),
        "P": (1, g.max_speech_chars, g.max_speech_chars),
        "FP": (1, F * g.video_t_stride, F * g.video_t_stride + 1),
        "W": (1, T * g.audio_hop, max(T + 1, R) * g.audio_hop),  # clips, and the reference voice R comes from
    }
    for name, (lo, opt, hi) in ranges.items():
        assert 1 <= lo <= opt <= hi, (name, lo, opt, hi)
    return ranges


def component_profile(spec: ComponentSpec, ranges: dict[str, Range]) -> dict[str, tuple[tuple, tuple, tuple]]:
    """{input name: (min shape, opt shape, max shape)} for one component."""
    prof = {}
    for t in spec.inputs:
        lo, opt, hi = [], [], []
        for d in t.shape:
            if isinstance(d, int):
                r = (d, d, d)
            elif d in ranges:
                r = ranges[d]
            else:
                raise HarmonyError(f"input {t.name}: no range for symbolic dimension {d!r}")
            lo.append(r[0])
            opt.append(r[1])
            hi.append(r[2])
        prof[t.name] = (tuple(lo), tuple(opt), tuple(hi))
    return prof


def fit_to_network(profile: dict, network_shapes: dict[str, tuple]) -> dict:
    """Pin the axes the parsed network fixed (not -1) and refuse inputs the profile does not know.

    A graph exported with a fixed size where the contract is symbolic gets that size in all three shapes;
    a fixed size outside the contract range is an error (the engine could never serve the contract).
    """
    if set(profile) != set(network_shapes):
        raise HarmonyError(f"graph inputs {sorted(network_shapes)} differ from the contract {sorted(profile)}")
    out = {}
    for name, (lo, opt, hi) in profile.items():
        shape = tuple(network_shapes[name])
        if len(shape) != len(lo):
            raise HarmonyError(f"input {name}: graph rank {len(shape)} != contract rank {len(lo)}")
        new = ([], [], [])
        for ax, d in enumerate(shape):
            if d is None or d < 0:
                vals = (lo[ax], opt[ax], hi[ax])
            elif lo[ax] <= d <= hi[ax]:
                vals = (d, d, d)
            else:
                raise HarmonyError(f"input {name}: graph fixes axis {ax} to {d}, outside the contract range "
                                   f"{lo[ax]}..{hi[ax]}")
            for i in range(3):
                new[i].append(vals[i])
        out[name] = tuple(tuple(x) for x in new)
    return out
