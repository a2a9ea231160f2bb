"""Flow schedulers: the shifted schedule, parity with diffusers, exactness and order on analytic flows."""

import numpy as np
import pytest

from harmony_rt.errors import HarmonyError
from harmony_rt.schedulers import (
    FlowEulerScheduler,
    FlowUniPCScheduler,
    make_scheduler,
    shift_sigma,
    shifted_sigmas,
    unipc_sigmas,
)


def integrate(scheduler, velocity, z, num_steps):
    """Run the full schedule from sigmas[0] to 0 with velocity(z, sigma)."""
    scheduler.set_timesteps(num_steps)
    for i, t in enumerate(scheduler.timesteps):
        z = scheduler.step(velocity(z, scheduler.sigmas[i]), t, z)
    return z


def nonlinear_velocity(z, t):
    return np.tanh(1.5 * z) * (1.0 + t) + 0.5 * np.sin(3.0 * z) * t - 0.3 * z


# ---------------------------------------------------------------- schedule


def test_shifted_sigmas_is_paper_shift_of_diffusers_grid():
    n, shift = 40, 5.0
    sig = shifted_sigmas(n, shift)
    assert sig.shape == (n + 1,) and sig.dtype == np.float64
    assert sig[0] == 1.0 and sig[-1] == 0.0 and np.all(np.diff(sig) < 0)
    # By hand: diffusers spaces the unshifted grid from 1 to shift(1/1000) (its smallest training sigma),
    # applies sigma' = shift*s / (1 + (shift-1)*s), appends 0; stored in float32.
    sigma_min = shift * 1e-3 / (1 + (shift - 1) * 1e-3)
    grid = np.linspace(1.0, sigma_min, n)
    hand = shift * grid / (1 + (shift - 1) * grid)
    np.testing.assert_allclose(sig[:-1], hand, rtol=3e-7, atol=0)  # float32 storage
    # Undoing the paper formula (its inverse s = s' / (shift - (shift-1) s')) gives an evenly spaced grid.
    unshifted = sig[:-1] / (shift - (shift - 1) * sig[:-1])
    np.testing.assert_allclose(np.diff(unshifted), np.diff(unshifted)[0], rtol=1e-4)
    # It is NOT the naive shift(linspace(1, 0, n+1)): diffusers' last nonzero sigma is 0.024, naive 0.114.
    naive = shift_sigma(np.linspace(1.0, 0.0, n + 1), shift)
    assert abs(sig[-2] - 0.0244) < 1e-4 and abs(naive[-2] - 0.1136) < 1e-4
    # shift 1 leaves the grid unshifted.
    np.testing.assert_allclose(shifted_sigmas(n, 1.0)[:-1], np.linspace(1.0, 1e-3, n), rtol=1e-6)


def test_shifted_sigmas_matches_diffusers_bitwise():
    diffusers = pytest.importorskip("diffusers")
    for n in (1, 10, 40):
        ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
        ref.set_timesteps(n)
        np.testing.assert_array_equal(shifted_sigmas(n, 5.0), ref.sigmas.numpy().astype(np.float64))
        ref = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
        ref.set_timesteps(n)
        np.testing.assert_array_equal(unipc_sigmas(n, 5.0), ref.sigmas.numpy().astype(np.float64))


def test_set_timesteps_shapes():
    for sched in (FlowEulerScheduler(5.0), FlowUniPCScheduler(5.0)):
        sched.set_timesteps(40)
        assert sched.sigmas.shape == (41,) and sched.timesteps.shape == (40,)
        np.testing.assert_allclose(sched.timesteps, sched.sigmas[:-1] * 1000)
        assert sched.sigmas[-1] == 0.0


# ---------------------------------------------------------------- parity with diffusers


def _diffusers_scheduler(name, diffusers):
    if name == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
    return diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, solver_order=2, solver_type="bh2"
    )


@pytest.mark.parametrize("name", ["euler", "unipc"])
@pytest.mark.parametrize("num_steps", [40, 10])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-6), (np.float32, 5e-6)])
def test_step_for_step_parity_with_diffusers(name, num_steps, dtype, tol):
    # float64: the residual is diffusers' own float32 internals (Euler upcasts/downcasts the sample to
    # float32, UniPC computes log-SNR from float32 sigmas). float32: diffusers does every op in float32,
    # we in float64, so the gap is diffusers' rounding over the trajectory (~1.4e-6 measured).
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    ref = _diffusers_scheduler(name, diffusers)
    ref.set_timesteps(num_steps)
    ours = make_scheduler(name, 5.0)
    ours.set_timesteps(num_steps)
    z0 = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(dtype)
    z_ref, z = torch.from_numpy(z0.copy()), z0.copy()
    worst = 0.0
    for i, (t_ref, t) in enumerate(zip(ref.timesteps, ours.timesteps)):
        v_ref = nonlinear_velocity(z_ref.numpy(), float(ref.sigmas[i]))
        z_ref = ref.step(torch.from_numpy(v_ref), t_ref, z_ref).prev_sample
        z = ours.step(nonlinear_velocity(z, ours.sigmas[i]), t, z)
        assert z.dtype == dtype and z.shape == z0.shape
        worst = max(worst, float(np.abs(z_ref.numpy().astype(np.float64) - z).max()))
    assert worst < tol
    assert np.abs(z - z0).max() > 0.1  # the trajectory went somewhere


# ---------------------------------------------------------------- analytic flows


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_exact_on_straight_line_flow(name):
    # Point-mass data c: z_t = c + t eps, v(z, t) = (z - c) / t. Euler follows the line exactly; UniPC's x0
    # prediction z - t v is c at every step, so it is exact too.
    rng = np.random.default_rng(1)
    c, eps = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    sched = make_scheduler(name, 5.0)
    sched.set_timesteps(40)
    z = integrate(sched, lambda z, t: (z - c) / t, c + sched.sigmas[0] * eps, 40)
    np.testing.assert_allclose(z, c, rtol=0, atol=1e-10)


def _gaussian_flow(mu, s):
    """Data N(mu, s^2) -> noise N(0, 1) along z_t = (1-t) z_0 + t eps: closed-form velocity and trajectory.

    Marginal N(m(t), sd(t)^2) with m = (1-t) mu, sd^2 = (1-t)^2 s^2 + t^2; in 1-D the flow keeps the standard
    score xi = (z - m) / sd, so z(t) = m(t) + sd(t) xi and v = m' + sd'/sd (z - m).
    """

    def m(t):
        return (1 - t) * mu

    def sd(t):
        return np.sqrt((1 - t) ** 2 * s**2 + t**2)

    def velocity(z, t):
        return -mu + (t - (1 - t) * s**2) / sd(t) ** 2 * (z - m(t))

    def trajectory(xi, t):
        return m(t) + sd(t) * xi

    return velocity, trajectory


def _errors(name, steps, shift=1.0):
    rng = np.random.default_rng(2)
    mu, s = rng.uniform(-1, 1, (4, 8)), 2.0
    velocity, trajectory = _gaussian_flow(mu, s)
    xi = rng.standard_normal((4, 8))
    errs = []
    for n in steps:
        sched = make_scheduler(name, shift)
        sched.set_timesteps(n)
        z = integrate(sched, velocity, trajectory(xi, sched.sigmas[0]), n)
        errs.append(np.abs(z - trajectory(xi, 0.0)).max())
    return np.array(errs)


def test_order_of_accuracy_on_gaussian_flow():
    # 16/32/64 steps: at 8 steps UniPC is not yet asymptotic (its first step spans ~12 units of log-SNR,
    # since sigma_0 = 1 - 1e-6), observed order there is ~1.2.
    steps = (16, 32, 64)
    e_euler, e_unipc = _errors("euler", steps), _errors("unipc", steps)
    order_euler = np.log2(e_euler[:-1] / e_euler[1:])
    order_unipc = np.log2(e_unipc[:-1] / e_unipc[1:])
    assert np.all((order_euler >= 0.8) & (order_euler <= 1.3)), order_euler
    assert np.all(order_unipc >= 1.7), order_unipc
    assert e_unipc[-1] < e_euler[-1] / 50


def test_unipc_beats_euler_at_shift_5_and_40_steps():
    e_euler, e_unipc = _errors("euler", (40,), shift=5.0), _errors("unipc", (40,), shift=5.0)
    assert e_unipc[0] < e_euler[0] / 10


# ---------------------------------------------------------------- API


def test_make_scheduler_and_errors():
    assert isinstance(make_scheduler("euler", 3.0), FlowEulerScheduler)
    sched = make_scheduler("UniPC", 3.0)
    assert isinstance(sched, FlowUniPCScheduler) and sched.shift == 3.0 and sched.order == 2
    with pytest.raises(HarmonyError):
        make_scheduler("dpm++", 5.0)
    with pytest.raises(HarmonyError):
        sched.step(np.zeros(2), 1000.0, np.zeros(2))  # no set_timesteps yet
    sched.set_timesteps(2)
    z = np.zeros(2, np.float32)
    with pytest.raises(HarmonyError):
        sched.step(z, 123.4, z)  # not a timestep of this schedule
    for t in sched.timesteps:
        z = sched.step(z + 1, t, z)
    with pytest.raises(HarmonyError):
        sched.step(z, sched.timesteps[-1], z)  # schedule exhausted


def test_first_step_index_from_timestep_then_internal_counter():
    # Starting mid-schedule (img2img style): the first timestep picks the index, later ones are not needed.
    full, part = FlowEulerScheduler(5.0), FlowEulerScheduler(5.0)
    full.set_timesteps(10)
    part.set_timesteps(10)
    z = np.ones(3)
    for i, t in enumerate(full.timesteps):
        z_full = full.step(nonlinear_velocity(z, full.sigmas[i]), t, z)
        if i == 4:
            z_part = part.step(nonlinear_velocity(z, part.sigmas[i]), t, z)
            assert part.step_index == 5
            np.testing.assert_array_equal(z_part, z_full)
        z = z_full


def test_schedulers_keep_independent_state():
    # One scheduler per latent stream: interleaving two UniPC streams equals running them one after the other.
    rng = np.random.default_rng(3)
    za, zb = rng.standard_normal((2, 5)), rng.standard_normal((4,))
    alone_a = integrate(FlowUniPCScheduler(5.0), nonlinear_velocity, za, 10)
    alone_b = integrate(FlowUniPCScheduler(5.0), nonlinear_velocity, zb, 10)
    sa, sb = FlowUniPCScheduler(5.0), FlowUniPCScheduler(5.0)
    sa.set_timesteps(10)
    sb.set_timesteps(10)
    for i, t in enumerate(sa.timesteps):
        za = sa.step(nonlinear_velocity(za, sa.sigmas[i]), t, za)
        zb = sb.step(nonlinear_velocity(zb, sb.sigmas[i]), t, zb)
    np.testing.assert_array_equal(za, alone_a)
    np.testing.assert_array_equal(zb, alone_b)
