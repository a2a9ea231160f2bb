"""SyncCFG (METHOD 1.3, Eq. 9-10) and text CFG as ONE batched denoiser call per step, in pure numpy.

Every guidance branch is a batch entry of the same joint denoiser graph; only its inputs differ:

    joint   (z_v, z_a, t_v, t_a, cond)                  the conditional prediction
    uncond  (z_v, z_a, t_v, t_a, uncond)                text CFG negative
    mute    (z_v, null_audio, t_v, t_a = 0, cond)       audio-driven anchor: video next to silence
    static  (null_video, z_a, t_v = 0, t_a, cond)       video-driven anchor: audio next to a still video

Branches are stacked on axis 0 in `branches(mode)` order, B rows each (N = branches x B). `combine` applies

    none      v = joint
    cfg       v = c + (cfg - 1)(c - u)                                          (both modalities)
    sync      v_v = mute_v + s_v (c_v - mute_v);   v_a = static_a + s_a (c_a - static_a)
    sync+cfg  v_v = c_v + (s_v - 1)(c_v - mute_v) + (cfg - 1)(c_v - u_v)        (audio: static, s_a)

With a modality given rather than generated (A2V: the audio, V2A: the video) the anchor that guides only it
is left out (`held`): A2V and V2A run 2 rows a step in "sync", not 3.

`GuidedDenoiser` runs the stacked batch as one call or one call per branch (same inputs, same numbers), the
choice made per input shape by measurement when split="auto" (DESIGN: batching wins on GPUs, not on a
2-core CPU).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import HarmonyError

log = logging.getLogger(__name__)

MODES = ("none", "cfg", "sync", "sync+cfg")
SPLITS = ("auto", "batched", "sequential")


def check_split(split: str) -> str:
    """`split` if it is one of SPLITS, else HarmonyError naming them."""
    if split not in SPLITS:
        raise HarmonyError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split
_BRANCHES = {
    "none": ("joint",),
    "cfg": ("joint", "uncond"),
    "sync": ("joint", "mute", "static"),
    "sync+cfg": ("joint", "uncond", "mute", "static"),
}
COND_KEYS = (
    "text_emb", "text_mask", "audio_text_emb", "audio_text_mask", "speech_emb", "speech_mask", "ref_latent", "ref_mask",
)
OUTPUT_KEYS = ("video_velocity", "audio_velocity")

Feeds = dict[str, np.ndarray]
DenoiseFn = Callable[[Feeds], Feeds]


@dataclass
class GuidanceScales:
    """s_v, s_a: SyncCFG scales (paper: 3 and 2); cfg: text CFG scale (1 = off)."""

    s_v: float = 3.0
    s_a: float = 2.0
    cfg: float = 5.0


_UNUSED = {"audio": "static", "video": "mute"}  # the modality given (A2V / V2A) -> the anchor guiding only it
HELD = (None, *_UNUSED)


def branches(mode: str, held: str | None = None) -> tuple[str, ...]:
    """Names of the batch branches of `mode`, in stacking order. With a `held` modality (A2V / V2A) its
    anchor is left out: it guides only the velocity of a latent that is given, which no step uses."""
    try:
        names = _BRANCHES[mode]
    except KeyError:
        raise HarmonyError(f"unknown guidance mode {mode!r}; choose one of {', '.join(MODES)}") from None
    if held not in HELD:
        raise HarmonyError(f"held must be one of {HELD}, got {held!r}")
    return tuple(n for n in names if n != _UNUSED.get(held))


def _pad_axis1(x: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad axis 1 (the sequence axis) of [B, len, ...] up to `length`."""
    if x.shape[1] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return np.pad(x, pad)


def _match_lengths(cond: Feeds, uncond: Feeds) -> tuple[Feeds, Feeds]:
    """Pad the shorter of each cond / uncond array along its sequence axis with zeros (mask 0 there)."""
    if set(cond) != set(uncond):
        raise HarmonyError(f"cond and uncond hold different inputs: {sorted(cond)} vs {sorted(uncond)}")
    c, u = {}, {}
    for k in cond:
        a, b = np.asarray(cond[k]), np.asarray(uncond[k])
        if a.ndim >= 2 and b.ndim == a.ndim and a.shape[1] != b.shape[1]:
            n = max(a.shape[1], b.shape[1])
            a, b = _pad_axis1(a, n), _pad_axis1(b, n)
        if a.shape != b.shape:
            raise HarmonyError(f"cond and uncond {k!r} differ beyond the sequence axis: {a.shape} vs {b.shape}")
        c[k], u[k] = a, b
    return c, u


def build_batch(
    mode: str,
    z_v: np.ndarray,  # [B, C_v, F, H, W]
    z_a: np.ndarray,  # [B, S, T, C_a]
    t_v,  # [B] (or a scalar)
    t_a,  # [B] (or a scalar)
    cond: Feeds,  # COND_KEYS, each [B, ...]
    uncond: Feeds | None = None,  # same keys; needed by "cfg" modes
    null_video: np.ndarray | None = None,  # like z_v; needed by "sync" modes
    null_audio: np.ndarray | None = None,  # like z_a; needed by "sync" modes
    held: str | None = None,  # "audio" (A2V) / "video" (V2A): that modality's anchor is left out
) -> Feeds:
    """The denoiser feeds of all branches of `mode`, stacked on axis 0: every array [N = len(branches) * B, ...]."""
    names = branches(mode, held)
    z_v, z_a = np.asarray(z_v), np.asarray(z_a)
    B = z_v.shape[0]
    if z_a.shape[0] != B:
        raise HarmonyError(f"video and audio latents have different batch sizes: {B} vs {z_a.shape[0]}")
    t_v = np.broadcast_to(np.asarray(t_v, np.float32), (B,))
    t_a = np.broadcast_to(np.asarray(t_a, np.float32), (B,))
    zero_t = np.zeros(B, np.float32)
    if "uncond" in names:
        if uncond is None:
            raise HarmonyError(f"guidance mode {mode!r} needs uncond inputs")
        cond, uncond = _match_lengths(cond, uncond)
    if "mute" in names or "static" in names:
        if null_video is None or null_audio is None:
            raise HarmonyError(f"guidance mode {mode!r} needs null_video and null_audio")
        null_video, null_audio = np.asarray(null_video), np.asarray(null_audio)
        if null_video.shape != z_v.shape or null_audio.shape != z_a.shape:
            raise HarmonyError(
                f"null latents must be shaped like the latents: {null_video.shape} vs {z_v.shape}, "
                f"{null_audio.shape} vs {z_a.shape}"
            )
    for k, a in cond.items():
        if np.shape(a)[0] != B:
            raise HarmonyError(f"cond {k!r} has batch {np.shape(a)[0]}, latents have {B}")

    rows = {  # branch -> (video_latent, audio_latent, t_video, t_audio, conditioning)
        "joint": (z_v, z_a, t_v, t_a, cond),
        "uncond": (z_v, z_a, t_v, t_a, uncond),
        "mute": (z_v, null_audio, t_v, zero_t, cond),
        "static": (null_video, z_a, zero_t, t_a, cond),
    }
    parts = [rows[n] for n in names]
    feeds = {
        "video_latent": np.concatenate([p[0] for p in parts]),
        "audio_latent": np.concatenate([p[1] for p in parts]),
        "t_video": np.concatenate([p[2] for p in parts]),
        "t_audio": np.concatenate([p[3] for p in parts]),
    }
    for k in cond:
        feeds[k] = np.concatenate([np.asarray(p[4][k]) for p in parts])
    return feeds


def combine(mode: str, out: Feeds, B: int, scales: GuidanceScales, held: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Guided velocities (v_video [B, C_v, F, H, W], v_audio [B, S, T, C_a]) from the stacked outputs. A `held`
    modality, whose anchor was left out, gets its joint velocity (unused: its latent is given)."""
    names = branches(mode, held)
    for k in OUTPUT_KEYS:
        if k not in out:
            raise HarmonyError(f"denoiser output lacks {k!r}")
        if out[k].shape[0] != len(names) * B:
            raise HarmonyError(f"denoiser output {k!r} has {out[k].shape[0]} rows, expected {len(names) * B}")
    v = {n: out["video_velocity"][i * B : (i + 1) * B] for i, n in enumerate(names)}
    a = {n: out["audio_velocity"][i * B : (i + 1) * B] for i, n in enumerate(names)}
    g = scales.cfg - 1.0
    if mode == "none":
        return v["joint"], a["joint"]
    if mode == "cfg":
        return v["joint"] + g * (v["joint"] - v["uncond"]), a["joint"] + g * (a["joint"] - a["uncond"])
    if mode == "sync":  # Eq. 9-10
        return (
            v["mute"] + scales.s_v * (v["joint"] - v["mute"]) if "mute" in v else v["joint"],
            a["static"] + scales.s_a * (a["joint"] - a["static"]) if "static" in a else a["joint"],
        )
    vs = (scales.s_v - 1.0) * (v["joint"] - v["mute"]) if "mute" in v else 0.0  # sync+cfg
    as_ = (scales.s_a - 1.0) * (a["joint"] - a["static"]) if "static" in a else 0.0
    return v["joint"] + vs + g * (v["joint"] - v["uncond"]), a["joint"] + as_ + g * (a["joint"] - a["uncond"])


# The inputs whose shapes key a split decision: the latents (rows, frames) set the work; caption, transcript
# and reference lengths barely change it, and keyed on them every new prompt length measured again.
_KEY_INPUTS = ("video_latent", "audio_latent")


def _shape_key(mode: str, feeds: Feeds) -> tuple:
    return (mode,) + tuple((k, feeds[k].shape) for k in _KEY_INPUTS if k in feeds)


class GuidedDenoiser:
    """A denoiser call `call(feeds) -> outputs` plus guidance: `__call__` returns the guided velocities.

    split: "batched" = one call on all N rows; "sequential" = one call per branch (B rows), outputs
    concatenated -- same inputs, same numbers; "auto" = choose per (mode, input shapes) key by measuring
    real work: the first calls of a key run batched / sequential in the order b s s b b s ... (each call's
    output is the step's result, so measuring costs no extra denoiser calls; the order balances drift in
    the machine's load) until both have `repeats` timings, then the split with the better best time is kept
    in `decisions` (key -> "batched" | "sequential"; best seconds in `timings`). A clear gap decides early:
    once one split's best is `early` times the other's (and the slower one's timing is not the key's first
    call, which also pays the shape's warm-up), so a split much slower than the other runs only once.
    `early=None` always measures all. `store` (harmony_rt.splitstore) keeps decisions for later processes,
    which then skip the measuring. Safe to call from several threads: measured calls run one at a time.
    `clock` is injectable for tests.
    """

    def __init__(
        self,
        call: DenoiseFn,
        mode: str = "sync",
        scales: GuidanceScales | None = None,
        split: str = "auto",
        repeats: int = 3,
        early: float | None = 1.25,
        clock: Callable[[], float] = time.perf_counter,
        store=None,
        held: str | None = None,
    ):
        self.names = branches(mode, held)  # validates
        check_split(split)
        self.call = call
        self.mode, self.held = mode, held
        self.scales = scales if scales is not None else GuidanceScales()
        self.split = split
        self.repeats = max(1, int(repeats))
        self.early = early
        self.clock = clock
        self.store = store  # harmony_rt.splitstore.SplitStore: decisions shared with later processes
        self._asked: set[tuple] = set()  # keys already looked up in the store
        self.decisions: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self._samples: dict[tuple, dict[str, list[float]]] = {}
        self._lock = threading.Lock()

    def __call__(self, z_v, z_a, t_v, t_a, cond, uncond=None, null_video=None, null_audio=None):
        """Guided (v_video [B, C_v, F, H, W], v_audio [B, S, T, C_a]) at (z_v at t_v, z_a at t_a)."""
        B = np.shape(z_v)[0]
        feeds = build_batch(self.mode, z_v, z_a, t_v, t_a, cond, uncond, null_video, null_audio, self.held)
        split = self.split
        if len(self.names) == 1:
            split = "batched"  # nothing to split
        if split == "auto":
            key = _shape_key(self.mode, feeds)
            split = self.decisions.get(key)
            if split is None and self.store is not None and key not in self._asked:
                self._asked.add(key)
                split = self.store.get(key)
                if split is not None:
                    self.decisions[key] = split
                    log.info("guidance %s: %s split, decided by an earlier run (%s)", self.mode, split, self.store.path)
            out = self._measured(key, feeds, B) if split is None else self._run(split, feeds, B)
        else:
            out = self._run(split, feeds, B)
        return combine(self.mode, out, B, self.scales, self.held)

    def _run(self, split: str, feeds: Feeds, B: int) -> Feeds:
        if split == "batched":
            return self.call(feeds)
        n = feeds["video_latent"].shape[0] // B
        outs = [self.call({k: a[i * B : (i + 1) * B] for k, a in feeds.items()}) for i in range(n)]
        return {k: np.concatenate([o[k] for o in outs]) for k in OUTPUT_KEYS}

    def _measured(self, key: tuple, feeds: Feeds, B: int) -> Feeds:
        """Run this step with the split measured least so far for `key`, timed; decide once both have
        `repeats` timings. The lock keeps concurrent first calls from skewing each other's timing."""
        with self._lock:
            if key in self.decisions:
                return self._run(self.decisions[key], feeds, B)
            samples = self._samples.setdefault(key, {"batched": [], "sequential": []})
            done = len(samples["batched"]) + len(samples["sequential"])
            split = "batched" if done % 4 in (0, 3) else "sequential"  # b s s b b s s b ...
            start = self.clock()
            out = self._run(split, feeds, B)
            samples[split].append(self.clock() - start)
            if min(len(v) for v in samples.values()) < self.repeats and not self._clear(samples):
                return out
            best = {s: min(v) for s, v in samples.items()}
            choice = min(best, key=best.get)
            self.decisions[key] = choice
            self.timings[key] = best
            del self._samples[key]
            if self.store is not None:
                self.store.put(key, choice, best)
        log.info(
            "guidance %s, %d rows: %s (batched %.4f s, sequential %.4f s per step, best of %d / %d)",
            self.mode, feeds["video_latent"].shape[0], choice, best["batched"], best["sequential"],
            len(samples["batched"]), len(samples["sequential"]),
        )
        return out

    def _clear(self, samples: dict[str, list[float]]) -> bool:
        """One split is `early` times slower than the other, on a timing that is not the warm-up call."""
        if self.early is None or not all(samples.values()):
            return False
        slow, fast = sorted(samples, key=lambda s: min(samples[s]), reverse=True)
        warm_only = slow == "batched" and len(samples[slow]) == 1  # b runs first: its one timing has the warm-up
        return not warm_only and min(samples[slow]) >= self.early * min(samples[fast])
