"""The forward process against closed forms computed here, independently, in float64."""

import math

import numpy as np
import pytest
import torch

from ctdiff.diffusion.schedule import (
    Schedule,
    eps_from_v,
    eps_from_x0,
    extract,
    make_schedule,
    predict_x0,
    q_posterior,
    q_sample,
    training_loss,
    v_from_eps,
)

T = 1000


@pytest.fixture(scope="module")
def s() -> Schedule:
    return make_schedule(T, "linear", 1e-4, 0.02)


def test_tables_are_float64_read_only(s):
    assert s.timesteps == T
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef2"):
        table = getattr(s, name)
        assert table.dtype == np.float64 and table.shape == (T,)
        with pytest.raises(ValueError):
            table[0] = 0.5


def test_linear_betas_and_cumprod_values(s):
    assert s.betas[0] == pytest.approx(1e-4, abs=0) and s.betas[-1] == pytest.approx(0.02, abs=1e-18)
    # ᾱ_t from the closed form exp(Σ log(1 − β_s)), not from cumprod.
    expected = np.exp(np.cumsum(np.log1p(-np.linspace(1e-4, 0.02, T))))
    np.testing.assert_allclose(s.alphas_cumprod, expected, rtol=1e-12)
    assert s.alphas_cumprod[0] == pytest.approx(1 - 1e-4, rel=1e-15)
    assert s.alphas_cumprod[-1] == pytest.approx(4.035e-5, rel=1e-3)  # nearly pure noise at t = T−1
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, 1.0, rtol=1e-14)


def test_cosine_schedule():
    c = make_schedule(T, "cosine")
    assert np.all(np.diff(c.alphas_cumprod) < 0)
    assert np.all((c.betas > 0) & (c.betas <= 0.999))
    # Nichol & Dhariwal eq. 17 at t = T/2 (1-based step 500 is row 499).
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert c.alphas_cumprod[T // 2 - 1] == pytest.approx(f(0.5) / f(0.0), rel=1e-10)


def test_make_schedule_errors():
    with pytest.raises(ValueError, match="'linear', 'cosine'"):
        make_schedule(10, "quadratic")
    with pytest.raises(ValueError, match="timesteps"):
        make_schedule(1)
    with pytest.raises(ValueError, match="beta_start"):
        make_schedule(10, beta_start=0.1, beta_end=0.01)


def test_extract_broadcasts_any_rank(s):
    t = torch.tensor([0, 999, 500])
    for ndim in (2, 3, 5):
        out = extract(s.alphas_cumprod, t, ndim)
        assert out.shape == (3,) + (1,) * (ndim - 1) and out.dtype == torch.float32
        np.testing.assert_allclose(out.flatten().numpy(), s.alphas_cumprod[[0, 999, 500]], rtol=1e-7)


def test_q_sample_moments_match_eq4(s):
    n, x0_value = 200_000, 0.7
    for t_value in (0, 100, 999):
        t = torch.full((n,), t_value)
        x0 = torch.full((n, 1), x0_value)
        noise = torch.randn((n, 1), generator=torch.Generator().manual_seed(t_value))
        x_t = q_sample(s, x0, t, noise).double()
        a = s.alphas_cumprod[t_value]
        var = 1 - a
        assert x_t.mean().item() == pytest.approx(math.sqrt(a) * x0_value, abs=5 * math.sqrt(var / n) + 1e-6)
        assert x_t.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))


def test_q_posterior_matches_bayes(s):
    """q(x_{t−1} | x_t, x0) ∝ q(x_t | x_{t−1}) · q(x_{t−1} | x0): a product of two Gaussians in x_{t−1}."""
    rng = np.random.default_rng(0)
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    for t in (1, 2, 10, 500, 999):
        x0, x_t = rng.uniform(-1, 1, (2, 4, 3))
        # Prior from q(x_{t−1} | x0) = N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}).
        prior_prec = 1 / (1 - abar[t - 1])
        # Likelihood q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t), as a Gaussian in x_{t−1}.
        lik_prec = (1 - betas[t]) / betas[t]
        var = 1 / (prior_prec + lik_prec)
        mean = var * (prior_prec * math.sqrt(abar[t - 1]) * x0 + lik_prec * x_t / math.sqrt(1 - betas[t]))

        tb = torch.full((4,), t)
        got_mean, got_var, got_logvar = q_posterior(s, torch.tensor(x0), torch.tensor(x_t), tb)
        np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        assert got_var.shape == (4, 1)
        np.testing.assert_allclose(got_var.flatten().numpy(), var, rtol=1e-6)
        np.testing.assert_allclose(got_logvar.flatten().numpy(), math.log(var), rtol=1e-6)
        assert s.posterior_variance[t] == pytest.approx(var, rel=1e-12)


def test_q_posterior_at_t0_is_x0(s):
    x0, x_t = torch.randn(2, 3, 2, 2, 2)
    mean, var, logvar = q_posterior(s, x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert torch.all(var == 0) and torch.all(torch.isfinite(logvar))
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_predict_x0_and_eps_invert_q_sample(s):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((3, 1, 4, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 400, 999])
    x_t = q_sample(s, x0, t, noise)
    torch.testing.assert_close(predict_x0(s, x_t, t, noise), x0, atol=2e-3, rtol=0)
    torch.testing.assert_close(eps_from_x0(s, x_t, t, x0), noise, atol=2e-3, rtol=0)


def test_training_loss_oracle_zero_model_and_determinism(s):
    x0 = torch.rand((1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(3)) * 2 - 1
    batch = x0.expand(64, -1, -1, -1, -1)
    seen = []

    def oracle(x_t, t):
        # For a data set of the single point x0, the optimal ε-predictor is exact.
        seen.append(t)
        assert t.dtype == torch.long and t.shape == (64,)
        return eps_from_x0(s, x_t, t, batch)

    loss = training_loss(s, oracle, batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() < 1e-6
    assert 0 <= seen[0].min() and seen[0].max() < T

    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    loss0 = training_loss(s, zero, batch, generator=torch.Generator().manual_seed(0))
    assert loss0.item() == pytest.approx(1.0, abs=0.05)  # E[ε²] = 1
    again = training_loss(s, zero, batch, generator=torch.Generator().manual_seed(0))
    assert again.item() == loss0.item()


def test_v_objective_by_hand_and_its_inverse(s):
    """v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho 2022), checked at t = 499 against numbers computed here in float64;
    eps_from_v inverts it given x_t; the v loss of a zero model is the mean of v²."""
    t = torch.tensor([499])
    a = float(np.prod(1 - np.linspace(1e-4, 0.02, T)[:500]))  # ᾱ_499, rebuilt here
    x0, noise = torch.full((1, 1, 2, 2, 2), 0.5, dtype=torch.float64), torch.full((1, 1, 2, 2, 2), -1.0, dtype=torch.float64)
    v = v_from_eps(s, x0, t, noise)
    want = math.sqrt(a) * -1.0 - math.sqrt(1 - a) * 0.5
    torch.testing.assert_close(v, torch.full_like(x0, want), rtol=1e-6, atol=0)
    x_t = q_sample(s, x0, t, noise)
    torch.testing.assert_close(eps_from_v(s, x_t, t, v), noise, rtol=0, atol=1e-6)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    loss = training_loss(s, zero, x0.float(), objective="v", t=t, noise=noise.float())
    assert loss.item() == pytest.approx(want**2, rel=1e-5)
    assert training_loss(s, zero, x0.float(), t=t, noise=noise.float()).item() == pytest.approx(1.0)  # eps: E[ε²]
    with pytest.raises(ValueError, match="this loss trains eps or v"):
        training_loss(s, zero, x0.float(), objective="flow", t=t, noise=noise.float())


def test_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ours = make_schedule(T, "linear", 1e-4, 0.02)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=2e-5)
    cos = make_schedule(T, "cosine")
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(cos.betas, ref.betas.double().numpy(), rtol=1e-5, atol=1e-7)



def test_cosine_schedule_matches_diffusers_within_float32_rounding():
    """``beta_schedule="cosine"`` against diffusers' ``squaredcos_cap_v2``, with a bound derived here rather than
    read off one machine. diffusers evaluates the same formula in float64 (Python floats), rounds the betas to
    float32, then forms ``α = 1 − β`` and ``ᾱ`` with ``torch.cumprod`` in float32; ours stay in float64. With
    ``u = 2⁻²⁴`` (float32's unit roundoff):

    - ``β₃₂ = β (1 + e)``, ``|e| ≤ u``: so ``|β₃₂ − β| ≤ u·β``.
    - ``α₃₂ = fl(1 − β₃₂) = α (1 − e β/α)(1 + e')``: a relative error of at most ``u·β/α + u`` per factor
      (large only where β is near its 0.999 cap).
    - the running product adds one rounding ``(1 + e'')`` per multiplication, ``t`` of them for ``ᾱ_t``.

    So ``|ᾱ₃₂,t / ᾱ_t − 1| ≤ exp(Σ_{s≤t} (u·β_s/α_s + u) + t·u) − 1`` (``|Π(1 + x_i) − 1| ≤ exp(Σ|x_i|) − 1``).
    The two float64 evaluations differ by under 1e-12 (checked below), four orders below ``u``; 1e-11 covers them.
    """
    diffusers = pytest.importorskip("diffusers")
    u = 2.0**-24
    ours = make_schedule(T, "cosine")
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    ref_betas, ref_cumprod = ref.betas.double().numpy(), ref.alphas_cumprod.double().numpy()
    assert ref.betas.dtype == ref.alphas_cumprod.dtype == torch.float32  # the premise of the bound

    # the float64 formula itself (Nichol & Dhariwal eq. 17, as diffusers writes it) agrees far below u
    f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    exact = np.minimum([1 - f[i + 1] / f[i] for i in range(T)], 0.999)
    assert np.max(np.abs(ours.betas - exact)) < 1e-12
    assert ours.betas[-1] == 0.999 and ours.betas[0] < 1e-4  # the cap is reached, and the start is gentle

    assert np.all(np.abs(ref_betas - ours.betas) <= u * ours.betas + 1e-11)
    betas, alphas = ours.betas, ours.alphas
    per_factor = np.cumsum(u * betas / alphas + u) + u * np.arange(T)
    bound = np.expm1(per_factor) + 1e-11
    rel = np.abs(ref_cumprod / ours.alphas_cumprod - 1)
    assert np.all(rel <= bound), (rel / bound).max()
    # the bound is not vacuous: under 2e-4 relative even at the last step, where β/α = 999, and a cosine offset
    # other than Nichol & Dhariwal's s = 0.008 falls far outside it
    assert bound.max() < 2e-4
    g = [math.cos((i / T + 0.009) / 1.009 * math.pi / 2) ** 2 for i in range(T + 1)]
    other = np.cumprod(1 - np.minimum([1 - g[i + 1] / g[i] for i in range(T)], 0.999))
    assert not np.all(np.abs(ref_cumprod / other - 1) <= bound)

def test_extract_copies_a_table_to_its_device_once_and_forgets_it_with_the_table(monkeypatch):
    """A copy per call was a blocking host-to-device copy at every step on a GPU."""
    import gc

    from ctdiff.diffusion import schedule as module

    s = make_schedule(50)
    t = torch.tensor([0, 7, 49])
    calls, real = [], torch.tensor
    monkeypatch.setattr(module.torch, "tensor", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        got = module.extract(s.sqrt_alphas_cumprod, t, 5)
        assert got.shape == (3, 1, 1, 1, 1)
        np.testing.assert_allclose(got.flatten().numpy(), s.sqrt_alphas_cumprod[[0, 7, 49]].astype(np.float32))
    module.extract(s.betas, t, 2)
    assert len(calls) == 2  # one copy per table
    keys = [k for k in module._DEVICE_TABLES if k[0] in (id(s.betas), id(s.sqrt_alphas_cumprod))]
    assert len(keys) == 2
    del s, got
    gc.collect()
    assert not any(k in module._DEVICE_TABLES for k in keys)
