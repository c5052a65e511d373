"""The residual 3D U-Net that predicts the noise ``ε`` of a DDPM (the paper's denoiser).

Layout for ``channels = (c_0, …, c_{L−1})`` and ``n = res_blocks`` (the ADM / improved-diffusion
layout of Nichol & Dhariwal 2021, in 3D):

- input: 3³ conv ``C_in + C_cond → c_0`` on ``x_t`` with the condition channels (if any,
  :mod:`ctdiff.model.condition`) concatenated after it;
- encoder level ``i``: ``n`` residual blocks to ``c_i``, then a stride-2 3³ conv halving D, H and W,
  except after the last level; the input conv, every block and every downsample each leave one skip;
- middle: residual block, optional self-attention over all voxels (off in the paper), residual block;
- decoder level ``i`` (from ``L−1`` down to 0): ``n + 1`` residual blocks, each on the concatenation
  (channel axis) of the running features and the latest unused skip, then nearest ×2 upsampling of
  D, H and W + 3³ conv, except at level 0;
- output: GroupNorm → SiLU → 3³ conv ``c_0 → C_in``, zero-initialised so training starts at ``ε̂ = 0``.

The timestep enters every residual block through a sinusoidal embedding (dimension ``c_0``) and an MLP
(Linear, SiLU, Linear → ``4·c_0``). GroupNorm uses ``min(groups, C)`` groups, which must divide ``C``.

Size: with the default ``channels=(64, 128, 256, 512)``, ``res_blocks=2``, ``attention=False`` this
model has 158,963,329 parameters, matching the paper's "159 M" (160,014,977 with attention). The input's
D, H and W must be divisible by ``2**(len(channels) − 1)`` (8 for four levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ctdiff.model.norm_conv import norm_silu_conv


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``min(groups, channels)`` groups, which must divide ``channels``."""
    g = min(groups, channels)
    if channels % g != 0:
        raise ValueError(f"GroupNorm: {g} groups do not divide {channels} channels (groups={groups})")
    return nn.GroupNorm(g, channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017; Ho et al. 2020, Sec. 4): the integer DDPM
    timesteps ``0 … T−1``, or a flow model's float times scaled to that range (``t·T``,
    :func:`ctdiff.diffusion.flow.network_time`).

    ``t``: ``[B]`` → ``[B, dim]`` float32: ``[cos(t·ω_k), sin(t·ω_k)]`` with ``ω_k = max_period^(−k/half)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """``x [B, c_in, D, H, W]``, ``temb [B, E]`` → ``[B, c_out, D, H, W]``.

    ``h = conv(SiLU(GN(x)))``; ``h += Linear(SiLU(temb))``; ``h = conv(SiLU(GN(h)))``; ``h + skip(x)``.
    A decoder block is called with ``skip`` and works on ``x = cat([x, skip], dim=1)``. With ``recompute``
    (:class:`UNet3D` passes ``recompute_norm`` while gradients are recorded), the GN → SiLU → conv chains run
    through :func:`ctdiff.model.norm_conv.norm_silu_conv`'s chunked, recomputing path and the 1×1 skip
    convolution is applied to ``x`` and ``skip`` apart (its weight split by input channels), so the
    concatenation is never formed.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(c_in, groups)
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2 = _group_norm(c_out, groups)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, skip: Tensor | None = None, recompute: bool = False) -> Tensor:
        parts = (x,) if skip is None else (x, skip)
        if not recompute and skip is not None:
            x = torch.cat(parts, dim=1)
            parts = (x,)
        h = norm_silu_conv(self.norm1, self.conv1, parts, recompute)
        h = h + self.emb_proj(F.silu(temb))[:, :, None, None, None]
        h = norm_silu_conv(self.norm2, self.conv2, (h,), recompute)
        return h + self._skip(parts)

    def _skip(self, parts: tuple[Tensor, ...]) -> Tensor:
        if isinstance(self.skip, nn.Identity):
            return parts[0]
        if len(parts) == 1:
            return self.skip(parts[0])
        out, start = None, 0
        for p in parts:  # a 1×1 conv of a concatenation is the sum of 1×1 convs of its parts
            w = self.skip.weight[:, start:start + p.shape[1]]
            term = F.conv3d(p, w, self.skip.bias if out is None else None)
            out = term if out is None else out + term
            start += p.shape[1]
        return out


class SelfAttention3D(nn.Module):
    """Multi-head self-attention over all ``D·H·W`` voxels with a residual: ``[B, C, D, H, W]`` → same."""

    def __init__(self, channels: int, groups: int, head_dim: int = 64) -> None:
        super().__init__()
        self.heads = channels // head_dim if channels % head_dim == 0 and channels >= head_dim else 1
        self.norm = _group_norm(channels, groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, -1).unbind(1)
        # [B, heads, head_dim, N] → [B, heads, N, head_dim] for attention over the N voxels.
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(h.transpose(-1, -2).reshape(x.shape))


class Downsample(nn.Module):
    """Stride-2 3³ conv: ``[B, C, D, H, W]`` → ``[B, C, D/2, H/2, W/2]`` (all three axes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 on D, H, W then a 3³ conv: ``[B, C, D, H, W]`` → ``[B, C, 2D, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet3D(nn.Module):
    """Residual 3D U-Net: ``x [B, C_in, D, H, W]``, ``t [B]`` int64 (and ``cond [B, C_cond, D, H, W]`` when
    ``cond_channels > 0``) → predicted noise ``[B, C_in, D, H, W]``."""

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        res_blocks: int = 2,
        attention: bool = False,
        in_channels: int = 1,
        groups: int = 32,
        cond_channels: int = 0,
        grad_checkpointing: bool = False,
        recompute_norm: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive integers, got {channels}")
        if res_blocks < 1:
            raise ValueError(f"res_blocks must be >= 1, got {res_blocks}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        self.channels = channels
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.grad_checkpointing = grad_checkpointing
        emb_dim = 4 * channels[0]

        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv3d(in_channels + cond_channels, channels[0], 3, padding=1)

        # Every encoder output (input conv, each residual block, each downsample) is kept as a skip.
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skips: list[int] = [channels[0]]
        c = channels[0]
        for level, c_level in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(c, c_level, emb_dim, groups))
                c = c_level
                skips.append(c)
            self.down_blocks.append(blocks)
            if level < len(channels) - 1:
                self.downsamples.append(Downsample(c))
                skips.append(c)
            else:
                self.downsamples.append(nn.Identity())

        self.mid1 = ResBlock(c, c, emb_dim, groups)
        self.mid_attn = SelfAttention3D(c, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, groups)

        # Decoder levels are stored deepest first, in the order forward() runs them; each level has one
        # block more than its encoder level, so that every skip is consumed exactly once.
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(channels))):
            blocks = nn.ModuleList()
            for _ in range(res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), channels[level], emb_dim, groups))
                c = channels[level]
            self.up_blocks.append(blocks)
            self.upsamples.append(nn.Identity() if level == 0 else Upsample(c))

        self.norm_out = _group_norm(c, groups)
        self.conv_out = nn.Conv3d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # GN → SiLU → conv chunked and recomputed in the backward pass (ctdiff.model.norm_conv): less memory,
        # the same values.
        self.recompute_norm = recompute_norm

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def _recompute(self) -> bool:
        return self.recompute_norm and torch.is_grad_enabled()

    def _res(self, block: ResBlock, h: Tensor, temb: Tensor, skip: Tensor | None = None) -> Tensor:
        """``block`` on ``h`` (concatenated with the decoder ``skip`` on the channel axis, when given).

        With gradient checkpointing the block's activations are recomputed in the backward pass instead of
        stored, and the concatenation happens inside the recomputed function: the stored inputs are then
        ``h`` and ``skip``, tensors that are kept anyway, instead of a new ``[B, C_h + C_skip, …]`` tensor
        per decoder block (the largest saved activations at full resolution).
        """
        if self._checkpointing():
            return checkpoint(block, h, temb, skip, self._recompute(), use_reentrant=False)
        return block(h, temb, skip, self._recompute())

    def _up(self, up: nn.Module, h: Tensor) -> Tensor:
        """Upsampling; checkpointed like the blocks, so the ×2 nearest-neighbour copy is not stored."""
        if self._checkpointing() and isinstance(up, Upsample):
            return checkpoint(up, h, use_reentrant=False)
        return up(h)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``x``: ``[B, C_in, D, H, W]``; ``t``: ``[B]`` int64 timesteps; ``cond``: ``[B, C_cond, D, H, W]``,
        required when ``cond_channels > 0`` and refused otherwise → ``ε̂``: ``[B, C_in, D, H, W]``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        if self.cond_channels:
            if cond is None or cond.shape != (x.shape[0], self.cond_channels, *x.shape[2:]):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"expected cond of shape [{x.shape[0]}, {self.cond_channels}, "
                                 f"{', '.join(map(str, x.shape[2:]))}], got {got}")
            x = torch.cat([x, cond], dim=1)
        elif cond is not None:
            raise ValueError("this U-Net takes no condition (cond_channels=0), but one was given")
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape [{x.shape[0]}], got {tuple(t.shape)}")
        factor = 2 ** (len(self.channels) - 1)
        if any(n % factor for n in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {factor} "
                f"(2**(len(channels)-1) for {len(self.channels)} levels)"
            )

        temb = self.time_mlp(timestep_embedding(t, self.channels[0]).to(self.time_mlp[0].weight.dtype))
        h = self.conv_in(x)
        skips = [h]
        for level, (blocks, down) in enumerate(zip(self.down_blocks, self.downsamples)):
            for block in blocks:
                h = self._res(block, h, temb)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = down(h)
                skips.append(h)

        h = self._res(self.mid1, h, temb)
        h = self.mid_attn(h)
        h = self._res(self.mid2, h, temb)

        for blocks, up in zip(self.up_blocks, self.upsamples):
            for block in blocks:
                h = self._res(block, h, temb, skips.pop())
            h = self._up(up, h)
        return norm_silu_conv(self.norm_out, self.conv_out, (h,), self._recompute())
