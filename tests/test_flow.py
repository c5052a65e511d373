"""The flow-matching objective and its samplers: against diffusers' flow-matching schedulers (an independent
implementation), against the exact velocity field of Gaussian data (a closed form), and by hand."""

import math

import numpy as np
import pytest
import torch

from ctdiff.config import DiffusionConfig
from ctdiff.diffusion import flow
from ctdiff.diffusion.samplers import (
    clip_velocity,
    euler_step,
    flow_time_grid,
    heun_step,
    network_evaluations,
)
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule
from ctdiff.model.unet import UNet3D
from ctdiff.training.step import draw_noise, objective_loss

T = 1000
SHAPE = (1, 4, 4, 4)


def _randn(seed, shape=(2, *SHAPE), dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fake_velocity(x, t):
    """A smooth, nonlinear stand-in for a network: depends on x and on the network time t (·T)."""
    return 0.7 * torch.tanh(x) - 0.2 * x.flip(-1) + torch.cos(t.float() / 300.0).reshape(-1, *([1] * (x.ndim - 1)))


class _Counting(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.calls, self.times = f, 0, []

    def forward(self, x, t):
        self.calls += 1
        self.times.append(t.clone())
        return self.f(x, t)


# ---------------------------------------------------------------- forward process, loss, t draws


def test_training_loss_by_hand():
    """x0 = 0.5, ε = −1, t = 0.25: x_t = 0.75·0.5 + 0.25·(−1) = 0.125, target v = ε − x0 = −1.5; a model
    returning 2·x_t predicts 0.25, so the loss is (0.25 + 1.5)² = 3.0625; the network sees t·T = 250."""
    x0, noise, t = torch.full((1, 1, 2, 2, 2), 0.5), torch.full((1, 1, 2, 2, 2), -1.0), torch.tensor([0.25])
    model = _Counting(lambda x, tn: 2.0 * x)
    loss = flow.training_loss(model, x0, t, noise, T)
    assert loss.item() == pytest.approx(3.0625, rel=1e-6)
    assert model.times[0].dtype == torch.float32 and model.times[0].tolist() == [250.0]
    # Two samples with their own t: the mean of each sample's squared error.
    x0 = torch.stack([torch.full((1, 2), 0.5), torch.full((1, 2), -0.2)])
    noise = torch.stack([torch.full((1, 2), -1.0), torch.full((1, 2), 0.4)])
    t = torch.tensor([0.25, 0.5])
    zero = lambda x, tn: torch.zeros_like(x)  # noqa: E731  predicts 0: loss = mean (ε − x0)²
    assert flow.training_loss(zero, x0, t, noise, T).item() == pytest.approx((1.5**2 + 0.6**2) / 2, rel=1e-6)
    # The training stage dispatches the flow objective to this loss.
    assert objective_loss("flow", make_schedule(T), zero, x0, t, noise).item() == pytest.approx(1.305, rel=1e-6)


def test_interpolation_endpoints_and_the_velocity_it_implies():
    x0, noise = _randn(0), _randn(1)
    assert torch.equal(flow.interpolate(x0, torch.zeros(2), noise), x0)
    assert torch.equal(flow.interpolate(x0, torch.ones(2), noise), noise)
    t = torch.tensor([0.3, 0.8])
    x_t = flow.interpolate(x0, t, noise)
    v = flow.velocity(x0, noise)
    tt = t.reshape(2, 1, 1, 1, 1)
    torch.testing.assert_close(x_t - tt * v, x0)  # x̂0 = x_t − t·v
    torch.testing.assert_close(x_t + (1 - tt) * v, noise)  # ε̂ = x_t + (1 − t)·v


def _dkw_bound(n, alpha=1e-9):
    """Dvoretzky–Kiefer–Wolfowitz (Massart's constant): P(sup|F_n − F| > ε) ≤ 2·exp(−2nε²) = alpha."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def _ks(draws, cdf):
    x = np.sort(draws.double().numpy())
    f = cdf(x)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def _logit_normal_cdf(m, s):
    from scipy.stats import norm

    return lambda t: norm.cdf((np.log(t) - np.log1p(-t) - m) / s)


@pytest.mark.parametrize("distribution, location, scale", [
    ("uniform", 0.0, 1.0), ("logit_normal", 0.0, 1.0), ("logit_normal", 0.5, 0.7)])
def test_t_draws_follow_their_distribution(distribution, location, scale):
    """Kolmogorov–Smirnov distance of 50,000 draws (fixed seed) to the target CDF, below the DKW bound at
    α = 1e-9 (≈ 0.015); the same draws are far from the other distribution, so the test can fail."""
    n = 50_000
    draws = flow.draw_t(n, distribution, location=location, scale=scale, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and draws.shape == (n,) and 0 <= draws.min() and draws.max() < 1
    uniform = lambda t: t  # noqa: E731
    cdf = uniform if distribution == "uniform" else _logit_normal_cdf(location, scale)
    other = _logit_normal_cdf(location, scale) if distribution == "uniform" else uniform
    bound = _dkw_bound(n)
    assert _ks(draws, cdf) < bound
    assert _ks(draws, other) > 3 * bound


def test_training_draws_use_the_configured_t_distribution():
    """draw_noise, the training stage's draws: float flow times for the flow objective from diffusion.flow_t
    (KS against the logit-normal CDF with the DKW bound), and the ε objective's integer timesteps unchanged."""
    n = 4000
    cfg = DiffusionConfig(objective="flow", flow_t="logit_normal", flow_t_location=-1.0, flow_t_scale=0.5)
    t, noise = draw_noise(3, 7, range(n), (1,), cfg)
    assert t.dtype == torch.float32 and noise.shape == (n, 1)
    assert _ks(t, _logit_normal_cdf(-1.0, 0.5)) < _dkw_bound(n)
    t_eps, noise_eps = draw_noise(3, 7, range(5), (1,), DiffusionConfig())
    assert t_eps.dtype == torch.int64 and 0 <= t_eps.min() and t_eps.max() < T
    t_uni, _ = draw_noise(3, 7, range(n), (1,), DiffusionConfig(objective="flow", flow_t="uniform"))
    assert _ks(t_uni, lambda x: x) < _dkw_bound(n)
    with pytest.raises(ValueError, match="diffusion.flow_t='beta' must be one of logit_normal, uniform"):
        flow.draw_t(3, "beta")


# ---------------------------------------------------------------- step functions by hand


def test_flow_time_grid_and_network_evaluations():
    assert flow_time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert flow_time_grid(1) == [1.0, 0.0]
    assert network_evaluations("euler", 30, T) == 30 and network_evaluations("heun", 15, T) == 29
    assert network_evaluations("heun", 1, T) == 1 and network_evaluations("euler", None, T) == T
    assert network_evaluations("heun", None, 50) == 99
    assert network_evaluations("ddpm", None, T) == T and network_evaluations("ddim", 50, T) == 50
    assert network_evaluations("dpmpp", 25, T) == 25
    for sampler, steps, match in (("heun", 0, r"\[1, 1000\]"), ("euler", 1001, r"\[1, 1000\]"),
                                  ("dpmpp", None, r"\[1, 999\] for dpmpp"), ("plms", 10, "sampler must be one of")):
        with pytest.raises(ValueError, match=match):
            network_evaluations(sampler, steps, T)


def test_clipping_keeps_x_t_and_moves_x0_into_range():
    """clip_velocity: x̂0 = x_t − t·v is clamped, v re-derived as (x_t − x̂0)/t; unchanged where x̂0 is in
    range, and an Euler step to t = 0 then lands on the clamped x̂0."""
    x_t, v = 2.0 * _randn(3, dtype=torch.float64), -2.0 * _randn(4, dtype=torch.float64)
    t = 0.6
    x0 = x_t - t * v
    assert (x0.abs() > 1).double().mean() > 0.3
    clipped = clip_velocity(v, t, x_t)
    torch.testing.assert_close(x_t - t * clipped, x0.clamp(-1, 1))
    inside = x0.abs() <= 1
    torch.testing.assert_close(clipped[inside], v[inside])
    torch.testing.assert_close(euler_step(v, t, 0.0, x_t), x0.clamp(-1, 1))
    torch.testing.assert_close(euler_step(v, t, 0.0, x_t, clip=False), x0)
    # Heun clips both velocities, each at its own point and time.
    x_e = euler_step(v, t, 0.2, x_t)
    v2 = _randn(5, dtype=torch.float64)
    want = x_t + (0.2 - t) * 0.5 * (clipped + clip_velocity(v2, 0.2, x_e))
    torch.testing.assert_close(heun_step(v, v2, t, 0.2, x_t, x_e), want)


def test_step_argument_errors():
    x = _randn(0)
    with pytest.raises(ValueError, match="0 <= t_next < t <= 1"):
        euler_step(x, 0.5, 0.5, x)
    with pytest.raises(ValueError, match="0 <= t_next < t <= 1"):
        euler_step(x, 1.5, 0.5, x)
    with pytest.raises(ValueError, match="the step to t = 0 is an Euler step"):
        heun_step(x, x, 0.5, 0.0, x, x)
    with pytest.raises(ValueError, match=r"t must be in \(0, 1\]"):
        clip_velocity(x, 0.0, x)


# ---------------------------------------------------------------- diffusers, step by step and full loop
# diffusers' FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler with shift = 1 use the same path
# x_t = (1 − σ)·x0 + σ·ε, a velocity model output and the model time σ·num_train_timesteps; they never clip,
# so ours runs with clip=False. Their default grid is linspace(1, 1/num_train_timesteps, n), then 0.


def _diffusers():
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize("n", [1, 4, 20])
def test_euler_step_matches_diffusers_on_its_grid(n):
    d = _diffusers()
    ref = d.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    ref.set_timesteps(n)
    sigmas = [float(s) for s in ref.sigmas]
    assert len(ref.timesteps) == n == network_evaluations("euler", n, T) and sigmas[-1] == 0.0
    x_ref = x_ours = _randn(1)
    for i, timestep in enumerate(ref.timesteps):
        assert timestep.item() == flow.network_time(torch.tensor([sigmas[i]]), T).item()
        v = fake_velocity(x_ref, timestep.reshape(1))
        x_ref = ref.step(v, timestep, x_ref).prev_sample
        x_ours = euler_step(fake_velocity(x_ours, timestep.reshape(1)), sigmas[i], sigmas[i + 1], x_ours, clip=False)
        # float32 on both sides: a few ulp of |x| ≲ 4 per step
        torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=1e-5 * (i + 1), msg=f"step {i}")


@pytest.mark.parametrize("n", [1, 3, 12])
def test_heun_step_matches_diffusers_on_its_grid(n):
    """diffusers' Heun calls step twice per interval (predictor, corrector) except on the last, to σ = 0:
    2n − 1 evaluations, the count network_evaluations gives."""
    d = _diffusers()
    ref = d.FlowMatchHeunDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    ref.set_timesteps(n)
    assert len(ref.timesteps) == network_evaluations("heun", n, T)
    x_ref = _randn(2)
    for timestep in ref.timesteps:
        x_ref = ref.step(fake_velocity(x_ref, timestep.reshape(1)), timestep, x_ref).prev_sample
    grid = [float(s) for s in ref.timesteps[::2] / T] + [0.0]  # σ_0 … σ_{n−1}, then 0
    x = _randn(2)
    for t, t_next in zip(grid, grid[1:]):
        v = fake_velocity(x, torch.tensor([t * T]))
        x_e = euler_step(v, t, t_next, x, clip=False)
        x = heun_step(v, fake_velocity(x_e, torch.tensor([t_next * T])), t, t_next, x, x_e, clip=False) \
            if t_next > 0 else x_e
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5 * n)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_full_loop_matches_diffusers(sampler):
    """With num_train_timesteps = T = n, diffusers' default grid linspace(1, 1/n, n) is ours for steps = n
    (steps null = T), and both pass the model σ·T: the same x_1 gives the same volume."""
    d = _diffusers()
    n = 20
    model = _Counting(fake_velocity)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    ours = sample(model, make_schedule(n), SHAPE, [gen()], sampler=sampler, objective="flow", clip=False)
    assert model.calls == network_evaluations(sampler, None, n)

    cls = d.FlowMatchEulerDiscreteScheduler if sampler == "euler" else d.FlowMatchHeunDiscreteScheduler
    ref = cls(num_train_timesteps=n, shift=1.0)
    ref.set_timesteps(n)
    x = torch.randn((1, *SHAPE), generator=gen())
    for timestep in ref.timesteps:
        x = ref.step(fake_velocity(x, timestep.reshape(1)), timestep, x).prev_sample
    assert len(ref.timesteps) == model.calls
    torch.testing.assert_close(torch.cat(model.times), ref.timesteps.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, x.clamp(-1, 1), rtol=0, atol=1e-5 * n)


# ---------------------------------------------------------------- closed form: Gaussian data
# Data x0 ~ N(μ, σ²) per voxel, ε ~ N(0, 1): x_t ~ N(m_t, V_t) with m_t = (1 − t)μ, V_t = (1 − t)²σ² + t²,
# and the exact velocity field is E[ε − x0 | x_t] = −μ + c_t·(x_t − m_t) with c_t = (t − (1 − t)σ²)/V_t.
# The ODE maps x_1 = z to m_t + √V_t·z, so x_0 = μ + σ·z: N(0, 1) noise goes to N(μ, σ²) exactly. A solver on
# this linear field keeps x_k = m_{t_k} + a_k·z (the mean is exact at every step) with a float gain a_k whose
# error |a_n − σ| is the solver's global error: O(h) for Euler, O(h²) for Heun, h = 1/steps.

MU, SIGMA = 0.3, 0.2


def gaussian_velocity(x, t):
    """The exact velocity of N(MU, SIGMA²) data at flow time t (x: any shape, t: a float)."""
    v_t = (1 - t) ** 2 * SIGMA**2 + t**2
    return -MU + (t - (1 - t) * SIGMA**2) / v_t * (x - (1 - t) * MU)


class _GaussianOracle(torch.nn.Module):
    def __init__(self, timesteps):
        super().__init__()
        self.timesteps = timesteps

    def forward(self, x, t_net):
        t = (t_net.double() / self.timesteps).reshape(-1, *([1] * (x.ndim - 1)))
        return gaussian_velocity(x.double(), t).to(x.dtype)


def _gain(sampler, steps):
    """a_n: the gain of the discrete chain, propagated through each step of the linear field in float64."""
    c = lambda t: (t - (1 - t) * SIGMA**2) / ((1 - t) ** 2 * SIGMA**2 + t**2)  # noqa: E731
    grid = [1 - i / steps for i in range(steps)] + [0.0]
    a = 1.0
    for t, t_next in zip(grid, grid[1:]):
        h = t_next - t
        if sampler == "heun" and t_next > 0:
            a *= 1 + h / 2 * (c(t) + c(t_next) * (1 + h * c(t)))
        else:
            a *= 1 + h * c(t)
    return a


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_gaussian_transport_error_shrinks_with_the_solver_order(sampler):
    """The step functions on z ~ N(0, 1) (float64): the output is μ + a_n·z (mean transported exactly, std
    a_n·std(z)), and the std error |a_n − σ| halves (Euler, first order) or quarters (Heun, second order)
    when the steps double, within 10 % once h is small (32 → 64 → 128 steps)."""
    z = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (32, 64, 128):
        x, grid = z.clone(), flow_time_grid(steps)
        for t, t_next in zip(grid, grid[1:]):
            v = gaussian_velocity(x, t)
            x_e = euler_step(v, t, t_next, x)
            x = heun_step(v, gaussian_velocity(x_e, t_next), t, t_next, x, x_e) \
                if sampler == "heun" and t_next > 0 else x_e
        a = _gain(sampler, steps)
        torch.testing.assert_close(x, MU + a * z, rtol=0, atol=1e-12)
        assert (x.mean() - MU).item() == pytest.approx(a * z.mean().item(), abs=1e-12)
        assert (x.std() / z.std()).item() == pytest.approx(a, rel=1e-12)
        errors.append(abs(a - SIGMA))
    order = 1 if sampler == "euler" else 2
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine == pytest.approx(2**order, rel=0.1)
    assert errors[-1] < (0.02 if order == 1 else 2e-4)  # 128 steps: 1 % (Euler), 0.06 % (Heun) of σ


def test_heun_beats_euler_at_equal_network_evaluations():
    """Gaussian data: Heun with n steps (2n − 1 evaluations) lands closer to σ than Euler with 2n steps once
    h is small (n >= 16), and its lead doubles with n (O(h) against O(h²))."""
    lead = []
    for n in (16, 32, 64):
        heun, euler = abs(_gain("heun", n) - SIGMA), abs(_gain("euler", 2 * n) - SIGMA)
        assert heun < euler
        lead.append(euler / heun)
    for coarse, fine in zip(lead, lead[1:]):
        assert fine / coarse == pytest.approx(2, rel=0.15)


@pytest.mark.parametrize("sampler, steps", [("euler", 10), ("heun", 10), ("heun", 3)])
def test_sample_transports_gaussian_noise(sampler, steps):
    """The sampling loop (float32 chain, network time t·T, clipping on) returns μ + a_n·x_1 voxel by voxel,
    clamped to [−1, 1] like every sample (heun-10 has two voxels beyond), x_1 the noise drawn from the
    sample's generator."""
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    shape = (1, 16, 16, 16)
    out = sample(_GaussianOracle(T), make_schedule(T), shape, gens, sampler=sampler, steps=steps, objective="flow")
    z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    want = MU + _gain(sampler, steps) * z
    # float32: a few ulp of |x| ≤ 5 per step and evaluation
    torch.testing.assert_close(out, want.clamp(-1, 1), rtol=0, atol=1e-5 * steps)


# ---------------------------------------------------------------- the loop: costs, refusals, batches


@pytest.mark.parametrize("sampler, steps", [("euler", 1), ("euler", 7), ("heun", 1), ("heun", 5)])
def test_network_evaluations_count_the_model_calls(sampler, steps):
    model = _Counting(lambda x, t: 0.1 * x)
    sample(model, make_schedule(T), SHAPE, [torch.Generator().manual_seed(0)], sampler=sampler, steps=steps,
           objective="flow")
    assert model.calls == network_evaluations(sampler, steps, T)
    want = [t * T for t in flow_time_grid(steps)[:-1]]
    if sampler == "heun":  # predictor at t_i, corrector at t_{i+1}, none at t = 0
        want = [w for t in want for w in (t, t - T / steps)][:-1]
    assert [round(x.item(), 3) for x in model.times] == [round(w, 3) for w in want]


def test_sample_refuses_samplers_that_do_not_fit_the_objective():
    s, gen = make_schedule(T), [torch.Generator().manual_seed(0)]
    model = _Counting(lambda x, t: x)
    with pytest.raises(ValueError, match=r"sampler='ddim' cannot sample a diffusion.objective='flow' model "
                                         r"\(it samples eps and v models\); allowed samplers for flow: euler, heun"):
        sample(model, s, SHAPE, gen, sampler="ddim", steps=10, objective="flow")
    with pytest.raises(ValueError, match=r"sampler='euler' cannot sample a diffusion.objective='eps' model "
                                         r"\(it samples flow models\); allowed samplers for eps: ddpm, ddim, dpmpp"):
        sample(model, s, SHAPE, gen, sampler="euler", steps=10)
    assert model.calls == 0


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_flow_sample_is_batch_independent(sampler):
    torch.manual_seed(0)
    model = UNet3D(channels=(8, 16), res_blocks=1, groups=4).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    kw = dict(sampler=sampler, steps=4, objective="flow")
    pair = sample(model, make_schedule(T), (1, 8, 8, 8), [g(1), g(2)], **kw)
    alone = sample(model, make_schedule(T), (1, 8, 8, 8), [g(2)], **kw)
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(pair[0], pair[1]) and pair.abs().max() <= 1.0
