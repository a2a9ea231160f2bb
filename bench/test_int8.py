"""int8 denoiser (export/precision.py: ORT static QDQ and dynamic quantization of the block MatMuls) vs
fp32 ORT and vs torch eager fp32. Calibration uses random feeds: the weights are random too, only speed
is measured here (accuracy is the export's job, recorded in its manifest)."""

from __future__ import annotations

import numpy as np
import pytest

from harmony_rt.bench import OrtStep, Row, SelfTimed, denoiser_feeds, interleave, med, speedup

from .baselines import TorchWorker


def _variant(model, prec: str, feeds: dict):
    precision = pytest.importorskip("export.precision", reason="int8 export (export/precision.py) not present")
    src = model.bundle.component_path("denoiser")
    dst = model.bundle_path.parent / f"{model.bundle_path.name}.denoiser.{prec}.onnx"
    if not dst.is_file():
        rng = np.random.default_rng(1)
        calib = [dict(feeds, video_latent=rng.standard_normal(feeds["video_latent"].shape, np.float32),
                      audio_latent=rng.standard_normal(feeds["audio_latent"].shape, np.float32))
                 for _ in range(4)] if prec == "int8" else None
        tmp = dst.with_suffix(".tmp.onnx")
        precision.build_variant(prec, "denoiser", src, tmp, calib)
        tmp.replace(dst)
    return dst


def test_int8_step(model, rounds, threads, report, tmp_path):
    bundle = model.bundle
    feeds = denoiser_feeds(bundle)
    steps = {"fp32": OrtStep(bundle, feeds, threads)}
    for prec in ("int8", "int8-dynamic"):
        steps[prec] = OrtStep(bundle, feeds, threads, path=_variant(model, prec, feeds))
    with TorchWorker(model.checkpoint, feeds, tmp_path, "tuned", threads) as w, \
            TorchWorker(model.checkpoint, feeds, tmp_path, "tuned", threads, omp_wait="PASSIVE") as wp:
        cands = {**{k: s.run for k, s in steps.items()},
                 "torch": SelfTimed(w.step), "torch-passive": SelfTimed(wp.step)}
        t = interleave(cands, rounds=rounds)
    torch_best = min(("torch", "torch-passive"), key=lambda k: med(t[k]))
    ref = steps["fp32"].run()
    g = f"{model.label} int8 denoiser step ({threads} threads)"
    for prec in ("int8", "int8-dynamic"):
        out = steps[prec].run()
        rel = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)) for a, b in zip(ref, out))
        report(Row(g, f"ORT {prec}", med(t[prec]), baseline="ORT fp32", base_value=med(t["fp32"]),
                   ratio=speedup(t[prec], t["fp32"]), note=f"max rel diff vs fp32 {rel:.1e} (random weights)"))
        report(Row(g, f"ORT {prec}", med(t[prec]), baseline="torch eager fp32 at its best",
                   base_value=med(t[torch_best]), ratio=speedup(t[prec], t[torch_best]),
                   note=f"tuned malloc, {'passive' if torch_best == 'torch-passive' else 'default'} OpenMP wait"))
