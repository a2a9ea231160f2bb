"""PyTorch eager baselines, each in a worker process (bench/torch_worker.py) with its own malloc setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# glibc malloc on these VMs page-faults torch's large temporaries on every call (PLATFORM.md): the tuned
# setting keeps freed memory mapped. It must be in the environment before the process starts.
TUNED_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
MALLOC = {"default": None, "tuned": TUNED_MALLOC}


class TorchWorker:
    """One torch process holding the denoiser of `checkpoint` and the feeds; `step()` -> seconds."""

    def __init__(self, checkpoint: Path, feeds: dict[str, np.ndarray], workdir: Path, malloc: str = "default",
                 threads: int = 2, flush_denormal: bool = False, omp_wait: str | None = None):
        self.feeds_path = Path(workdir) / "feeds.npz"
        if not self.feeds_path.exists():
            np.savez(self.feeds_path, **feeds)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        env.pop("GLIBC_TUNABLES", None)
        if MALLOC[malloc]:
            env["GLIBC_TUNABLES"] = MALLOC[malloc]
        if omp_wait:  # OpenMP idle threads: ACTIVE spins, PASSIVE sleeps (libgomp's default spins a while)
            env["OMP_WAIT_POLICY"] = omp_wait
        self.malloc = malloc
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.torch_worker", str(checkpoint), str(self.feeds_path),
             "--threads", str(threads)]
            + (["--flush-denormal"] if flush_denormal else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker ({self.malloc}) exited with {self.proc.wait()}")
        return json.loads(line)

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def step(self) -> float:
        return float(self._ask("step")["s"])

    def outputs(self, path: Path) -> dict[str, np.ndarray]:
        self._ask(f"save {path}")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def peak_rss(self) -> int:
        return int(self._ask("rss")["rss"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
            except (BrokenPipeError, RuntimeError, json.JSONDecodeError):
                pass
            self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
