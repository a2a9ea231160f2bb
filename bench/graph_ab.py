"""A/B of denoiser graph formulations (same weights, same outputs), interleaved in one process.

    python -m bench.graph_ab [--size tiny|bench-large] [--forms masked,block] [--rounds 7] [--profile]

Each form is a setting of the model's formulation switches (train/model/dit.py), exported as the bundle
exporter does (export_component) from the random-init benchmark checkpoint (bench/models.py) and run with
the runtime's session options on the bundle's default step (3 SyncCFG rows). Prints per-form medians, the
median per-round ratio against the first form, the outputs' max abs difference against the first form and,
with --profile, kernel time by op type.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

import numpy as np

from harmony_rt.bench import OrtStep, denoiser_feeds, interleave, med, profile_ops, speedup

from .models import LARGE, TINY, cache_dir, graph_key, random_checkpoint

log = logging.getLogger(__name__)

# form -> {module attribute of train.model.dit: value}
FORMS: dict[str, dict] = {
    "before": {"BLOCK_LOCAL_GLDI": False, "ROPE_NODE": False},  # the formulation before issue 7's graph work
    "masked": {"BLOCK_LOCAL_GLDI": False, "ROPE_NODE": True},  # RotaryEmbedding nodes only
    "block": {"BLOCK_LOCAL_GLDI": True, "ROPE_NODE": False},  # block-local GLDI only
    "block+rope": {"BLOCK_LOCAL_GLDI": True, "ROPE_NODE": True},  # both: what export writes now
}


@contextlib.contextmanager
def formulation(form: str):
    from train.model import dit

    old = {k: getattr(dit, k) for k in FORMS[form]}
    for k, v in FORMS[form].items():
        setattr(dit, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(dit, k, v)


def export_form(size: str, overrides: dict, form: str) -> Path:
    """The denoiser graph of the benchmark checkpoint in one formulation; cached beside its bundle."""
    out = cache_dir() / f"{graph_key(size, overrides)}.denoiser.{form}.onnx"
    if out.is_file():
        return out
    from export.bundle_writer import export_component
    from harmony_rt.contract import resolve
    from train.checkpoints import load_checkpoint

    model, _, _ = load_checkpoint(random_checkpoint(size, overrides))
    model.eval()
    spec = resolve(model.cfg.geometry().to_dict())["denoiser"]
    tmp = out.with_suffix(".tmp.onnx")
    with formulation(form):
        export_component("denoiser", model.denoiser, spec, model, tmp)
    tmp.replace(out)
    return out


class _StepBundle:
    """What denoiser_feeds and the runtime's session options read from a bundle, from the config alone
    (no full bundle export needed for a graph A/B)."""

    def __init__(self, size: str, overrides: dict):
        from harmony_rt.contract import resolve
        from train.configs import get_config

        cfg = get_config(size, **overrides)
        self.geometry = cfg.geometry()
        self.sampling = {"seconds": cfg.max_latent_frames * cfg.video_t_stride / cfg.fps}
        self.specs = resolve(self.geometry.to_dict())
        self.manifest = {"components": {}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=["tiny", "bench-large"])
    ap.add_argument("--forms", default="before,block+rope")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="kernel time by op type of each form (after timing)")
    ap.add_argument("--top", type=int, default=12, help="op types listed by --profile")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size, overrides = TINY if a.size == "tiny" else LARGE
    forms = a.forms.split(",")
    bundle = _StepBundle(size, overrides)
    feeds = denoiser_feeds(bundle, frames=a.frames)
    paths = {f: export_form(size, overrides, f) for f in forms}
    steps = {f: OrtStep(bundle, feeds, a.threads, path=p) for f, p in paths.items()}
    outs = {f: s.run() for f, s in steps.items()}
    times = interleave({f: s.run for f, s in steps.items()}, rounds=a.rounds)
    base = forms[0]
    shape = {k: v.shape for k, v in feeds.items() if k in ("video_latent", "audio_latent")}
    print(f"{size} {overrides or ''} step {shape}, {a.threads} threads, {a.rounds} interleaved rounds")
    for f in forms:
        diff = max(float(np.abs(x - y).max()) for x, y in zip(outs[f], outs[base]))
        print(f"  {f:24s} median {med(times[f]) * 1e3:9.2f} ms  best {min(times[f]) * 1e3:9.2f} ms  "
              f"speedup vs {base} {speedup(times[f], times[base]):.3f}x  max abs diff {diff:.1e}")
    if a.profile:
        for f, p in paths.items():
            ops = profile_ops(OrtStep(bundle, feeds, a.threads, path=p, profile=f"/tmp/graph_ab_{f}"), runs=3)
            total = sum(d["seconds"] for d in ops.values())
            print(f"  {f}: kernel time {total * 1e3:.1f} ms")
            for op, d in sorted(ops.items(), key=lambda kv: -kv[1]["seconds"])[: a.top]:
                gf = d["flops"] / d["seconds"] / 1e9 if d["flops"] else 0.0
                print(f"    {op:24s} {d['count']:4d} nodes {d['seconds'] * 1e3:8.2f} ms {d['seconds'] / total:6.1%}"
                      + (f"  {gf:6.1f} GFLOP/s" if gf else ""))


if __name__ == "__main__":
    main()
