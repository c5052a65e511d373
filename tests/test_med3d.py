"""Med3D trunk: MedicalNet layout and key names, strict weight loading, deterministic features."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from ctdiff.metrics.med3d import Med3DResNet, extract_features, load_med3d


def _conv_seg_keys(feature_dim: int) -> dict[str, torch.Tensor]:
    """The segmentation-head tensors MedicalNet's published files carry (shapes as in its resnet.py)."""
    return {
        "conv_seg.0.weight": torch.zeros(feature_dim, 32, 2, 2, 2),
        "conv_seg.0.bias": torch.zeros(32),
        "conv_seg.1.weight": torch.ones(32),
        "conv_seg.1.bias": torch.zeros(32),
        "conv_seg.1.running_mean": torch.zeros(32),
        "conv_seg.1.running_var": torch.ones(32),
        "conv_seg.3.weight": torch.zeros(32, 32, 3, 3, 3),
        "conv_seg.6.weight": torch.zeros(2, 32, 1, 1, 1),
    }


def test_resnet10_layout_matches_medicalnet():
    sd = Med3DResNet(10).state_dict()
    # one BasicBlock per layer; type-B projections where stride or width changes (not in layer1)
    assert sd["conv1.weight"].shape == (64, 1, 7, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 3, 3, 3)
    assert "layer1.0.downsample.0.weight" not in sd
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1, 1)
    assert sd["layer4.0.downsample.1.running_var"].shape == (512,)
    assert len(sd) == 72 and not any(k.startswith("conv_seg") for k in sd)
    m = Med3DResNet(10)
    assert m.layer3[0].conv1.dilation == (2, 2, 2) and m.layer4[0].conv2.dilation == (4, 4, 4)
    assert m.layer2[0].conv1.stride == (2, 2, 2) and m.layer3[0].conv1.stride == (1, 1, 1)


def test_resnet18_uses_parameter_free_shortcut():
    sd = Med3DResNet(18).state_dict()
    assert not any("downsample" in k for k in sd)
    assert len(sd) == 102
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert Med3DResNet(18).eval()(x).shape == (1, 512)


def test_output_stride_is_8():
    m = Med3DResNet(10).eval()
    x = torch.rand(1, 1, 32, 24, 16)
    with torch.no_grad():
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        y = m.layer4(m.layer3(m.layer2(m.layer1(y))))
    assert y.shape == (1, 512, 4, 3, 2)


def test_random_network_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, info = load_med3d(10, None, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    b, _ = load_med3d(10, None, seed=3)
    c, _ = load_med3d(10, None, seed=4)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not a.training
    assert info["pretrained"] is False and info["weights"] is None and info["sha256"] is None
    assert info["depth"] == 10 and "not comparable" in info["note"]


def test_extract_features_shapes_batching_and_zscore():
    model, _ = load_med3d(10, None, seed=0)
    rng = np.random.default_rng(0)
    vols = [rng.random((16, 16, 16), dtype=np.float32) for _ in range(5)]
    f1 = extract_features(model, vols, batch_size=2)
    f2 = extract_features(model, (torch.from_numpy(v) for v in vols), batch_size=5)
    assert f1.shape == (5, 512) and f1.dtype == np.float64
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
    # z-scoring makes the features invariant to an affine intensity change
    z1 = extract_features(model, vols, normalise="zscore")
    z2 = extract_features(model, [0.5 * v + 0.2 for v in vols], normalise="zscore")
    np.testing.assert_allclose(z1, z2, rtol=1e-4, atol=1e-5)
    assert not np.allclose(z1, f1)
    with pytest.raises(ValueError, match="normalise"):
        extract_features(model, vols, normalise="minmax")
    with pytest.raises(ValueError, match="constant"):
        extract_features(model, [np.zeros((16, 16, 16))], normalise="zscore")
    with pytest.raises(ValueError, match=r"\[D, H, W\]"):
        extract_features(model, [vols[0], vols[1][:8]], batch_size=2)


def test_resnet50_published_layout_round_trips_strictly(tmp_path):
    ref, _ = load_med3d(50, None, seed=7)
    assert ref.feature_dim == 2048
    sd = ref.state_dict()
    # as MedicalNet saves it: DataParallel prefix, segmentation head, training metadata
    ckpt = {"ecpoch": 3, "batch_id": 0, "state_dict": {"module." + k: v for k, v in sd.items()}}
    ckpt["state_dict"].update({"module." + k: v for k, v in _conv_seg_keys(2048).items()})
    path = tmp_path / "resnet_50.pth"
    torch.save(ckpt, path)
    model, info = load_med3d(50, path, seed=0)  # a different seed: the file must win
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    assert info["pretrained"] is True and info["weights"] == str(path) and len(info["sha256"]) == 64
    assert "note" not in info
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x)) and model(x).shape == (2, 2048)


def test_mismatched_weights_raise_with_key_lists(tmp_path):
    sd = Med3DResNet(10).state_dict()
    sd.pop("layer2.0.downsample.0.weight")
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_med3d(10, path)
    msg = str(err.value)
    assert "missing keys: ['layer2.0.downsample.0.weight']" in msg
    assert "unexpected keys: ['layer9.0.conv1.weight']" in msg
    # a ResNet-18 (shortcut A) file is not a ResNet-10 file
    torch.save({"state_dict": Med3DResNet(18).state_dict()}, path)
    with pytest.raises(ValueError, match="unexpected keys: .*layer1.1.conv1.weight"):
        load_med3d(10, path)
    bad_shape = Med3DResNet(10).state_dict()
    bad_shape["conv1.weight"] = torch.zeros(64, 1, 3, 3, 3)
    torch.save(bad_shape, path)
    with pytest.raises(ValueError, match="conv1.weight"):
        load_med3d(10, path)
    with pytest.raises(FileNotFoundError):
        load_med3d(10, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="depth"):
        load_med3d(11, None)


def test_files_without_num_batches_tracked_load(tmp_path):
    """Files from before PyTorch 0.4.1 lack BN counters; PyTorch fills them, all else stays strict."""
    sd = {k: v for k, v in Med3DResNet(10).state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd}, tmp_path / "old.pth")
    model, _ = load_med3d(10, tmp_path / "old.pth")
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


MEDICALNET = os.environ.get("CTDIFF_MEDICALNET_RESNET")


@pytest.mark.skipif(not MEDICALNET, reason="set CTDIFF_MEDICALNET_RESNET to MedicalNet's models/resnet.py (not "
                                           "shipped: its code is not part of ctdiff) to compare with its own module")
@pytest.mark.parametrize("depth", [10, 18, 34, 50, 101, 152, 200])
def test_pooled_layer4_equals_medicalnets_own_module(depth):
    """MedicalNet's ResNet with random weights and non-trivial BatchNorm statistics, its state dict loaded
    strictly into Med3DResNet (``conv_seg`` dropped): in float64 the pooled layer4 outputs agree to rounding.
    Both run the same torch kernels in the same order, so the difference is 0 in practice; 1e-12 relative
    leaves room for a kernel that reorders a sum."""
    spec = importlib.util.spec_from_file_location("medicalnet_resnet", MEDICALNET)
    medicalnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(medicalnet)
    torch.manual_seed(depth)
    shortcut = "A" if depth in (18, 34) else "B"
    ref = getattr(medicalnet, f"resnet{depth}")(sample_input_D=32, sample_input_H=32, sample_input_W=32,
                                                num_seg_classes=2, shortcut_type=shortcut, no_cuda=True)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
    ref = ref.double().eval()
    ours = Med3DResNet(depth).double().eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("conv_seg.")}, strict=True)
    x = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(h)))).mean(dim=(2, 3, 4))
        got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
