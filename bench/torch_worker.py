"""PyTorch eager baseline in its own process (so the malloc environment can differ from the parent's).

    python -m bench.torch_worker CHECKPOINT FEEDS.npz --threads 2 [--flush-denormal]

Loads the denoiser of a checkpoint (the same weights the bundle was exported from) and the feeds, then
answers one JSON line per command read from stdin:
    step        -> {"s": seconds of one denoiser call}           (torch.inference_mode, SDPA attention)
    save PATH   -> {"saved": PATH}  (outputs of the last step, .npz, for the parity check)
    rss         -> {"rss": peak resident bytes of this process}
    quit
First line written: {"ready": seconds from process start to loaded model}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.time()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("feeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True)")
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from train.checkpoints import load_checkpoint

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(a.flush_denormal)
    model, _, _ = load_checkpoint(a.checkpoint)
    den = model.denoiser.eval()
    data = np.load(a.feeds)
    names = list(data.files)
    args = [torch.from_numpy(np.ascontiguousarray(data[k])) for k in names]
    out = None
    print(json.dumps({"ready": time.time() - T0, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split(maxsplit=1)
        if cmd == "step":
            with torch.inference_mode():
                start = time.perf_counter()
                out = den(*args)
                took = time.perf_counter() - start
            print(json.dumps({"s": took}), flush=True)
        elif cmd == "save":
            path = rest[0].strip()
            np.savez(path, video_velocity=out[0].numpy(), audio_velocity=out[1].numpy())
            print(json.dumps({"saved": path}), flush=True)
        elif cmd == "rss":
            from harmony_rt.bench import vm_hwm

            print(json.dumps({"rss": vm_hwm()}), flush=True)
        elif cmd == "quit":
            break


if __name__ == "__main__":
    main()
