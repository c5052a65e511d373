"""DPM-Solver++(2M): checked against diffusers' DPMSolverMultistepScheduler and against an exact model."""
import pytest
import torch

from ctdiff.diffusion.samplers import dpmpp_2m_step, sample
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
