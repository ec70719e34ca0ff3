"""NIRCam destriping on small arrays with known answers (fast: no jwst run)."""

from __future__ import annotations

import numpy as np

from processing.common.readout import amplifier_slices, fast_axis_is_x
from processing.destripe import masked_row_medians, stripe_model
from processing.destripe_multi import MultiTileParameters, difference_model

FAST = {"scales": [3, 7, 15], "structure_box": 15}


def _stripes(rng, ny, amps, rms=0.1):
    """Row offsets per amplifier with most power on short scales (what one tile can see)."""
    s = np.zeros((ny, sum(a.stop - a.start for a in amps)))
    per_amp = rng.normal(0, rms, (ny, len(amps)))
    for k, a in enumerate(amps):
        s[:, a] = per_amp[:, k : k + 1]
    return s, per_amp


def test_amplifiers_from_the_readout_geometry():
    assert amplifier_slices(2048) == [slice(0, 512), slice(512, 1024), slice(1024, 1536), slice(1536, 2048)]
    assert amplifier_slices(640) == [slice(0, 640)]  # a subarray: one output
    # a full-width array read by four outputs, starting in the second amplifier
    assert amplifier_slices(1000, start=601, noutputs=4) == [slice(0, 424), slice(424, 936), slice(936, 1000)]
    assert fast_axis_is_x(-1) and fast_axis_is_x(1) and not fast_axis_is_x(2)


def test_a_known_stripe_pattern_is_removed_per_amplifier():
    rng = np.random.default_rng(3)
    ny, nx = 256, 256
    amps = [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 256)]
    stripes, per_amp = _stripes(rng, ny, amps)
    noise = rng.normal(0, 0.1, (ny, nx))
    image = 5.0 + stripes + noise
    model, info = stripe_model(image, np.ones((ny, nx), bool), amps, FAST, noise=np.full((ny, nx), 0.1))
    measured = np.array([model[:, a].mean(axis=1) for a in amps]).T
    truth = per_amp - per_amp.mean()
    residual = measured - measured.mean() - truth
    floor = 1.2533 * 0.1 / np.sqrt(64)  # error of a 64-pixel row median
    assert np.std(residual) < 0.35 * np.std(truth) and np.std(residual) < 2.5 * floor, (np.std(residual), floor)
    # each amplifier is measured on its own: the amplifiers' patterns are not mixed
    assert all(np.corrcoef(measured[:, k], truth[:, k])[0, 1] > 0.9 for k in range(4))
    assert info["fallback_rows"] == 0


def test_a_stripe_free_image_comes_out_unchanged():
    """The paper's control (Figure 5): no 1/f noise in, nothing taken out (within 0.001)."""
    rng = np.random.default_rng(4)
    ny, nx = 256, 256
    yy, xx = np.mgrid[:ny, :nx]
    galaxy = 20 * np.exp(-np.hypot(xx - 120, yy - 140) / 60.0)
    for _ in range(30):
        x0, y0, s, a = rng.uniform(0, 256), rng.uniform(0, 256), rng.uniform(1.5, 4), rng.uniform(2, 20)
        galaxy += a * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    image = galaxy + rng.normal(0, 0.001, (ny, nx))
    model, _ = stripe_model(image, np.ones((ny, nx), bool), [slice(0, nx)], FAST, noise=np.full((ny, nx), 0.001))
    assert np.max(np.abs(model)) < 0.001


def test_masking_fallback_full_row_then_none():
    image = np.zeros((3, 8))
    image[:, :4] += np.array([1.0, 2.0, 3.0])[:, None]  # amplifier 0
    image[:, 4:] += np.array([10.0, 20.0, 30.0])[:, None]  # amplifier 1
    mask = np.zeros((3, 8), bool)
    mask[0, :4] = True  # row 0: amplifier 0 fully masked -> the full row's median (amplifier 1's value)
    mask[1, :] = True  # row 1: everything masked -> not corrected
    mask[2, 0] = True  # row 2: 25% of amplifier 0 masked -> its own median
    model, counts = masked_row_medians(image, mask, [slice(0, 4), slice(4, 8)], 0.8)
    assert model[0, 0] == 10.0 and model[0, 5] == 10.0
    assert np.all(model[1] == 0.0)
    assert model[2, 0] == 3.0 and model[2, 6] == 30.0
    assert counts == {"fallback_rows": 1, "skipped_rows": 1}


def test_a_frame_filled_with_emission_is_left_alone():
    """Where emission fills the frame no row median can be trusted: the stage corrects
    nothing rather than adding the galaxy's structure as stripes."""
    rng = np.random.default_rng(5)
    ny, nx = 256, 256
    yy, xx = np.mgrid[:ny, :nx]
    arms = 30 * (1 + np.sin(np.hypot(xx - 128, yy - 128) / 6.0 + np.arctan2(yy - 128, xx - 128) * 2))
    image = arms + rng.normal(0, 0.5, (ny, nx))
    model, info = stripe_model(image, np.ones((ny, nx), bool), [slice(0, nx)], FAST, noise=np.full((ny, nx), 0.5))
    assert info["emission_fraction"] > 0.8 and info["skipped_rows"] > 0.8 * ny
    assert np.std(model) < 0.02


def test_multi_tile_difference_removes_each_exposures_own_stripes():
    """Four exposures of the same sky (with structure) and independent stripes: each one's
    stripes come out of its difference from the median of all, the sky does not."""
    rng = np.random.default_rng(6)
    ny, nx = 128, 128
    yy, xx = np.mgrid[:ny, :nx]
    sky = 10 + 5 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    stripes = [rng.normal(0, 0.2, (ny, 1)) * np.ones((1, nx)) for _ in range(4)]
    exposures = [sky + s + rng.normal(0, 0.05, (ny, nx)) for s in stripes]
    p = MultiTileParameters()
    for i, own in enumerate(exposures):
        others = [e for j, e in enumerate(exposures) if j != i]
        model = difference_model(own, others, [slice(0, nx)], p, smooth=False)
        truth = stripes[i][:, 0] - np.median(stripes[i])
        # the median of four (itself included, the paper's method) keeps ~half of the stripes
        # in its estimate; without the method the residual would be the whole stripe pattern
        assert np.std(model[:, 0] - truth) < 0.65 * np.std(truth)
        assert abs(np.median(model)) < 1e-12  # the exposure's level is left to level matching
    # pixels no other exposure covers are not used
    lonely = exposures[0].copy()
    others = [np.where(xx < 64, e, np.nan) for e in exposures[1:]]
    model = difference_model(lonely, others, [slice(0, nx)], p, smooth=False)
    assert np.std(model[:, 0] - (stripes[0][:, 0] - np.median(stripes[0]))) < 0.65 * np.std(stripes[0])


def test_overlapping_exposures_are_aligned_before_differencing():
    """Tiles of different visits are misaligned by the guide-star error until relative
    astrometry runs: the multi-tile stage measures the shift on the overlap (stripes do not
    pull it) and differences aligned images."""
    from scipy import ndimage

    from processing.destripe_multi import _shifted, register

    rng = np.random.default_rng(7)
    sky = ndimage.gaussian_filter(rng.normal(0, 1, (200, 200)), 3) * 50
    moved = ndimage.shift(sky, (-4.3, 6.6), order=3)
    moved[:, :60] = np.nan  # partial overlap
    moved += rng.normal(0, 0.3, (200, 1))  # its own stripes
    dy, dx = register(sky, moved)
    assert abs(dy - 4.3) < 0.15 and abs(dx + 6.6) < 0.15
    back = _shifted(moved, dy, dx)
    inner = np.isfinite(back)
    inner[:10], inner[-10:], inner[:, -10:] = False, False, False
    assert (
        np.nanstd((back - sky)[inner] - np.nanmedian(back - sky, axis=1, keepdims=True)[np.where(inner)[0]][:, 0]) < 0.5
    )
    assert register(sky, np.full_like(sky, np.nan)) is None
