"""Run the Triton kernel against the numpy reference, or AOT-compile it, in a process of its own.

Triton decides at import time whether kernels are interpreted (TRITON_INTERPRET=1) or compiled, and the
two cannot be mixed in one process, so tests call this module in a subprocess:

    TRITON_INTERPRET=1 python -m engines.plugin.triton_check run --cases '[[N,H,Lq,Lk,D,window], ...]'
    python -m engines.plugin.triton_check run --device cuda ...        (on a GPU)
    python -m engines.plugin.triton_check aot --head-dim 64 --dtype fp16 --arch 80 --arch 90

Each prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import reference as ref

ARGS = ("q", "k", "v", "cos_q", "sin_q", "cos_k", "sin_k", "t_q", "t_k")


def run_cases(cases: list, dtype: str, device: str, block: int, seed: int) -> list[dict]:
    """Max abs error vs the reference for each case [N, H, Lq, Lk, D, window]."""
    import torch

    from .triton_kernel import rope_aligned_attention

    out = []
    for i, (N, H, Lq, Lk, D, window) in enumerate(cases):
        c = ref.random_case(np.random.default_rng(seed + i), N=N, H=H, Lq=Lq, Lk=Lk, D=D)
        t = [torch.from_numpy(c[n]).to(device) for n in ARGS]
        if dtype == "fp16":
            t[:3] = [x.half() for x in t[:3]]
        o = rope_aligned_attention(*t, window=window, block_m=block, block_n=block).float().cpu().numpy()
        err = np.abs(o - ref.rope_aligned_attention(**c, window=window)).max()
        out.append({"case": [N, H, Lq, Lk, D, window], "finite": bool(np.isfinite(o).all()), "max_err": float(err),
                    "dtype": str(t[0].dtype)})
    return out


def aot_info(head_dim: int, dtype: str, arch: int, tactic: int, window: float) -> dict:
    """Compile for TensorRT's AOT path and describe the PTX entry's parameters."""
    from .trt_plugin import compile_aot

    k = compile_aot(head_dim, window, dtype, arch=arch, tactic=tactic)
    ptx = k.ptx.decode()
    entry = ptx[ptx.index(f".entry {k.name}("):].split(")", 1)[0]
    params = [("u32" if ".u32" in line else "u64") for line in entry.splitlines() if ".param" in line]
    target = next((line.split()[1] for line in ptx.splitlines() if line.startswith(".target")), None)
    return {"name": k.name, "target": target, "params": params, "shared": k.shared, "num_warps": k.num_warps,
            "tile": [k.tile.block_m, k.tile.block_n, k.tile.num_warps, k.tile.num_stages], "ptx_bytes": len(k.ptx)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cases", required=True, help="JSON list of [N, H, Lq, Lk, D, window]")
    r.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    r.add_argument("--device", default="cpu")
    r.add_argument("--block", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("aot")
    a.add_argument("--head-dim", type=int, required=True)
    a.add_argument("--dtype", choices=("fp32", "fp16"), default="fp16")
    a.add_argument("--arch", type=int, action="append", required=True, help="repeat for several")
    a.add_argument("--tactic", type=int, default=1)
    a.add_argument("--window", type=float, default=1.0)
    ns = p.parse_args(argv)
    if ns.cmd == "run":
        result = run_cases(json.loads(ns.cases), ns.dtype, ns.device, ns.block, ns.seed)
    else:
        result = [aot_info(ns.head_dim, ns.dtype, arch, ns.tactic, ns.window) for arch in ns.arch]
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
