"""Precision report: per-component and end-to-end error of every variant vs fp32, and the CPU time of one
denoiser step vs fp32, all measured in one run; writes bench/RESULTS_PRECISION.md.

    python bench/precision_report.py                       # trains a small tiny-size checkpoint first
    python bench/precision_report.py --checkpoint runs/demo --timing-size bench-large

Steps: export CKPT with fp32,fp16,int8,fp8 and the plugin graph (errors per component are measured by the
exporter on a held-out real sampler run and read from the manifest); generate the same prompts with the
same seeds at every precision (frames PSNR, audio SNR / PSNR vs fp32); time one denoiser step (one
batched SyncCFG call on a recorded real feed) per precision in interleaved rounds on ONNX Runtime CPU.
`--timing-size` adds the step timing of an untrained model of that size (timing only: its zero-initialised
output layers make its errors meaningless).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export import calibration  # noqa: E402
from export.bundle_writer import add_variants, export_bundle  # noqa: E402
from harmony_rt.bench import psnr, snr  # noqa: E402
from harmony_rt.bundle import Bundle  # noqa: E402
from harmony_rt.pipeline import Pipeline  # noqa: E402

log = logging.getLogger("precision_report")
KEPT = "<!-- hand-written below: kept when the report is rewritten -->"

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "fp8")
E2E_PROMPTS = (
    calibration.EVAL_PROMPT,
    calibration.Prompt("a man says something with a deep voice", speech="good morning", seed=12),
)


def train_small(out: Path) -> Path:
    from train.train import TrainConfig, train

    if (out / "model.safetensors").is_file():
        log.info("reusing the checkpoint cached in %s", out)
        return out
    tc = TrainConfig(size="tiny", clips=24, seconds=2.0, kinds=("ambient",), ae_steps=100, steps=160, batch=4, seed=0,
                     warmup=100)  # as when RESULTS_PRECISION.md was measured
    return train(tc, out)


def end_to_end(bundle: Path, threads: int) -> dict:
    """{precision: {prompt index: metrics}} against the fp32 generation of the same prompt and seed."""
    runs = {}
    for prec in PRECISIONS:
        pipe = Pipeline.from_bundle(bundle, backend="ort", threads=threads, precision=None if prec == "fp32" else prec)
        runs[prec] = [pipe.generate(p.prompt, speech=p.speech, seed=p.seed) for p in E2E_PROMPTS]
    out = {}
    for prec in PRECISIONS[1:]:
        out[prec] = [
            {"frames_psnr": psnr(r.frames, x.frames, 255.0), "audio_snr": snr(r.audio, x.audio),
             "audio_psnr": psnr(r.audio, x.audio, 1.0)}
            for r, x in zip(runs["fp32"], runs[prec])
        ]
    return out


def time_step(bundle: Path, threads: int, rounds: int, n_feeds: int, steps: int | None = None) -> dict:
    """Median ms of one denoiser step per precision (one batched call: all guidance branches), interleaved."""
    b = Bundle.load(bundle, verify=False)
    feeds = calibration.record_feeds(bundle, [calibration.EVAL_PROMPT], steps, split="batched")["denoiser"]
    feeds = calibration.subsample(feeds, n_feeds)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    precs = [p for p in PRECISIONS if p in b.precisions("denoiser")]
    sess = {p: ort.InferenceSession(str(b.component_path("denoiser", None if p == "fp32" else p)), so,
                                    providers=["CPUExecutionProvider"]) for p in precs}
    for s in sess.values():  # warm-up
        for f in feeds:
            s.run(None, f)
    per_round: dict[str, list[float]] = {p: [] for p in precs}
    for r in range(rounds):
        order = precs[r % len(precs):] + precs[: r % len(precs)]  # rotate who goes first
        for p in order:
            t0 = time.perf_counter()
            for f in feeds:
                sess[p].run(None, f)
            per_round[p].append((time.perf_counter() - t0) / len(feeds) * 1e3)
    ratios = {p: [a / b for a, b in zip(per_round[p], per_round["fp32"])] for p in precs}
    return {
        "batch": int(feeds[0]["video_latent"].shape[0]), "calls": len(feeds), "rounds": rounds,
        "ms": {p: statistics.median(v) for p, v in per_round.items()},
        "ratio": {p: statistics.median(v) for p, v in ratios.items()},
        "ratio_range": {p: (min(v), max(v)) for p, v in ratios.items()},
    }


def timing_model(size: str, work: Path, threads: int, rounds: int) -> dict:
    """Step timing of an untrained `size` model (variants calibrated on its own 4-step runs)."""
    from train.train import TrainConfig, train

    ckpt = work / f"ckpt_{size}"
    if not (ckpt / "model.safetensors").is_file():
        tc = TrainConfig(size=size, clips=2, seconds=2.0, kinds=("ambient",), ae_steps=0, steps=0, batch=1, seed=0)
        train(tc, ckpt)
    bundle = work / f"bundle_{size}"
    if (bundle / "manifest.json").is_file():
        log.info("reusing the %s bundle and variants cached in %s", size, bundle)
    else:
        export_bundle(ckpt, bundle)
        add_variants(bundle, "fp16,int8,fp8", prompts=calibration.CALIBRATION_PROMPTS[:1], steps=4)
    return time_step(bundle, threads, rounds, n_feeds=2, steps=4)


def fmt(x: float, spec: str = ".1f") -> str:
    return "inf" if x == float("inf") else format(x, spec)


def write_report(path: Path, cmd: str, manifest: dict, e2e: dict, timing: dict, big: dict | None, meta: dict) -> None:
    comps = manifest["components"]
    plugin = comps["denoiser"].get("variants", {}).get("fp32-plugin", {})
    lines = [
        "# Precision variants: error and CPU speed vs fp32",
        "",
        f"Produced by `{cmd}` ({meta['date']}, {meta['seconds']:.0f} s; {meta['cpu']}, ONNX Runtime {ort.__version__} "
        f"CPU, {meta['threads']} threads; the machine was shared with other jobs, so absolute ms are noisy, ratios "
        "come from interleaved rounds).",
        "",
        f"Model: `{meta['checkpoint']}` ({meta['model']}). Calibration: the fp32 bundle's own sampler trajectories "
        f"for {len(manifest['precision_export']['calibration_prompts'])} prompts; errors on a held-out prompt/seed.",
        *([f"Reused from an earlier run of the same command (in --work): {', '.join(meta['cached'])}; the main "
           "export, its errors and every timing below are from this run."] if meta["cached"] else []),
        "",
        "## Per component (held-out real inputs; rel = max |variant - fp32| / max |fp32|)",
        "",
        "| component | precision | max abs err | max rel err | quantized / converted nodes "
        "| kept high precision (matrix ops + norms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in comps.items():
        for prec, v in c.get("variants", {}).items():
            hp = v.get("high_precision", {})
            kept = ", ".join(f"{k} {n}" for k, n in hp.get("op_counts", {}).items()
                             if k in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LayerNormalization",
                                      "RMSNormalization"))
            n = v.get("quantized_nodes", v.get("converted_nodes", v.get("plugin", {}).get("nodes", "")))
            lines.append(f"| {name} | {prec} | {v['max_abs_err']:.2e} | {v['max_rel_err']:.2e} | {n} | {kept or '-'} |")
    lines += [
        "",
        "fp32-plugin: the denoiser with RoPEAlignedAttention nodes, run through the numpy reference "
        "(onnxruntime-extensions) and compared with the decomposed graph; "
        f"vs PyTorch {plugin.get('parity_max_abs_err', float('nan')):.1e} max abs.",
        "",
        "## End to end (same prompt and seed as fp32; components without the variant run fp32)",
        "",
        "| precision | prompt | frames PSNR dB | audio SNR dB | audio PSNR dB |",
        "|---|---|---|---|---|",
    ]
    for prec, rows in e2e.items():
        for i, r in enumerate(rows):
            lines.append(f"| {prec} | {i} | {fmt(r['frames_psnr'])} | {fmt(r['audio_snr'])} | {fmt(r['audio_psnr'])} |")
    lines += ["", "Prompts: " + "; ".join(f"{i}: \"{p.prompt}\" (speech \"{p.speech}\", seed {p.seed})"
                                          for i, p in enumerate(E2E_PROMPTS)), ""]

    def timing_table(t: dict, title: str) -> list[str]:
        out = [f"## {title}", "", f"One denoiser step = one batched call (N = {t['batch']}, SyncCFG branches) on "
               f"{t['calls']} recorded real feeds, median of {t['rounds']} interleaved rounds.", "",
               "| precision | ms / step | time vs fp32 | range over rounds |", "|---|---|---|---|"]
        for p, ms in t["ms"].items():
            lo, hi = t["ratio_range"][p]
            out.append(f"| {p} | {ms:.1f} | {t['ratio'][p]:.2f}x | {lo:.2f}-{hi:.2f} |")
        return out + [""]

    lines += timing_table(timing, f"CPU time of one denoiser step ({meta['model']})")
    if big is not None:
        lines += timing_table(big, f"CPU time of one denoiser step ({meta['timing_size']}, untrained: timing only)")
    lines += [
        "## Notes",
        "",
        "- fp16 and fp8 target GPUs (TensorRT builds strongly typed engines from these graphs); on ORT CPU fp16 "
        "adds casts and fp8 Q/DQ is simulated (each Q/DQ pair quantizes and dequantizes, the GEMMs still run in "
        "fp16/fp32), so both are slower here; their CPU role is accuracy checking.",
        "- int8 (static QDQ and dynamic) is the CPU precision. Only MatMuls inside the transformer blocks are "
        "quantized (adaLN, timestep MLPs, input embeddings and the final projections stay fp32). Static ranges "
        "are MinMax: ORT's Percentile / Entropy calibrators fail on feeds of varying shapes (batch 1 and 3 calls).",
        "",
    ]
    hand = path.read_text().partition(KEPT)[2] if path.is_file() else ""  # the hand-written part stays
    path.write_text("\n".join(lines) + (KEPT + hand if hand else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="training checkpoint (default: train a small tiny-size one)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/harmony_precision_report"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS_PRECISION.md")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--timing-size", default=None, help="also time an untrained model of this size (e.g. bench-large)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    cached = [str(p) for p in (args.work / "ckpt", args.work / f"bundle_{args.timing_size}")
              if (p / "model.safetensors").is_file() or (p / "manifest.json").is_file()]
    ckpt = args.checkpoint or train_small(args.work / "ckpt")
    bundle = export_bundle(ckpt, args.work / "bundle", precisions="fp32,fp16,int8,fp8", custom_op=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    e2e = end_to_end(bundle, args.threads)
    timing = time_step(bundle, args.threads, args.rounds, n_feeds=8)
    big = None
    if args.timing_size:
        big = timing_model(args.timing_size, args.work, args.threads, max(3, args.rounds // 2))
    cfg = manifest["model_config"]
    meta = {
        "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - t0, "threads": args.threads,
        "cpu": f"{platform.machine()} x{os.cpu_count()}", "checkpoint": str(ckpt), "timing_size": args.timing_size,
        "cached": [c for c in cached if args.checkpoint is None or not c.endswith("/ckpt")],
        "model": f"dim {cfg['video_dim']}/{cfg['audio_dim']}, {cfg['layers']} layers, {cfg['height']}x{cfg['width']}, "
                 f"trained {manifest.get('training', {}).get('step', '?')} steps",
    }
    given = argv if argv is not None else sys.argv[1:]
    cmd = "python bench/precision_report.py " + " ".join(shlex.quote(a) for a in given)
    write_report(args.out, cmd.strip(), manifest, e2e, timing, big, meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
