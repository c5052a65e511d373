"""The chunked, recomputing GroupNorm → SiLU → conv against torch's own modules, and what it stores."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ctdiff.model.norm_conv import _NormSiLUConv, _Opts, norm_silu_conv
from ctdiff.model.unet import ResBlock, UNet3D


def _layers(channels: int, groups: int, out: int, dtype=torch.float64, stride: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels).to(dtype)
    conv = nn.Conv3d(channels, out, 3, stride=stride, padding=1).to(dtype)
    with torch.no_grad():
        for p in (*norm.parameters(), *conv.parameters()):
            p.normal_(0, 0.5)
    return norm, conv


def _run(norm, conv, parts, grad, **kwargs):
    """Output and every gradient (parts, then norm and conv parameters) of ``norm_silu_conv``."""
    parts = [p.detach().clone().requires_grad_(True) for p in parts]
    norm, conv = copy.deepcopy(norm), copy.deepcopy(conv)
    y = norm_silu_conv(norm, conv, parts, **kwargs)
    y.backward(grad)
    return [y.detach(), *(p.grad for p in parts), *(p.grad for p in (*norm.parameters(), *conv.parameters()))]


# 12 channels in 4 groups of 3; the split 5 + 7 puts the boundary inside group 1 (channels 3-5).
@pytest.mark.parametrize("split", [(12,), (5, 7), (6, 6)])
# (convolution chunk, GroupNorm chunk) in elements; one group holds 2 · 3 · 60 = 360.
@pytest.mark.parametrize("chunk_elements", [(1, 1), (720, 1), (720, 360), (2**26, 360), (2**26, 2**23)])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_cat_group_norm_silu_conv_in_float64(split, chunk_elements, stride):
    norm, conv = _layers(12, 4, 5, stride=stride)
    torch.manual_seed(1)
    parts = [torch.randn(2, c, 3, 4, 5, dtype=torch.float64) * 2 + 0.5 for c in split]
    grad_shape = conv(torch.cat(parts, 1)).shape
    grad = torch.randn(grad_shape, dtype=torch.float64)
    ours = _run(norm, conv, parts, grad, recompute=True, conv_chunk_elements=chunk_elements[0],
                norm_chunk_elements=chunk_elements[1])
    plain = _run(norm, conv, parts, grad, recompute=False)
    assert len(ours) == len(plain)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_backward_passes_gradcheck():
    """The chunked backward against finite differences of the forward, in float64, parts straddling a group."""
    norm, conv = _layers(6, 2, 2)
    parts = [torch.randn(2, c, 2, 3, 2, dtype=torch.float64, requires_grad=True) for c in (2, 4)]
    params = [p.detach().clone().requires_grad_(True) for p in (norm.weight, norm.bias, conv.weight, conv.bias)]

    def fn(nw, nb, cw, cb, *xs):
        opts = _Opts(norm.num_groups, norm.eps, conv.stride, conv.padding, conv.dilation, torch.float64, 24, 12)
        return _NormSiLUConv.apply(nw, nb, cw, cb, opts, *xs)

    assert torch.autograd.gradcheck(fn, (*params, *parts))


def test_under_bf16_autocast_it_matches_the_plain_path():
    """CUDA autocast's plain path: GroupNorm and SiLU in float32, the convolution in bf16."""
    norm, conv = _layers(8, 4, 6, dtype=torch.float32)
    torch.manual_seed(2)
    parts = [torch.randn(2, c, 6, 6, 6).bfloat16() for c in (4, 4)]
    grad = torch.randn(2, 6, 6, 6, 6).bfloat16()

    def plain_cuda_policy(*xs):
        x = torch.cat(xs, 1)
        with torch.autocast("cpu", enabled=False):
            a = F.silu(F.group_norm(x.float(), 4, ref_norm.weight, ref_norm.bias, ref_norm.eps))
        return ref_conv(a)

    ref_norm, ref_conv = copy.deepcopy(norm), copy.deepcopy(conv)
    ours_in = [p.clone().requires_grad_(True) for p in parts]
    ref_in = [p.clone().requires_grad_(True) for p in parts]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = norm_silu_conv(norm, conv, ours_in, recompute=True, conv_chunk_elements=2 * 864,
                              norm_chunk_elements=1)
        ref = plain_cuda_policy(*ref_in)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
    ours.backward(grad)
    ref.backward(grad)
    for a, b in zip(ours_in, ref_in):
        assert a.grad.dtype == torch.bfloat16
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=2e-2, atol=2e-2)
    for a, b in zip((*norm.parameters(), *conv.parameters()), (*ref_norm.parameters(), *ref_conv.parameters())):
        assert a.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=2e-2)


def _saved_bytes(fn) -> int:
    """Bytes of the storages autograd saves while ``fn()`` runs, each counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_stores_only_its_inputs_weights_and_statistics():
    norm, conv = _layers(16, 4, 8, dtype=torch.float32)
    parts = [torch.randn(1, c, 16, 16, 16).bfloat16().requires_grad_(True) for c in (8, 8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _saved_bytes(lambda: norm_silu_conv(norm, conv, parts, recompute=True))
        plain = _saved_bytes(lambda: norm_silu_conv(norm, conv, parts, recompute=False))
    inputs = sum(p.numel() * 2 for p in parts)
    weights = sum(p.numel() * 4 for p in (*norm.parameters(), conv.weight))
    stats = 2 * 1 * 4 * 4
    assert ours == inputs + weights + stats
    assert plain >= inputs + 16 * 16**3 * 2 * 2  # at least the concatenation and the activation besides


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
    torch.manual_seed(3)
    x, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([3, 700])
    y0, g0 = _step(plain, x, t)
    with mock.patch.object(_NormSiLUConv, "apply", wraps=_NormSiLUConv.apply) as recomputing:
        y1, g1 = _step(lean, x, t)
    # every block's two chains and the output head take the recomputing path
    blocks = sum(isinstance(m, ResBlock) for m in lean.modules())
    assert recomputing.call_count >= 2 * blocks + 1
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
