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
nothing but the memory. The arithmetic is torch's own GroupNorm and SiLU kernels; what this module adds is
what is kept between the passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CHUNK_ELEMENTS = 2**24  # elements per chunk of groups (at least one group): 64 MiB of float32 temporaries each


class _GroupNormSiLU(torch.autograd.Function):
    """``silu(group_norm(x, G, weight, bias, eps))`` that saves only ``x`` and the per-group statistics.

    Each chunk of groups goes through torch's own kernels: ``native_group_norm`` (which also returns the
    statistics) and SiLU forward; ``native_group_norm`` again, ``silu_backward`` and
    ``native_group_norm_backward`` backward, on a float32 (float64 for float64 input) copy of the chunk.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, out_dtype: torch.dtype,
                chunk_elements: int) -> Tensor:
        x = x.contiguous()
        compute = torch.promote_types(x.dtype, torch.float32)
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        mean = torch.empty(x.shape[0], groups, dtype=compute, device=x.device)
        rstd = torch.empty_like(mean)
        for g0, g1, c0, c1, xc in _chunked(x, groups, chunk_elements, compute):
            y, mean[:, g0:g1], rstd[:, g0:g1] = torch.native_group_norm(
                xc, weight[c0:c1].to(compute), bias[c0:c1].to(compute), x.shape[0], c1 - c0, xc[0, 0].numel(),
                g1 - g0, eps)
            out[:, c0:c1] = F.silu(y, inplace=True)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.eps, ctx.chunk_elements = groups, eps, chunk_elements
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        compute = mean.dtype
        dx = torch.empty_like(x)
        dw = torch.empty(weight.shape, dtype=compute, device=x.device)
        db = torch.empty_like(dw)
        with torch.autocast(grad.device.type, enabled=False):
            for g0, g1, c0, c1, xc in _chunked(x, ctx.groups, ctx.chunk_elements, compute):
                n, c, hw, g = x.shape[0], c1 - c0, xc[0, 0].numel(), g1 - g0
                w = weight[c0:c1].to(compute)
                y = torch.native_group_norm(xc, w, bias[c0:c1].to(compute), n, c, hw, g, ctx.eps)[0]
                dy = torch.ops.aten.silu_backward(grad[:, c0:c1].to(compute).contiguous(), y)
                del y
                dx[:, c0:c1], dw[c0:c1], db[c0:c1] = torch.ops.aten.native_group_norm_backward(
                    dy, xc, mean[:, g0:g1].contiguous(), rstd[:, g0:g1].contiguous(), w, n, c, hw, g,
                    [True, True, True])  # the native kernels ignore strides: contiguous inputs only
        return dx, dw.to(weight.dtype), db.to(bias.dtype), None, None, None, None


def _chunked(x: Tensor, groups: int, chunk_elements: int, compute: torch.dtype):
    """``(g0, g1, c0, c1, chunk)`` per chunk of whole groups: ``chunk`` is ``x[:, c0:c1]`` as a contiguous
    ``compute``-dtype copy."""
    per_group = x.shape[1] // groups
    group_elements = x.shape[0] * per_group * x[0, 0].numel()
    step = max(1, min(groups, chunk_elements // max(group_elements, 1)))
    for g0 in range(0, groups, step):
        g1 = min(g0 + step, groups)
        c0, c1 = g0 * per_group, g1 * per_group
        yield g0, g1, c0, c1, x[:, c0:c1].to(compute, memory_format=torch.contiguous_format, copy=True)


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
