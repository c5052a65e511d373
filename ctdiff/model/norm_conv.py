"""GroupNorm → SiLU → convolution, optionally computed in chunks of groups and recomputed for the backward.

Every normalisation in the U-Net's residual blocks and output head is ``conv(silu(norm(x)))``, where the
decoder's ``x`` is the concatenation of the running features and a skip. As autograd records it, that
stores per call the concatenation, the normalised tensor (kept by SiLU) and the activation (kept by the
convolution for its weight gradient), and under CUDA bf16 autocast, which runs ``group_norm`` in float32,
also a float32 copy of ``x``: about 12 bytes per element of ``x`` beside ``x`` itself. At 128³ with 192
input channels (the first full-resolution decoder block of the paper's U-Net) that is 4.5 GiB for one
sample, and its backward pass then holds gradients of the same size.

:func:`norm_silu_conv` with ``recompute=True`` keeps only the inputs (the block's input, or the two tensors
a decoder block concatenates, which are kept anyway), the convolution's weight and two floats per
(sample, group). GroupNorm normalises each group on its own and a convolution is a sum over its input
channels, so both passes can walk the input channels in chunks of whole groups: per chunk, normalise
(``torch.native_group_norm``, which also returns the statistics), apply SiLU, cast to the autocast dtype and
convolve with that chunk's slice of the weight, adding into a float32 output; the backward pass recomputes
each chunk's activation and runs torch's own ``convolution_backward``, ``silu_backward`` and
``native_group_norm_backward`` on it. No tensor the size of the whole concatenated input is ever formed.
Convolution chunks (:data:`CONV_CHUNK_ELEMENTS`) are large enough for efficient convolutions; inside each,
GroupNorm runs on smaller chunks (:data:`NORM_CHUNK_ELEMENTS`), which bound the float32 temporaries. This
is the idea of in-place activated batch norm (Rota Bulò et al., CVPR 2018), carried through the
convolution.

The values equal the plain path's to floating-point rounding: the convolution's partial sums over chunks
are added in float32 and rounded to the autocast dtype once, and GroupNorm's statistics are float32 sums
in another order. Only the chunking is ours; the arithmetic is torch's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CONV_CHUNK_ELEMENTS = 2**26  # input elements per convolution chunk (its bf16 activation: 128 MiB)
NORM_CHUNK_ELEMENTS = 2**23  # input elements per GroupNorm chunk (each float32 temporary: 32 MiB)


def norm_silu_conv(norm: nn.GroupNorm, conv: nn.Conv3d, parts: Sequence[Tensor], recompute: bool = False,
                   conv_chunk_elements: int = CONV_CHUNK_ELEMENTS,
                   norm_chunk_elements: int = NORM_CHUNK_ELEMENTS) -> Tensor:
    """``conv(silu(norm(torch.cat(parts, dim=1))))``; with ``recompute``, chunked and recomputed (see above).

    Chunks hold whole groups: the convolution takes up to ``conv_chunk_elements`` input elements at a time
    (large enough for efficient convolutions), GroupNorm and SiLU up to ``norm_chunk_elements`` (bounding
    their float32 temporaries). Under autocast the result has the autocast dtype, as the plain path's
    convolution gives; without autocast, the inputs' dtype.
    """
    if not recompute:
        x = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
        return conv(F.silu(norm(x)))
    if conv.groups != 1 or conv.weight.shape[1] != norm.num_channels:
        raise ValueError("norm_silu_conv needs an ungrouped convolution over the normalised channels")
    device = parts[0].device.type
    autocast = torch.is_autocast_enabled(device)
    conv_dtype = torch.get_autocast_dtype(device) if autocast else parts[0].dtype
    with torch.autocast(device, enabled=False):
        return _NormSiLUConv.apply(norm.weight, norm.bias, conv.weight, conv.bias,
                                   _Opts(norm.num_groups, norm.eps, conv.stride, conv.padding, conv.dilation,
                                         conv_dtype, conv_chunk_elements, norm_chunk_elements), *parts)


class _Opts(NamedTuple):
    groups: int
    eps: float
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    conv_dtype: torch.dtype
    conv_chunk_elements: int
    norm_chunk_elements: int


def _chunks(parts: Sequence[Tensor], groups: int, limit: int, g_start: int = 0,
            g_end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """``(g0, g1, c0, c1)`` per chunk of whole groups of at most ``limit`` elements (at least one group)
    between groups ``g_start`` and ``g_end``: groups ``g0:g1``, channels ``c0:c1`` of the concatenation."""
    per_group = sum(p.shape[1] for p in parts) // groups
    group_elements = parts[0].shape[0] * per_group * parts[0][0, 0].numel()
    step = max(1, limit // max(group_elements, 1))
    g_end = groups if g_end is None else g_end
    for g0 in range(g_start, g_end, step):
        g1 = min(g0 + step, g_end)
        yield g0, g1, g0 * per_group, g1 * per_group


def _gather(parts: Sequence[Tensor], c0: int, c1: int, dtype: torch.dtype) -> Tensor:
    """Channels ``c0:c1`` of ``torch.cat(parts, 1)`` as a new contiguous ``dtype`` tensor."""
    pieces, start = [], 0
    for p in parts:
        lo, hi = max(c0, start), min(c1, start + p.shape[1])
        if lo < hi:
            pieces.append(p[:, lo - start:hi - start])
        start += p.shape[1]
    out = pieces[0].to(dtype, copy=True) if len(pieces) == 1 else torch.cat(pieces, dim=1).to(dtype)
    return out.contiguous()


def _scatter(grads: Sequence[Tensor], c0: int, c1: int, value: Tensor) -> None:
    """Write ``value`` (channels ``c0:c1`` of the concatenation) into the per-part gradients."""
    start = 0
    for g in grads:
        lo, hi = max(c0, start), min(c1, start + g.shape[1])
        if lo < hi:
            g[:, lo - start:hi - start] = value[:, lo - c0:hi - c0]
        start += g.shape[1]


def _activation(parts: Sequence[Tensor], norm_w: Tensor, norm_b: Tensor, opts: _Opts, compute: torch.dtype,
                g0: int, g1: int, c0: int, c1: int, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``silu(group_norm(x))[:, c0:c1]`` in the convolution's dtype, GroupNorm chunk by GroupNorm chunk;
    with ``stats`` given, also writes each chunk's mean and 1/std into them."""
    n, hw = parts[0].shape[0], parts[0][0, 0].numel()
    a = torch.empty((n, c1 - c0, *parts[0].shape[2:]), dtype=opts.conv_dtype, device=norm_w.device)
    for h0, h1, d0, d1 in _chunks(parts, opts.groups, opts.norm_chunk_elements, g0, g1):
        y, mean, rstd = torch.native_group_norm(_gather(parts, d0, d1, compute), norm_w[d0:d1].to(compute),
                                                norm_b[d0:d1].to(compute), n, d1 - d0, hw, h1 - h0, opts.eps)
        a[:, d0 - c0:d1 - c0] = F.silu(y, inplace=True)
        if stats is not None:
            stats[0][:, h0:h1], stats[1][:, h0:h1] = mean, rstd
    return a


class _NormSiLUConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, norm_w: Tensor, norm_b: Tensor, conv_w: Tensor, conv_b: Tensor | None, opts: _Opts,
                *parts: Tensor) -> Tensor:
        compute = torch.promote_types(parts[0].dtype, torch.float32)
        w = conv_w.to(opts.conv_dtype)
        mean = torch.empty(parts[0].shape[0], opts.groups, dtype=compute, device=conv_w.device)
        rstd = torch.empty_like(mean)
        out = None
        for g0, g1, c0, c1 in _chunks(parts, opts.groups, opts.conv_chunk_elements):
            a = _activation(parts, norm_w, norm_b, opts, compute, g0, g1, c0, c1, stats=(mean, rstd))
            partial = F.conv3d(a, w[:, c0:c1], None, opts.stride, opts.padding, opts.dilation)
            del a
            # Partial sums over input channels are added in float32 and rounded once, at the end.
            out = partial.to(compute) if out is None else out.add_(partial)
        if conv_b is not None:
            out += conv_b.to(compute).view(1, -1, 1, 1, 1)
        ctx.save_for_backward(norm_w, norm_b, conv_w, mean, rstd, *parts)
        ctx.opts, ctx.has_bias = opts, conv_b is not None
        return out.to(opts.conv_dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        norm_w, norm_b, conv_w, mean, rstd, *parts = ctx.saved_tensors
        opts: _Opts = ctx.opts
        compute = mean.dtype
        n, hw = parts[0].shape[0], parts[0][0, 0].numel()
        with torch.autocast(grad.device.type, enabled=False):
            w = conv_w.to(opts.conv_dtype)
            grad = grad.to(opts.conv_dtype).contiguous()
            d_parts = [torch.empty_like(p) for p in parts]
            d_norm_w = torch.empty(norm_w.shape, dtype=compute, device=norm_w.device)
            d_norm_b = torch.empty_like(d_norm_w)
            d_conv_w = torch.empty(conv_w.shape, dtype=compute, device=conv_w.device)
            for g0, g1, c0, c1 in _chunks(parts, opts.groups, opts.conv_chunk_elements):
                a = _activation(parts, norm_w, norm_b, opts, compute, g0, g1, c0, c1)
                da, d_conv_w[:, c0:c1], _ = torch.ops.aten.convolution_backward(
                    grad, a, w[:, c0:c1].contiguous(), None, list(opts.stride), list(opts.padding),
                    list(opts.dilation), False, [0, 0, 0], 1, [True, True, False])
                del a
                # GroupNorm runs a second time per chunk here, for SiLU's backward: keeping its float32
                # output from the activation above would hold 4 bytes per element of the whole conv chunk.
                for h0, h1, d0, d1 in _chunks(parts, opts.groups, opts.norm_chunk_elements, g0, g1):
                    c, g = d1 - d0, h1 - h0
                    xc = _gather(parts, d0, d1, compute)
                    nw = norm_w[d0:d1].to(compute)
                    y = torch.native_group_norm(xc, nw, norm_b[d0:d1].to(compute), n, c, hw, g, opts.eps)[0]
                    dy = torch.ops.aten.silu_backward(da[:, d0 - c0:d1 - c0].to(compute).contiguous(), y)
                    del y
                    # The native kernels read the statistics as contiguous memory, whatever their strides.
                    dx, d_norm_w[d0:d1], d_norm_b[d0:d1] = torch.ops.aten.native_group_norm_backward(
                        dy, xc, mean[:, h0:h1].contiguous(), rstd[:, h0:h1].contiguous(), nw, n, c, hw, g,
                        [True, True, True])
                    del dy, xc
                    _scatter(d_parts, d0, d1, dx)
                del da
            d_conv_b = grad.sum(dim=(0, 2, 3, 4), dtype=compute).to(conv_w.dtype) if ctx.has_bias else None
        return (d_norm_w.to(norm_w.dtype), d_norm_b.to(norm_b.dtype), d_conv_w.to(conv_w.dtype), d_conv_b, None,
                *d_parts)
