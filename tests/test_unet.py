"""The residual 3D U-Net on tiny volumes: shapes, checkpointing, the time path, errors and size."""

import copy

import pytest
import torch

from ctdiff.model.build import build_model
from ctdiff.config import ModelConfig
from ctdiff.model.unet import UNet3D, timestep_embedding

TINY = dict(channels=(8, 16), res_blocks=1, groups=4)


def _inputs(batch=2, size=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, channels, size, size, size), generator=g), torch.tensor([3, 900])[:batch]


def _perturbed(model):
    """The output head starts at zero; give it weights so the rest of the network shows through."""
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


@pytest.mark.parametrize(
    "kwargs,size,channels",
    [(TINY, 8, 1), (dict(TINY, res_blocks=2, attention=True), 16, 1), (dict(TINY, channels=(8, 8, 16)), 8, 2)],
)
def test_output_shape_and_zero_head(kwargs, size, channels):
    torch.manual_seed(0)
    model = UNet3D(in_channels=channels, **kwargs)
    x, t = _inputs(size=size, channels=channels)
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    assert _perturbed(model)(x, t).abs().mean() > 0


def test_one_optimizer_step_makes_output_nonzero():
    torch.manual_seed(0)
    model = UNet3D(**TINY)
    x, t = _inputs()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(x, t) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    assert model.conv_out.weight.grad.abs().sum() > 0
    opt.step()
    assert model(x, t).abs().mean() > 1e-5


def test_timestep_changes_output():
    torch.manual_seed(0)
    model = _perturbed(UNet3D(**TINY)).eval()
    x, _ = _inputs(batch=1)
    out0, out1 = model(x, torch.tensor([0])), model(x, torch.tensor([500]))
    assert (out0 - out1).abs().max() > 1e-3 * out0.abs().max()
    torch.testing.assert_close(model(x, torch.tensor([500])), out1)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0 = 1, sin 0 = 0
    assert timestep_embedding(torch.tensor([5]), 7).shape == (1, 7)


def test_gradient_checkpointing_same_output_and_gradients():
    torch.manual_seed(0)
    plain = _perturbed(UNet3D(**dict(TINY, res_blocks=2)))
    ckpt = copy.deepcopy(plain)
    ckpt.grad_checkpointing = True
    x, t = _inputs()
    target = torch.randn_like(x)
    outs = []
    for model in (plain, ckpt):
        model.train()
        out = model(x, t)
        (out - target).pow(2).mean().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_batch_elements_are_independent():
    """GroupNorm normalises per sample, so a sample's output does not depend on its batch."""
    torch.manual_seed(0)
    model = _perturbed(UNet3D(**TINY)).eval()
    x, t = _inputs()
    torch.testing.assert_close(model(x, t)[1:], model(x[1:], t[1:]), atol=1e-5, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"\b6 channels"):
        UNet3D(channels=(6, 12), res_blocks=1, groups=4)
    model = UNet3D(channels=(8, 8, 16), res_blocks=1, groups=4)
    with pytest.raises(ValueError, match=r"\(8, 8, 6\).*divisible by 4"):
        model(torch.zeros(1, 1, 8, 8, 6), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 1, D, H, W\]"):
        model(torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="t of shape"):
        model(torch.zeros(2, 1, 8, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="res_blocks"):
        UNet3D(channels=(8,), res_blocks=0, groups=4)


def test_paper_size_parameter_count():
    """The paper reports 159 M parameters for channels 64-128-256-512 with two res blocks per level."""
    with torch.device("meta"):  # no memory, no initialisation cost
        model = UNet3D(channels=(64, 128, 256, 512), res_blocks=2, attention=False)
        from_config = build_model(ModelConfig())  # the model section's defaults are the paper's network
    assert sum(p.numel() for p in model.parameters()) == 158_963_329
    assert [(k, p.shape) for k, p in from_config.state_dict().items()] == \
        [(k, p.shape) for k, p in model.state_dict().items()]
