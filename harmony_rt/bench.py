"""Runtime benchmarks, torch-free: denoiser step, ORT session settings, guidance split, end-to-end stages,
cold start, peak memory, installed size and achieved GFLOP/s against a numpy matmul peak.

Every comparison runs its candidates in interleaved rounds in one process (the machine may be shared, so
absolute times drift); a ratio is the median of the per-round ratios. `harmony-rt bench` prints the table;
`bench/` (pytest-benchmark) adds the PyTorch baselines, which need torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import click
import numpy as np

from .backends import MAX_THREADS
from .bundle import Bundle, default_bundle_path
from .contract import example_feeds
from .errors import HarmonyError
from .splitstore import cpu_model

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- timing


class SelfTimed:
    """Marks an interleave candidate that returns its own elapsed seconds (e.g. measured in another process)."""

    def __init__(self, fn: Callable[[], float]):
        self.fn = fn

    def __call__(self) -> float:
        return float(self.fn())


def interleave(cands: dict[str, Callable], rounds: int, warmup: int = 1, pause: float = 0.1) -> dict[str, list[float]]:
    """Run every candidate once per round, in turn (the order rotates by one each round, so none always
    follows the same other: a candidate that leaves caches or ORT's per-shape memory plans cold would
    otherwise tax the same neighbour every round); returns seconds per round for each.

    Candidates are timed here unless wrapped in `SelfTimed`. `pause`: idle worker threads that spin (ORT
    with spinning on: 10-20 ms of CPU after a run; libgomp in a torch worker) get to go to sleep before the
    next candidate starts, so they do not slow it down.
    """
    times: dict[str, list[float]] = {k: [] for k in cands}
    names = list(cands)
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = cands[name]
            time.sleep(pause)
            start = time.perf_counter()
            got = fn()
            took = got if isinstance(fn, SelfTimed) else time.perf_counter() - start
            if r >= warmup:
                times[name].append(took)
    return times


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def speedup(fast: list[float], slow: list[float]) -> float:
    """Median over rounds of slow / fast (> 1: `fast` is faster)."""
    return med([s / f for f, s in zip(fast, slow)])


# ----------------------------------------------------------------------------- results table


@dataclass
class Row:
    """One line of the results table: a measurement, optionally against a baseline from the same run."""

    group: str
    what: str
    value: float
    unit: str = "ms"
    baseline: str = ""
    base_value: float = float("nan")
    ratio: float = float("nan")  # baseline time / value (> 1: faster than the baseline)
    note: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _fmt(x: float, unit: str) -> str:
    if x != x:  # nan
        return ""
    if unit == "ms":
        return f"{x * 1e3:.1f} ms" if x < 10 else f"{x:.2f} s"
    if unit == "MB":
        return f"{x / 1e6:.0f} MB"
    if unit == "GFLOP/s":
        return f"{x / 1e9:.1f} GFLOP/s"
    return f"{x:.3g} {unit}".strip()


TABLE_LEGEND = ("ratio = baseline / harmony-rt: > 1 means harmony-rt is faster (or smaller); where the note says "
                "'share', it is a fraction of the baseline instead")


def format_table(rows: list[Row]) -> str:
    """A markdown table of `rows`."""
    head = ["group", "measurement", "harmony-rt", "baseline (same run)", "baseline", "ratio", "note"]
    body = [
        [r.group, r.what, _fmt(r.value, r.unit), r.baseline, _fmt(r.base_value, r.unit),
         "" if r.ratio != r.ratio else f"{r.ratio:.2f}x", r.note]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(b) for b in body])


def psnr(ref: np.ndarray, x: np.ndarray, peak: float) -> float:
    """Peak signal-to-noise ratio of x against ref in dB (inf when equal)."""
    mse = float(np.mean((ref.astype(np.float64) - x.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def snr(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-noise ratio of x against ref in dB (inf when equal)."""
    noise = float(np.sum((ref.astype(np.float64) - x) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def machine() -> dict:
    """CPU model, core count, load average and the cores other processes use right now (what decides whether
    the runtime's threads spin, harmony_rt.cpuload): what a results table must state."""
    from .cpuload import other_load

    model = cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    busy = other_load(0.2)
    import onnxruntime as ort

    return {"cpu": model, "cores": os.cpu_count(), "load": [round(x, 2) for x in load], "onnxruntime": ort.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "other_load": None if busy is None else round(busy, 2)}


# ----------------------------------------------------------------------------- inputs


def denoiser_feeds(bundle: Bundle, rows: int = 3, frames: int | None = None, text_tokens: int = 16,
                   speech_chars: int = 32, ref_frames: int = 1, seed: int = 0, reference: bool = False) -> Feeds:
    """Denoiser inputs at generation shapes (the contract's `example_feeds`): `rows` guidance rows (sync: 3),
    `frames` video latent frames (default: the bundle's default clip length), captions / transcript of the
    given token counts. Without `reference` no row carries a voice reference (ref_mask all 0: what generate
    feeds without --ref-audio); with it every row has `ref_frames` reference frames."""
    g = bundle.geometry
    if frames is None:
        seconds = bundle.sampling.get("seconds", g.max_latent_frames * g.video_t_stride / g.fps)
        frames = max(1, round(seconds * g.fps / g.video_t_stride))
    sizes = {"N": rows, "F": frames, "T": g.audio_frames_for(frames), "S": g.S, "R": ref_frames,
             "L": text_tokens, "LA": text_tokens, "P": speech_chars}
    feeds = example_feeds(bundle.specs["denoiser"], sizes, vocab=4, seed=seed)  # the denoiser takes no ids
    feeds["ref_mask"] = np.full_like(feeds["ref_mask"], 1.0 if reference else 0.0)
    return feeds


# ----------------------------------------------------------------------------- ONNX Runtime step


def session_options(bundle: Bundle, threads: int | None, **variant):
    """The runtime's own SessionOptions (OrtBackend.options) with a benchmark variant applied.

    variant keys: stock (True: plain SessionOptions, only the thread count set), level ("all" | "extended" |
    "basic" | "disabled"), spinning (bool), spin_us (spin at most this long, µs), spin_backoff (int),
    block_base (session.dynamic_block_base: adaptive work splitting), arena (bool), mem_pattern (bool),
    denormal_as_zero (bool),
    profile (file prefix: enable ORT's profiler).
    """
    import onnxruntime as ort

    from .backends.ort import OrtBackend

    ort.set_default_logger_severity(3)  # overriding a runtime setting below would warn on stderr
    if variant.get("stock"):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
    else:  # a variant that fixes spinning skips the runtime's load probe (40 ms, and its verdict unused)
        spin = True if "spin_us" in variant else variant.get("spinning")
        so = OrtBackend(bundle, threads=threads, spinning=spin).options()
    opt = ort.GraphOptimizationLevel
    levels = {"all": opt.ORT_ENABLE_ALL, "extended": opt.ORT_ENABLE_EXTENDED, "basic": opt.ORT_ENABLE_BASIC,
              "disabled": opt.ORT_DISABLE_ALL}
    if "level" in variant:
        so.graph_optimization_level = levels[variant["level"]]
    if "spinning" in variant and variant.get("stock"):  # OrtBackend.options() above already set it otherwise
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if variant["spinning"] else "0")
    if "spin_us" in variant:
        if variant.get("stock"):
            so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(int(variant["spin_us"])))
    if "block_base" in variant:
        so.add_session_config_entry("session.dynamic_block_base", str(int(variant["block_base"])))
    if "spin_backoff" in variant:
        so.add_session_config_entry("session.intra_op.spin_backoff_max", str(int(variant["spin_backoff"])))
    if "arena" in variant:
        so.enable_cpu_mem_arena = bool(variant["arena"])
    if "mem_pattern" in variant:
        so.enable_mem_pattern = bool(variant["mem_pattern"])
    if "denormal_as_zero" in variant:
        so.add_session_config_entry("session.set_denormal_as_zero", "1" if variant["denormal_as_zero"] else "0")
    if variant.get("profile"):
        so.enable_profiling = True
        so.profile_file_prefix = str(variant["profile"])
    return so


class OrtStep:
    """One denoiser session with fixed feeds: `run()` is one step; `bound=True` runs through IO binding
    with inputs and outputs bound once (what a loop with preallocated buffers would cost)."""

    def __init__(self, bundle: Bundle, feeds: Feeds, threads: int | None = 2, bound: bool = False,
                 component: str = "denoiser", precision: str | None = None, path: Path | None = None, **variant):
        import onnxruntime as ort

        path = path or bundle.component_path(component, precision)
        so = session_options(bundle, threads, **variant)
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.feeds = feeds
        self.names = [o.name for o in self.sess.get_outputs()]
        self.binding = None
        if bound:
            self.binding = self.sess.io_binding()
            for k, v in feeds.items():
                self.binding.bind_cpu_input(k, v)
            first = self.sess.run(None, feeds)
            self.outs = [np.empty_like(o) for o in first]
            for name, o in zip(self.names, self.outs):
                self.binding.bind_output(name, "cpu", 0, o.dtype, o.shape, o.ctypes.data)

    def run(self) -> list[np.ndarray]:
        if self.binding is not None:
            self.sess.run_with_iobinding(self.binding)
            return self.outs
        return self.sess.run(self.names, self.feeds)

    def end_profiling(self) -> str:
        return self.sess.end_profiling()


_STEPS_CHILD = r"""
import json, sys
from harmony_rt.bench import OrtStep, denoiser_feeds, interleave
from harmony_rt.bundle import Bundle
bundle = Bundle.load(sys.argv[1], verify=False)
variant = json.loads(sys.argv[2])
threads, frames = variant.pop("threads", None), variant.pop("frames", None)
step = OrtStep(bundle, denoiser_feeds(bundle, frames=frames), threads, **variant)
print(json.dumps(interleave({"s": step.run}, rounds=int(sys.argv[3]), warmup=1, pause=0.0)["s"]))
"""


def _last_words(r: subprocess.CompletedProcess) -> str:
    """A failed child's own last stderr line (its error), not "returned non-zero exit status"."""
    return (r.stderr.strip().splitlines() or ["(no output)"])[-1]


def process_rounds(bundle_path: Path, variants: dict[str, dict], rounds: int = 3, steps: int = 3,
                   threads: int | None = None, frames: int | None = None) -> dict[str, list[float]]:
    """Median step seconds of each `variants` entry (session_options keys) in a fresh process, processes
    interleaved over `rounds`. For settings that change process state: ORT sets flush-to-zero on the
    thread that creates a session with denormal_as_zero, so in one process a "no DAZ" session made later
    still runs its main-thread share flushed (measured 1.03x in one process, 1.06-1.2x across processes)."""
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            v = json.dumps({**variant, "threads": threads, "frames": frames})
            r = subprocess.run([sys.executable, "-c", _STEPS_CHILD, str(bundle_path), v, str(steps)],
                               capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"the step process for {name!r} exited {r.returncode}: {_last_words(r)}")
            out[name].append(med(json.loads(r.stdout.strip().splitlines()[-1])))
    return out


# ----------------------------------------------------------------------------- FLOPs and the matmul peak


def _shapes(entries: list) -> list[list[int]]:
    return [list(next(iter(e.values()))) for e in entries]


def node_flops(op: str, ins: list[list[int]], outs: list[list[int]]) -> float:
    """Multiply-add FLOPs (2 per MAC) of one executed node from its actual input / output shapes;
    0 for ops that are not matmul-like (their cost is memory, not arithmetic)."""
    prod = lambda s: float(np.prod(s)) if s else 1.0  # noqa: E731
    if not outs or not ins:
        return 0.0
    if op in ("MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
              "QLinearMatMul", "MatMulNBits"):
        return 2.0 * prod(outs[0]) * ins[0][-1]
    if op in ("Gemm", "FusedGemm", "QGemm"):
        m = outs[0][0] if outs[0] else 1
        return 2.0 * prod(outs[0]) * prod(ins[0]) / max(m, 1)
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention"):
        q, k = ins[0], ins[1]
        lk = k[2] if len(k) == 4 else k[1]
        return 2.0 * lk * (prod(q) + prod(outs[0]))
    if op in ("Conv", "FusedConv", "NchwcConv", "ConvInteger", "QLinearConv"):
        w = 3 if op == "QLinearConv" else 1
        return 2.0 * prod(outs[0]) * prod(ins[w][1:]) if len(ins) > w else 0.0
    return 0.0


CONTROL_FLOW = ("If", "Loop", "Scan")


def profile_ops(step: "OrtStep", runs: int = 2) -> dict[str, dict]:
    """Per op type: executed count, FLOPs per step and kernel seconds per step, from ORT's profiler
    (the session must have been made with profile=...). Runs `runs` steps; reports the last. Control flow
    (If) is left out: the nodes of the branch it ran are reported themselves, its time is theirs."""
    for _ in range(runs):
        step.run()
    path = step.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink(missing_ok=True)
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs_seen[-1]["ts"] if runs_seen else 0
    ops: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        a = e.get("args", {})
        op = a.get("op_name", "?")
        if op in CONTROL_FLOW:
            continue
        d = ops.setdefault(op, {"count": 0, "flops": 0.0, "seconds": 0.0})
        d["count"] += 1
        d["seconds"] += e.get("dur", 0) * 1e-6
        d["flops"] += node_flops(op, _shapes(a.get("input_type_shape", [])), _shapes(a.get("output_type_shape", [])))
    return ops


@contextmanager
def blas_threads(n: int | None):
    """numpy's matmuls on `n` BLAS threads inside the block (None: as they are), the count restored after.
    The matmul peak must use the threads the step gets: OpenBLAS otherwise takes one per CPU (and reads
    OPENBLAS_NUM_THREADS only when numpy loads), so `harmony-rt bench --threads 1` on a 2-core machine set a
    1-thread step against a 2-thread peak."""
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(int(n), user_api="blas"):
        yield


class MatmulProbe:
    """numpy fp32 `a @ b` on n x n matrices, allocated once: `run()` is one product of `flops` FLOPs.
    `threads`: BLAS threads of the products in `best` (None: numpy's as they are)."""

    def __init__(self, n: int = 2048, threads: int | None = None):
        rng = np.random.default_rng(0)
        self.a, self.b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        self.out = np.empty_like(self.a)
        self.flops = 2.0 * n**3
        self.threads = threads

    def run(self) -> None:
        np.matmul(self.a, self.b, out=self.out)

    def best(self, repeats: int = 3, settle: float = 0.5) -> float:
        """Seconds of the fastest of `repeats` products (after one warm-up). OpenBLAS's idle threads spin for
        a while after a product; `settle` seconds of sleep afterwards keep them from slowing whatever is timed
        next (interleaving the probe with a step did, by up to 25 %)."""
        with blas_threads(self.threads):
            times = interleave({"mm": self.run}, rounds=repeats, warmup=1, pause=0.0)["mm"]
        time.sleep(settle)
        return min(times)


def matmul_peak(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best fp32 FLOP/s of numpy `a @ b` (n x n) on this machine now, on `threads` BLAS threads (None: numpy's)."""
    probe = MatmulProbe(n, threads)
    return probe.flops / probe.best(repeats)


def peak_share_rows(group: str, flops: float, steps: list[float], probe: MatmulProbe, probes: list[float],
                    peak: float, seen: str) -> list[Row]:
    """The step's achieved GFLOP/s against the numpy matmul peak, two ways: its best step against `peak`, the
    highest seen (`seen` says where), and each round's step against the peak probed in that round (median)."""
    shares = [(flops / s) / (probe.flops / p) for s, p in zip(steps, probes)]
    return [
        Row(group, "achieved GFLOP/s (matmul-like ops)", flops / min(steps), unit="GFLOP/s",
            baseline="numpy fp32 matmul peak", base_value=peak, ratio=flops / min(steps) / peak,
            note=f"{flops / 1e9:.2f} GFLOP a step (ORT profile shapes); best of {len(steps)} steps against the "
                 f"highest peak seen ({seen}); ratio = share of the peak"),
        Row(group, "achieved GFLOP/s, each round's step vs its own probe", flops / med(steps), unit="GFLOP/s",
            baseline="numpy peak probed in the same round", base_value=probe.flops / med(probes), ratio=med(shares),
            note=f"ratio = share of the peak, median over {len(steps)} rounds (per round {min(shares):.0%}-"
                 f"{max(shares):.0%}); pairs the step with the machine's speed at that moment"),
    ]


# ----------------------------------------------------------------------------- guidance split


def guidance_split(bundle: Bundle, frames: int | None = None, rounds: int = 3, threads: int | None = 2,
                   mode: str = "sync", steps: int = 40) -> dict:
    """One guided step run batched (all branches in one call) vs sequential (one call per branch) vs
    auto (after its decision), on the runtime's own backend; and a `steps`-step run with auto, its
    measuring steps included, vs the same run with the better split fixed in advance (the measuring's
    extra time taken from `rounds` fresh executors, each timed against as many steps of the better split
    right after it)."""
    from .backends.ort import OrtBackend
    from .guidance import GuidedDenoiser, branches

    backend = OrtBackend(bundle, threads=threads)
    n = len(branches(mode))
    f = denoiser_feeds(bundle, rows=n, frames=frames)
    z_v, z_a = f["video_latent"][:1], f["audio_latent"][:1]
    cond = {k: f[k][:1] for k in f if k not in ("video_latent", "audio_latent", "t_video", "t_audio")}
    args = (z_v, z_a, f["t_video"][:1], f["t_audio"][:1], cond, cond, f["video_latent"][1:2], f["audio_latent"][1:2])
    call = lambda feeds: backend.run("denoiser", feeds)  # noqa: E731
    g = {s: GuidedDenoiser(call, mode, split=s) for s in ("batched", "sequential", "auto")}
    g["batched"](*args), g["sequential"](*args)  # first runs at both shapes: arena growth, not steps
    while not g["auto"].decisions:  # timed below as "after its decision"; its measuring is timed apart
        g["auto"](*args)
    times = interleave({s: (lambda s=s: g[s](*args)) for s in g}, rounds=rounds, warmup=0)
    split_step = {s: med(times[s]) for s in ("batched", "sequential")}
    best_split = min(split_step, key=split_step.get)
    # the measuring's cost: a fresh auto executor's steps until it decides vs as many steps of the better
    # split, back to back, `rounds` times (drift in the machine's speed hits both alike); plus, where it
    # decides for the other split, that split's extra time on each of the run's remaining steps
    extra, measuring, chosen = [], [], []
    for _ in range(rounds):
        fresh = GuidedDenoiser(call, mode, split="auto")
        steps_auto = []
        while not fresh.decisions:
            start = time.perf_counter()
            fresh(*args)
            steps_auto.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in steps_auto:
            g[best_split](*args)
        (fresh_choice,) = fresh.decisions.values()
        extra.append(auto_extra(steps_auto, time.perf_counter() - start, steps,
                                split_step[fresh_choice] - split_step[best_split]))
        measuring.append(len(steps_auto))
        chosen.append(fresh_choice)
    (key, choice), = g["auto"].decisions.items()
    best = split_step[best_split]
    run_auto = steps * best + med(extra)
    return {"times": times, "choice": choice, "auto_measured": g["auto"].timings[key], "measuring": measuring,
            "fresh_choices": chosen, "rows": n, "run_auto": run_auto, "run_best": steps * best, "steps": steps}


def auto_extra(measured: list[float], best_same_count: float, steps: int, chosen_gap: float) -> float:
    """Seconds a `steps`-step run with the auto split takes beyond the same run with the better split fixed:
    its `measured` steps (until it decided) against as many steps of the better split (`best_same_count`
    seconds, timed right after), and on each remaining step `chosen_gap`, the split it chose minus the better
    one per step (0 when it chose the better one; the remaining steps run its choice, not the better split)."""
    return sum(measured) - best_same_count + max(0, steps - len(measured)) * chosen_gap


# ----------------------------------------------------------------------------- end to end


class StageTimer:
    """Wraps a backend's `run` to add up seconds per component (no timing code in the pipeline)."""

    def __init__(self, backend):
        self.backend, self.inner = backend, backend.run
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        backend.run = self

    def __call__(self, component: str, feeds: Feeds):
        start = time.perf_counter()
        try:
            return self.inner(component, feeds)
        finally:
            self.seconds[component] = self.seconds.get(component, 0.0) + time.perf_counter() - start
            self.calls[component] = self.calls.get(component, 0) + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


ENCODERS = ("text_encoder", "speech_encoder", "audio_encoder", "video_encoder")
DECODERS = ("video_decoder", "audio_decoder")


def generate_stages(bundle_path: Path | None = None, prompt: str = "a red ball bounces on a wooden floor",
                    steps: int | None = None, rounds: int = 2, threads: int | None = 2, **gen) -> dict:
    """End-to-end `generate` split by stage: encode, ODE loop (denoiser + numpy), decode, mux (mp4 + wav).
    Seconds per stage of the fastest of `rounds` generations after a first one, which loads the sessions
    and makes the guidance split decision (its total is `first_total`)."""
    from .pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle_path, backend="ort", threads=threads)
    timer = StageTimer(pipe.backend)
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):
            timer.reset()
            start = time.perf_counter()
            res = pipe.generate(prompt, steps=steps, **gen)
            total = time.perf_counter() - start
            m0 = time.perf_counter()
            res.save(Path(tmp) / "out.mp4")
            mux = time.perf_counter() - m0
            enc = sum(timer.seconds.get(c, 0.0) for c in ENCODERS)
            dec = sum(timer.seconds.get(c, 0.0) for c in DECODERS)
            st = {"encode": enc, "ode_loop": total - enc - dec, "denoiser": timer.seconds.get("denoiser", 0.0),
                  "decode": dec, "mux": mux, "total": total + mux, "denoiser_calls": timer.calls.get("denoiser", 0),
                  "seconds_of_media": res.seconds}
            if r == 0:
                first = st["total"]
            elif best is None or st["total"] < best["total"]:
                best = st
    return {**best, "first_total": first, "split": next(iter(pipe._guided.values())).decisions}


# ----------------------------------------------------------------------------- cold start, memory, size


_COLD = r"""
import json, sys, time
t_import = time.time()
from harmony_rt.bench import denoiser_feeds, vm_hwm
from harmony_rt.pipeline import Pipeline
t_imported = time.time()
pipe = Pipeline.from_bundle(sys.argv[1], backend="ort", threads=int(sys.argv[2]) or None)  # 0: ORT's default
pipe.backend.session("denoiser")
t_loaded = time.time()
pipe.backend.run("denoiser", denoiser_feeds(pipe.bundle))
t_step = time.time()
out = {"imported": t_imported, "loaded": t_loaded, "first_step": t_step}
if sys.argv[3] == "generate":
    import tempfile, os
    res = pipe.generate("a red ball bounces on a wooden floor")
    res.save(os.path.join(tempfile.mkdtemp(), "o.mp4"))
    out["generated"] = time.time()
out["rss"] = vm_hwm()
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def vm_hwm() -> int:
    """Peak resident bytes of this process image (VmHWM). Not ru_maxrss: that one carries the parent's
    peak across fork + exec, so a child of a big process (pytest) reports its parent's size."""
    for ln in Path("/proc/self/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) * 1024
    return 0


def cold_start(bundle_path: Path, threads: int | None = 2, generate: bool = False, env: dict | None = None) -> dict:
    """A fresh `python` process: seconds from launch to imports done, bundle verified + denoiser session
    made, first denoiser step done; peak RSS (after one full generate when `generate`). threads None: ORT's
    default (one per core)."""
    launch = time.time()
    what = "generate" if generate else "step"
    r = subprocess.run([sys.executable, "-c", _COLD, str(bundle_path), str(threads or 0), what],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        err = HarmonyError(f"the cold-start process exited {r.returncode}: {_last_words(r)}")
        err.exit_code = 1  # not the user's input
        raise err
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"import": out["imported"] - launch, "load": out["loaded"] - out["imported"],
            "first_step": out["first_step"] - launch, "rss": out["rss"], "torch_loaded": out["torch_loaded"],
            **({"generate": out["generated"] - out["first_step"]} if generate else {})}


def _dist_size(dist) -> int:
    total = 0
    for f in dist.files or ():
        p = Path(dist.locate_file(f))
        if p.is_file() and "__pycache__" not in p.parts:
            total += p.stat().st_size
    return total


def _requires(dist) -> list[str]:
    names = []
    for req in dist.requires or ():
        spec, _, marker = req.partition(";")
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m and "extra" not in marker:
            names.append(m.group(1))
    return names


def dist_closure(roots: list[str]) -> dict[str, int]:
    """{distribution: installed bytes} of `roots` and everything they require (no extras), as installed
    here (RECORD files; __pycache__ left out). Requirements not installed here are skipped."""
    seen: dict[str, int] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = _dist_size(dist)
        todo.extend(_requires(dist))
    return seen


def installed_sizes() -> dict:
    """Installed bytes of the runtime (harmony-rt + its dependencies) and of torch with its dependencies
    that the runtime does not already need. An editable harmony-rt counts its package folder."""
    runtime = dist_closure(["harmony-rt"])
    pkg = Path(__file__).parent
    runtime["harmony-rt"] = max(runtime.get("harmony-rt", 0), sum(
        p.stat().st_size for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts))
    torch = {k: v for k, v in dist_closure(["torch"]).items() if k not in runtime}
    return {"runtime": runtime, "torch": torch}


# ----------------------------------------------------------------------------- the runtime suite


def step_rows(bundle: Bundle, label: str, rounds: int, threads: int | None, frames: int | None = None,
              peak: float | None = None) -> tuple[list[Row], dict]:
    """The denoiser step with the runtime's settings vs stock ORT settings and vs IO binding, its
    achieved GFLOP/s against the numpy matmul peak (`peak_share_rows`; `peak`: a higher one seen earlier), and
    each int8 variant against fp32."""
    feeds = denoiser_feeds(bundle, frames=frames)
    shape = f"N={feeds['video_latent'].shape[0]} F={feeds['video_latent'].shape[2]} T={feeds['audio_latent'].shape[2]}"
    cands = {"runtime": OrtStep(bundle, feeds, threads), "bound": OrtStep(bundle, feeds, threads, bound=True)}
    for prec in bundle.precisions("denoiser")[1:]:
        if prec in ("int8", "int8-dynamic"):  # fp16 / fp8 are GPU precisions (slower or simulated on CPU)
            cands[prec] = OrtStep(bundle, feeds, threads, precision=prec)
    probe = MatmulProbe(threads=threads)  # the step's threads (None: ORT's and numpy's defaults)
    peak = max(peak or 0.0, matmul_peak(threads=threads))
    # each round also probes the peak, so every step can be set against the machine's speed at that moment
    t = interleave({**{k: s.run for k, s in cands.items()}, "probe": SelfTimed(probe.best)}, rounds=rounds)
    # the highest seen: before, during, after
    peak = max(peak, probe.flops / min(t["probe"]), matmul_peak(threads=threads))
    prof = OrtStep(bundle, feeds, threads, profile=str(Path(tempfile.gettempdir()) / "harmony-rt-prof"))
    flops = sum(d["flops"] for d in profile_ops(prof).values())
    rt = med(t["runtime"])
    g = f"{label} step ({shape})"
    n_proc = max(2, rounds // 2)
    fresh = process_rounds(bundle.path, {"runtime": {}, "stock": {"stock": True}}, rounds=n_proc, threads=threads,
                           frames=frames)
    rows = [
        Row(g, "denoiser step, runtime settings", med(fresh["runtime"]), baseline="ORT stock settings",
            base_value=med(fresh["stock"]), ratio=speedup(fresh["runtime"], fresh["stock"]),
            note=f"each in a fresh process ({n_proc} each, interleaved, 3 steps each: a small sample, noisy)"),
        Row(g, "denoiser step, IO binding", med(t["bound"]), baseline="runtime settings", base_value=rt,
            ratio=speedup(t["bound"], t["runtime"])),
        *peak_share_rows(g, flops, t["runtime"], probe, t["probe"], peak, "before, during, after"),
    ]
    for prec in cands:
        if prec not in ("runtime", "stock", "bound"):
            rows.append(Row(g, f"denoiser step, {prec}", med(t[prec]), baseline="fp32 (runtime settings)",
                            base_value=rt, ratio=speedup(t[prec], t["runtime"])))
    return rows, {"times": t, "flops": flops, "peak": peak, "shape": shape}


def guidance_rows(bundle: Bundle, label: str, rounds: int, threads: int | None, frames: int | None = None) -> list[Row]:
    r = guidance_split(bundle, frames=frames, rounds=rounds, threads=threads)
    t = r["times"]
    best = "batched" if med(t["batched"]) <= med(t["sequential"]) else "sequential"
    g = f"{label} SyncCFG ({r['rows']} branches, 1 sample)"
    am = r["auto_measured"]
    return [
        Row(g, "one batched call", med(t["batched"]), baseline="one call per branch", base_value=med(t["sequential"]),
            ratio=speedup(t["batched"], t["sequential"])),
        Row(g, "auto (after its decision)", med(t["auto"]), baseline=f"better of the two ({best})",
            base_value=med(t[best]), ratio=speedup(t["auto"], t[best]),
            note=f"auto chose {r['choice']} (measured batched {am['batched'] * 1e3:.1f} ms, "
                 f"sequential {am['sequential'] * 1e3:.1f} ms)"),
        Row(g, f"auto over a {r['steps']}-step run", r["run_auto"], baseline="better split, no measuring",
            base_value=r["run_best"], ratio=r["run_best"] / r["run_auto"],
            note=f"its first {_span(r['measuring'])} steps alternate the splits, timed "
                 f"(median extra over {len(r['measuring'])} fresh starts; they chose "
                 f"{', '.join(sorted(set(r['fresh_choices'])))}, the rest of the run priced at that split)"),
    ]


def _span(xs) -> str:
    """'2' or '2-4': the range of a few counts."""
    lo, hi = min(xs), max(xs)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def generate_rows(bundle_path: Path | None, label: str, rounds: int, threads: int | None) -> list[Row]:
    s = generate_stages(bundle_path, rounds=rounds, threads=threads)
    g = f"{label} generate ({s['seconds_of_media']:.1f} s clip, {s['denoiser_calls']} denoiser calls)"
    rows = [Row(g, stage, s[stage], baseline="total", base_value=s["total"], ratio=s[stage] / s["total"],
                note="ratio = share of the total") for stage in ("encode", "ode_loop", "decode", "mux")]
    rows.insert(2, Row(g, "  of it: denoiser calls", s["denoiser"], baseline="ODE loop", base_value=s["ode_loop"],
                       ratio=s["denoiser"] / s["ode_loop"], note="the rest: guidance + scheduler numpy"))
    rows.append(Row(g, "total", s["total"], note=f"guidance split: {', '.join(set(s['split'].values())) or 'n/a'}"))
    rows.append(Row(g, "first generate of a new Pipeline", s["first_total"], baseline="later ones",
                    base_value=s["total"], ratio=s["total"] / s["first_total"],
                    note="includes session loads and the split measurement"))
    return rows


def cold_rows(bundle_path: Path, label: str, threads: int | None) -> list[Row]:
    with tempfile.TemporaryDirectory() as d:  # a private user cache: the first process fills it
        env = dict(os.environ, HARMONY_RT_CACHE=d)
        first = cold_start(bundle_path, threads=threads, env=env)
        c = cold_start(bundle_path, threads=threads, env=env)
        gen = cold_start(bundle_path, threads=threads, generate=True, env=env)
    g = f"{label} cold start (fresh process)"
    return [
        Row(g, "imports done", c["import"]),
        Row(g, "bundle verified + denoiser session", c["load"], note="digests stored by an earlier process"),
        Row(g, "  the same, first process", first["load"], note="no stored digests: sha256 of every graph it runs"),
        Row(g, "process start to first step", c["first_step"], note="torch imported: " + str(c["torch_loaded"])),
        Row(g, "peak RSS, first step", c["rss"], unit="MB"),
        Row(g, "peak RSS, full generate + save", gen["rss"], unit="MB",
            note="first generate on this machine: guidance split measured"),
    ]


def size_rows() -> list[Row]:
    s = installed_sizes()
    rt, th = sum(s["runtime"].values()), sum(s["torch"].values())
    top = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(s["runtime"].items(), key=lambda kv: -kv[1])[:4])
    if not th:  # a runtime-only environment: nothing to compare against
        return [Row("installed size (site-packages, RECORD)", "runtime: harmony-rt + deps", rt, unit="MB",
                    note=f"largest MB: {top}; torch is not installed here (install it beside to compare)")]
    return [Row("installed size (site-packages, RECORD)", "runtime: harmony-rt + deps", rt, unit="MB",
                baseline="+ torch and its deps", base_value=rt + th, ratio=(rt + th) / rt, note=f"largest MB: {top}")]


def run_runtime(bundle_path: Path | None = None, threads: int | None = None, rounds: int = 5,
                frames: int | None = None, quick: bool = False) -> tuple[list[Row], dict]:
    """The torch-free suite on one bundle (default: the shipped one)."""
    path = Path(bundle_path) if bundle_path is not None else default_bundle_path()
    bundle = Bundle.load(path)
    if frames is not None and frames > bundle.geometry.max_latent_frames:
        raise HarmonyError(f"--frames {frames}: {path.name}'s model takes at most "
                           f"{bundle.geometry.max_latent_frames} video latent frames")
    label = path.name
    info = {"machine": machine(), "bundle": str(path), "threads": threads, "rounds": rounds}
    log.info("denoiser step: runtime vs stock settings, IO binding, int8, GFLOP/s")
    rows, step = step_rows(bundle, label, rounds, threads, frames)
    info["step"] = {"flops": step["flops"], "peak": step["peak"], "shape": step["shape"]}
    log.info("guidance split")
    rows += guidance_rows(bundle, label, max(2, rounds // 2), threads, frames)
    if not quick:
        log.info("end-to-end generate, cold start")
        rows += generate_rows(path, label, 2, threads)
        rows += cold_rows(path, label, threads)
    rows += size_rows()
    info["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return rows, info


MAX_ROUNDS = 1000


def check_json_target(path: Path, bundle: Path | None = None) -> None:
    """Refuse a --json path that is a folder, sits in a missing or unwritable folder, is not a plain file (a
    device, a symlink: the rename would replace them) or lies inside `bundle`, the one being measured."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise HarmonyError(f"--json {path}: not a file in an existing, writable folder")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise HarmonyError(f"--json {path}: exists and is not a plain file (a link or a device); refusing to "
                           "replace it")
    if bundle is not None and path.resolve().is_relative_to(Path(bundle).resolve()):
        raise HarmonyError(f"--json {path}: inside the bundle {bundle} being measured; write it elsewhere")


def run_json(info: dict, rows: list[Row]) -> str:
    """The run as strict JSON: rows (values in seconds, bytes or FLOP/s; `unit` is how the table shows them),
    empty fields as null, not NaN."""
    def clean(x):
        return None if isinstance(x, float) and x != x else x

    return json.dumps({"info": info, "rows": [{k: clean(v) for k, v in r.to_dict().items()} for r in rows]},
                      indent=2, allow_nan=False)


@click.command("bench")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle folder (default: the shipped demo).")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="Intra-op threads (default: ONNX Runtime's, one per core).")
@click.option("--rounds", type=click.IntRange(min=1, max=MAX_ROUNDS), default=5, show_default=True,
              help="Interleaved rounds per comparison.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Video latent frames of the step (default: the bundle's clip).")
@click.option("--quick", is_flag=True, help="Skip end-to-end, cold start and memory.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write rows + machine here.")
def bench_command(bundle, threads, rounds, frames, quick, json_out):
    """Time the runtime on this machine (no torch): denoiser step, ORT settings, SyncCFG batching,
    end-to-end stages, cold start, memory, installed size. Ratios come from interleaved rounds."""
    from .bundle import atomic_write_bytes

    if json_out is not None:  # checked before minutes of measuring, written atomically after
        check_json_target(json_out, bundle or default_bundle_path())
    if threads is not None and threads > (os.cpu_count() or 1):
        log.warning("--threads %d on %d cores: the threads share cores, and the times measure that", threads,
                    os.cpu_count() or 1)
    rows, info = run_runtime(bundle, threads, rounds, frames, quick)
    info["options"] = {"bundle": str(bundle) if bundle else None, "threads": threads, "rounds": rounds,
                       "frames": frames, "quick": quick}
    m = info["machine"]
    click.echo(f"{m['cpu']}, {m['cores']} cores, load {m['load']} -> {m['load_after']}, other processes at start "
               f"{m['other_load']} cores, onnxruntime {m['onnxruntime']}, threads {threads or 'default'}, "
               f"{rounds} rounds")
    click.echo(format_table(rows))
    click.echo(TABLE_LEGEND)
    if json_out is not None:
        atomic_write_bytes(json_out, run_json(info, rows).encode())
