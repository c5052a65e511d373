"""Med3D (Tencent MedicalNet) 3-D ResNet as a fixed feature extractor for FID.

Architecture of Chen, Ma & Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis" (2019,
arXiv:1904.00625), as built by MedicalNet's ``models/resnet.py``:

    x [B, 1, D, H, W]
    conv1 7³ stride 2 pad 3 → bn1 → ReLU → maxpool 3³ stride 2 pad 1          [B, 64, D/4, ...]
    layer1 (64 planes)   stride 1                                             [B, 64·e, D/4, ...]
    layer2 (128 planes)  stride 2                                             [B, 128·e, D/8, ...]
    layer3 (256 planes)  stride 1, dilation 2                                 [B, 256·e, D/8, ...]
    layer4 (512 planes)  stride 1, dilation 4                                 [B, 512·e, D/8, ...]
    global average pool → features                                            [B, 512·e]

with e = 1 (BasicBlock, depths 10/18/34) or e = 4 (Bottleneck, depths 50/101/152/200). The first block of a
layer gets a shortcut projection when its stride is not 1 or its width changes: type 'B' is a 1³ conv + BN
(``downsample.0``/``downsample.1`` in the state dict), type 'A' is parameter-free (stride-subsample, then
zero-pad the channels). MedicalNet published its ResNet-18/34 weights with 'A' and all others with 'B'.

MedicalNet's segmentation head ``conv_seg`` is not built: the published files' ``conv_seg.*`` keys are dropped
on load and every other key must match exactly (names as in MedicalNet without DataParallel's ``module.``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctdiff.files import file_sha256
from ctdiff.options import NORMALISE, Normalise

# depth -> (block kind, blocks per layer, shortcut type of the published MedicalNet weights)
_CONFIGS: dict[int, tuple[str, tuple[int, int, int, int], str]] = {
    10: ("basic", (1, 1, 1, 1), "B"),
    18: ("basic", (2, 2, 2, 2), "A"),
    34: ("basic", (3, 4, 6, 3), "A"),
    50: ("bottleneck", (3, 4, 6, 3), "B"),
    101: ("bottleneck", (3, 4, 23, 3), "B"),
    152: ("bottleneck", (3, 8, 36, 3), "B"),
    200: ("bottleneck", (3, 24, 36, 3), "B"),
}
DEPTHS = tuple(_CONFIGS)


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3³ convolution whose padding equals its dilation (size-preserving at stride 1)."""
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _ZeroPadShortcut(nn.Module):
    """Shortcut type 'A': subsample by ``stride`` (MedicalNet's 1³ average pool) and zero-pad the channels."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        pad = x.new_zeros((x.shape[0], self.out_channels - x.shape[1], *x.shape[2:]))
        return torch.cat([x, pad], dim=1)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Med3DResNet(nn.Module):
    """MedicalNet 3-D ResNet trunk; ``forward`` maps ``[B, 1, D, H, W]`` to pooled layer4 features ``[B, C]``.

    ``C`` (``feature_dim``) is 512 for depths 10/18/34 and 2048 for 50/101/152/200. ``shortcut`` defaults to
    the type MedicalNet used for its published weights of that depth.
    """

    def __init__(self, depth: int, shortcut: Literal["A", "B"] | None = None):
        super().__init__()
        if depth not in _CONFIGS:
            raise ValueError(f"Med3D depth must be one of {DEPTHS}, got {depth!r}")
        kind, counts, default_shortcut = _CONFIGS[depth]
        shortcut = default_shortcut if shortcut is None else shortcut
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.depth, self.shortcut = depth, shortcut
        block = _BasicBlock if kind == "basic" else _Bottleneck
        self._inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=1, dilation=4)
        self.feature_dim = 512 * block.expansion

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._inplanes != out:
            if self.shortcut == "A":
                downsample = _ZeroPadShortcut(out, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self._inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out)
                )
        layers = [block(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = out
        layers += [block(out, planes, 1, dilation, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, 1, D, H, W] → global average pool of layer4, [B, feature_dim]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool3d(x, 1).flatten(1)


def _seeded_init(model: Med3DResNet, seed: int) -> None:
    """MedicalNet's initialisation (Kaiming-normal fan-out convs, BN γ = 1, β = 0) from a local generator."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _state_dict_from_file(path: Path) -> dict[str, Tensor]:
    """Read a MedicalNet checkpoint: ``{'state_dict': {...}, ...}`` or a bare state dict; strip ``module.``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in several types; all mean "not a safe weights file"
        raise ValueError(f"{path}: cannot be read as a weights-only torch file: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict or a dict with key 'state_dict' mapping names to tensors"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_med3d(depth: int, weights: Path | None, *, seed: int = 0) -> tuple[Med3DResNet, dict]:
    """Build the depth-``depth`` Med3D trunk in eval mode, with MedicalNet weights or a seeded random init.

    With ``weights``, every key except ``conv_seg.*`` must match (after removing ``module.``); any missing or
    unexpected key, or a shape mismatch, raises ``ValueError`` listing them. BatchNorm ``num_batches_tracked``
    counters, absent from files written before PyTorch 0.4.1, are filled by PyTorch itself (they do not affect
    eval-mode outputs). Without ``weights`` the network is randomly initialised from ``seed`` (global RNG state
    untouched): usable for tests and demos, but its FID is not comparable to the paper's.

    Returns ``(model, provenance)`` with provenance keys weights, sha256, depth, shortcut, feature_dim,
    pretrained and, for random networks, note.
    """
    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG; restore it
        model = Med3DResNet(depth)
    _seeded_init(model, seed)
    info: dict = {
        "weights": None,
        "sha256": None,
        "depth": depth,
        "shortcut": model.shortcut,
        "feature_dim": model.feature_dim,
        "pretrained": weights is not None,
    }
    if weights is None:
        info["seed"] = seed
        info["note"] = "seeded random network: not comparable to the paper"
    else:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"Med3D weights file not found: {weights}")
        state = {k: v for k, v in _state_dict_from_file(weights).items() if not k.startswith("conv_seg.")}
        try:
            result = model.load_state_dict(state, strict=False)  # strictness enforced just below, with a list
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{weights}: does not fit Med3D ResNet-{depth}: {e}") from e
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights}: does not fit Med3D ResNet-{depth} (shortcut {model.shortcut}); "
                f"missing keys: {sorted(result.missing_keys)}; "
                f"unexpected keys: {sorted(result.unexpected_keys)}"
            )
        info["weights"], info["sha256"] = str(weights), file_sha256(weights)
    return model.eval(), info


def _batches(volumes: Iterable[np.ndarray | Tensor], batch_size: int) -> Iterator[list[Tensor]]:
    batch: list[Tensor] = []
    for v in volumes:
        batch.append(torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_features(
    model: Med3DResNet,
    volumes: Iterable[np.ndarray | Tensor],
    *,
    normalise: Normalise = "none",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Med3D features of volumes streamed ``batch_size`` at a time: ``[D, H, W]`` each → ``[N, C]`` float64.

    ``normalise='none'`` feeds the [0, 1] intensities as they are (as WDM-3D does); ``'zscore'`` standardises
    each volume over all its voxels, (x − mean) / std. MedicalNet's own training z-scored over the nonzero
    voxels only and filled the background with random noise; that randomness is deliberately not reproduced.
    The network runs in float32 without gradients; a constant volume cannot be z-scored and raises.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = model.to(device).eval()
    feats: list[np.ndarray] = []
    seen = 0
    with torch.inference_mode():
        for batch in _batches(volumes, batch_size):
            for i, v in enumerate(batch):
                if v.ndim != 3 or v.shape != batch[0].shape:
                    raise ValueError(f"volume {seen + i}: expected [D, H, W] like {tuple(batch[0].shape)}, "
                                     f"got {tuple(v.shape)}")
            x = torch.stack(batch).to(device=device, dtype=torch.float32).unsqueeze(1)  # [b, 1, D, H, W]
            if normalise == "zscore":
                std = x.std(dim=(1, 2, 3, 4), keepdim=True)
                if bool((std == 0).any()):
                    last = seen + len(batch) - 1
                    raise ValueError(f"a volume in {seen}..{last} is constant: cannot z-score")
                x = (x - x.mean(dim=(1, 2, 3, 4), keepdim=True)) / std
            feats.append(model(x).double().cpu().numpy())
            seen += len(batch)
    if not feats:
        raise ValueError("no volumes given")
    return np.concatenate(feats, axis=0)
