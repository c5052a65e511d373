"""Nodule conditioning: the mask encoding against closed forms, the conditioned U-Net, classifier-free guidance
against separate network calls, deterministic condition dropout, and training with masks at tiny size."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import AFFINE, SIZE, tiny_config, write_volumes
from ctdiff.training.checkpoint import load_for_sampling, read_checkpoint
from ctdiff.config import Config, ModelConfig, from_dict
from ctdiff.files import save_volume
from ctdiff.model.condition import DISTANCE_CLIP_MM, encode_mask, guided, null_condition, spacing_of
from ctdiff.model.unet import UNet3D
from ctdiff.training.loop import train
from ctdiff.training.step import draw_condition_dropout, draw_noise

COND_MODEL = ModelConfig(channels=(4, 8), res_blocks=1, attention=False, groups=2, condition="nodules")


def test_encoding_matches_the_distances_of_a_one_voxel_nodule():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2, 3, 4] = 5
    enc = encode_mask(labels, (2.0, 2.0, 2.0))
    assert enc.shape == (2, 8, 8, 8) and enc.dtype == np.float32
    assert enc[0, 2, 3, 4] == 1.0 and (enc[0] == 1.0).sum() == 1 and enc[0].min() == -1.0
    # inside: 2 mm to the nearest background voxel; outside: |offset| · 2 mm to the nodule voxel
    assert enc[1, 2, 3, 4] == pytest.approx(-2.0 / DISTANCE_CLIP_MM)
    assert enc[1, 5, 7, 4] == pytest.approx(2.0 * 5.0 / DISTANCE_CLIP_MM)        # offset (3, 4, 0)
    assert enc[1, 7, 7, 7] == pytest.approx(2.0 * math.sqrt(25 + 16 + 9) / DISTANCE_CLIP_MM)
    # anisotropic spacing is honoured; far voxels clip to +1
    aniso = encode_mask(labels, (10.0, 1.0, 1.0))
    assert aniso[1, 2, 7, 4] == pytest.approx(4.0 / DISTANCE_CLIP_MM)
    assert aniso[1, 6, 3, 4] == 1.0                                             # 40 mm > the clip


def test_empty_mask_is_the_null_condition_and_spacing_reads_the_affine():
    enc = encode_mask(np.zeros((4, 4, 4), np.uint8), (3.0, 3.0, 3.0))
    null = null_condition(torch.zeros(1, 2, 4, 4, 4))
    assert torch.equal(torch.from_numpy(enc)[None], null)
    assert spacing_of(AFFINE) == (3.0, 3.0, 3.0)
    rotated = np.eye(4)
    rotated[:3, :3] = [[0, -2.0, 0], [1.5, 0, 0], [0, 0, 4.0]]
    assert spacing_of(rotated) == (1.5, 2.0, 4.0)


def _net(cond_channels, seed=0):
    torch.manual_seed(seed)
    net = UNet3D(channels=(4, 8), res_blocks=1, groups=2, cond_channels=cond_channels).double().eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # zero-initialised: make the output depend on the input
    return net


def test_condition_channels_enter_the_input_convolution_only():
    x, t = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64), torch.tensor([3, 7])
    cond = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    net = _net(2)
    assert net.conv_in.weight.shape[1] == 3 and net.conv_out.weight.shape[0] == 1
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, torch.zeros_like(cond)))
    # Independent path: with the condition's input weights zero, the net is the plain net with the same weights.
    plain = _net(0)
    with torch.no_grad():
        net.conv_in.weight[:, 1:] = 0
        plain.load_state_dict({k: (v[:, :1] if k == "conv_in.weight" else v) for k, v in net.state_dict().items()})
    torch.testing.assert_close(net(x, t, cond), plain(x, t), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expected cond of shape"):
        net(x, t)
    with pytest.raises(ValueError, match="takes no condition"):
        plain(x, t, cond)


def test_guidance_scales_against_separate_calls():
    net = _net(2)
    x, t = torch.randn(3, 1, 8, 8, 8, dtype=torch.float64), torch.tensor([1, 5, 9])
    cond = torch.from_numpy(np.stack([encode_mask(np.pad(np.ones((2, 2, 2)), ((k, 6 - k),) * 3), (3.0,) * 3)
                                      for k in range(3)])).double()
    c, u = net(x, t, cond), net(x, t, null_condition(cond))
    with torch.no_grad():
        assert torch.equal(guided(net, cond, 0.0)(x, t), u)       # exactly the unconditional network path
        assert torch.equal(guided(net, cond, 1.0)(x, t), c)
        for w in (0.5, 3.0):  # one doubled batch; float64, so batching changes nothing beyond 1e-12
            torch.testing.assert_close(guided(net, cond, w)(x, t), u + w * (c - u), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="needs a conditioned model"):
        guided(_net(0), None, 2.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        guided(net, cond, -1.0)


def test_condition_dropout_draws_are_deterministic_split_free_and_at_their_rate():
    a = draw_condition_dropout(0, 7, range(8), 0.3)
    assert torch.equal(a, draw_condition_dropout(0, 7, range(8), 0.3))
    # a process's shard draws what the same positions draw in the whole batch
    assert torch.equal(torch.cat([draw_condition_dropout(0, 7, range(0, 4), 0.3),
                                  draw_condition_dropout(0, 7, range(4, 8), 0.3)]), a)
    assert not draw_condition_dropout(0, 7, range(8), 0.0).any() and len(draw_condition_dropout(0, 7, [], .3)) == 0
    # rate: 2000 draws of p = 0.1; 5 binomial standard deviations is 67 (a failure chance below 1e-6)
    n = sum(int(draw_condition_dropout(1, step, range(100), 0.1).sum()) for step in range(20))
    assert abs(n - 200) < 5 * math.sqrt(2000 * 0.1 * 0.9)
    # dropping does not move the noise and timestep draws of a step
    t, noise = draw_noise(0, 7, range(8), (1, 4, 4, 4), tiny_config().diffusion)
    t2, noise2 = draw_noise(0, 7, range(8), (1, 4, 4, 4), tiny_config().diffusion)
    assert torch.equal(t, t2) and torch.equal(noise, noise2)


def write_masks(folder, volumes):
    """A cube nodule at a different place in each volume's mask, on the volume's grid."""
    folder.mkdir(parents=True)
    paths = []
    for k, v in enumerate(volumes):
        labels = np.zeros((SIZE,) * 3, np.uint8)
        labels[k:k + 3, 2:5, 1 + k:3 + k] = 1
        save_volume(folder / v.name, labels, AFFINE)
        paths.append(folder / v.name)
    return paths


def cond_config(objective="eps", **train):
    cfg = tiny_config(**train)
    return dataclasses.replace(cfg, model=COND_MODEL, diffusion=dataclasses.replace(cfg.diffusion, objective=objective))


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_training_with_masks_records_the_condition_and_resumes_exactly(tmp_path, objective):
    volumes = write_volumes(tmp_path / "volumes", 4)
    masks = write_masks(tmp_path / "masks", volumes)

    def run(out, steps, state):
        train(volumes, out / "model.pt", out / "log.csv", state, cond_config(objective, steps=steps,
              condition_dropout=0.5), progress=False, condition_files=masks)

    run(tmp_path / "straight", 3, tmp_path / "s1")
    run(tmp_path / "first", 2, tmp_path / "s2")
    run(tmp_path / "second", 3, tmp_path / "s2")
    a, b = read_checkpoint(tmp_path / "straight" / "model.pt"), read_checkpoint(tmp_path / "second" / "model.pt")
    assert a["config"]["model"]["condition"] == "nodules"
    for name in a["ema"]:
        torch.testing.assert_close(a["ema"][name], b["ema"][name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "s1" / "conditions" / f"{volumes[0].name}.npy").exists()
    model, _, cfg = load_for_sampling(tmp_path / "straight" / "model.pt")
    assert cfg.model.condition == "nodules" and model.conv_in.weight.shape[1] == 3


def test_masks_are_required_checked_and_aligned(tmp_path):
    volumes = write_volumes(tmp_path / "volumes", 4)
    masks = write_masks(tmp_path / "masks", volumes)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="needs one nodule mask per training volume: 4 volumes, none"):
        train(volumes, out / "m.pt", out / "l.csv", out / "s", cond_config(), progress=False)
    with pytest.raises(ValueError, match="model.condition is none"):
        train(volumes, out / "m.pt", out / "l.csv", out / "s", tiny_config(), progress=False, condition_files=masks)
    shifted = AFFINE.copy()
    shifted[0, 3] += 3.0
    save_volume(masks[1], np.zeros((SIZE,) * 3, np.uint8), shifted)
    with pytest.raises(ValueError, match=f"nodule mask {masks[1]} does not lie on the grid"):
        train(volumes, out / "m.pt", out / "l.csv", out / "s", cond_config(), progress=False, condition_files=masks)
    save_volume(masks[1], np.full((SIZE,) * 3, 0.5, np.float32), AFFINE)
    with pytest.raises(ValueError, match="whole labels"):
        train(volumes, out / "m.pt", out / "l.csv", out / "s", cond_config(), progress=False, condition_files=masks)


def test_config_keys_default_to_the_paper_and_are_checked():
    cfg = Config()
    assert cfg.model.condition == "none" and cfg.sample.guidance == 1.0 and cfg.train.condition_dropout == 0.1
    assert from_dict({"model": {"condition": "nodules"}}).model.condition == "nodules"
    with pytest.raises(ValueError, match=r"sample.guidance=2.0 needs model.condition: nodules"):
        from_dict({"sample": {"guidance": 2.0}})
    with pytest.raises(ValueError, match=r"train.condition_dropout=1.0 must lie in \[0, 1\)"):
        from_dict({"model": {"condition": "nodules"}, "train": {"condition_dropout": 1.0}})
    with pytest.raises(ValueError, match=r"sample.guidance=-1 must be >= 0"):
        from_dict({"model": {"condition": "nodules"}, "sample": {"guidance": -1}})


def test_the_guidance_rule_is_stated_once():
    """The config check and guided() give the message of ctdiff.options.check_guidance word for word (the config's
    with its "config: " prefix), so the rule and its wording live in one place."""
    from ctdiff.options import check_guidance

    for section, conditioned, guidance in [({}, False, 2.0), ({"model": {"condition": "nodules"}}, True, -1)]:
        with pytest.raises(ValueError) as rule:
            check_guidance(guidance, conditioned, where="")
        with pytest.raises(ValueError) as config:
            from_dict({**section, "sample": {"guidance": guidance}})
        assert str(config.value) == "config: " + str(rule.value)
        with pytest.raises(ValueError) as sampling:
            guided(_net(2 if conditioned else 0), torch.zeros(1, 2, 8, 8, 8) if conditioned else None, guidance)
        assert str(sampling.value) == str(rule.value)
    with pytest.raises(ValueError, match="nodule masks need model.condition: nodules"):
        check_guidance(1.0, False, masks=True)
    check_guidance(1.0, False)
    check_guidance(0.0, True, masks=True)

def test_requested_nodules_are_balls_of_their_diameter_and_bad_ones_are_refused():
    from ctdiff.sampling.conditions import parse_nodule, requested_mask
    from ctdiff.sampling.generate import sample_affine

    affine = sample_affine(AFFINE, 8)                                   # 3 mm voxels, centre voxel at 0 mm
    labels, rows = requested_mask([(4, 4, 4, 9.0)], 8, affine, mm=False)
    # radius 4.5 mm = 1.5 voxels: offsets with |d|² <= 2.25: the centre, 6 faces, 12 edges
    assert labels.sum() == 19 and labels[4, 4, 4] == 1 and labels[5, 5, 4] == 1 and labels[5, 5, 5] == 0
    assert rows[0]["voxels"] == 19 and rows[0]["volume_mm3"] == 19 * 27.0
    # millimetres: LPS (0, 0, 0) is the centre voxel (3.5, 3.5, 3.5); a 1 mm nodule keeps its nearest voxel
    labels, rows = requested_mask([(0.0, 0.0, 0.0, 1.0)], 8, affine, mm=True)
    assert rows[0]["centroid_i"] == rows[0]["centroid_k"] == 3.5 and labels.sum() == 1
    # LPS x = -3 mm is RAS +3 mm: one voxel towards +i
    _, rows = requested_mask([(-3.0, 0.0, 0.0, 5.0)], 8, affine, mm=True)
    assert (rows[0]["centroid_i"], rows[0]["centroid_j"]) == (4.5, 3.5)
    with pytest.raises(ValueError, match=r"centre \(9, 1, 1\) voxels lies outside the 8\^3 volume"):
        requested_mask([(9, 1, 1, 5.0)], 8, affine, mm=False)
    with pytest.raises(ValueError, match=r"centre \(0, 0, 20\) mm \(LPS\) lies outside"):
        requested_mask([(0, 0, 20, 5.0)], 8, affine, mm=True)
    with pytest.raises(ValueError, match=r"diameter -2 mm must be > 0"):
        parse_nodule("1,2,3,-2")
    with pytest.raises(ValueError, match=r"'1,2,3' must be four numbers"):
        parse_nodule("1,2,3")


@pytest.fixture(scope="module")
def conditioned_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cond")
    volumes = write_volumes(tmp / "volumes", 4)
    masks = write_masks(tmp / "masks", volumes)
    train(volumes, tmp / "model.pt", tmp / "log.csv", tmp / "state", cond_config(steps=2), progress=False,
          condition_files=masks)
    return tmp / "model.pt", tmp / "masks"


def test_sampling_takes_held_out_masks_in_sorted_cycled_order_and_writes_them_beside(conditioned_checkpoint,
                                                                                      tmp_path, capsys):
    from ctdiff import cli
    from ctdiff.files import load_volume, write_tsv

    model, masks = conditioned_checkpoint
    write_tsv(masks / "V01.tsv", [{"label": 1, "kind": "nodule"}], ["label", "kind"])
    items = tmp_path / "test.txt"
    items.write_text("V01\nV00\n")
    out = tmp_path / "out"
    base = ["sample", "--checkpoint", str(model), "-n", "3", "--sampler", "ddim", "--steps", "2", "--device", "cpu",
            "--no-progress"]
    assert cli.main([*base, "--out", str(out), "--nodules-from", str(masks), "--nodule-items", str(items),
                     "--guidance", "2"]) == 0
    for i, item in enumerate(["V00", "V01", "V00"]):                 # sorted, then cycled
        assert np.array_equal(load_volume(out / "nodules" / f"{i:04d}.nii.gz")[0],
                              load_volume(masks / f"{item}.nii.gz")[0])
        assert (out / f"{i:04d}.nii.gz").exists()
    assert (out / "nodules" / "0001.tsv").read_text() == "label\tkind\n1\tnodule\n"
    assert (out / "nodules" / "0000.tsv").read_text().startswith("label\tkind\tn_readers")  # no table: empty
    # requested nodules: one mask for every sample; outside the volume: refused before any sampling
    assert cli.main([*base, "--out", str(tmp_path / "req"), "--nodule", "3,3,3,6", "--nodule", "1,1,6,3"]) == 0
    labels = load_volume(tmp_path / "req" / "nodules" / "0002.nii.gz")[0]
    assert set(np.unique(labels)) == {0, 1, 2} and (tmp_path / "req" / "nodules" / "requested.tsv").exists()
    assert cli.main([*base, "--out", str(tmp_path / "bad"), "--nodule", "3,3,30,6"]) == 2
    assert "centre (3, 3, 30) voxels lies outside the 8^3 volume" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "none")]) == 2
    assert "trained with model.condition: nodules" in capsys.readouterr().err


def test_an_unconditional_checkpoint_refuses_masks_and_guidance(volumes, tmp_path, capsys):
    from ctdiff import cli

    train(volumes, tmp_path / "model.pt", tmp_path / "log.csv", tmp_path / "state", tiny_config(steps=1),
          progress=False)
    base = ["sample", "--checkpoint", str(tmp_path / "model.pt"), "-n", "1", "--sampler", "ddim", "--steps", "2",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]
    assert cli.main([*base, "--guidance", "2"]) == 2
    assert "model.condition: none: it takes no nodule masks and no sample.guidance" in capsys.readouterr().err
    assert cli.main([*base, "--nodule", "3,3,3,6"]) == 2


def test_a_wavelet_model_takes_the_condition_as_sub_bands_and_samples_with_it(tmp_path):
    from ctdiff import cli
    from ctdiff.files import load_volume

    volumes = write_volumes(tmp_path / "volumes", 4)
    masks = write_masks(tmp_path / "masks", volumes)
    cfg = cond_config(steps=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, representation="wavelet"))
    train(volumes, tmp_path / "model.pt", tmp_path / "log.csv", tmp_path / "state", cfg, progress=False,
          condition_files=masks)
    model, _, _ = load_for_sampling(tmp_path / "model.pt")
    assert model.conv_in.weight.shape[1] == 8 + 16 and model.conv_out.weight.shape[0] == 8
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "model.pt"), "-n", "1", "--sampler", "ddim",
                     "--steps", "2", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out"),
                     "--nodules-from", str(tmp_path / "masks"), "--guidance", "2"]) == 0
    assert load_volume(tmp_path / "out" / "0000.nii.gz")[0].shape == (SIZE,) * 3


def test_guided_sets_count_two_network_evaluations_per_step(conditioned_checkpoint):
    from ctdiff.metrics.variant_table import sampling_provenance

    model, _ = conditioned_checkpoint
    nfe = {w: sampling_provenance(model, sampler="ddim", steps=5, eta=0.0, seed=0, guidance=w)["network_evaluations"]
           for w in (0.0, 1.0, 2.0)}
    assert nfe == {0.0: 5, 1.0: 5, 2.0: 10}


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_conditioned_model_samples_in_bf16_close_to_fp32(conditioned_checkpoint, tmp_path, guidance):
    """The bf16 wrapper passes the condition on (it once took ``(x, t)`` only and raised TypeError at the first
    network call of a conditioned model); its samples stay within bf16 rounding of the fp32 ones."""
    from ctdiff.config import SampleConfig
    from ctdiff.sampling.generate import generate
    from ctdiff.files import load_volume

    model, masks = conditioned_checkpoint
    mask = sorted(masks.glob("*.nii.gz"))[:1]
    out = {p: [tmp_path / p / "0000.nii.gz"] for p in ("fp32", "bf16")}
    for precision, files in out.items():
        generate(model, files, tmp_path / "cache", SampleConfig(sampler="ddim", steps=3, precision=precision,
                                                                 guidance=guidance),
                 device="cpu", progress=False, condition_masks=mask)
    a, b = (load_volume(out[p][0])[0] for p in ("fp32", "bf16"))
    assert not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.05


@pytest.mark.parametrize("guidance, chunks", [(1.0, [2, 1]), (0.0, [2, 1]), (2.0, [1, 1, 1])])
def test_a_guided_set_draws_half_the_batch_so_a_network_call_holds_batch_size_volumes(
        conditioned_checkpoint, tmp_path, monkeypatch, guidance, chunks):
    from ctdiff.sampling import generate as gen
    from ctdiff.config import SampleConfig

    model, masks = conditioned_checkpoint
    calls, real_sample, real_network = [], gen.sample, gen.network

    def spy(net, schedule, shape, generators, **kw):
        calls.append(("drawn", len(generators)))
        return real_sample(net, schedule, shape, generators, **kw)

    def counting_network(*args):
        net = real_network(*args)

        def call(x, t, *cond):
            calls.append(len(x))  # what one network call holds
            return net(x, t, *cond)
        return call

    monkeypatch.setattr(gen, "sample", spy)
    monkeypatch.setattr(gen, "network", counting_network)
    mask = sorted(masks.glob("*.nii.gz"))[:1] * 3
    gen.generate(model, [tmp_path / f"{i:04d}.nii.gz" for i in range(3)], tmp_path / "cache",
                 SampleConfig(sampler="ddim", steps=2, batch_size=2, guidance=guidance), device="cpu",
                 progress=False, condition_masks=mask)
    assert [c[1] for c in calls if isinstance(c, tuple)] == chunks
    assert max(c for c in calls if not isinstance(c, tuple)) == 2  # never more than batch_size per call
