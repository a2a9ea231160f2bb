"""One attention node, three ways: ONNX Attention (opset 23) in ORT with and without denormals flushed to
zero, and torch SDPA, for the denoiser's shapes with and without GLDI's frame-window mask.

    python -m bench.micro_attention [--rounds 10] [--threads 2]

The masked softmax leaves probabilities near 1e-38 that become denormal; without flushing, the MatMul
with V then runs several times slower (the reason for `session.set_denormal_as_zero` in OrtBackend).
"""

from __future__ import annotations

import argparse
import os

# torch runs in this process too: its idle OpenMP threads must sleep, not spin into ORT's rounds
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from harmony_rt.bench import Row, format_table, interleave, med, speedup

B, H, D = 3, 8, 64  # 3 SyncCFG rows, bench-large heads and head size
SHAPES = {"GLDI a2v (1024 video x 250 audio)": (1024, 250), "GLDI v2a (250 x 1024)": (250, 1024),
          "video self-attention (1024 x 1024)": (1024, 1024)}


def _session(masked: bool, lq: int, lk: int, daz: bool, threads: int) -> ort.InferenceSession:
    ins = [("q", [B, H, lq, D]), ("k", [B, H, lk, D]), ("v", [B, H, lk, D])] + ([("m", [lq, lk])] if masked else [])
    g = helper.make_graph([helper.make_node("Attention", [n for n, _ in ins], ["o"])], "attention",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in ins],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.set_denormal_as_zero", "1" if daz else "0")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def frame_times(n: int, frames: int = 16) -> np.ndarray:
    """Time of each token on the shared axis, in video latent frames (64 video tokens a frame, or n audio frames)."""
    return np.arange(n) // 64 * 1.0 if n == 64 * frames else np.arange(n) * frames / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    rows = []
    for label, (lq, lk) in SHAPES.items():
        q, k, v = (rng.standard_normal((B, H, n, D), np.float32) for n in (lq, lk, lk))
        keep = np.abs(frame_times(lq)[:, None] - frame_times(lk)[None, :]) <= 1 + 1e-6  # +-1 frame window
        mask = np.where(keep, 0.0, -np.inf).astype(np.float32)
        feeds = {"q": q, "k": k, "v": v, "m": mask}
        tq, tk, tv, tm = map(torch.from_numpy, (q, k, v, mask))
        cands = {}
        for masked in (False, True):
            f = feeds if masked else {n: feeds[n] for n in "qkv"}
            for daz in (True, False):
                s = _session(masked, lq, lk, daz, a.threads)
                cands[(masked, f"ORT, DAZ {'on' if daz else 'off'}")] = lambda s=s, f=f: s.run(None, f)

            def sdpa(m=tm if masked else None):
                with torch.inference_mode():
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=m)

            cands[(masked, "torch SDPA")] = sdpa
        t = interleave(cands, rounds=a.rounds)
        for masked in (False, True):
            g = f"{label}, {'window mask, %.0f %% kept' % (keep.mean() * 100) if masked else 'no mask'}"
            base = t[(masked, "ORT, DAZ on")]
            for name in ("ORT, DAZ off", "torch SDPA"):
                rows.append(Row(g, "ORT Attention, DAZ on", med(base), baseline=name, base_value=med(t[(masked, name)]),
                                ratio=speedup(base, t[(masked, name)])))
    print(format_table(rows))


if __name__ == "__main__":
    main()
