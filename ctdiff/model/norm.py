"""GroupNorm followed by SiLU, optionally recomputed in the backward pass to store less for it.

``F.silu(norm(x))`` as autograd records it stores, per call, the normalised tensor (for SiLU's backward)
and, under CUDA bf16 autocast, which runs ``group_norm`` in float32, also a float32 copy of ``x``: 8 bytes
per element of ``x`` beside the bf16 result the next convolution keeps. :func:`group_norm_silu` with
``recompute=True`` stores only ``x`` (usually kept anyway: the block's input, or its skip path's input) and
two floats per (sample, group), and recomputes the normalised values in the backward pass, the idea of
in-place activated batch norm (Rota Bulò et al., CVPR 2018) for GroupNorm. It writes its output directly in
the autocast dtype, the dtype the following convolution would cast it to anyway, so the values equal the
plain path's to floating-point rounding (the statistics are float32 sums in another order).

Both passes run over chunks of whole groups (:data:`CHUNK_ELEMENTS` elements at a time), so their float32
temporaries stay bounded whatever the volume: groups are normalised independently, so chunking changes
nothing but the memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CHUNK_ELEMENTS = 2**24  # elements per chunk of groups (at least one group): 64 MiB of float32 temporaries each


def _chunks(groups: int, group_elements: int, chunk_elements: int) -> list[tuple[int, int]]:
    step = max(1, min(groups, chunk_elements // max(group_elements, 1)))
    return [(g, min(g + step, groups)) for g in range(0, groups, step)]


class _GroupNormSiLU(torch.autograd.Function):
    """``silu(group_norm(x, G, weight, bias, eps))`` that saves only ``x`` and the per-group statistics."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, out_dtype: torch.dtype,
                chunk_elements: int) -> Tensor:
        x = x.contiguous()
        b, c = x.shape[:2]
        compute = torch.promote_types(x.dtype, torch.float32)
        xg = x.view(b, groups, c // groups, -1)
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        og = out.view(xg.shape)
        w = weight.to(compute).view(groups, -1, 1)
        bi = bias.to(compute).view(groups, -1, 1)
        mean = torch.empty(b, groups, 1, 1, dtype=compute, device=x.device)
        rstd = torch.empty_like(mean)
        for g0, g1 in _chunks(groups, b * xg[0, 0].numel(), chunk_elements):
            xc = xg[:, g0:g1].to(compute, copy=True)  # a copy: normalised in place below
            var, mu = torch.var_mean(xc, dim=(2, 3), correction=0, keepdim=True)
            r = torch.rsqrt(var + eps)
            mean[:, g0:g1] = mu
            rstd[:, g0:g1] = r
            og[:, g0:g1] = F.silu(xc.sub_(mu).mul_(r).mul_(w[g0:g1]).add_(bi[g0:g1]))
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.chunk_elements = groups, chunk_elements
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            return _GroupNormSiLU._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        b, c = x.shape[:2]
        compute = mean.dtype
        xg = x.view(b, groups, c // groups, -1)
        gg = grad.contiguous().view(xg.shape)
        dx = torch.empty_like(x)
        dxg = dx.view(xg.shape)
        w = weight.to(compute).view(groups, -1, 1)
        bi = bias.to(compute).view(groups, -1, 1)
        dw = torch.empty(groups, c // groups, dtype=compute, device=x.device)
        db = torch.empty_like(dw)
        for g0, g1 in _chunks(groups, b * xg[0, 0].numel(), ctx.chunk_elements):
            r = rstd[:, g0:g1]
            xhat = xg[:, g0:g1].to(compute, copy=True).sub_(mean[:, g0:g1]).mul_(r)
            y = xhat * w[g0:g1] + bi[g0:g1]
            s = torch.sigmoid(y)
            # d silu(y) / dy = s · (1 + y · (1 − s))
            dy = gg[:, g0:g1].to(compute) * s.mul_(y.mul_(s.neg().add_(1)).add_(1))
            del y, s
            db[g0:g1] = dy.sum(dim=(0, 3))
            dw[g0:g1] = (dy * xhat).sum(dim=(0, 3))
            dxhat = dy.mul_(w[g0:g1])
            # GroupNorm's backward per (sample, group): r · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂))
            m1 = dxhat.mean(dim=(2, 3), keepdim=True)
            m2 = (dxhat * xhat).mean(dim=(2, 3), keepdim=True)
            dxg[:, g0:g1] = dxhat.sub_(m1).sub_(xhat.mul_(m2)).mul_(r)
        return dx, dw.view(c).to(weight.dtype), db.view(c).to(bias.dtype), None, None, None, None


def group_norm_silu(norm: nn.GroupNorm, x: Tensor, recompute: bool = False,
                    chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """``F.silu(norm(x))``; with ``recompute`` through :class:`_GroupNormSiLU` (see the module docstring).

    Under autocast the recomputing path returns the autocast dtype (what the next convolution consumes);
    without autocast, ``x``'s dtype.
    """
    if not recompute:
        return F.silu(norm(x))
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    out_dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    with torch.autocast(device, enabled=False):
        return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, out_dtype,
                                    chunk_elements)
