"""One attention node at the denoiser's shapes, with and without GLDI's frame-window mask: ONNX Attention
(opset 23) in ORT with denormals flushed to zero (DAZ) or not, and torch SDPA.

    python -m bench.micro_attention [--rounds 3] [--steps 10] [--threads 2]

The masked softmax leaves probabilities near 1e-38 that become denormal; without flushing, the MatMul with
V then runs several times slower (the reason for `session.set_denormal_as_zero` in OrtBackend). ORT sets
flush-to-zero on the thread that creates such a session, for good, so every engine runs in its own
process; processes are interleaved over `--rounds`, each reporting its median of `--steps` calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

from harmony_rt.bench import Row, format_table, interleave, med, speedup

B, H, D = 3, 8, 64  # 3 SyncCFG rows, bench-large heads and head size
SHAPES = {"GLDI a2v (1024 video x 250 audio)": (1024, 250), "GLDI v2a (250 x 1024)": (250, 1024),
          "video self-attention (1024 x 1024)": (1024, 1024)}
ENGINES = ("ORT, DAZ on", "ORT, DAZ off", "torch SDPA")  # torch: OMP_WAIT_POLICY=PASSIVE


def frame_times(n: int, frames: int = 16) -> np.ndarray:
    """Each token's time on the shared axis in video latent frames (64 video tokens a frame, or n audio frames)."""
    return np.arange(n) // 64 * 1.0 if n == 64 * frames else np.arange(n) * frames / n


def cases(seed: int = 0):
    """(label, masked, feeds) for every shape, with and without the +-1 frame window mask."""
    rng = np.random.default_rng(seed)
    for label, (lq, lk) in SHAPES.items():
        q, k, v = (rng.standard_normal((B, H, n, D), np.float32) for n in (lq, lk, lk))
        keep = np.abs(frame_times(lq)[:, None] - frame_times(lk)[None, :]) <= 1 + 1e-6
        mask = np.where(keep, 0.0, -np.inf).astype(np.float32)
        yield f"{label}, no mask", {"q": q, "k": k, "v": v}
        yield f"{label}, window mask ({keep.mean():.0%} kept)", {"q": q, "k": k, "v": v, "m": mask}


def _ort_runner(feeds: dict, daz: bool, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n, x in feeds.items()]
    g = helper.make_graph([helper.make_node("Attention", list(feeds), ["o"])], "attention", ins,
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.set_denormal_as_zero", "1" if daz else "0")
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def _torch_runner(feeds: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    q, k, v = (torch.from_numpy(feeds[n]) for n in "qkv")
    m = torch.from_numpy(feeds["m"]) if "m" in feeds else None

    def run():
        with torch.inference_mode():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)

    return run


def child(engine: str, steps: int, threads: int) -> dict[str, float]:
    """Median seconds per case for one engine, in this process."""
    out = {}
    for label, feeds in cases():
        if engine == "torch SDPA":
            run = _torch_runner(feeds, threads)
        else:
            run = _ort_runner(feeds, engine == "ORT, DAZ on", threads)
        out[label] = med(interleave({"x": run}, rounds=steps, warmup=1, pause=0.0)["x"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.threads)))
        return
    times: dict[str, dict[str, list[float]]] = {e: {} for e in ENGINES}
    for _ in range(a.rounds):
        for e in ENGINES:
            r = subprocess.run([sys.executable, "-m", "bench.micro_attention", "--child", e, "--steps", str(a.steps),
                                "--threads", str(a.threads)], capture_output=True, text=True, check=True,
                               env={**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE"})
            for label, s in json.loads(r.stdout.strip().splitlines()[-1]).items():
                times[e].setdefault(label, []).append(s)
    rows = []
    for label in times[ENGINES[0]]:
        base = times["ORT, DAZ on"][label]
        for e in ENGINES[1:]:
            rows.append(Row(label, "ORT Attention, DAZ on", med(base), baseline=e, base_value=med(times[e][label]),
                            ratio=speedup(base, times[e][label])))
    print(format_table(rows))


if __name__ == "__main__":
    main()
