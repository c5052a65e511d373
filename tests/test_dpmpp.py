"""DPM-Solver++(2M): checked against diffusers' DPMSolverMultistepScheduler and against an exact model."""
import pytest
import torch

from ctdiff.diffusion.samplers import dpmpp_2m_step, network_evaluations, timestep_sequence
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule


def fake_eps(x, t):
    """A smooth deterministic stand-in for a network: depends on x and t."""
    return 0.3 * torch.tanh(x) + 0.01 * torch.cos(torch.as_tensor(t, dtype=x.dtype) / 50.0)


@pytest.mark.parametrize("n_steps", [5, 12, 25])
def test_matches_diffusers_dpmsolver_multistep(n_steps):
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    s = make_schedule(T)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", prediction_type="epsilon",
        thresholding=False, lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
    )
    ref.set_timesteps(n_steps)
    timesteps = [int(t) for t in ref.timesteps]
    x0 = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ref, x_ours = x0.clone(), x0.clone()
    x0_last, t_last = None, None
    for i, t in enumerate(timesteps):
        x_ref = ref.step(fake_eps(x_ref, t), t, x_ref).prev_sample
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x_ours, x0_last = dpmpp_2m_step(s, fake_eps(x_ours, t), t, t_prev, x_ours, x0_last, t_last, clip=False)
        t_last = t
        torch.testing.assert_close(x_ours, x_ref.to(x_ours.dtype), rtol=1e-5, atol=1e-6, msg=f"step {i}, t={t}")


def _default_scheduler(d, T=1000):
    """diffusers' DPMSolverMultistepScheduler with its defaults (timestep_spacing="linspace",
    final_sigmas_type="zero", lower_order_final=True, solver_order=2, dpmsolver++) on ctdiff's schedule."""
    return d.DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@pytest.mark.parametrize("T", [1000, 50])
def test_grid_is_diffusers_default(T):
    """The timesteps ctdiff evaluates are diffusers' default grid: for 20 steps at T = 1000, 999, 949, …, 50,
    then the last step goes to σ = 0 without a network evaluation at t = 0."""
    d = pytest.importorskip("diffusers")
    ref = _default_scheduler(d, T)
    for n in (1, 2, 5, 10, 12, 20, 25, 49) + ((50, 100, 333, 999) if T == 1000 else ()):
        ref.set_timesteps(n)
        assert timestep_sequence("dpmpp", n, T) == ref.timesteps.tolist(), n
        assert 0 not in timestep_sequence("dpmpp", n, T) and network_evaluations("dpmpp", n, T) == n
    grid = timestep_sequence("dpmpp", 20, 1000)
    assert grid[:3] == [999, 949, 899] and grid[-1] == 50


@pytest.mark.parametrize("n_steps", [3, 10, 25])
def test_full_loop_matches_diffusers_default(n_steps):
    """sample() against diffusers' default scheduler, same x_T and the same deterministic model: the same
    volume, with exactly n_steps network evaluations (both unclipped: diffusers' default does not threshold)."""
    d = pytest.importorskip("diffusers")
    T, shape, calls = 1000, (1, 4, 4, 4), []

    def model(x, t):
        calls.append(t[0].item())
        return fake_eps(x, t[0].item())

    ours = sample(model, make_schedule(T), shape, [torch.Generator().manual_seed(3)], sampler="dpmpp", steps=n_steps,
                  clip=False)
    ref = _default_scheduler(d)
    ref.set_timesteps(n_steps)
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(3))
    for t in ref.timesteps:
        x = ref.step(fake_eps(x, int(t)), t, x).prev_sample
    assert calls == ref.timesteps.tolist() and len(calls) == n_steps
    torch.testing.assert_close(ours, x.clamp(-1, 1), rtol=1e-4, atol=1e-5)


def test_exact_model_lands_on_the_data_point():
    s = make_schedule(1000)
    target = torch.linspace(-0.8, 0.8, 27).reshape(1, 1, 3, 3, 3)

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            a = torch.as_tensor(s.alphas_cumprod, dtype=x.dtype)[t].reshape(-1, 1, 1, 1, 1)
            return (x - a.sqrt() * target) / (1 - a).sqrt()

    out = sample(Exact(), s, (1, 3, 3, 3), [torch.Generator().manual_seed(1)], sampler="dpmpp", steps=10)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def test_step_errors():
    s = make_schedule(100)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="t_prev"):
        dpmpp_2m_step(s, x, 10, 10, x)
    with pytest.raises(ValueError, match="t_last"):
        dpmpp_2m_step(s, x, 10, 5, x, x0_last=x, t_last=3)
