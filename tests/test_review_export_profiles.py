"""TensorRT optimization profiles against what generate actually feeds each engine (no TensorRT needed: a
backend that checks every input shape against the profile, as set_input_shape would)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.build import plan_engines
from harmony_rt.bundle import Bundle
from harmony_rt.pipeline import Pipeline

pytest.importorskip("torch")  # the tiny bundle is exported from a checkpoint


def test_engines_for_short_clips_take_the_reference_voice_generate_encodes(tiny_bundle):
    """R covered the reference latent the runtime makes from max_ref_seconds, but W, the audio encoder's
    waveform that latent is encoded from, stopped at the clip's length: with --max-frames below the reference
    length, --ref-audio failed in the audio encoder engine ("outside the engine's optimization profile")."""
    b = Bundle.load(tiny_bundle, verify=False)
    g = b.geometry
    profiles = {p.component: p.profile for p in plan_engines(b, "fp16", max_frames=1)}
    pipe = Pipeline.from_bundle(tiny_bundle, backend="ort", verify=False)
    ort_backend, outside = pipe.backend, []

    class InProfile:
        def __getattr__(self, name):
            return getattr(ort_backend, name)

        def run(self, component, feeds):
            for name, (lo, _, hi) in profiles[component].items():
                shape = np.shape(feeds[name])
                if not all(a <= d <= c for a, d, c in zip(lo, shape, hi, strict=True)):
                    outside.append(f"{component}.{name} {shape} not in {lo}..{hi}")
            return ort_backend.run(component, feeds)

    pipe.backend = InProfile()
    ref_seconds = float(b.manifest["sampling"]["max_ref_seconds"])
    assert ref_seconds > g.video_t_stride / g.fps  # the reference is longer than a one-latent-frame clip
    t = np.arange(int(ref_seconds * g.sample_rate)) / g.sample_rate
    voice = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    pipe.generate("a red ball bounces", seconds=g.video_t_stride / g.fps, steps=2, ref_audio=voice)
    assert not outside, outside
