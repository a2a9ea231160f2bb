"""Flow-matching samplers in pure numpy: Euler and multistep UniPC (bh2), step for step as diffusers.

Convention (rectified flow): z_t = (1 - t) z_0 + t eps, t in [0, 1], t = 1 is noise; the model predicts the
velocity v = eps - z_0 and sampling runs from t = 1 down to t = 0. Timestep shift (paper, Eq. in METHOD 1):
sigma' = shift * sigma / (1 + (shift - 1) * sigma).

Each scheduler mirrors one diffusers class, schedule included, so parity is a test:

    FlowEulerScheduler  <->  FlowMatchEulerDiscreteScheduler(shift=shift)
    FlowUniPCScheduler  <->  UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                     flow_shift=shift, solver_order=order)   # Wan's default

The two diffusers classes build *different* grids before shifting (see `shifted_sigmas`, `unipc_sigmas`).
Sigmas are rounded through float32 exactly as diffusers stores them, then kept as float64; all arithmetic
is float64 and `step` returns the sample's dtype. One scheduler holds the state of ONE latent stream.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import HarmonyError

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000  # t in model units = sigma * 1000 (diffusers' num_train_timesteps)


def shift_sigma(sigma, shift: float):
    """The paper's timestep shift sigma' = shift * sigma / (1 + (shift - 1) * sigma) (elementwise)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def _f32(x) -> np.ndarray:
    """Round through float32 (how diffusers stores sigmas) and come back to float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def shifted_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """Euler schedule, bit-identical to FlowMatchEulerDiscreteScheduler(shift).set_timesteps(num_steps).sigmas.

    diffusers spaces the *unshifted* grid linearly from 1 down to the smallest shifted training sigma
    shift(1/1000) (not to 0), shifts it, and appends a final 0. Returns [num_steps + 1] float64, 1 -> 0.
    """
    if num_steps < 1:
        raise HarmonyError(f"num_steps must be >= 1, got {num_steps}")
    # diffusers' __init__ computes the training sigmas in float32: sigma_min = shift(1/1000) in float32 ops.
    s32 = np.float32(1.0) / np.float32(NUM_TRAIN_TIMESTEPS)
    sigma_min = float(np.float32(shift) * s32 / (np.float32(1.0) + np.float32(shift - 1.0) * s32))
    base = np.linspace(1.0 * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, num_steps) / NUM_TRAIN_TIMESTEPS
    return np.append(_f32(shift_sigma(base, shift)), 0.0)  # [N+1]


def unipc_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """UniPC schedule, bit-identical to diffusers' UniPCMultistepScheduler with use_flow_sigmas=True.

    Grid linspace(1, 1/1000, N+1)[:-1], shifted, first sigma lowered by 1e-6 (so log(1 - sigma) is finite),
    final 0 appended. Returns [num_steps + 1] float64.
    """
    if num_steps < 1:
        raise HarmonyError(f"num_steps must be >= 1, got {num_steps}")
    base = np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1)[:-1]
    sig = shift_sigma(base, shift)
    if abs(sig[0] - 1.0) < 1e-6:
        sig[0] -= 1e-6
    return np.append(_f32(sig), 0.0)  # [N+1]


class _FlowScheduler:
    """Shared bookkeeping: the schedule and the step index (diffusers' `step_index`)."""

    def __init__(self, shift: float = 5.0):
        if shift <= 0:
            raise HarmonyError(f"shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.sigmas: np.ndarray | None = None  # [N+1] float64, 1 -> 0
        self.timesteps: np.ndarray | None = None  # [N] float64, sigmas[:-1] * 1000
        self.step_index: int | None = None

    def _schedule(self, num_steps: int) -> np.ndarray:
        raise NotImplementedError

    def set_timesteps(self, num_steps: int) -> None:
        """Build the schedule for `num_steps` steps and reset all state."""
        self.sigmas = self._schedule(int(num_steps))
        self.timesteps = self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS
        self.step_index = None
        self._reset()

    def _reset(self) -> None:
        pass

    @property
    def num_steps(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    def _begin(self, timestep) -> int:
        """Index of the step to take now: the internal counter, or (first call) the index of `timestep`."""
        if self.sigmas is None:
            raise HarmonyError("call set_timesteps() before step()")
        if self.step_index is None:
            hits = np.flatnonzero(np.abs(self.timesteps - float(timestep)) <= 1e-3)
            if hits.size == 0:
                raise HarmonyError(f"timestep {float(timestep)} is not in this schedule")
            self.step_index = int(hits[0])
        if self.step_index >= self.num_steps:
            raise HarmonyError(f"all {self.num_steps} steps already taken; call set_timesteps() again")
        return self.step_index


class FlowEulerScheduler(_FlowScheduler):
    """First-order Euler: z_{i+1} = z_i + (sigma_{i+1} - sigma_i) v_i."""

    def _schedule(self, num_steps: int) -> np.ndarray:
        return shifted_sigmas(num_steps, self.shift)

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray) -> np.ndarray:
        """One step from sigmas[i] to sigmas[i+1]; returns the new sample (sample's dtype and shape)."""
        i = self._begin(timestep)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        prev = sample.astype(np.float64) + dt * model_output.astype(np.float64)
        self.step_index += 1
        return prev.astype(sample.dtype, copy=False)


def _lambda(sigma: float) -> float:
    """Half log-SNR of the flow path (alpha = 1 - sigma): log(1 - sigma) - log(sigma); +inf at sigma = 0."""
    with np.errstate(divide="ignore"):
        return float(np.log(1.0 - sigma) - np.log(sigma))


def _bh_coefficients(h: float, rks: np.ndarray, order: int, solver_type: str):
    """UniPC B(h) coefficients (data prediction): h*phi_1, B(h), and the order conditions R rho = b."""
    hh = -h
    h_phi_1 = np.expm1(hh)  # e^{-h} - 1; = -1 when h = inf (last step to sigma 0)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = np.expm1(hh) if solver_type == "bh2" else hh
    rows, b, factorial = [], [], 1
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.stack(rows), np.asarray(b)


class FlowUniPCScheduler(_FlowScheduler):
    """Multistep UniPC (predictor UniP + corrector UniC) on the flow path, in data (x0) prediction.

    Same algorithm and state as diffusers' UniPCMultistepScheduler with prediction_type="flow_prediction",
    use_flow_sigmas=True, predict_x0=True, lower_order_final=True, no disabled correctors. Warm-up uses
    lower orders; the final step (to sigma 0) is first order. Effective accuracy order is `order + 1`.
    """

    def __init__(self, shift: float = 5.0, order: int = 2, solver_type: str = "bh2"):
        super().__init__(shift)
        if order < 1:
            raise HarmonyError(f"UniPC order must be >= 1, got {order}")
        if solver_type not in ("bh1", "bh2"):
            raise HarmonyError(f"UniPC solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        self.order = int(order)
        self.solver_type = solver_type
        self._reset()

    def _schedule(self, num_steps: int) -> np.ndarray:
        return unipc_sigmas(num_steps, self.shift)

    def _reset(self) -> None:
        self._outputs: list[np.ndarray] = []  # last `order` x0 predictions, oldest first, float64
        self._last_sample: np.ndarray | None = None  # sample fed to the last predictor, float64
        self._this_order = 0

    def _history(self, s0_index: int, lam_s0: float, h: float, m0: np.ndarray, order: int):
        """Ratios r_k and scaled differences D1_k of the previous x0 predictions (k = 1 .. order-1)."""
        rks, d1s = [], []
        for k in range(1, order):
            rk = (_lambda(self.sigmas[s0_index - k]) - lam_s0) / h
            rks.append(rk)
            d1s.append((self._outputs[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        return np.asarray(rks), d1s

    def _predict(self, x: np.ndarray, i: int, order: int) -> np.ndarray:
        """UniP: from sample x at sigmas[i] to sigmas[i+1], using the stored x0 predictions."""
        s0, st = self.sigmas[i], self.sigmas[i + 1]
        lam_s0 = _lambda(s0)
        h = _lambda(st) - lam_s0
        m0 = self._outputs[-1]
        rks, d1s = self._history(i, lam_s0, h, m0, order)
        h_phi_1, b_h, rmat, b = _bh_coefficients(h, rks, order, self.solver_type)
        x_t = (st / s0) * x - (1.0 - st) * h_phi_1 * m0
        if d1s:
            rhos = [0.5] if order == 2 else np.linalg.solve(rmat[:-1, :-1], b[:-1])
            x_t = x_t - (1.0 - st) * b_h * sum(r * d for r, d in zip(rhos, d1s))
        return x_t

    def _correct(self, model_t: np.ndarray, x_last: np.ndarray, i: int, order: int) -> np.ndarray:
        """UniC: redo the last step (sigmas[i-1] -> sigmas[i]) with the new x0 prediction model_t."""
        s0, st = self.sigmas[i - 1], self.sigmas[i]
        lam_s0 = _lambda(s0)
        h = _lambda(st) - lam_s0
        m0 = self._outputs[-1]
        rks, d1s = self._history(i - 1, lam_s0, h, m0, order)
        h_phi_1, b_h, rmat, b = _bh_coefficients(h, rks, order, self.solver_type)
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rmat, b)
        res = rhos[-1] * (model_t - m0) + sum(r * d for r, d in zip(rhos[:-1], d1s))
        return (st / s0) * x_last - (1.0 - st) * h_phi_1 * m0 - (1.0 - st) * b_h * res

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray) -> np.ndarray:
        """Correct the current sample with this velocity, then predict the next one (sample's dtype)."""
        i = self._begin(timestep)
        x = sample.astype(np.float64)
        x0 = x - self.sigmas[i] * model_output.astype(np.float64)  # x0 prediction from the uncorrected sample
        if i > 0 and self._last_sample is not None:
            x = self._correct(x0, self._last_sample, i, self._this_order)
        self._outputs = (self._outputs + [x0])[-self.order :]
        self._this_order = min(self.order, self.num_steps - i, len(self._outputs))
        self._last_sample = x
        prev = self._predict(x, i, self._this_order)
        self.step_index += 1
        return prev.astype(sample.dtype, copy=False)


SCHEDULERS = ("euler", "unipc")


def make_scheduler(name: str, shift: float = 5.0) -> _FlowScheduler:
    """A fresh scheduler by name: "euler" or "unipc" (order 2, bh2)."""
    key = str(name).strip().lower()
    if key == "euler":
        return FlowEulerScheduler(shift=shift)
    if key == "unipc":
        return FlowUniPCScheduler(shift=shift)
    raise HarmonyError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
