"""Nodule control on a drawn chest: a box body with two air-filled lungs, a solid nodule in one lung where
the mask asks for it, another nowhere asked for; every number follows from the drawing."""
import numpy as np
import pytest

from ctdiff.files import save_volume
from ctdiff.metrics.nodule_control import lung_region, measure, nodule_control

WINDOW = (-1000.0, 400.0)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def v(hu):
    return (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def chest(nodule=True, extra=True):
    """48³: air outside, a 0 HU body, lungs of -850 HU; a solid nodule (0 HU, radius 3 voxels) at (14, 24, 24)
    and, with ``extra``, an unrequested one at (34, 24, 24)."""
    vol = np.full((48,) * 3, v(-1000.0), np.float32)
    vol[4:44, 4:44, :] = v(0.0)
    vol[8:21, 10:38, 6:42] = v(-850.0)
    vol[27:40, 10:38, 6:42] = v(-850.0)
    if nodule:
        vol[ball(vol.shape, (14, 24, 24), 3)] = v(0.0)
    if extra:
        vol[ball(vol.shape, (34, 24, 24), 3)] = v(0.0)
    return vol


def test_a_drawn_nodule_is_found_with_its_contrast_and_size_and_the_unrequested_one_is_spurious():
    labels = ball((48,) * 3, (14, 24, 24), 3).astype(np.uint8)
    got = measure(chest(), AFFINE, labels, WINDOW)
    (row,) = got["nodules"]
    # the shell holds lung only (-850 HU), the nodule 0 HU, both exact in float32 to ~0.1 HU
    assert row["contrast_hu"] == pytest.approx(850.0, abs=0.5)
    assert row["detected"] and got["spurious"] == 1
    # 2√3·σ on an 8-step σ grid (steps of 0.27 voxel, 16 % of the ideal σ = 3/√3) against (6V/π)^(1/3)
    assert 0.75 < row["blob_diameter_mm"] / row["diameter_mm"] < 1.25
    # a volume that ignored the mask: no contrast, no detection; without the extra nodule, nothing spurious
    empty = measure(chest(nodule=False, extra=False), AFFINE, labels, WINDOW)
    assert empty["nodules"][0]["contrast_hu"] == pytest.approx(0.0, abs=0.5)
    assert not empty["nodules"][0]["detected"] and empty["spurious"] == 0


def test_lung_region_is_what_the_body_encloses():
    hu = chest(extra=False) * 1400.0 - 1000.0
    lungs = lung_region(hu, AFFINE)
    assert lungs[14, 24, 24] and lungs[10, 12, 20] and not lungs[2, 2, 2] and not lungs[5, 5, 5]


def test_sets_are_summarised_with_each_real_volume_measured_once(tmp_path):
    labels = ball((48,) * 3, (14, 24, 24), 3).astype(np.uint8)
    save_volume(tmp_path / "mask.nii.gz", labels, AFFINE)
    save_volume(tmp_path / "real.nii.gz", chest(extra=False), AFFINE)
    save_volume(tmp_path / "s0.nii.gz", chest(), AFFINE)
    save_volume(tmp_path / "s1.nii.gz", chest(nodule=False, extra=False), AFFINE)
    out = nodule_control([tmp_path / "s0.nii.gz", tmp_path / "s1.nii.gz"], [tmp_path / "mask.nii.gz"] * 2,
                         [tmp_path / "real.nii.gz"] * 2, WINDOW)
    assert out["synthetic"]["detection_rate"] == 0.5 and out["synthetic"]["spurious_per_volume"] == 0.5
    assert out["real"]["n_volumes"] == 1 and out["real"]["detection_rate"] == 1.0
    assert out["real"]["contrast_hu_mean"] == pytest.approx(850.0, abs=0.5)
    with pytest.raises(ValueError, match="2 synthetic volumes, 1 masks"):
        nodule_control([tmp_path / "s0.nii.gz"] * 2, [tmp_path / "mask.nii.gz"], [None, None], WINDOW)


def test_the_crops_figure_draws_each_nodule_in_three_planes(tmp_path):
    import json

    from ctdiff.report.plots import nodule_figure

    labels = ball((48,) * 3, (14, 24, 24), 3).astype(np.uint8)
    (tmp_path / "samples" / "nodules").mkdir(parents=True)
    save_volume(tmp_path / "samples" / "nodules" / "0000.nii.gz", labels, AFFINE)
    save_volume(tmp_path / "samples" / "0000.nii.gz", chest(), AFFINE)
    save_volume(tmp_path / "real.nii.gz", chest(extra=False), AFFINE)
    metrics = {"nodules": nodule_control([tmp_path / "samples" / "0000.nii.gz"],
                                         [tmp_path / "samples" / "nodules" / "0000.nii.gz"],
                                         [tmp_path / "real.nii.gz"], WINDOW)}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    nodule_figure(tmp_path / "metrics.json", tmp_path / "samples", tmp_path, tmp_path / "nodules.png")
    assert (tmp_path / "nodules.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="records no nodule control"):
        (tmp_path / "m.json").write_text("{}")
        nodule_figure(tmp_path / "m.json", tmp_path / "samples", tmp_path, tmp_path / "x.png")


def test_the_report_section_puts_synthetic_beside_real():
    from ctdiff.report.document import nodule_section

    summary = {"n_nodules": 3, "detection_rate": 2 / 3, "contrast_hu_mean": 612.4, "size_ratio_median": None,
               "spurious_per_volume": 1.5}
    section = nodule_section({"synthetic": summary, "real": dict(summary, detection_rate=1.0),
                              "settings": {"shell_mm": 6.0}}, None)
    rows = {row[0]: row[1:] for row in section.tables[0].rows}
    assert rows["LoG detection rate inside the mask"] == ("0.67", "1.00")
    assert rows["contrast vs lung shell (HU, mean)"] == ("612", "612")
    assert rows["blob / mask diameter (median, detected)"] == ("—", "—") and "6 mm" in section.text
