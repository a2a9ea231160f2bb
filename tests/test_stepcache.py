"""Step caching: which steps reuse velocities, and what the pipeline does with it."""

import numpy as np
import pytest

from harmony_rt.errors import HarmonyError
from harmony_rt.pipeline import Pipeline
from harmony_rt.stepcache import StepCache


def _drive(cache: StepCache, steps: int, change: float) -> list[bool]:
    """Run the cache over `steps` with velocities whose relative change per computed step is `change`."""
    v = np.ones(4, np.float32)
    skipped = []
    for i in range(steps):
        s = cache.skip(i)
        skipped.append(s)
        if not s:
            v = v * (1 + change)
            cache.observe(i, v, v)
    return skipped


def test_threshold_zero_never_skips():
    assert not any(_drive(StepCache(20, 0.0), 20, 0.01))


def test_slow_change_skips_inside_warmup_and_tail_at_most_max_skips_in_a_row():
    skipped = _drive(StepCache(20, 0.5, max_skips=2, warmup=3, tail=2), 20, 0.01)
    assert not any(skipped[:3]) and not any(skipped[-2:])
    assert sum(skipped) > 0
    assert "TTT" not in "".join("T" if s else "F" for s in skipped)


def test_fast_change_runs_every_step():
    # relative change 0.3 per step: one step's estimate alone exceeds the threshold
    assert not any(_drive(StepCache(20, 0.2), 20, 0.3))


def test_rate_is_per_step_across_skips():
    c = StepCache(10, 1.0, warmup=0, tail=0)
    v = np.ones(3)
    c.observe(0, v, v)
    c.observe(3, 1.3 * v, 1.3 * v)  # 30 % over 3 steps
    assert c.rate == pytest.approx(0.1)


def test_threshold_out_of_range():
    with pytest.raises(HarmonyError):
        StepCache(10, 2.0)


def test_pipeline_calls_the_denoiser_only_on_computed_steps(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")
    calls = []
    run = pipe.backend.run
    pipe.backend.run = lambda comp, feeds: (calls.append(comp), run(comp, feeds))[1]
    full = pipe.generate("a red ball bounces twice", steps=12, seconds=1.0, seed=3)
    n_full = calls.count("denoiser")
    calls.clear()
    fast = pipe.generate("a red ball bounces twice", steps=12, seconds=1.0, seed=3, step_cache=1.0)
    n_fast = calls.count("denoiser")
    assert n_full == 12 and n_fast < 12
    assert fast.notes[-1] == f"step cache 1: {n_fast} of 12 steps called the denoiser"
    assert fast.frames.shape == full.frames.shape and fast.audio.shape == full.audio.shape
    same = pipe.generate("a red ball bounces twice", steps=12, seconds=1.0, seed=3, step_cache=0.0)
    assert np.array_equal(same.frames, full.frames) and np.array_equal(same.audio, full.audio)
