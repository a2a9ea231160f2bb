"""Calibration data from real sampler trajectories, not random tensors.

`record_feeds` runs the fp32 bundle's own Pipeline (ODE loop, guidance batch, encoders, decoders) and
keeps every component's inputs as the sampler produced them (a step's guidance branches in one call).
Static int8 and fp8 ranges come from the denoiser feeds of those runs, which cover the bundle's default
guidance mode and, in one run, text CFG's unconditional rows and a reference voice (without them, on a barely
trained tiny model, a cloned voice drove quantized activations to 1.56x, uncond rows to 1.29x, their
calibrated maxima; the end-to-end quality changed by -2.0..+0.6 dB either way: bench/RESULTS_PRECISION.md),
and the driven tasks: A2V, V2A and I2AV runs on clips generated earlier in the list (without them, on the
shipped demo model, 12 steps, 4 prompts each, A2V drove quantized inputs up to 1.43x their T2AV-calibrated
maxima, I2AV 1.32x, V2A 1.17x; 5 of 56 inputs above 1.1x). Measured there, int8 static's max relative error
vs fp32 on held-out runs of each task moved little either way (one calibration each): A2V 0.113 -> 0.103,
T2AV 0.106 -> 0.109, V2A 0.096 -> 0.098, I2AV 0.091 -> 0.095 (kept as the voice case was: ranges that cover
what the network is run on, for models where the tasks differ more). Per-component errors are measured on a
held-out run (another prompt and seed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from harmony_rt.pipeline import Pipeline

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Prompt:
    prompt: str
    speech: str = ""
    seed: int = 0
    guidance: str | None = None  # None: the bundle's default mode
    voice_of: int | None = None  # reference voice: the audio generated for prompts[voice_of], an earlier one
    task: str | None = None  # "audio" (A2V), "video" (V2A), "image" (I2AV): held from the clip of prompts[task_of]
    task_of: int | None = None


# captions in the words the demo models are trained on (train/data/synth.py); a real model passes its own
CALIBRATION_PROMPTS = (
    Prompt("a red ball bounces on a wooden floor", seed=1),
    Prompt("a blue box knocks twice on a metal floor", seed=2),
    Prompt("a green star beeps three times", seed=3),
    Prompt("a woman speaks with a soft voice", speech="hello there", seed=4),
    Prompt("a woman speaks with a soft voice", speech="good morning", seed=5, guidance="sync+cfg", voice_of=3),
    Prompt("a woman speaks with a soft voice", speech="hello there", seed=6, task="audio", task_of=3),
    Prompt("a blue box knocks twice on a metal floor", seed=7, task="video", task_of=1),
    Prompt("a red ball bounces on a wooden floor", seed=8, task="image", task_of=0),
)
TASKS = ("audio", "video", "image")
EVAL_PROMPT = Prompt("a yellow ball thumps once on a stone floor", seed=11)


class _Recorder:
    """Backend wrapper keeping each call's feeds (copied) per component."""

    def __init__(self, backend):
        self.backend = backend
        self.feeds: dict[str, list[Feeds]] = {}

    def run(self, component: str, feeds: Feeds) -> Feeds:
        self.feeds.setdefault(component, []).append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.backend.run(component, feeds)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def record_feeds(bundle_path: str | Path, prompts=CALIBRATION_PROMPTS, steps: int | None = None,
                 **pipeline_kw) -> dict[str, list[Feeds]]:
    """{component: [feeds, ...]} of fp32 generations of `prompts` (ORT, the bundle's sampling defaults).

    The guidance branches run batched (`pipeline_kw` may say otherwise): one denoiser call per ODE step holding
    every branch's rows. Under the Pipeline's default split="auto" the calls would depend on timing (each
    step batched or one call per branch, as measured on this machine, or as the user's split cache says), and
    so would the calls `subsample` keeps: the calibrated ranges, and the variant's bytes, would change run to
    run."""
    pipeline_kw.setdefault("split", "batched")
    pipe = Pipeline.from_bundle(bundle_path, verify=False, backend="ort", **pipeline_kw)
    rec = _Recorder(pipe.backend)
    pipe.backend = rec
    made = []
    for p in prompts:
        for what, i in (("voice_of", p.voice_of), ("task_of", p.task_of)):
            if i is not None and not 0 <= i < len(made):
                raise ValueError(f"calibration prompt {p.prompt!r}: {what} {i} is not an earlier prompt")
        if (p.task is None) != (p.task_of is None) or (p.task is not None and p.task not in TASKS):
            raise ValueError(f"calibration prompt {p.prompt!r}: task {p.task!r} needs task_of, one of {TASKS}")
        ref = made[p.voice_of].audio if p.voice_of is not None else None
        held = {}
        if p.task is not None:
            clip = made[p.task_of]
            held[p.task] = {"audio": clip.audio, "video": clip.frames, "image": clip.frames[0]}[p.task]
        made.append(pipe.generate(p.prompt, speech=p.speech, seed=p.seed, steps=steps, guidance=p.guidance,
                                  ref_audio=ref, **held))
    log.info("recorded %s", {k: len(v) for k, v in rec.feeds.items()})
    return rec.feeds


def subsample(feeds: list[Feeds], n: int) -> list[Feeds]:
    """`n` feeds evenly spread over the list (so over every noise level of the trajectories)."""
    if len(feeds) <= n:
        return list(feeds)
    return [feeds[i] for i in np.linspace(0, len(feeds) - 1, n).round().astype(int)]


class FeedsReader(CalibrationDataReader):
    """ORT calibration reader over recorded feeds."""

    def __init__(self, feeds: list[Feeds]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def tensor_amax(model: onnx.ModelProto, feeds: list[Feeds], names: list[str]) -> dict[str, float]:
    """max |x| of the named intermediate tensors over `feeds` (the graph run with them as extra outputs)."""
    from .precision import elem_types

    types = elem_types(model)
    m = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None)
                          for n in names if n not in have)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as named
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for f in feeds:
        for n, x in zip(names, sess.run(names, f)):
            amax[n] = max(amax[n], float(np.abs(x.astype(np.float32)).max()) if x.size else 0.0)
    return amax
