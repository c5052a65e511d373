"""Samplers against closed forms, against diffusers (an independent implementation), and for
batch independence."""

import math

import numpy as np
import pytest
import torch

from ctdiff.diffusion.samplers import ddim_step, ddpm_step, timestep_sequence
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import eps_from_x0, make_schedule, q_sample, v_from_eps
from ctdiff.model.unet import UNet3D

T = 1000
SHAPE = (1, 4, 4, 4)


@pytest.fixture(scope="module")
def s():
    return make_schedule(T, "linear", 1e-4, 0.02)


def _randn(seed, shape=(2, *SHAPE)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- timestep_sequence


def test_timestep_sequence():
    assert timestep_sequence("ddpm", 10, 10) == list(range(9, -1, -1))
    seq = timestep_sequence("ddim", 50, 1000)
    assert len(seq) == 50 and seq[0] == 999 and seq[-1] == 0
    assert all(a > b for a, b in zip(seq, seq[1:]))
    assert timestep_sequence("ddim", 28, 1000) == list(range(999, -1, -37))
    assert timestep_sequence("ddim", 1000, 1000) == timestep_sequence("ddpm", 1000, 1000)
    assert timestep_sequence("ddim", 1, 1000) == [999]
    for steps in range(2, 38):
        seq = timestep_sequence("ddim", steps, 37)
        assert len(set(seq)) == steps and seq[0] == 36 and seq[-1] == 0


def test_timestep_sequence_errors():
    with pytest.raises(ValueError, match=r"'ddpm', 'ddim'"):
        timestep_sequence("plms", 10, 100)
    with pytest.raises(ValueError, match=r"euler integrates the flow ODE"):
        timestep_sequence("euler", 10, 100)
    for bad in (0, 101, -3):
        with pytest.raises(ValueError, match=r"\[1, 100\]"):
            timestep_sequence("ddim", bad, 100)
    with pytest.raises(ValueError, match=r"\[1, 99\] for dpmpp"):
        timestep_sequence("dpmpp", 100, 100)
    with pytest.raises(ValueError, match="must be 100"):
        timestep_sequence("ddpm", 50, 100)


def test_step_argument_errors(s):
    x = _randn(0)
    with pytest.raises(ValueError, match="t must be in"):
        ddpm_step(s, x, T, x, x)
    with pytest.raises(ValueError, match="needs noise"):
        ddpm_step(s, x, 5, x, None)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(s, x, 10, 10, x, None)
    with pytest.raises(ValueError, match="needs noise"):
        ddim_step(s, x, 10, 5, x, None, eta=1.0)


# ---------------------------------------------------------------- closed forms (no diffusers)


def test_ddim_step_moves_along_the_same_noise(s):
    """With the exact ε of a single data point x0, DDIM (η = 0) maps q_sample(x0, t, ε) to
    q_sample(x0, t_prev, ε): the deterministic trajectory keeps its noise (Song et al. eq. 12)."""
    x0 = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    eps = _randn(1)
    for t, t_prev in ((999, 979), (500, 100), (37, 0), (20, -1)):
        x_t = q_sample(s, x0, torch.full((2,), t), eps)
        got = ddim_step(s, eps, t, t_prev, x_t, None)
        a_prev = s.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
        want = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_ddpm_step_is_the_posterior(s):
    """x_{t−1} = μ̃_t(x0, x_t) + √β̃_t · z with the true x0, and exactly x0 at t = 0 (Ho et al. eq. 7)."""
    x0 = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps, z = _randn(1), _randn(2)
    for t in (999, 300, 1, 0):
        x_t = q_sample(s, x0, torch.full((2,), t), eps)
        got = ddpm_step(s, eps, t, x_t, z)
        abar, abar_prev, beta = s.alphas_cumprod[t], s.alphas_cumprod_prev[t], s.betas[t]
        mean = (math.sqrt(abar_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - abar_prev) * x_t) / (1 - abar)
        std = math.sqrt(beta * (1 - abar_prev) / (1 - abar))
        torch.testing.assert_close(got, mean + std * z, atol=5e-4, rtol=0)


def test_ddim_clipping_rederives_eps(s):
    """Clipped DDIM (η = 0) moves x_t along the noise consistent with the clipped x0,
    ε' = (x_t − √ᾱ_t clip(x̂0)) / √(1 − ᾱ_t); keeping the raw ε instead returns noise."""
    x_t = 2.0 * _randn(3).double()
    eps = -_randn(4).double()  # most predicted x0 fall far outside [-1, 1]
    for t, t_prev in ((999, 949), (600, 300), (50, 10)):
        a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
        x0 = ((x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
        assert (x0.abs() == 1).float().mean() > 0.3
        eps_clipped = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        want = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps_clipped
        got = ddim_step(s, eps.float(), t, t_prev, x_t.float(), None)
        torch.testing.assert_close(got.double(), want, atol=5e-4, rtol=1e-4)


class _Oracle(torch.nn.Module):
    """The optimal ε-predictor for a data set of one point: ε = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t)."""

    def __init__(self, s, x0):
        super().__init__()
        self.s, self.x0 = s, x0

    def forward(self, x_t, t):
        return eps_from_x0(self.s, x_t, t, self.x0.expand_as(x_t))


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 50, 0.0), ("ddim", 20, 1.0)])
def test_sample_recovers_single_data_point(s, sampler, steps, eta):
    x0 = torch.rand((1, *SHAPE), generator=torch.Generator().manual_seed(5)) * 1.8 - 0.9
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = sample(_Oracle(s, x0), s, SHAPE, gens, sampler=sampler, steps=steps, eta=eta)
    assert out.shape == (3, *SHAPE)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=0)


class _GaussianOracle(torch.nn.Module):
    """Exact ε-predictor for data x0 ~ N(0, σ_d² I): E[ε | x_t] = √(1 − ᾱ) x_t / (ᾱ σ_d² + 1 − ᾱ)."""

    def __init__(self, s, sigma_d):
        super().__init__()
        self.abar, self.var = torch.tensor(s.alphas_cumprod), sigma_d**2

    def forward(self, x_t, t):
        a = self.abar[t].float().reshape(-1, *([1] * (x_t.ndim - 1)))
        return (1 - a).sqrt() * x_t / (a * self.var + 1 - a)


def _linear_gaussian_variance(sampler, seq, sigma_d2):
    """Var(x0) after sampling N(0, σ_d²) data with its exact ε-predictor, by propagating the variance
    through each (linear-in-x_t) update in float64, with the betas rebuilt here."""
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    v = 1.0  # x_T ~ N(0, 1)
    for i, t in enumerate(seq):
        a = abar[t]
        v_t = a * sigma_d2 + 1 - a  # marginal variance of x_t under the data distribution
        x0_gain = math.sqrt(a) * sigma_d2 / v_t  # E[x0 | x_t] = x0_gain · x_t
        eps_gain = math.sqrt(1 - a) / v_t  # E[ε | x_t] = eps_gain · x_t
        if sampler == "ddpm":
            a_prev = abar[t - 1] if t > 0 else 1.0
            k = (math.sqrt(a_prev) * betas[t] * x0_gain + math.sqrt(1 - betas[t]) * (1 - a_prev)) / (1 - a)
            v = k * k * v + betas[t] * (1 - a_prev) / (1 - a)
        else:
            a_prev = abar[seq[i + 1]] if i + 1 < len(seq) else 1.0
            k = math.sqrt(a_prev) * x0_gain + math.sqrt(1 - a_prev) * eps_gain
            v = k * k * v
    return v


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 1000), ("ddim", 50), ("ddim", 10)])
def test_sample_variance_of_gaussian_data(s, sampler, steps):
    """Sampling N(0, σ_d²) with its exact ε-predictor: the sample variance equals the analytic value of
    the discrete chain (≈ σ_d² with every step; DDIM under-disperses with few steps: 0.075 at 50, 0.033 at 10)."""
    sigma_d = 0.3
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample(_GaussianOracle(s, sigma_d), s, (1, 16, 16, 16), gens, sampler=sampler, steps=steps)
    want = _linear_gaussian_variance(sampler, timestep_sequence(sampler, steps or T, T), sigma_d**2)
    if steps in (None, 1000):
        # Within 3 %: the fixed-small DDPM variance β̃_t drops the uncertainty of x0 and under-disperses.
        assert want == pytest.approx(sigma_d**2, rel=0.03)
    assert abs(out.mean().item()) < 0.02
    assert out.var().item() == pytest.approx(want, rel=0.06)  # ~4 standard errors for 8192 voxels


# ---------------------------------------------------------------- batch independence


def test_sample_is_batch_independent(s):
    torch.manual_seed(0)
    model = UNet3D(channels=(8, 16), res_blocks=1, groups=4).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)  # the zero-initialised head would hide the model
    short = make_schedule(20)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    for sched, kw in ((short, dict(sampler="ddpm")), (s, dict(sampler="ddim", steps=8, eta=1.0))):
        pair = sample(model, sched, (1, 8, 8, 8), [g(1), g(2)], **kw)
        alone = sample(model, sched, (1, 8, 8, 8), [g(2)], **kw)
        assert pair.shape == (2, 1, 8, 8, 8) and alone.shape == (1, 1, 8, 8, 8)
        torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=0)
        assert not torch.allclose(pair[0], pair[1])
        assert pair.abs().max() <= 1.0


# ---------------------------------------------------------------- diffusers, step by step and full loop
# Matched conventions: linear betas 1e-4 … 0.02 over T = 1000, prediction_type='epsilon',
# clip_sample=True with clip_sample_range=1; DDPM variance_type='fixed_small' (σ² = β̃_t);
# DDIM set_alpha_to_one=True (ᾱ_prev = 1 after t = 0), steps_offset=0 and
# use_clipped_model_output=True (ε re-derived from the clipped x0, as ddim_step always does).


def _diffusers():
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_matches_diffusers(s, clip):
    d = _diffusers()
    ref = d.DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        variance_type="fixed_small", clip_sample=clip, prediction_type="epsilon",
    )
    for t in (999, 700, 250, 3, 1, 0):
        x_t, eps = 1.5 * _randn(10 + t), 1.5 * _randn(20 + t)  # wide enough that clipping happens
        z = _randn(30 + t)
        want = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(30 + t)).prev_sample
        got = ddpm_step(s, eps, t, x_t, z, clip=clip)
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(s, eta):
    d = _diffusers()
    ref = d.DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
    )
    ref.set_timesteps(50)  # diffusers steps from t to t − T // 50
    for t in (980, 500, 20, 0):
        x_t, eps, z = 1.5 * _randn(t), 1.5 * _randn(t + 1), _randn(t + 2)
        want = ref.step(eps, t, x_t, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
        got = ddim_step(s, eps, t, max(t - 20, -1), x_t, z, eta=eta)
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler,steps,eta", [("ddim", 28, 0.0), ("ddpm", None, 0.0)])
def test_v_prediction_loop_matches_diffusers(s, sampler, steps, eta):
    """A v-model through sample(objective="v") against diffusers' prediction_type="v_prediction" schedulers:
    the same volume from the same seed (diffusers turns v into x0 and ε itself, independently of eps_from_v)."""
    d = _diffusers()
    model, seed, common = _Dummy(), 7, dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02)
    ours = sample(model, s, SHAPE, [torch.Generator().manual_seed(seed)], sampler=sampler, steps=steps, eta=eta,
                  objective="v")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *SHAPE), generator=g)
    if sampler == "ddpm":
        ref = d.DDPMScheduler(**common, variance_type="fixed_small", clip_sample=True, prediction_type="v_prediction")
        for t in range(T - 1, -1, -1):
            x = ref.step(model(x, torch.tensor([t])), t, x, generator=g).prev_sample
    else:
        ref = d.DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                              prediction_type="v_prediction")
        ref.set_timesteps(27)
        for t in range(999, -1, -37):
            x = ref.step(model(x, torch.tensor([t])), t, x, eta=eta, use_clipped_model_output=True).prev_sample
    np.testing.assert_allclose(ours.numpy(), x.clamp(-1, 1).numpy(), atol=2e-4)


def test_v_prediction_oracle_recovers_the_data_point(s):
    """The exact v of a one-point data set, v = √ᾱ ε − √(1 − ᾱ) x0 with ε from x_t: DDIM lands on x0."""
    x0 = torch.rand((1, *SHAPE), generator=torch.Generator().manual_seed(5)) * 1.8 - 0.9

    def v_oracle(x_t, t):
        x0b = x0.expand_as(x_t)
        return v_from_eps(s, x0b, t, eps_from_x0(s, x_t, t, x0b))

    out = sample(v_oracle, s, SHAPE, [torch.Generator().manual_seed(0)], sampler="ddim", steps=50, objective="v")
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


class _Dummy(torch.nn.Module):
    """A deterministic, nonlinear stand-in for a denoiser."""

    def forward(self, x, t):
        return torch.tanh(1.3 * x + 0.5 * torch.sin(x.flip(-1))) * (0.5 + t.float().reshape(-1, 1, 1, 1, 1) / T)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 28, 0.0), ("ddim", 28, 1.0)])
def test_full_loop_matches_diffusers(s, sampler, steps, eta):
    """Same seed, same draw order (x_T first, then one draw per step that uses noise): same volume."""
    d = _diffusers()
    model, seed, common = _Dummy(), 7, dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02)
    ours = sample(model, s, SHAPE, [torch.Generator().manual_seed(seed)], sampler=sampler, steps=steps, eta=eta)

    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *SHAPE), generator=g)
    if sampler == "ddpm":
        ref = d.DDPMScheduler(**common, variance_type="fixed_small", clip_sample=True)
        for t in range(T - 1, -1, -1):
            x = ref.step(model(x, torch.tensor([t])), t, x, generator=g).prev_sample
    else:
        ref = d.DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True, steps_offset=0)
        ref.set_timesteps(27)  # T // 27 = 37, the spacing of our 28 steps 999, 962, …, 0
        for t in range(999, -1, -37):
            x = ref.step(model(x, torch.tensor([t])), t, x, eta=eta, use_clipped_model_output=True,
                         generator=g).prev_sample
    np.testing.assert_allclose(ours.numpy(), x.clamp(-1, 1).numpy(), atol=2e-4)


def test_noise_draws_match_fresh_per_sample_draws():
    """The batch's noise is each generator's own draw, written in place (pinned on a GPU): the same numbers as
    drawing every sample on its own, so a sample does not depend on its batch."""
    from ctdiff.diffusion.sampling import _randn

    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    got = _randn((2, 3, 4), gens, "cpu", torch.float32)
    want = torch.stack([torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    assert torch.equal(got, want)
    assert _randn((2, 3, 4), gens, "cpu", torch.bfloat16).dtype == torch.bfloat16
