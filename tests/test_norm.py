"""The recomputing GroupNorm → SiLU against torch's own GroupNorm and SiLU, and what it stores."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ctdiff.model.norm import group_norm_silu
from ctdiff.model.unet import UNet3D


def _norm(groups: int, channels: int, dtype=torch.float64, seed: int = 0) -> nn.GroupNorm:
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def _grads(fn, x: torch.Tensor, norm: nn.GroupNorm, grad: torch.Tensor):
    x = x.detach().requires_grad_(True)
    norm.zero_grad()
    y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()


@pytest.mark.parametrize("chunk_elements", [1, 3 * 2 * 60, 2**24])  # one group, several groups, all at once
def test_matches_group_norm_then_silu_in_float64(chunk_elements):
    norm = _norm(4, 8)
    torch.manual_seed(1)
    x = torch.randn(3, 8, 3, 4, 5, dtype=torch.float64) * 2 + 0.5
    grad = torch.randn(3, 8, 3, 4, 5, dtype=torch.float64)
    ours = _grads(lambda v: group_norm_silu(norm, v, recompute=True, chunk_elements=chunk_elements), x, norm, grad)
    ref_norm = copy.deepcopy(norm)
    ref = _grads(lambda v: F.silu(ref_norm(v)), x, ref_norm, grad)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_backward_passes_gradcheck():
    """The hand-written backward against finite differences of the forward, in float64."""
    norm = _norm(2, 4)
    x = torch.randn(2, 4, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, w, b: group_norm_silu(_with(norm, w, b), v, recompute=True, chunk_elements=12),
        (x, norm.weight.detach().clone().requires_grad_(True), norm.bias.detach().clone().requires_grad_(True)))


def _with(norm: nn.GroupNorm, weight: torch.Tensor, bias: torch.Tensor) -> nn.GroupNorm:
    out = nn.GroupNorm(norm.num_groups, norm.num_channels).to(weight.dtype)
    del out.weight, out.bias
    out.weight, out.bias = weight, bias
    return out


def test_under_bf16_autocast_returns_bf16_of_the_float32_result():
    """CUDA autocast's path (GroupNorm and SiLU in float32, then the conv's cast to bf16), to one bf16 step."""
    norm = _norm(4, 8, dtype=torch.float32)
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = group_norm_silu(norm, x, recompute=True, chunk_elements=64)
    assert y.dtype == torch.bfloat16
    reference = F.silu(F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(y.float(), reference, rtol=2**-8, atol=1e-6)

    grad = torch.randn(2, 8, 4, 4, 4).bfloat16()
    xs = x.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        group_norm_silu(norm, xs, recompute=True).backward(grad)
    assert xs.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    xr = x.detach().float().requires_grad_(True)
    ref_norm = copy.deepcopy(norm)
    ref_norm.zero_grad()
    F.silu(F.group_norm(xr, 4, ref_norm.weight, ref_norm.bias, ref_norm.eps)).backward(grad.float())
    torch.testing.assert_close(xs.grad.float(), xr.grad, rtol=2**-7, atol=1e-3)
    torch.testing.assert_close(norm.weight.grad, ref_norm.weight.grad, rtol=1e-4, atol=1e-4)


def _saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for ``fn(x)``'s backward, each storage counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def test_stores_only_its_input_and_the_statistics():
    norm = _norm(4, 8, dtype=torch.float32)
    x = torch.randn(1, 8, 16, 16, 16).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _saved_bytes(lambda v: group_norm_silu(norm, v, recompute=True), x)
        # CUDA autocast's policy for the plain path: GroupNorm on a float32 copy, SiLU on its float32 output.
        plain = _saved_bytes(lambda v: F.silu(F.group_norm(v.float(), 4, norm.weight, norm.bias)), x)
    weights = 2 * 8 * 4
    stats = 2 * 4 * 4
    assert ours == x.numel() * 2 + weights + stats
    assert plain >= x.numel() * (4 + 4)  # the float32 copy and the float32 normalised tensor, at least


def _tiny(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    model = UNet3D(channels=(8, 16), res_blocks=1, groups=4).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _step(model: UNet3D, x: torch.Tensor, t: torch.Tensor):
    model.zero_grad()
    y = model(x, t)
    (y**2).mean().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_unet_with_recompute_norm_has_the_same_outputs_and_gradients(checkpointing):
    plain = _tiny()
    lean = copy.deepcopy(plain)
    lean.recompute_norm = True
    lean.grad_checkpointing = checkpointing
    assert all(block.recompute_norm for block in lean.modules() if hasattr(block, "norm1"))
    torch.manual_seed(3)
    x, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([3, 700])
    (y0, g0), (y1, g1) = _step(plain, x, t), _step(lean, x, t)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert set(lean.state_dict()) == set(plain.state_dict())  # checkpoints do not depend on the setting


def test_unet_without_gradients_takes_the_plain_path():
    plain = _tiny()
    lean = copy.deepcopy(plain)
    lean.recompute_norm = True
    x, t = torch.randn(1, 1, 8, 8, 8), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(lean(x, t), plain(x, t))
