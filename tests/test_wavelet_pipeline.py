"""model.representation: wavelet through the samplers, training, checkpoints and sampling, up to 256³."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdiff.training.checkpoint import load_for_sampling, read_checkpoint, save_checkpoint
from ctdiff.config import Config, DiffusionConfig, ModelConfig, PreprocessConfig, SampleConfig, TrainConfig
from ctdiff.diffusion.samplers import ddim_step, timestep_sequence
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule
from ctdiff.sampling.generate import generate, sample_generator
from ctdiff.files import load_volume, save_volume
from ctdiff.model.representation import network_shape, x0_clip
from ctdiff.model.wavelet import haar3d, ihaar3d
from ctdiff.training.loop import train
from ctdiff.training.step import host_batch

U32 = 2.0**-24
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


class _Toward:
    """An ε-model whose predicted x0 is ``target`` (voxel space) at every step, made to overshoot [-1, 1]."""

    def __init__(self, s, target: torch.Tensor) -> None:
        self.s, self.target = s, target

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = float(self.s.alphas_cumprod[int(t[0])])
        return (x - math.sqrt(a) * self.target) / math.sqrt(1 - a)


def test_voxel_sampling_is_byte_identical_with_the_clip_callable():
    s = make_schedule(timesteps=30)
    target = 1.5 * torch.sin(torch.arange(8.0**3)).reshape(1, 1, 8, 8, 8)
    model = _Toward(s, target)
    for sampler, steps in (("ddpm", None), ("ddim", 7), ("dpmpp", 7)):
        kw = dict(sampler=sampler, steps=steps)
        plain = sample(model, s, (1, 8, 8, 8), [sample_generator(0, 0)], **kw)
        given = sample(model, s, (1, 8, 8, 8), [sample_generator(0, 0)], clip=x0_clip("voxels"), **kw)
        assert torch.equal(plain, given), sampler


def test_wavelet_chain_is_the_voxel_chain_in_other_coordinates():
    """Deterministic DDIM is linear in (x_t, ε, x̂0) and the wavelet clip is the voxel clamp seen through the
    orthonormal transform, so the wavelet chain from x_T equals the transformed voxel chain from H⁻¹(x_T).

    Bound: each step applies at most three transform pairs more on one side than on the other (the model
    wrapper, the clip), each within 80u·M of exact (tests/test_wavelet.py), with M the largest magnitude they
    act on: x_t, or x̂0 and √(1−ᾱ)·ε̂ = x_t − √ᾱ·target, all below max|x_t| + max|target|; DDIM maps an error
    in x_t to at most √(ᾱ_prev/ᾱ_t) <= 1/√ᾱ_{T−1} times it, so over n steps
    |Δ| <= n · 3 · 80u · M / √ᾱ_{T−1}."""
    s = make_schedule(timesteps=30)
    g = torch.Generator().manual_seed(0)
    target = 1.5 * torch.tanh(3 * torch.randn(2, 1, 8, 8, 8, generator=g))  # overshoots: the clip acts

    def wavelet_model(y, t):
        return haar3d(_Toward(s, target)(ihaar3d(y), t))

    gens = [sample_generator(3, i) for i in range(2)]
    ours = ihaar3d(sample(wavelet_model, s, (8, 4, 4, 4), gens, sampler="ddim", steps=6, clip=x0_clip("wavelet")))

    x = ihaar3d(torch.stack([torch.randn((8, 4, 4, 4), generator=sample_generator(3, i)) for i in range(2)]))
    steps = timestep_sequence("ddim", 6, 30)
    voxel_model = _Toward(s, target)
    largest = x.abs().max().item()
    for i, t in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        x = ddim_step(s, voxel_model(x, torch.full((2,), t)), t, t_prev, x, None, clip=True)
        largest = max(largest, x.abs().max().item())
    bound = 6 * 3 * 80 * U32 * (largest + target.abs().max().item()) / math.sqrt(s.alphas_cumprod[-1])
    assert (ours - x.clamp(-1, 1)).abs().max().item() <= bound
    assert x.abs().max() <= 1 and (x.abs() == 1).any()  # the clip was active


def _write(folder: Path, n: int, size: int) -> list[Path]:
    grid = np.indices((size,) * 3).astype(np.float32)
    r = np.sqrt(((grid - size / 2) ** 2).sum(0)) / size
    paths = []
    for i in range(n):
        path = folder / f"V{i}.nii.gz"
        save_volume(path, (r < 0.25 + 0.05 * i).astype(np.float32), AFFINE)
        paths.append(path)
    return paths


def _config(size: int, steps: int = 2, **model) -> Config:
    return Config(preprocess=PreprocessConfig(size=size, spacing_mm=2.0),
                  model=ModelConfig(channels=(4, 8), res_blocks=1, groups=2, representation="wavelet", **model),
                  diffusion=DiffusionConfig(timesteps=10),
                  train=TrainConfig(steps=steps, batch_size=1, lr=1e-3, ema_decay=0.9, checkpoint_every=steps,
                                    log_every=1))


def test_wavelet_trains_and_samples_end_to_end(tmp_path):
    files = _write(tmp_path / "v", 2, 32)
    ckpt = tmp_path / "model.pt"
    net = train(files, ckpt, tmp_path / "log.csv", tmp_path / "state", _config(32), progress=False)
    assert net.conv_in.in_channels == 8 and net.conv_out.out_channels == 8
    assert read_checkpoint(ckpt)["config"]["model"]["representation"] == "wavelet"
    model, _, cfg = load_for_sampling(ckpt)
    assert cfg.model.representation == "wavelet" and model.in_channels == 8
    out = [tmp_path / "s" / f"{i}.nii.gz" for i in range(2)]
    generate(ckpt, out, tmp_path / "cache", SampleConfig(n=2, batch_size=2, sampler="ddim", steps=3), progress=False)
    for path in out:
        volume, _ = load_volume(path)
        assert volume.shape == (32,) * 3 and volume.dtype == np.float32
        assert 0.0 <= volume.min() and volume.max() <= 1.0


def test_checkpoints_without_the_key_or_inconsistent_with_their_weights_are_refused(tmp_path):
    files = _write(tmp_path / "v", 1, 16)
    ckpt = tmp_path / "model.pt"
    voxels = dataclasses.replace(_config(16, steps=1), model=ModelConfig(channels=(4, 8), res_blocks=1, groups=2))
    train(files, ckpt, tmp_path / "log.csv", tmp_path / "state", voxels, progress=False)
    payload = read_checkpoint(ckpt)
    model, _, cfg = load_for_sampling(ckpt)
    assert cfg.model.representation == "voxels" and model.in_channels == 1
    del payload["config"]["model"]["representation"]
    for key in ("format", "version"):
        payload.pop(key)
    old = tmp_path / "old.pt"
    save_checkpoint(old, payload)
    with pytest.raises(ValueError, match="model.representation is not recorded"):
        load_for_sampling(old)

    payload["config"]["model"]["representation"] = "wavelet"  # says wavelet, holds a one-channel network
    save_checkpoint(old, payload)
    with pytest.raises(ValueError, match=r"records model.representation: wavelet and model.condition: none "
                                         r"\(8 input channels\).* take 1"):
        load_for_sampling(old)
    with pytest.raises(ValueError, match="representation: wavelet"):
        generate(old, [tmp_path / "x.nii.gz"], tmp_path / "cache", SampleConfig(n=1), progress=False)


def test_the_256_path_has_the_right_shapes(tmp_path):
    """A real 256³ training volume through the training set and the host batch, and the model and sampler
    shapes on the meta device (training and sampling at 256³ run end to end too, but take ~45 s on a CPU core)."""
    from ctdiff.model.build import build_model
    from ctdiff.training.trainset import TrainingSet

    cfg = _config(256)
    volume = np.zeros((256,) * 3, dtype=np.float32)
    volume[64:192, 80:176, 96:160] = 1.0
    save_volume(tmp_path / "V0.nii.gz", volume, AFFINE)
    trainset = TrainingSet([tmp_path / "V0.nii.gz"], 256, tmp_path / "cache")
    x0, t, noise = host_batch(trainset, cfg.train, range(0, 1), DiffusionConfig(timesteps=10), "wavelet", 0)
    assert x0.shape == noise.shape == (1, 8, 128, 128, 128) and t.shape == (1,)
    expected = haar3d(torch.from_numpy(volume * 2 - 1)[None, None])
    assert torch.equal(x0, expected)  # the same float32 operations on the same [-1, 1] volume
    assert network_shape("wavelet", 256) == (8, 128, 128, 128)
    with torch.device("meta"):
        model = build_model(cfg.model)
        y = model(torch.empty(1, 8, 128, 128, 128), torch.zeros(1, dtype=torch.long))
        assert ihaar3d(y).shape == (1, 1, 256, 256, 256)
