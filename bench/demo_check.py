"""Does the demo do what the README says? "a red ball bounces twice", generated with several seeds:
visual impacts and audio onsets detected, matched to each other, sync vs a shuffled-audio control.

    python -m bench.demo_check [--bundle DIR] [--seeds 8] [--guidance sync]

Per clip: impacts = peaks of motion energy, onsets = peaks of the audio onset envelope
(harmony_rt.sync.detect_events), matched = onsets with an impact within +-1 frame (and impacts with an
onset: periodic flicker matches every onset but explains few impacts); conf = Sync-C-like
confidence, control = the same confidence with the clip's audio cut into one-frame pieces and shuffled
(mean of 20 shuffles).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from harmony_rt.pipeline import Pipeline
from harmony_rt.sync import detect_events, match_events, motion_energy, onset_envelope, shuffled_control, sync_score

PROMPT = "a red ball bounces twice"
MOTION_FLOOR = 0.01  # mean absolute frame difference (of 1.0) below which a frame change is not an impact
ONSET_FLOOR_REL = 0.1  # onset strength below this share of the clip's RMS is not an onset


@dataclass
class ClipCheck:
    impacts: np.ndarray  # frames
    onsets: np.ndarray  # frames
    matched: int  # onsets with an impact within +-1 frame
    explained: int  # impacts with an onset within +-1 frame
    confidence: float
    offset: int
    control: float  # mean confidence over shuffled-audio controls


def check_clip(frames: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, seed: int = 0) -> ClipCheck:
    """The checks on one clip: frames uint8 [T, H, W, 3], audio [W]."""
    t = len(frames)
    me = motion_energy(frames)
    on = onset_envelope(audio, sample_rate, fps, t)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    impacts = detect_events(me, floor=MOTION_FLOOR)
    onsets = detect_events(on, floor=ONSET_FLOOR_REL * rms)
    s = sync_score(frames, audio, sample_rate, fps, "ambient")
    ctl = shuffled_control(frames, audio, sample_rate, fps, "ambient", np.random.default_rng(seed), n=20,
                           mode="shuffle")
    return ClipCheck(impacts, onsets, match_events(onsets, impacts), match_events(impacts, onsets), s.confidence,
                     s.offset, ctl.mean)


def run(bundle: str | None, seeds: int, guidance: str | None = None, steps: int | None = None) -> list[ClipCheck]:
    pipe = Pipeline.from_bundle(bundle)
    out = []
    for seed in range(seeds):
        clip = pipe.generate(PROMPT, seed=seed, guidance=guidance, steps=steps)
        out.append(check_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, seed))
    return out


def summary(checks: list[ClipCheck]) -> str:
    n_on = sum(len(c.onsets) for c in checks)
    matched = sum(c.matched for c in checks)
    n_im = sum(len(c.impacts) for c in checks)
    explained = sum(c.explained for c in checks)
    conf = float(np.mean([c.confidence for c in checks]))
    ctl = float(np.mean([c.control for c in checks]))
    return (f"{len(checks)} clips: impacts/clip {np.mean([len(c.impacts) for c in checks]):.2f}, "
            f"onsets/clip {n_on / len(checks):.2f}, onsets matched by an impact {matched}/{n_on}, "
            f"impacts matched by an onset {explained}/{n_im}; "
            f"sync conf {conf:.3f} vs shuffled control {ctl:.3f} (margin {conf - ctl:+.3f}), "
            f"mean |offset| {np.mean([abs(c.offset) for c in checks]):.2f} frames")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the shipped demo)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--guidance", default=None)
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args(argv)
    checks = run(a.bundle, a.seeds, a.guidance, a.steps)
    for i, c in enumerate(checks):
        print(f"seed {i}: impacts {c.impacts.tolist()} onsets {c.onsets.tolist()} "
              f"onsets on an impact {c.matched}/{len(c.onsets)} impacts with an onset {c.explained}/{len(c.impacts)} "
              f"conf {c.confidence:.3f} offset {c.offset:+d} control {c.control:.3f}")
    print(summary(checks))
    print(f"clips whose confidence beats their own control: {sum(c.confidence > c.control for c in checks)}"
          f"/{len(checks)}")


if __name__ == "__main__":
    main()
