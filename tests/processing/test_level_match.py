"""Level matching and Lyot separation: the algorithms on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from processing import level_match as L
from processing import lyot
from processing.common import coronagraph as C

# --------------------------------------------------------------------------------------------
# Lyot separation
# --------------------------------------------------------------------------------------------


def test_lyot_region_is_the_siaf_footprint_on_full_frames_and_subarrays():
    full = C.lyot_region((1024, 1032))
    ys, xs = np.nonzero(full)
    # MIRIM_MASKLYOT: science pixels x 1-320, y 719-1022 (1-based)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 319, 718, 1021)
    assert full.sum() == 320 * 304
    # the same pixels seen from a subarray that holds part of the region
    sub = C.lyot_region((200, 100), xstart=251, ystart=701)
    np.testing.assert_array_equal(sub, full[700:900, 250:350])
    # a subarray far from the coronagraph (e.g. SUB256 at x 413) has none of it
    assert not C.lyot_region((256, 256), xstart=413, ystart=51).any()
    # the coronagraph's own field is inside the readout region
    coron = C.lyot_region((1024, 1032), aperture="MIRIM_CORONLYOT")
    assert 0 < coron.sum() < full.sum() and not (coron & ~full).any()


def test_lyot_split_and_merge_round_trip_is_exact():
    rng = np.random.default_rng(3)
    shape = (1024, 1032)
    region = C.lyot_region(shape)
    dq = rng.choice(np.array([0, 1, 4, 512, 513], dtype=np.uint32), size=shape, p=[0.9, 0.04, 0.03, 0.02, 0.01])
    arrays = {
        "data": rng.normal(size=shape).astype(np.float32),
        "err": rng.random(shape).astype(np.float32),
        "var_poisson": rng.random(shape).astype(np.float32),
    }
    dq_imager, dq_coron = C.split(dq, region)
    # each part: the other part non-science and unusable, its own pixels untouched
    assert np.all(dq_imager[region] & C.SPLIT_FLAGS == C.SPLIT_FLAGS)
    np.testing.assert_array_equal(dq_imager[~region], dq[~region])
    assert np.all(dq_coron[~region] & C.SPLIT_FLAGS == C.SPLIT_FLAGS)
    np.testing.assert_array_equal(dq_coron[region], dq[region])
    merged = C.merge({**arrays, "dq": dq_imager}, {**arrays, "dq": dq_coron}, region)
    np.testing.assert_array_equal(merged["dq"], dq)
    for k, v in arrays.items():
        np.testing.assert_array_equal(merged[k], v)
    # offsets applied per part come back in their own region only
    m2 = C.merge({"data": arrays["data"] - 1.0}, {"data": arrays["data"] - 5.0}, region)
    np.testing.assert_allclose((arrays["data"] - m2["data"])[region], 5.0, atol=1e-5)
    np.testing.assert_allclose((arrays["data"] - m2["data"])[~region], 1.0, atol=1e-5)


def test_an_exposure_has_two_parts_only_when_science_lies_on_both_sides():
    region = np.zeros((10, 10), bool)
    region[:3, :3] = True
    science = np.ones((10, 10), bool)
    assert C.has_two_parts(region, science)
    assert not C.has_two_parts(np.zeros_like(region), science)  # no region on this subarray
    assert not C.has_two_parts(np.ones_like(region), science)  # all coronagraph
    science[:3, :3] = False
    assert not C.has_two_parts(region, science)  # its pixels all unusable


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def test_pair_difference_sees_the_offset_through_emission():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:200, 0:200]
    emission = 50.0 * np.exp(-((xx - 100) ** 2 + (yy - 80) ** 2) / 800.0) + 3.0  # fills the overlap
    a = emission + 0.37 + rng.normal(0, 0.5, emission.shape)
    b = emission - 0.05 + rng.normal(0, 0.5, emission.shape)
    b[:, :60] = np.nan
    a[rng.random(a.shape) < 0.01] += 200.0  # cosmic rays: clipped
    n, med, rms = L.pair_difference(a, b)
    assert n == 200 * 140
    assert med == pytest.approx(0.42, abs=4 * 1.25 * 0.5 * np.sqrt(2) / np.sqrt(n))
    assert rms == pytest.approx(0.5 * np.sqrt(2), rel=0.05)


def test_axis_overlap_fraction():
    both = np.zeros((100, 100), bool)
    both[10:20, 0:80] = True  # a strip: thin along y, long along x
    assert L.axis_overlap_fraction(both, (100, 100), (100, 100)) == pytest.approx(0.8)
    both[:] = False
    both[0:5, 0:5] = True  # a corner: thin along both
    assert L.axis_overlap_fraction(both, (100, 100), (100, 100)) == pytest.approx(0.05)
    assert L.axis_overlap_fraction(both, (100, 100), (10, 10)) == pytest.approx(0.5)  # relative to the smaller
    assert L.axis_overlap_fraction(np.zeros((4, 4), bool), (4, 4), (4, 4)) == 0.0


def _pair(i, j, n=10000, med=0.0, rms=0.5, axis=1.0):
    return L.Pair(i, j, n=n, median=med, rms=rms, axis_fraction=axis)


def test_the_three_pair_cuts():
    pairs = [
        _pair(0, 1, rms=0.50),
        _pair(1, 2, rms=0.51),
        _pair(2, 3, rms=0.49),
        _pair(0, 3, rms=0.50),
        _pair(0, 2, n=15),  # a tiny overlap: < 0.2% of the mean
        _pair(1, 3, axis=0.1),  # a diagonal corner: thin along both axes
        _pair(3, 4, rms=2.0),
    ]  # a noisy difference histogram
    L.select_pairs(pairs, 0.002, 0.25, 2.0, 0.1)
    assert [p.kept for p in pairs] == [True, True, True, True, False, False, False]
    assert "mean" in pairs[4].reason and "along both axes" in pairs[5].reason and "RMS" in pairs[6].reason


def test_nearly_equal_rms_do_not_trigger_the_rms_cut():
    # the standard deviation of near-identical RMS is tiny: 2 sigma alone would drop the best pair
    pairs = [_pair(0, 1, rms=0.526), _pair(1, 2, rms=0.514), _pair(2, 3, rms=0.515), _pair(0, 3, rms=0.513)]
    L.select_pairs(pairs, 0.002, 0.25, 2.0, 0.1)
    assert all(p.kept for p in pairs)
    L.select_pairs(pairs, 0.002, 0.25, 2.0, 0.0)  # the paper's cut, literally
    assert not pairs[0].kept


# --------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------


def test_solver_recovers_known_offsets_with_a_fixed_reference():
    truth = np.array([0.0, 0.13, -0.07, 0.31, 0.02])
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (0, 4)]
    pairs = [_pair(i, j, med=truth[i] - truth[j]) for i, j in edges]
    off, groups, refs = L.solve_offsets(5, pairs, priority=np.array([5, 4, 3, 0.5, 9]))
    assert groups == [[0, 1, 2, 3, 4]] and refs == [3]
    np.testing.assert_allclose(off, truth - truth[3], atol=1e-12)  # the reference keeps its level


def test_solver_weights_pairs_by_their_error():
    # a tiny noisy pair disagrees with a large precise one: the precise one wins
    pairs = [_pair(0, 1, n=1_000_000, med=0.10, rms=0.5), _pair(0, 1, n=500, med=0.30, rms=0.5)]
    off, _, _ = L.solve_offsets(2, pairs, priority=np.array([1.0, 0.0]))
    assert off[0] == pytest.approx(0.10, abs=0.001)
    off, _, _ = L.solve_offsets(2, pairs, priority=np.array([1.0, 0.0]), weighting="rms")
    assert off[0] == pytest.approx(0.20, abs=1e-9)  # the paper's weights: both count the same
    # the statistical error of one pair's offset: that of a median, 1.2533 RMS / sqrt(n)
    _, _, _, err = L.solve_offsets_with_errors(
        2, [_pair(0, 1, n=10000, med=0.1, rms=0.5)], priority=np.array([1.0, 0.0])
    )
    assert err[0] == pytest.approx(1.2533 * 0.5 / 100) and err[1] == 0.0


def test_solver_keeps_disconnected_groups_apart():
    truth = np.array([0.0, 0.2, 0.5, 1.0, 1.3])
    pairs = [
        _pair(0, 1, med=truth[0] - truth[1]),
        _pair(2, 3, med=truth[2] - truth[3]),
        _pair(3, 4, med=truth[3] - truth[4]),
    ]
    pairs.append(_pair(1, 2, med=5.0, n=3))
    pairs[-1].drop("test: a dropped pair does not connect")
    off, groups, refs = L.solve_offsets(5, pairs)
    assert groups == [[0, 1], [2, 3, 4]] and refs == [0, 2]
    np.testing.assert_allclose(off[:2], truth[:2] - truth[0], atol=1e-12)
    np.testing.assert_allclose(off[2:], truth[2:] - truth[2], atol=1e-12)


# --------------------------------------------------------------------------------------------
# Both passes on images of a known sky
# --------------------------------------------------------------------------------------------


def _mosaic(tmp_path, boxes, offsets, visits, noise=0.2, seed=0):
    """Images cut from one sky with emission everywhere, each with its offset and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:300, 0:400]
    sky = 4.0 + 30.0 * np.exp(-((xx - 200) ** 2 + (yy - 150) ** 2) / 5000.0) + np.sin(xx / 9.0) * np.cos(yy / 13.0)
    images = []
    for k, ((y0, y1, x0, x1), off, visit) in enumerate(zip(boxes, offsets, visits)):
        cut = (sky[y0:y1, x0:x1] + off + rng.normal(0, noise, (y1 - y0, x1 - x0))).astype(np.float32)
        store = tmp_path / f"img{k}.npy"
        np.save(store, cut)
        images.append(
            L.Image(name=f"e{k}", visit=visit, mjd=float(k), box=(y0, y1, x0, x1), span=(y1 - y0, x1 - x0), store=store)
        )
    return images, sky


def test_two_passes_match_dithers_then_tiles(tmp_path):
    # two visits (tiles) of two dithers each; the tiles overlap by a third
    boxes = [(0, 200, 0, 200), (10, 210, 8, 208), (60, 260, 140, 340), (70, 270, 150, 350)]
    offsets = np.array([0.10, -0.05, 0.40, 0.25])
    images, _ = _mosaic(tmp_path, boxes, offsets, ["v1", "v1", "v2", "v2"], noise=0.05)
    p = L.LevelMatchParameters(align_tiles=False, subtract_lowest=False)
    sol = L.match_levels(images, np.array([3.0, 2.0, 1.0, 0.0]), p, tmp_path)
    assert len(sol.tiles) == 2 and sol.groups == [[0, 1]]
    total = np.array([sol.total(k) for k in range(4)])
    # every image ends at the reference's level (image 3: closest in time); error of a
    # median over >= 8,000 pixels of noise 0.05 * sqrt(2): ~0.001
    np.testing.assert_allclose(offsets - total, offsets[3], atol=0.003)
    assert total[3] == 0.0


def test_a_disconnected_tile_is_its_own_group_with_its_own_constant(tmp_path):
    boxes = [(0, 120, 0, 150), (5, 125, 5, 155), (150, 290, 250, 390)]  # the third overlaps nothing
    offsets = np.array([0.3, 0.1, -0.4])
    images, sky = _mosaic(tmp_path, boxes, offsets, ["v1", "v1", "v2"])
    sol = L.match_levels(images, np.zeros(3), L.LevelMatchParameters(align_tiles=False), tmp_path)
    assert sol.groups == [[0], [1]] and len(sol.constants) == 2
    # each group's lowest level (mode) is subtracted: group 2's constant is its own
    assert sol.constants[1] == pytest.approx(L.clipped_mode(images[2].load()), abs=1e-9)
    np.testing.assert_allclose(offsets[0] - sol.total(0), offsets[1] - sol.total(1), atol=0.003)


def test_tiles_misaligned_by_a_pointing_error_are_aligned_before_differencing(tmp_path):
    from scipy import ndimage

    boxes = [(0, 200, 0, 220), (40, 240, 150, 370)]
    offsets = np.array([0.0, 0.5])
    images, _ = _mosaic(tmp_path, boxes, offsets, ["v1", "v2"], noise=0.05)
    # the second tile's pixels carry the sky 3.4, -2.6 pixels away (its WCS is wrong)
    moved = ndimage.shift(images[1].load(), (3.4, -2.6), order=3, mode="nearest")
    np.save(images[1].store, moved.astype(np.float32))
    unaligned = L.match_levels(
        images, np.zeros(2), L.LevelMatchParameters(align_tiles=False, subtract_lowest=False), tmp_path
    )
    aligned = L.match_levels(images, np.zeros(2), L.LevelMatchParameters(subtract_lowest=False), tmp_path)
    assert aligned.pairs2[0].shift == pytest.approx((-3.4, 2.6), abs=0.1)
    assert abs(aligned.total(1) - 0.5) < 0.01 < abs(unaligned.total(1) - 0.5)


def test_lyot_stage_writes_two_parts_or_passes_through(tmp_path):
    from stdatamodels.jwst import datamodels

    m = datamodels.ImageModel((1024, 1032))
    m.data = np.random.default_rng(0).normal(size=(1024, 1032)).astype(np.float32)
    m.dq = np.zeros((1024, 1032), dtype=np.uint32)
    m.meta.subarray.xstart, m.meta.subarray.ystart, m.meta.subarray.name = 1, 1, "FULL"
    src = tmp_path / "in" / "jw01_mirimage_cal.fits"
    src.parent.mkdir()
    m.save(src)
    out = tmp_path / "split"
    out.mkdir()
    written = lyot.run({"cal": [str(src)]}, out, {}, {})
    assert sorted(p.name for p in written) == ["jw01_mirimage_cal.fits", "jw01_mirimage_coron_cal.fits"]
    region = C.lyot_region((1024, 1032))
    with datamodels.open(written[0]) as imager, datamodels.open(written[1]) as coron:
        assert C.part_of(written[0]) == "imager" and C.part_of(written[1]) == "coron"
        assert np.all(imager.dq[region] & C.SPLIT_FLAGS) and not np.any(imager.dq[~region])
        assert np.all(coron.dq[~region] & C.SPLIT_FLAGS) and not np.any(coron.dq[region])
        np.testing.assert_array_equal(imager.data, m.data)
    assert {C.exposure_of(p) for p in written} == {"jw01_mirimage"}
    off = tmp_path / "off"
    off.mkdir()
    written = lyot.run({"cal": [str(src)]}, off, {"separate": False}, {})
    assert [p.name for p in written] == ["jw01_mirimage_cal.fits"] and C.part_of(written[0]) == "full"
