"""Cold start (process start to first denoiser step), peak RSS and installed size: harmony-rt vs torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from harmony_rt.bench import Row, cold_start, denoiser_feeds, installed_sizes, med

from .baselines import ROOT, TUNED_MALLOC

_TORCH_COLD = r"""
import json, sys, time
import numpy as np
from harmony_rt.bench import vm_hwm
import torch
from train.checkpoints import load_checkpoint
t_imported = time.time()
torch.set_num_threads(int(sys.argv[3]))
model, _, _ = load_checkpoint(sys.argv[1])
den = model.denoiser.eval()
z = np.load(sys.argv[2])
t_loaded = time.time()
with torch.inference_mode():
    den(*[torch.from_numpy(z[k]) for k in z.files])
print(json.dumps({"imported": t_imported, "loaded": t_loaded, "first_step": time.time(),
                  "rss": vm_hwm()}))
"""


def torch_cold(checkpoint, feeds_path, threads) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLIBC_TUNABLES=TUNED_MALLOC, OMP_WAIT_POLICY="PASSIVE")
    launch = time.time()
    r = subprocess.run([sys.executable, "-c", _TORCH_COLD, str(checkpoint), str(feeds_path), str(threads)],
                       capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"import": out["imported"] - launch, "load": out["loaded"] - out["imported"],
            "first_step": out["first_step"] - launch, "rss": out["rss"]}


def test_cold_start_and_memory(model, threads, report, tmp_path):
    import numpy as np

    feeds_path = tmp_path / "feeds.npz"
    np.savez(feeds_path, **denoiser_feeds(model.bundle))
    # The runtime's first process on a machine hashes every bundle file; later ones reuse those digests
    # while the files are unchanged (harmony_rt.digests). One private cache: the first run fills it.
    env = dict(os.environ, HARMONY_RT_CACHE=str(tmp_path / "user-cache"))
    first = cold_start(model.bundle_path, threads, env=env)
    ort_runs, torch_runs = [], []
    for _ in range(3):  # interleaved; the page cache is warm for both after the first round
        ort_runs.append(cold_start(model.bundle_path, threads, env=env))
        torch_runs.append(torch_cold(model.checkpoint, feeds_path, threads))
    assert not any(r["torch_loaded"] for r in ort_runs + [first])
    g = f"{model.label} cold start (fresh process, median of 3)"
    base = "torch eager (tuned malloc, passive OpenMP)"
    for key, what in (("import", "imports"), ("load", "load weights / verify + session"),
                      ("first_step", "process start to first step")):
        o, t = med([r[key] for r in ort_runs]), med([r[key] for r in torch_runs])
        report(Row(g, what, o, baseline=base, base_value=t, ratio=t / o,
                   note="bundle digests stored by an earlier process" if key == "load" else ""))
    t = med([r["load"] for r in torch_runs])
    report(Row(g, "load weights / verify + session, first process", first["load"], baseline=base, base_value=t,
               ratio=t / first["load"], note="no stored digests: sha256 of every bundle file (one run)"))
    o, t = med([r["rss"] for r in ort_runs]), med([r["rss"] for r in torch_runs])
    report(Row(g, "peak RSS at first step", o, unit="MB", baseline="torch eager", base_value=t, ratio=t / o,
               note="ratio = torch / harmony-rt"))


def test_installed_size(report):
    s = installed_sizes()
    rt, th = sum(s["runtime"].values()), sum(s["torch"].values())
    top = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(s["runtime"].items(), key=lambda kv: -kv[1])[:4])
    report(Row("installed size (site-packages, from RECORD files)", "runtime: harmony-rt + its deps", rt, unit="MB",
               baseline="runtime + torch and its deps", base_value=rt + th, ratio=(rt + th) / rt,
               note=f"largest MB: {top}; torch alone {s['torch'].get('torch', 0) / 1e6:.0f}"))
