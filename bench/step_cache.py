"""Step caching: speed and quality cost against the uncached run, side by side in one process.

    python -m bench.step_cache [--bundle DIR] [--thresholds 0.05,0.1,0.15,0.2] [--seeds 16] [--rounds 5]

For each threshold (harmony_rt.stepcache) on "a red ball bounces twice" over `seeds` seeds: denoiser calls
per 40-step generation, the generate time against the uncached one (interleaved rounds, median of the
per-round ratios, > 1 = faster), the frames' PSNR and the audio's SNR against the uncached clip of the same
seed, and the sync checks of bench/demo_check (confidence - shuffled control, onsets on impacts).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from harmony_rt.bench import interleave, psnr, snr
from harmony_rt.pipeline import Pipeline

from .demo_check import PROMPT, check_clip


def run(bundle, thresholds: list[float], seeds: int, rounds: int) -> list[dict]:
    pipe = Pipeline.from_bundle(bundle)
    base = [pipe.generate(PROMPT, seed=s) for s in range(seeds)]
    base_checks = [check_clip(c.frames, c.audio, c.sample_rate, c.fps, s) for s, c in enumerate(base)]
    times = interleave({th: (lambda th=th: pipe.generate(PROMPT, seed=0, step_cache=th or None))
                        for th in [0.0] + thresholds}, rounds=rounds)
    rows = [_row(0.0, base, base_checks, base, pipe.bundle.sampling["steps"], times)]
    for th in thresholds:
        clips = [pipe.generate(PROMPT, seed=s, step_cache=th) for s in range(seeds)]
        checks = [check_clip(c.frames, c.audio, c.sample_rate, c.fps, s) for s, c in enumerate(clips)]
        calls = np.mean([int(c.notes[-1].split(": ")[1].split()[0]) for c in clips])
        rows.append(_row(th, clips, checks, base, calls, times))
    return rows


def _row(th, clips, checks, base, calls, times) -> dict:
    ratio = float(np.median([b / t for b, t in zip(times[0.0], times[th])]))
    return {
        "threshold": th, "calls": float(calls), "speedup": ratio, "ms": 1e3 * float(np.median(times[th])),
        "psnr": float(np.mean([psnr(b.frames, c.frames, 255.0) for c, b in zip(clips, base)])),
        "snr": float(np.mean([snr(b.audio, c.audio) for c, b in zip(clips, base)])),
        "margin": float(np.mean([k.confidence - k.control for k in checks])),
        "on_impacts": sum(k.matched for k in checks) / max(1, sum(len(k.onsets) for k in checks)),
    }


def table(rows: list[dict], seeds: int) -> str:
    lines = [f"| step cache | denoiser calls / 40 steps | generate time vs uncached | frames PSNR vs uncached (dB) | "
             f"audio SNR vs uncached (dB) | sync margin ({seeds} seeds) | onsets on impacts |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "off" if r["threshold"] == 0 else f"{r['threshold']:g}"
        psnr_s, snr_s = ("-", "-") if r["threshold"] == 0 else (f"{r['psnr']:.1f}", f"{r['snr']:.1f}")
        lines.append(f"| {name} | {r['calls']:.1f} | {r['speedup']:.2f}x ({r['ms']:.0f} ms) | {psnr_s} | {snr_s} | "
                     f"{r['margin']:+.3f} | {100 * r['on_impacts']:.0f} % |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--thresholds", default="0.05,0.1,0.15,0.2")
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = run(a.bundle, [float(x) for x in a.thresholds.split(",")], a.seeds, a.rounds)
    print(table(rows, a.seeds))


if __name__ == "__main__":
    main()
