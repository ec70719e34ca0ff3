"""Background anchoring: the pure fit on known relations, resolution matching, the wide-field
image's zero, the order in which wide-field images are tried and every failure case, on small
images made here (fast); the engine run's anchored products against the synthetic truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from processing.anchoring import fit as F
from processing.anchoring.parameters import AnchoringParameters


# -- the pure fit ----------------------------------------------------------------------------
def test_binned_fit_recovers_a_known_offset_with_noise_and_outliers():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.0, 3.0, 40000)  # the true intensity of the band
    x = true + 0.37  # the band, 0.37 MJy/sr too high
    y = 0.8 * true + rng.normal(0, 0.02, true.size)  # the reference, zero right
    y[:2000] += rng.uniform(0.5, 2.0, 2000)  # a region of unusual band ratio
    blocks = np.arange(true.size) // 100
    f = F.binned_fit(x, y, 0.4, 2.4, n_bins=20, blocks=blocks, n_bootstrap=100)
    assert f.offset == pytest.approx(0.37, abs=0.005)
    assert f.slope == pytest.approx(0.8, rel=0.01)
    assert 0 < f.uncertainty < 0.01
    assert abs(f.curvature_shift) < 0.02
    assert f.used.sum() >= 15


def test_binned_fit_uncertainty_covers_the_error():
    """Over many noise draws the reported sigma matches the offsets' real scatter (within 25%)
    and the offset lands within 2 reported sigma about 95% of the time (90% asked)."""
    errors, sigmas = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        true = rng.uniform(0.0, 2.0, 4000)
        y = 1.1 * true + rng.normal(0, 0.15, true.size)
        f = F.binned_fit(
            true - 0.2, y, -0.1, 1.5, n_bins=12, blocks=np.arange(true.size) // 20, n_bootstrap=100, seed=seed
        )
        errors.append(f.offset + 0.2)
        sigmas.append(f.uncertainty)
    errors, sigmas = np.array(errors), np.array(sigmas)
    assert np.mean(sigmas) / np.std(errors) == pytest.approx(1.0, abs=0.25)
    assert np.mean(np.abs(errors) <= 2 * sigmas) >= 0.85


def test_binned_fit_refuses_too_few_pixels_and_no_relation():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 50)
    with pytest.raises(F.AnchorFailed, match="pixels in the range"):
        F.binned_fit(x, x, 0.0, 1.0)
    x = rng.uniform(0, 1, 5000)
    with pytest.raises(F.AnchorFailed, match="not positive"):
        F.binned_fit(x, -x + rng.normal(0, 0.01, x.size), 0.0, 1.0, n_bootstrap=0)


def test_a_curved_relation_is_seen_and_counted_in_the_uncertainty():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 3.0, 20000)
    y = 0.2 * x + 0.4 * x**2 + rng.normal(0, 0.01, x.size)
    f = F.binned_fit(x, y, 0.3, 3.0, n_bootstrap=50)
    assert abs(f.curvature_shift) > 0.1  # the quadratic finds its zero far from the line's
    assert f.uncertainty >= abs(f.curvature_shift)
    # anchoring y (binned by x): the offset is the line's value at x = 0
    g = F.binned_fit(x, 0.7 * x + 0.3 + rng.normal(0, 0.01, x.size), 0.3, 3.0, n_bootstrap=50, anchored="y")
    assert g.offset == pytest.approx(0.3, abs=0.003) and g.curvature_shift == 0.0


def test_the_curve_model_carries_a_drifting_band_ratio_to_zero():
    """A band against its reference whose ratio drifts with intensity (y = 0.3 + 0.5 x + 0.08
    x^2, fitted over x in [1, 3]): the line's value at zero misses the offset 0.3 by ~0.2;
    the curve finds it, and keeps the line's miss in the uncertainty. Where the relation is a
    line, both models agree."""
    rng = np.random.default_rng(11)
    x = rng.uniform(0.0, 4.0, 40000)
    y = 0.3 + 0.5 * x + 0.08 * x**2 + rng.normal(0, 0.01, x.size)
    line = F.binned_fit(x, y, 1.0, 3.0, n_bootstrap=30, anchored="y")
    curve = F.binned_fit(x, y, 1.0, 3.0, n_bootstrap=30, anchored="y", model="curve")
    assert abs(line.offset - 0.3) > 0.1
    assert curve.offset == pytest.approx(0.3, abs=0.01)
    assert curve.curvature_shift == pytest.approx(line.offset - curve.offset, abs=1e-9)
    assert curve.uncertainty >= abs(curve.curvature_shift) and curve.curve is not None
    straight = 0.3 + 0.6 * x + rng.normal(0, 0.01, x.size)
    a = F.binned_fit(x, straight, 1.0, 3.0, n_bootstrap=30, anchored="y")
    b = F.binned_fit(x, straight, 1.0, 3.0, n_bootstrap=30, anchored="y", model="curve")
    assert a.offset == b.offset == pytest.approx(0.3, abs=0.01) and b.curve is None
    with pytest.raises(ValueError, match="anchored='y'"):
        F.binned_fit(x, y, 1.0, 3.0, n_bootstrap=0, model="curve")  # an external fit is a line


def test_a_non_linear_relation_is_refused_with_the_reason():
    from processing.anchoring.stage import _fit

    rng = np.random.default_rng(6)
    x = rng.uniform(0.5, 3.0, 20000)
    curved = 0.05 + 0.3 * (x - 0.5) ** 2 + rng.normal(0, 0.01, x.size)  # bends away from a line
    p = AnchoringParameters(range_min_mjysr=0.5, range_max_mjysr=3.0, n_bootstrap=20)
    with pytest.raises(F.AnchorFailed, match="not linear"):
        _fit(x, curved, np.arange(x.size) // 50, p, "x")
    fit = _fit(x, 0.9 * (x - 0.2) + rng.normal(0, 0.01, x.size), np.arange(x.size) // 50, p, "x")
    assert fit.offset == pytest.approx(0.2, abs=0.01)


def test_fit_range_from_percentiles_or_given():
    x = np.arange(101.0)
    assert F.fit_range(x, 0.0, 0.0, (2.0, 40.0)) == (2.0, 40.0)
    assert F.fit_range(x, 5.0, 9.0, (2.0, 40.0)) == (5.0, 9.0)


# -- resolution and geometry -----------------------------------------------------------------
def test_block_mean_in_strips_with_nans():
    img = np.arange(36.0).reshape(6, 6)
    img[0, 0] = np.nan
    out = F.block_mean(img, 2, rows_per_read=2)
    assert out.shape == (3, 3)
    assert out[0, 0] == pytest.approx(np.mean([1.0, 6.0, 7.0]))  # the NaN left out
    assert out[2, 2] == pytest.approx(np.mean([28.0, 29.0, 34.0, 35.0]))
    img[0, 1] = img[1, 0] = np.nan
    assert np.isnan(F.block_mean(img, 2, min_coverage=0.5)[0, 0])  # 1 of 4 finite


def test_block_grid_wcs_matches_the_block_centres():
    """astropy's WCS slice with a step is the block-average grid: block (0, 0) sits at the
    centre of pixels 0..f-1."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [50.3, 40.7]
    w.wcs.cdelt = [-1e-5, 1e-5]
    f = 6
    wb = w.slice((slice(None, None, f), slice(None, None, f)))
    for i, j in [(0, 0), (3, 5), (10, 2)]:
        a = wb.pixel_to_world(i, j)
        b = w.pixel_to_world(i * f + (f - 1) / 2, j * f + (f - 1) / 2)
        assert a.separation(b).arcsec < 1e-6


def test_smooth_to_gives_the_target_resolution_and_keeps_flux():
    pix, fwhm_in, fwhm_out = 0.1, 0.3, 2.0
    n = 201
    yy, xx = np.indices((n, n)) - n // 2
    s_in = fwhm_in * F.FWHM_TO_SIGMA / pix
    img = np.exp(-0.5 * (xx**2 + yy**2) / s_in**2)
    img /= img.sum()
    out = F.smooth_to(img, pix, fwhm_in, fwhm_out)
    assert np.nansum(out) == pytest.approx(1.0, rel=1e-3)
    s_out = math.sqrt(np.nansum(out * xx**2) / np.nansum(out)) * pix
    assert s_out / F.FWHM_TO_SIGMA == pytest.approx(fwhm_out, rel=0.01)
    # a hole does not spread beyond the kernel's reach, and no value is made up in it
    img2 = np.ones((n, n))
    img2[90:110, 90:110] = np.nan
    out2 = F.smooth_to(img2, pix, fwhm_in, fwhm_out)
    assert np.nanmax(np.abs(out2 - 1)) < 1e-9
    assert np.isnan(out2[100, 100]) and np.isfinite(out2[100, 100 + 20 + 20])
    with pytest.raises(F.AnchorFailed, match="not finer"):
        F.smooth_to(img, pix, 2.5, 2.0)


def test_sky_level_beyond_the_radius_and_its_failure():
    rng = np.random.default_rng(4)
    n = 300
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    r = np.hypot(xx, yy) * 1.0
    img = 0.23 + 5 * np.exp(-r / 10.0) + rng.normal(0, 0.02, (n, n))
    s = F.sky_level(img, r, 120.0, beam_fwhm_arcsec=2.0, pixel_arcsec=1.0)
    assert s.level == pytest.approx(0.23, abs=0.001) and s.uncertainty < 0.002
    # galaxy light left beyond the radius biases the level, and the uncertainty says so
    wide = 0.23 + 5 * np.exp(-r / 20.0) + rng.normal(0, 0.02, (n, n))
    s = F.sky_level(wide, r, 120.0, beam_fwhm_arcsec=2.0, pixel_arcsec=1.0)
    assert 0.001 < s.level - 0.23 < 2 * s.uncertainty
    with pytest.raises(F.AnchorFailed, match="not wide enough"):
        F.sky_level(img, r, 250.0, 2.0, 1.0)


# -- the stage's file adapter on small images ------------------------------------------------
def _wcs(ra, dec, pix_arcsec, n):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-pix_arcsec / 3600, pix_arcsec / 3600]
    return w


def _disk(w, shape, ra, dec, peak=4.0, scale=15.0):
    from processing.anchoring.stage import radius_map

    return peak * np.exp(-radius_map(w, shape, ra, dec) / scale)


RA, DEC = 150.0, 2.0


def _mosaic(path, offset, band_ratio=1.0, n=400, pix=0.1, centre=(RA, DEC), constant=None, scale=15.0):
    """An i2d-like file: 40" x 40" of an exponential disk (scale 15"), off by ``offset``;
    ``constant``: level matching's group constant recorded in it (HLSPDLK)."""
    from astropy.io import fits

    w = _wcs(*centre, pix, n)
    sci = band_ratio * _disk(w, (n, n), RA, DEC, scale=scale) + offset
    sci[:20, :20] = np.nan
    primary = fits.PrimaryHDU()
    if constant is not None:
        primary.header["HLSPDLK"] = constant
    hdus = [
        primary,
        fits.ImageHDU(sci.astype(np.float32), w.to_header(), name="SCI"),
        fits.ImageHDU(np.ones((n, n), np.float32), name="WHT"),
        fits.ImageHDU(np.zeros((n, n), np.int32), name="DQ"),
    ]
    fits.HDUList(hdus).writeto(path)
    return path


def _external(path, background, slope=0.9, n=360, pix=1.0, scale=15.0, centre=(RA, DEC)):
    """A wide-field image, 6' x 6', with its own zero off by ``background``."""
    from astropy.io import fits

    from processing.anchoring.fit import smooth_to

    w = _wcs(*centre, pix, n)
    img = smooth_to(slope * _disk(w, (n, n), RA, DEC, scale=scale), pix, 0.0, 2.0, min_weight=0.0)
    img = img + background + np.random.default_rng(5).normal(0, 0.005, (n, n))
    fits.PrimaryHDU(img.astype(np.float32), w.to_header()).writeto(path)
    return path


PARAMS = dict(sky_radius_arcsec=120.0, range_percentiles=[2.0, 60.0], n_bootstrap=50)


def test_external_fit_recovers_the_offset_and_falls_back_in_order(tmp_path):
    from processing.anchoring.stage import external_fit

    mosaic = _mosaic(tmp_path / "m.fits", offset=0.8)
    far = _mosaic(tmp_path / "far.fits", offset=0.0, centre=(RA + 1.0, DEC))
    away = tmp_path / "away.fits"  # a wide-field image of another field: no overlap
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((50, 50), np.float32), _wcs(RA + 1.0, DEC, 1.0, 50).to_header()).writeto(away)
    good = _external(tmp_path / "ext.fits", background=0.3)
    facts = [
        {"survey": "first", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC},
        {"survey": "second", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC},
    ]
    p = AnchoringParameters(**PARAMS)
    attempts = external_fit(mosaic, "F300M", [away, good], facts, p, "t")
    assert [a.against for a in attempts] == ["first", "second"]
    assert not attempts[0].ok and "overlap" in attempts[0].reason
    a = attempts[1]
    assert a.ok and a.sky.level == pytest.approx(0.3, abs=0.01)
    assert a.fit.offset == pytest.approx(0.8, abs=0.02) and a.fit.slope == pytest.approx(0.9, rel=0.03)
    # the first usable one wins: the second is not even tried
    assert [x.against for x in external_fit(mosaic, "F300M", [good, away], facts, p, "t")] == ["first"]
    assert not external_fit(far, "F300M", [good], facts[:1], p, "t")[0].ok


def test_too_few_pixels_in_range_and_no_sky_are_reasons_not_garbage(tmp_path):
    from processing.anchoring.stage import external_fit

    mosaic = _mosaic(tmp_path / "m.fits", offset=0.8)
    good = _external(tmp_path / "ext.fits", background=0.3)
    facts = [{"survey": "irac1", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC}]
    narrow = AnchoringParameters(**{**PARAMS, "range_min_mjysr": 50.0, "range_max_mjysr": 60.0})
    [a] = external_fit(mosaic, "F300M", [good], facts, narrow, "t")
    assert not a.ok and "pixels in the range" in a.reason
    nosky = AnchoringParameters(**{**PARAMS, "sky_radius_arcsec": 300.0})
    [a] = external_fit(mosaic, "F300M", [good], facts, nosky, "t")
    assert not a.ok and "not wide enough" in a.reason


def test_a_corrupt_wide_field_image_fails_naming_it(tmp_path):
    from processing.anchoring.stage import external_fit
    from processing.errors import WorkFailed

    mosaic = _mosaic(tmp_path / "m.fits", offset=0.8)
    bad = tmp_path / "irac1.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    facts = [{"survey": "irac1", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC}]
    with pytest.raises(WorkFailed, match="anchoring t F300M: the wide-field image .*irac1.fits does not open"):
        external_fit(mosaic, "F300M", [bad], facts, AnchoringParameters(**PARAMS), "t")


def test_internal_fit_against_the_anchored_reference(tmp_path):
    from processing.anchoring.stage import internal_fit

    ref = _mosaic(tmp_path / "ref.fits", offset=0.5)
    band = _mosaic(tmp_path / "band.fits", offset=-0.25, band_ratio=1.6)
    a = internal_fit(band, "F200W", ref, "F300M", 0.5, AnchoringParameters(**PARAMS))
    assert a.ok, a.reason
    assert a.fit.offset == pytest.approx(-0.25, abs=0.01)
    assert a.fit.slope == pytest.approx(1.6, rel=0.02)


def _tweakback(path, members):
    from processing.fileio import reproducible_tarball

    with reproducible_tarball(path) as add:
        for m in members:
            add(f"t_f300m_tweakback/{m.name}", m)
    return path


def test_stage_run_applies_one_offset_to_mosaic_and_exposures(tmp_path):
    """The whole task on small files: the reference band anchored against a wide-field image,
    the offset subtracted from the mosaic and from every tweakback member, table and figure."""
    import tarfile

    from astropy.io import fits
    from astropy.table import Table

    from processing.anchoring.stage import run

    mosaic = _mosaic(tmp_path / "m.fits", offset=0.8)
    exposure = _mosaic(tmp_path / "jw_cal.fits", offset=0.8, n=100)
    tb = _tweakback(tmp_path / "in.tar.gz", [exposure])
    ext = _external(tmp_path / "irac1.fits", background=0.3)
    out = tmp_path / "out"
    out.mkdir()
    context = {
        "target": "t",
        "band": "F300M",
        "instrument": "nircam",
        "product": "t_f300m",
        "facts": {"external": [{"survey": "irac1", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC}]},
    }
    written = run(
        {"mosaic": [str(mosaic)], "tweakback": [str(tb)], "external": [str(ext)]},
        out,
        {**PARAMS, "reference_band": "F300M"},
        context,
    )
    assert sorted(p.name for p in written) == [
        "t_f300m_anchoring.ecsv",
        "t_f300m_anchoring.png",
        "t_f300m_i2d.fits",
        "t_f300m_tweakback.tar.gz",
    ]
    meta = Table.read(out / "t_f300m_anchoring.ecsv").meta
    assert meta["status"] == "anchored" and meta["anchored_to"] == "irac1"
    assert meta["offset_mjysr"] == pytest.approx(0.8, abs=0.02)
    before, after = fits.getdata(mosaic, "SCI"), fits.getdata(out / "t_f300m_i2d.fits", "SCI")
    assert np.nanmax(np.abs(before - after - np.float32(meta["offset_mjysr"]))) < 1e-5
    assert np.isnan(after[0, 0])  # no data stays no data
    with tarfile.open(out / "t_f300m_tweakback.tar.gz") as tar:
        [member] = list(tar)
        with fits.open(tar.extractfile(member)) as h:
            assert h[0].header["HLSPDBO"] == pytest.approx(meta["offset_mjysr"], abs=1e-6)
            assert (
                np.nanmax(np.abs(fits.getdata(exposure, "SCI") - h["SCI"].data - np.float32(meta["offset_mjysr"])))
                < 1e-5
            )
    assert not (out / "tweakback-anchored").exists()


def test_a_band_with_its_own_wide_field_image_is_anchored_to_it_before_the_internal_fit(tmp_path):
    """F2100W, whose disk is longer than F770W's (a band ratio that drifts with intensity: the
    internal fit against F770W misses), listed with a 24 um image of its own: anchored to that
    image; when that image cannot be used, the internal fit is the fallback and the table says
    why the direct one was not used."""
    from astropy.io import fits
    from astropy.table import Table

    from processing.anchoring.stage import run

    ref = _mosaic(tmp_path / "f770w.fits", offset=0.5)
    band = _mosaic(tmp_path / "f2100w.fits", offset=-0.25, band_ratio=0.5, scale=25.0)
    irac4 = _external(tmp_path / "irac4.fits", background=0.2)
    mips24 = _external(tmp_path / "mips24.fits", background=-0.1, slope=1.2, scale=25.0)
    away = _external(tmp_path / "away.fits", background=0.0, centre=(RA + 1.0, DEC))  # no overlap
    tb = _tweakback(tmp_path / "in.tar.gz", [_mosaic(tmp_path / "jw_cal.fits", offset=-0.25, n=50)])
    fact = {"fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC}

    def anchor(direct_file, name):
        context = {
            "target": "t",
            "band": "F2100W",
            "instrument": "miri",
            "product": "t_f2100w",
            "facts": {"external": [{"survey": "irac4", **fact}, {"survey": "mips24", "bands": ["F2100W"], **fact}]},
        }
        out = tmp_path / name
        out.mkdir()
        inputs = {
            "mosaic": [str(band)],
            "reference_mosaic": [str(ref)],
            "tweakback": [str(tb)],
            "external": [str(irac4), str(direct_file)],
        }
        # the toy mosaic's edge (normalised smoothing) bends the faint end a little: a looser limit
        run(inputs, out, {**PARAMS, "reference_band": "F770W", "max_uncertainty_mjysr": 0.5}, context)
        return Table.read(out / "t_f2100w_anchoring.ecsv"), fits.getheader(out / "t_f2100w_i2d.fits")

    table, h = anchor(mips24, "direct")
    assert table.meta["status"] == "anchored" and table.meta["anchored_to"] == "mips24", table.meta
    assert table.meta["offset_mjysr"] == pytest.approx(-0.25, abs=0.01)
    assert h["HLSPDBR"] == "mips24" and h["HLSPDBL"] == "anchored"
    assert list(table["role"]) == ["external (direct)"] and list(table["against"]) == ["mips24"]

    table, h = anchor(away, "fallback")
    meta = table.meta
    assert meta["status"] == "anchored" and meta["anchored_to"] == "F770W via irac4", meta
    roles = dict(zip(table["role"], zip(table["against"], table["used"], table["reason"])))
    assert roles["external (direct)"][:2] == ("mips24", False) and "overlap" in roles["external (direct)"][2]
    assert roles["internal"][:2] == ("F770W", True) and roles["external (F770W)"][:2] == ("irac4", True)
    # the internal fit sees the drifting band ratio: it misses by more than the direct one
    assert abs(meta["offset_mjysr"] + 0.25) > 0.02


def test_ranked_reference_bands_fall_back_in_order_when_the_first_is_refused(tmp_path):
    """reference_band = ["F770W", "F1130W"]: F770W's mosaic does not overlap the wide-field
    image (refused, with the reason), so F1000W is fitted against F1130W, anchored to it; the
    table holds both reference bands' attempts. F1130W's own task, second in the rank, is
    anchored to the image directly; with F770W usable, F770W is taken first."""
    from astropy.table import Table

    from processing.anchoring.stage import run

    irac4 = _external(tmp_path / "irac4.fits", background=0.2)
    f770w_far = _mosaic(tmp_path / "f770w_far.fits", offset=0.4, centre=(RA + 1.0, DEC))
    f770w = _mosaic(tmp_path / "f770w.fits", offset=0.4)
    f1130w = _mosaic(tmp_path / "f1130w.fits", offset=0.6, band_ratio=0.8)
    f1000w = _mosaic(tmp_path / "f1000w.fits", offset=-0.3, band_ratio=0.5)
    tb = _tweakback(tmp_path / "in.tar.gz", [_mosaic(tmp_path / "jw_cal.fits", offset=-0.3, n=50)])
    fact = {"survey": "irac4", "fwhm_arcsec": 2.0, "target_ra": RA, "target_dec": DEC}
    params = {**PARAMS, "reference_band": ["F770W", "F1130W"]}

    def anchor(band, mosaic, refs, name):
        context = {
            "target": "t",
            "band": band,
            "instrument": "miri",
            "product": f"t_{band.lower()}",
            "facts": {"external": [fact], "reference_mosaic": [{"band": b} for b, _ in refs]},
        }
        out = tmp_path / name
        out.mkdir()
        inputs = {
            "mosaic": [str(mosaic)],
            "reference_mosaic": [str(m) for _, m in refs],
            "tweakback": [str(tb)],
            "external": [str(irac4)],
        }
        run(inputs, out, params, context)
        return Table.read(out / f"t_{band.lower()}_anchoring.ecsv")

    t = anchor("F1000W", f1000w, [("F770W", f770w_far), ("F1130W", f1130w)], "fallback")
    assert t.meta["status"] == "anchored" and t.meta["anchored_to"] == "F1130W via irac4", t.meta
    assert t.meta["reference_band"] == "F1130W"
    assert t.meta["offset_mjysr"] == pytest.approx(-0.3, abs=0.02)
    tried = {(str(r["role"]), bool(r["used"])) for r in t}
    assert tried == {("external (F770W)", False), ("external (F1130W)", True), ("internal", True)}, tried
    assert "overlap" in next(str(r["reason"]) for r in t if r["role"] == "external (F770W)")

    t = anchor("F1130W", f1130w, [("F770W", f770w_far)], "own")  # its own place in the rank
    assert t.meta["anchored_to"] == "irac4" and t.meta["offset_mjysr"] == pytest.approx(0.6, abs=0.02)

    t = anchor("F1000W", f1000w, [("F770W", f770w), ("F1130W", f1130w)], "first")
    assert t.meta["anchored_to"] == "F770W via irac4" and t.meta["offset_mjysr"] == pytest.approx(-0.3, abs=0.02)
    assert not any(str(r["role"]) == "external (F1130W)" for r in t)  # the first one anchored: no need


def test_nothing_to_anchor_to_restores_the_calibrated_level_or_fails_when_required(tmp_path):
    """Not anchored: level matching's constant (here 2.5 MJy/sr in the mosaic, 2.5 and 2.7 in
    the two exposures) is added back to each file, and the level uncertainty is that bound."""
    import tarfile

    from astropy.io import fits

    from processing.anchoring.stage import run
    from processing.errors import WorkFailed

    mosaic = _mosaic(tmp_path / "m.fits", offset=-2.5, constant=2.5)
    members = [
        _mosaic(tmp_path / "jw_1_cal.fits", offset=-2.5, n=50, constant=2.5),
        _mosaic(tmp_path / "jw_2_cal.fits", offset=-2.7, n=50, constant=2.7),
    ]
    tb = _tweakback(tmp_path / "in.tar.gz", members)
    context = {"target": "t", "band": "F300M", "instrument": "nircam", "product": "t_f300m"}
    inputs = {"mosaic": [str(mosaic)], "tweakback": [str(tb)]}
    (tmp_path / "a").mkdir()
    run(inputs, tmp_path / "a", {"reference_band": "F300M"}, context)
    out = tmp_path / "a" / "t_f300m_i2d.fits"
    h = fits.getheader(out)
    assert h["HLSPDBST"].startswith("not anchored: no wide-field image for nircam")
    assert h["HLSPDBO"] == -2.5 and h["HLSPDBE"] == 2.5 and h["HLSPDBL"] == "calibrated"
    # the level as calibrated: the disk alone, no constant removed
    truth = fits.getdata(mosaic, "SCI") + np.float32(2.5)
    assert np.nanmax(np.abs(fits.getdata(out, "SCI") - truth)) < 1e-5
    with tarfile.open(tmp_path / "a" / "t_f300m_tweakback.tar.gz") as tar:
        for member, src, c in zip(tar.getmembers(), members, (2.5, 2.7)):
            with fits.open(tar.extractfile(member)) as hdul:
                assert hdul[0].header["HLSPDBO"] == -c and hdul[0].header["HLSPDBE"] == c
                assert np.nanmax(np.abs(hdul["SCI"].data - fits.getdata(src, "SCI") - np.float32(c))) < 1e-5
    (tmp_path / "b").mkdir()
    with pytest.raises(WorkFailed, match="anchoring t F300M: not anchored: no wide-field image .*require_anchor"):
        run(inputs, tmp_path / "b", {"reference_band": "F300M", "require_anchor": True}, context)


def test_a_missing_wide_field_image_is_refused_before_any_work(effects_program, tmp_path):
    from tests.conftest import hlsp, write_manifest

    manifest = write_manifest(tmp_path / "m.toml", effects_program)
    manifest.write_text(manifest.read_text().replace("synth2_wise3.fits", "synth2_wise3_missing.fits"))
    proc = hlsp("plan", str(manifest), "--workdir", str(tmp_path / "w"), check_code=2)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "targets.synth2.anchoring.miri[1].file" in out and "synth2_wise3_missing.fits is not a file" in out, out
    assert "Traceback" not in out


# -- the engine run against the truth --------------------------------------------------------
def test_engine_run_is_anchored_against_the_truth(engine_run, effects_program):
    """F770W (the MIRI reference band, IRAC4 first) is anchored in both targets, its level
    against the true sky within 0.02 MJy/sr and within 2 reported sigma; F200W (its own
    reference: F300M is not in this program) is anchored within 2 sigma or not anchored with
    the reason (its 30"-45" mosaics sit on the bright centre: nothing faint to fit); the
    wide-field images' own zeros are measured within 0.005 MJy/sr; the tweakback exposures
    carry the mosaic's offset."""
    from astropy.io import fits
    from astropy.table import Table

    from tests.benchmarks.anchoring import measure

    results = measure(effects_program, engine_run["workdir"])
    print("\nanchoring:", json.dumps(results, indent=1))
    assert {(r["target"], r["band"]) for r in results} == {
        (t, b) for t in ("synth1", "synth2") for b in ("F200W", "F770W")
    }
    for r in results:
        if r["band"] == "F770W":
            assert r["status"] == "anchored" and r["anchored_to"] == "irac4", r
            assert abs(r["level_after"]) < 0.02 and abs(r["level_before"]) > 0.1, r
        if r["status"] == "anchored":
            assert abs(r["level_after"]) <= 2 * r["uncertainty"], r
            assert r["reference_sky_error"] < 0.005, r
        else:
            assert r["status"].startswith(("not anchored: ", "internal only")), r
            # the calibrated level: level matching's constant added back, the sky left in it
            # within the recorded bound (and far closer than the constant, which was emission)
            assert r["level_after"] > r["level_before"] + 1.0, r
            assert -0.05 < r["level_after"] <= r["uncertainty"], r
    for target, band in (("synth1", "f200w"), ("synth2", "f770w")):
        prod = engine_run["workdir"] / "products" / target / band
        table = Table.read(prod / f"{target}_{band}_anchoring.ecsv")
        assert (
            table.meta["status"]
            == results[[(r["target"], r["band"]) for r in results].index((target, band.upper()))]["status"]
        )
        h = fits.getheader(prod / f"{target}_{band}_i2d.fits")
        assert h["HLSPDBO"] == pytest.approx(table.meta["offset_mjysr"], abs=1e-5)
        import tarfile

        with tarfile.open(prod / f"{target}_{band}_tweakback.tar.gz") as tar:
            member = next(m for m in tar if m.isfile())
            with fits.open(tar.extractfile(member)) as hdul:
                assert hdul[0].header["HLSPDBO"] == h["HLSPDBO"]
    json.dumps(results)  # the benchmark's numbers are plain JSON


def test_a_band_that_could_not_be_anchored_is_released_at_its_calibrated_level(engine_run, demo_release, tmp_path):
    """synth1 F200W cannot be anchored (its mosaic sits on the bright centre): the release
    carries its level as calibrated (level matching's constant added back, not subtracted), the
    header and the README state the bound on its level, and without the manifest accepting it
    `hlsp package` refuses the band, naming it and the setting, and publishes nothing."""
    from astropy.io import fits

    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest
    from tests.conftest import hlsp, linked_copy

    lm = load_manifest(engine_run["manifest"])
    engine = Engine(lm, build_graph(lm), engine_run["workdir"], cache_dir=engine_run["cache"], read_only=True)
    key = engine.task_keys()["lv3/synth1/F200W"]
    lv3 = engine.cache.entry(key) / "synth1_f200w_i2d.fits"
    constant = fits.getval(lv3, "HLSPDLK", 0)
    assert constant > 1.0  # level matching removed emission as "sky"
    img = next((demo_release / "synth1").glob("*_f200w_v1p0_img.fits"))
    with fits.open(img) as hdul:
        h = hdul[0].header
        assert h["HLSPDBL"] == "calibrated" and h["HLSPDBST"].startswith("not anchored")
        assert h["HLSPDBO"] == pytest.approx(-constant, abs=1e-5) and h["HLSPDBE"] == pytest.approx(constant, abs=1e-5)
        released = hdul["SCI"].data
    calibrated = fits.getdata(lv3, "SCI") + np.float32(constant)
    assert np.nanmax(np.abs(released - calibrated)) < 1e-4
    readme = next(demo_release.glob("*_readme.txt")).read_text()
    row = next(line for line in readme.splitlines() if line.split()[:3] == ["synth1", "F200W", "calibrated"])
    assert f"{constant:.4f}" in row and "30" in row, row
    # the same products, a manifest that does not accept the band: refused, nothing published
    strict = tmp_path / "strict.toml"
    text = engine_run["manifest"].read_text()
    assert "max_level_uncertainty_by_band" in text
    strict.write_text("\n".join(line for line in text.splitlines() if "max_level_uncertainty_by_band" not in line))
    work = linked_copy(engine_run["workdir"], tmp_path / "work")
    proc = hlsp("package", str(strict), "--workdir", str(work), "--releases", str(tmp_path / "rel"), check_code=1)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "F200W: level uncertainty" in out and "products.max_level_uncertainty_mjysr = 0.5" in out, out
    assert "Traceback" not in out and not list((tmp_path / "rel").rglob("*.fits"))
