"""Tests for ctdiff.ingest.zstack on slice positions shaped like the four LIDC-IDRI scans with non-uniform z.

Positions are handed over in a shuffled file order, as a series table lists them; ``keep`` must index
that order.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ctdiff.ingest.zstack import diagnose, recover


def shuffled(z, seed=0):
    """(positions in a random file order, the permutation: file i holds z[perm[i]])."""
    z = np.asarray(z, dtype=float)
    perm = np.random.default_rng(seed).permutation(len(z))
    return z[perm], perm


def kept_positions(z, perm, keep):
    return z[perm][list(keep)]


def test_uniform_stack_keeps_every_file_in_position_order():
    z = -320.0 + 2.5 * np.arange(40)
    pos, perm = shuffled(z)
    stack = diagnose(pos)
    assert (stack.kind, stack.reason, stack.spacing_mm) == ("uniform", "", pytest.approx(2.5))
    assert np.array_equal(kept_positions(z, perm, stack.keep), z)


def test_gaps_of_0672_are_missing_slices():
    """0672: three 1.25 mm gaps in a 0.625 mm stack."""
    z = -250.0 + 0.625 * np.arange(300)
    z = np.delete(z, [40, 150, 251])
    stack = diagnose(shuffled(z)[0])
    assert stack.kind == "missing slices" and stack.keep == ()
    assert stack.reason == ("missing slice(s): 3 gaps of 1.250 mm in a 0.625 mm stack (3 slices missing; "
                            "gaps after -225.625, -156.875, -93.750 mm)")


def test_gaps_of_different_sizes_are_counted_per_size():
    z = np.delete(2.5 * np.arange(60), [10, 30, 31])
    assert diagnose(z).reason == ("missing slice(s): 1 gap of 5.000 mm and 1 gap of 7.500 mm in a 2.500 mm "
                                  "stack (3 slices missing; gaps after 22.500, 72.500 mm)")


@pytest.mark.parametrize("spacing, offset", [(1.25, 0.5), (2.5, 0.5), (2.5, 2.0)])
def test_overlapping_sub_stacks_of_0123(spacing, offset):
    """0123: two sub-stacks of one spacing, 0.5 mm apart, overlapping over part of their length."""
    a = -200.0 + spacing * np.arange(80)
    b = a[50] + offset + spacing * np.arange(70)
    stack = diagnose(shuffled(np.r_[a, b])[0])
    overlap = a[-1] - b[0]
    assert stack.kind == "overlapping sub-stacks" and stack.keep == ()
    assert stack.reason == (f"overlapping sub-stacks: two interleaved {spacing:.3f} mm grids offset by "
                            f"{min(offset, spacing - offset):.3f} mm (80 and 70 slices, overlapping over "
                            f"{overlap:.1f} mm)")


def test_fully_interleaved_sub_stacks_are_an_overlap_not_a_finer_grid_with_gaps():
    """Spacings alternate 0.5 and 0.75 mm: no single spacing is the most common by far."""
    a = 1.25 * np.arange(60)
    stack = diagnose(shuffled(np.r_[a, a + 0.5])[0])
    assert stack.reason == ("overlapping sub-stacks: two interleaved 1.250 mm grids offset by 0.500 mm "
                            f"(60 and 60 slices, overlapping over {73.75 - 0.5:.1f} mm)")


def test_sub_stacks_offset_by_half_their_spacing_are_one_grid():
    """A 0.625 mm stack missing its second and second-to-last slices is also two 1.25 mm sub-stacks."""
    z = np.delete(0.625 * np.arange(200), [1, 198])
    stack = diagnose(z)
    assert stack.kind == "missing slices"
    assert stack.reason.startswith("missing slice(s): 2 gaps of 1.250 mm in a 0.625 mm stack")


def test_shifted_grid_of_0267():
    """0267: a 1.25 mm grid that shifts by 0.5 mm twice (once up, once back down)."""
    z = np.r_[1.25 * np.arange(50), 62.5 + 0.5 + 1.25 * np.arange(50), 125.0 + 1.25 * np.arange(50)]
    stack = diagnose(shuffled(z)[0])
    assert stack.kind == "shifted grid" and stack.keep == ()
    assert stack.reason == ("shifted grid: the 1.250 mm grid shifts by 0.500 mm at 2 places "
                            "(after 61.250, 124.250 mm)")


def test_shifted_grid_counts_slices_missing_across_a_shift():
    z = np.r_[1.25 * np.arange(50), 61.25 + 3.0 + 1.25 * np.arange(50)]  # 3.0 mm = 2 steps + 0.5 mm
    assert diagnose(z).reason == ("shifted grid: the 1.250 mm grid shifts by 0.500 mm at 1 place "
                                  "(after 61.250 mm), and 1 slice is missing")


@pytest.mark.parametrize("spacing", [0.625, 2.5])
def test_stray_slice_of_0514_is_dropped(spacing):
    """0514: a perfect 141-slice stack and one slice 38 mm beyond its end."""
    core = -340.0 + spacing * np.arange(141)
    z = np.r_[core, core[-1] + 38.0]
    pos, perm = shuffled(z)
    stack = diagnose(pos)
    assert stack.kind == "stray slices"
    assert stack.reason == (f"stray slice(s): 1 slice 38.0 mm beyond the last slice of a uniform 141-slice "
                            f"stack ({spacing:.3f} mm)")
    assert stack.recovery == (f"recovered: dropped 1 stray slice 38.0 mm beyond the last slice of a uniform "
                              f"141-slice stack ({spacing:.3f} mm)")
    assert np.array_equal(kept_positions(z, perm, stack.keep), core)
    assert recover(stack, [None] * len(z)) == (stack.keep, stack.recovery)


def test_stray_slices_at_both_ends():
    core = 2.5 * np.arange(60)
    z = np.r_[core[0] - 20.0, core, core[-1] + 38.0, core[-1] + 40.0]
    pos, perm = shuffled(z)
    stack = diagnose(pos)
    assert stack.reason == ("stray slice(s): 1 slice 20.0 mm before the first slice and 2 slices 38.0, "
                            "40.0 mm beyond the last slice of a uniform 60-slice stack (2.500 mm)")
    assert np.array_equal(kept_positions(z, perm, stack.keep), core)


def test_what_counts_as_a_stray_slice():
    core = 2.5 * np.arange(60)
    # On the grid, far beyond the end: a stray slice rather than a gap of 15 missing slices (one event each).
    assert diagnose(np.r_[core, core[-1] + 40.0]).kind == "stray slices"
    # Two spacings beyond the end is one missing slice, not a stray one ...
    assert diagnose(np.r_[core, core[-1] + 5.0]).kind == "missing slices"
    # ... three spacings is farther than a single missing slice would put it.
    assert diagnose(np.r_[core, core[-1] + 7.5]).kind == "stray slices"
    # At most 3 slices, and at most a tenth of the series.
    assert diagnose(np.r_[core, core[-1] + 38.0 + 2.5 * np.arange(4)]).kind != "stray slices"
    assert diagnose(np.r_[core[:20], core[19] + 38.0 + 2.5 * np.arange(3)]).kind != "stray slices"
    # A stray slice beside a stack that is not uniform is not recoverable.
    gapped = np.delete(core, 30)
    stack = diagnose(np.r_[gapped, gapped[-1] + 38.0])
    assert stack.kind != "stray slices" and stack.keep == ()


def test_one_stack_stored_twice_keeps_the_first_file_at_each_position():
    z = 2.5 * np.arange(30)
    pos, perm = shuffled(np.r_[z, z])
    stack = diagnose(pos)
    assert stack.kind == "duplicated stack"
    assert stack.reason == ("duplicate slice position(s): every one of the 30 positions is held by 2 files "
                            "(one uniform 2.500 mm stack stored twice)")
    assert stack.recovery == ("recovered: kept the first of 2 identical files at each of the 30 positions of "
                              "one uniform 2.500 mm stack")
    assert np.array_equal(pos[list(stack.keep)], z)
    for group, kept in zip(stack.groups, stack.keep):
        assert len(group) == 2 and pos[group[0]] == pos[group[1]] and kept == min(group)


def test_three_copies_and_partial_duplicates():
    z = 2.5 * np.arange(30)
    assert diagnose(np.r_[z, z, z]).reason.endswith("held by 3 files (one uniform 2.500 mm stack stored "
                                                    "three times)")
    partial = diagnose(np.r_[z, z[4], z[9]])
    assert partial.kind == "duplicates" and partial.keep == ()
    assert partial.reason == ("duplicate slice position(s): 2 file(s) repeat a position along the slice "
                              "normal (at 10.000, 22.500 mm)")
    gapped = np.delete(z, 10)
    assert diagnose(np.r_[gapped, gapped]).reason == (
        "duplicate slice position(s): every one of the 29 positions is held by 2 files; the distinct "
        "positions show missing slice(s): 1 gap of 5.000 mm in a 2.500 mm stack (1 slice missing; gaps "
        "after 22.500 mm)")
    assert diagnose([3.0, 3.0, 3.0]).reason == ("duplicate slice position(s): all 3 files share one "
                                                "position (3.000 mm)")


def fake_slice(pixels, slope=1.0, intercept=-1024.0):
    return SimpleNamespace(pixel_array=np.asarray(pixels), RescaleSlope=slope, RescaleIntercept=intercept)


def test_a_stack_stored_twice_is_recovered_only_from_identical_pixel_data():
    z = 2.5 * np.arange(12)
    pos = np.r_[z, z]
    stack = diagnose(pos)
    same = [fake_slice(np.full((2, 2), k % 12)) for k in range(24)]
    assert recover(stack, same) == (tuple(range(12)), stack.recovery)

    differ = list(same)
    differ[12 + 4] = fake_slice(np.full((2, 2), 99))
    differ[12 + 7] = fake_slice(np.full((2, 2), 7), intercept=-1000.0)
    with pytest.raises(ValueError) as err:
        recover(stack, differ)
    assert str(err.value) == (f"{stack.reason}, but the files differ in pixel data at 2 of them "
                              "(at 10.000, 17.500 mm)")


def test_unrecoverable_findings_raise_their_reason():
    z = np.delete(2.5 * np.arange(30), 12)
    stack = diagnose(z)
    with pytest.raises(ValueError, match=r"^missing slice\(s\): 1 gap"):
        recover(stack, [None] * len(z))


def test_irregular_positions_and_bad_input():
    z = np.cumsum([0.0, 1.0, 2.7, 0.4, 1.9, 3.3, 0.8])
    stack = diagnose(z)
    assert stack.kind == "irregular"
    assert stack.reason.startswith("irregular spacing: spacing between slices varies from 0.400 to 3.300 mm")
    with pytest.raises(ValueError, match="at least 2 slices"):
        diagnose([1.0])
