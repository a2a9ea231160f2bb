"""Step caching (TeaCache / MagCache family, optional): skip denoiser calls where the velocity changes slowly.

The ODE loop asks `skip(i)` before each step. A skipped step reuses the last computed (guided) velocities,
i.e. its Euler step extrapolates with them. The indicator is measured on the model's outputs, so it works
with any bundle and backend (TeaCache reads the modulated input of the first block, which a graph does not
expose): after each computed step, the relative change of the velocities per step since the previous
computed one,

    rate = max over (video, audio) of ||v_now - v_prev|| / ||v_prev|| / (steps between them),

is the estimate for the steps that follow. Steps are skipped while the accumulated estimate since the last
computed step stays below `threshold`, at most `max_skips` in a row; the first `warmup` steps and the last
`tail` steps always run (the velocity changes fastest there). threshold 0 never skips.
"""

from __future__ import annotations

import numpy as np

from .errors import HarmonyError


class StepCache:
    def __init__(self, steps: int, threshold: float, max_skips: int = 2, warmup: int = 3, tail: int = 2):
        if not 0.0 <= threshold <= 1.0:
            raise HarmonyError(f"step cache threshold must be in [0, 1], got {threshold!r}")
        self.steps, self.threshold, self.max_skips = steps, threshold, max_skips
        self.warmup, self.tail = warmup, tail
        self.rate = float("inf")  # no estimate until two computed steps
        self.accum = 0.0
        self.skipped_in_row = 0
        self.computed = 0  # denoiser calls made
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._last_step = -1

    def skip(self, i: int) -> bool:
        """Whether step i may reuse the last velocities (then `last` holds them)."""
        if i < self.warmup or i >= self.steps - self.tail or self._last is None:
            return False
        if self.skipped_in_row >= self.max_skips or self.accum + self.rate >= self.threshold:
            return False
        self.accum += self.rate
        self.skipped_in_row += 1
        return True

    @property
    def last(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._last is not None
        return self._last

    def observe(self, i: int, v_v: np.ndarray, v_a: np.ndarray) -> None:
        """Record the velocities computed at step i: v_v [B, C_v, F, h, w], v_a [B, S, T, C_a]."""
        if self._last is not None:
            gap = i - self._last_step
            self.rate = max(_rel_change(v_v, self._last[0]), _rel_change(v_a, self._last[1])) / gap
        self._last, self._last_step = (v_v, v_a), i
        self.accum, self.skipped_in_row = 0.0, 0
        self.computed += 1


def _rel_change(new: np.ndarray, old: np.ndarray) -> float:
    den = float(np.linalg.norm(old))
    return float(np.linalg.norm(new - old)) / den if den > 0 else float("inf")
