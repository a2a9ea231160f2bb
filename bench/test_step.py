"""One denoiser step (sync guidance: 3 rows, the bundle's default clip): harmony-rt (ORT) vs PyTorch eager
on the same weights, inputs, threads; torch with SDPA attention under both malloc settings, each in its
own process (see TORCH). Also the achieved GFLOP/s against the numpy matmul peak and the ORT settings that matter."""

from __future__ import annotations

import numpy as np

from harmony_rt.bench import (
    MatmulProbe,
    OrtStep,
    Row,
    SelfTimed,
    denoiser_feeds,
    interleave,
    matmul_peak,
    med,
    peak_share_rows,
    process_rounds,
    profile_ops,
    speedup,
)

from .baselines import TorchWorker
from .profile_lines import time_by_line


def _best_ratio(fast: list[float], slow: list[float]) -> float:
    return min(slow) / min(fast)


# torch baselines: {label: (malloc, OpenMP wait policy)}, every one in its own process. libgomp's default
# (idle threads spin) is fastest on a quiet machine and several times slower on a busy one, where PASSIVE
# (idle threads sleep) is best, as no spinning is for ORT: both run, and "torch at its best" is the
# fastest of the four in this run.
TORCH = {
    "torch, default malloc": ("default", None),
    "torch, default malloc, passive OpenMP": ("default", "PASSIVE"),
    "torch, tuned malloc": ("tuned", None),
    "torch, tuned malloc, passive OpenMP": ("tuned", "PASSIVE"),
}


def test_step_vs_torch(model, rounds, threads, report, benchmark, tmp_path):
    bundle = model.bundle
    feeds = denoiser_feeds(bundle)
    shape = f"N={feeds['video_latent'].shape[0]} F={feeds['video_latent'].shape[2]} T={feeds['audio_latent'].shape[2]}"
    ort_step = OrtStep(bundle, feeds, threads)
    # the same step with a voice reference in every row: the style attention runs (train/model/dit.py
    # SKIP_DEAD_STYLE); torch computes it either way
    ref_step = OrtStep(bundle, denoiser_feeds(bundle, reference=True), threads)
    workers = {k: TorchWorker(model.checkpoint, feeds, tmp_path, m, threads, omp_wait=w) for k, (m, w) in TORCH.items()}
    try:
        t = interleave({"ort": ort_step.run, "ort, reference": ref_step.run,
                        **{k: SelfTimed(w.step) for k, w in workers.items()}}, rounds=rounds)
        got = dict(zip(("video_velocity", "audio_velocity"), ort_step.run()))
        ref = workers["torch, tuned malloc"].outputs(tmp_path / "torch_out.npz")
    finally:
        for w in workers.values():
            w.close()
    err = max(float(np.abs(got[k] - ref[k]).max()) for k in got)
    g = f"{model.label} denoiser step ({shape}, {threads} threads)"
    best = min(TORCH, key=lambda k: med(t[k]))
    for what, k in [("harmony-rt ORT fp32", k) for k in TORCH] + [("ORT fp32 vs torch at its best", best)]:
        report(Row(g, what, med(t["ort"]), baseline=f"{k} (eager, SDPA)", base_value=med(t[k]),
                   ratio=speedup(t["ort"], t[k]), note=f"best-of ratio {_best_ratio(t['ort'], t[k]):.2f}x; "
                                                     f"ORT vs torch max abs diff {err:.1e}"))
    report(Row(g, "ORT fp32 without a reference vs with one", med(t["ort"]), baseline="ORT fp32, voice reference",
               base_value=med(t["ort, reference"]), ratio=speedup(t["ort"], t["ort, reference"]),
               note="the style attention skipped without one (generate's default)"))
    benchmark.extra_info.update({k: med(v) for k, v in t.items()})
    benchmark.pedantic(ort_step.run, rounds=max(2, rounds // 2), iterations=1, warmup_rounds=0)


def test_step_flops(model, threads, peak, record_peak, report):
    """Achieved GFLOP/s of the step against the numpy matmul peak: the best step vs the highest peak seen, and
    each step vs a peak probe in its own round (both interleaved)."""
    bundle = model.bundle
    feeds = denoiser_feeds(bundle)
    step = OrtStep(bundle, feeds, threads)
    prof = OrtStep(bundle, feeds, threads, profile=str(model.bundle_path.parent / "prof"))
    ops = profile_ops(prof)
    flops = sum(d["flops"] for d in ops.values())
    before = matmul_peak(threads=threads)
    probe = MatmulProbe(threads=threads)
    # each round: one step and one peak probe (the order alternates), so a drifting VM's speed is shared
    t = interleave({"step": step.run, "probe": SelfTimed(probe.best)}, rounds=5)
    # the best of: the `peak` fixture (session start), right before, in and right after these rounds
    best_peak = max(peak, before, probe.flops / min(t["probe"]), matmul_peak(threads=threads))
    record_peak(best_peak)
    g = f"{model.label} denoiser step: arithmetic ({threads} threads)"
    for row in peak_share_rows(g, flops, t["step"], probe, t["probe"], best_peak,
                               "session start, before, during, after"):
        report(row)
    kernel = sum(d["seconds"] for d in ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1]["seconds"])[:4]
    report(Row(g, "kernel time by op (profiled step)", kernel, note=", ".join(
        f"{op} {d['seconds'] / kernel:.0%}"
        + (f" @ {d['flops'] / d['seconds'] / 1e9:.0f} GFLOP/s" if d["flops"] else "")
        for op, d in top)))
    lines = time_by_line(OrtStep(bundle, feeds, threads, profile=str(model.bundle_path.parent / "prof")),
                         bundle.component_path("denoiser"))
    note = "; ".join(f"{share:.0%} {where}" for where, share in lines[:5])
    report(Row(g, "kernel time by model source line", kernel, note=note))


def test_ort_settings(model, rounds, threads, report):
    """What each non-default ORT setting is worth on this model. Settings that keep denormals flushed
    compare in one process (interleaved steps); stock settings and no-DAZ change the creating thread's
    state, so they compare across fresh processes (see harmony_rt.bench.process_rounds)."""
    bundle = model.bundle
    feeds = denoiser_feeds(bundle)
    cands = {
        "runtime": OrtStep(bundle, feeds, threads),
        "no spinning": OrtStep(bundle, feeds, threads, spinning=False),
        "spinning (ORT default)": OrtStep(bundle, feeds, threads, spinning=True),
        "spinning at most 200 us": OrtStep(bundle, feeds, threads, spin_us=200),
        "IO binding": OrtStep(bundle, feeds, threads, bound=True),
    }
    t = interleave({k: s.run for k, s in cands.items()}, rounds=rounds)
    g = f"{model.label} ORT settings"
    for k in cands:
        if k != "runtime":
            report(Row(g, f"runtime settings vs {k}", med(t["runtime"]), baseline=k, base_value=med(t[k]),
                       ratio=speedup(t["runtime"], t[k]), note="one process, interleaved steps"))
    variants = {"runtime": {}, "stock": {"stock": True}, "no DAZ": {"denormal_as_zero": False}}
    fresh = process_rounds(model.bundle_path, variants, rounds=3, steps=2 if model.label != "tiny" else 20,
                           threads=threads)
    for k in ("stock", "no DAZ"):
        report(Row(g, f"runtime settings vs {k}", med(fresh["runtime"]), baseline=k, base_value=med(fresh[k]),
                   ratio=speedup(fresh["runtime"], fresh[k]),
                   note="each in a fresh process, 3 interleaved processes each"))
