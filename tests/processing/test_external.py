"""The external inputs of a release (survey images, astrometric catalogue, PSFs) recover their truth.

One module fixture writes everything for one synthetic galaxy. The survey images are checked
the way the release uses them (``pipeline.md`` item 10): the proxy band's true sky, evaluated
at JWST-like sampling, convolved to the survey beam and reprojected onto the survey grid, is
fitted against the survey image with binned medians at low intensity; slope and intercept must
be the recorded slope and background. The same reference, averaged into the survey pixels,
checks the generator's noiseless image pixel by pixel.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from processing.common.psf import measure_fwhm
from processing.instruments import PIXEL_SCALE_ARCSEC, channel_of
from processing.simulate import external as E
from processing.simulate.detectors import FILTERS
from processing.simulate.seeds import hash_str
from processing.simulate.sky import _FWHM_TO_SIGMA, RED_SUPERGIANT, Galaxy, add_gaussians, tangent_offsets

NAME = "NGC9999"
SEED = 7
BANDS = ["F200W", "F300M", "F770W", "F1000W", "F2100W"]
SURVEYS = ("irac1", "irac4", "wise1", "wise3", "mips24")
#: Side of the reference box in survey pixels (~160": a JWST footprint; enough low-intensity sky).
REF_BOX = {"irac1": 214, "irac4": 214, "wise1": 116, "wise3": 116, "mips24": 108}


def _ref_sub(survey: str, band: str) -> int:
    """Reference points per survey pixel: at least the proxy band's JWST mosaic sampling
    (0.063" NIRCam long, 0.11" MIRI), which resolves its PSF-sized sources."""
    return int(np.ceil(E.SURVEYS[survey]["pixel"] / PIXEL_SCALE_ARCSEC[channel_of(band)]))


def _galaxy() -> Galaxy:
    return Galaxy.random(150.1, 2.2, np.random.default_rng(1))


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    out = tmp_path_factory.mktemp("external")
    g = _galaxy()
    t0 = time.perf_counter()
    truth = E.write_external_inputs(out, {NAME: g}, BANDS, SEED)
    return SimpleNamespace(out=out, galaxy=g, truth=truth, elapsed=time.perf_counter() - t0)


@pytest.fixture(scope="module")
def references(ext):
    """Per survey: the proxy band's true sky at JWST mosaic sampling over a ~160" box, convolved
    (numerically, every component) with the survey beam; its WCS; the box's place."""
    from scipy.ndimage import gaussian_filter

    refs = {}
    for survey in SURVEYS:
        t = ext.truth["external"][NAME][survey]
        n, pix = t["shape"][0], t["pixel_arcsec"]
        m, k = REF_BOX[survey], _ref_sub(survey, t["proxy_band"])
        i0 = (n - m) // 2
        step = pix / k
        c = (n - 1) / 2.0
        # fine pixel q of the box <-> survey pixel coordinate (q + i0 * k + 0.5) / k - 0.5
        qc = (c + 0.5) * k - 0.5 - i0 * k
        q = np.arange(m * k, dtype=float)
        xs, ys = -(q - qc) * step, (q - qc) * step
        sky = np.empty((q.size, q.size))
        for j0 in range(0, q.size, 256):
            yy, xx = np.meshgrid(ys[j0 : j0 + 256], xs, indexing="ij")
            sky[j0 : j0 + 256] = ext.galaxy.surface_brightness_xy(t["proxy_band"], xx, yy)
        sigma = t["fwhm_arcsec"] * _FWHM_TO_SIGMA
        conv = gaussian_filter(sky, sigma / step, mode="nearest", truncate=5.0)
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [ext.galaxy.ra, ext.galaxy.dec]
        w.wcs.crpix = [qc + 1, qc + 1]
        w.wcs.cdelt = [-step / 3600.0, step / 3600.0]
        # pixels of the survey image far enough inside the box not to see its edges
        margin = int(np.ceil(5 * sigma / pix)) + 1
        inner = (slice(i0 + margin, i0 + m - margin),) * 2
        refs[survey] = SimpleNamespace(conv=conv, wcs=w, i0=i0, m=m, k=k, inner=inner, margin=margin)
    return refs


def _image(ext, survey):
    with fits.open(ext.out / ext.truth["external"][NAME][survey]["file"]) as h:
        return h[0].data.astype(float), h[0].header


def _anchor_fit(ref, img, lo=0.25, hi=2.0, width=0.1, min_count=20):
    """Binned medians of ``img`` against ``ref`` (bins of ``width`` MJy/sr over [lo, hi]),
    straight line through them with 3 rounds of 3-sigma clipping: (slope, intercept, nbins)."""
    edges = np.arange(lo, hi + 1e-9, width)
    bx, by = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (ref >= a) & (ref < b)
        if sel.sum() >= min_count:
            bx.append(np.median(ref[sel]))
            by.append(np.median(img[sel]))
    bx, by = np.asarray(bx), np.asarray(by)
    keep = np.ones(bx.size, bool)
    for _ in range(3):
        slope, icpt = np.polyfit(bx[keep], by[keep], 1)
        res = by - (slope * bx + icpt)
        s = res[keep].std()
        if s == 0:
            break
        keep = np.abs(res) < 3 * s
    return slope, icpt, int(keep.sum())


# -- files, headers, truth -------------------------------------------------------------------
def test_files_headers_and_truth(ext):
    g, rec = ext.galaxy, ext.truth["external"][NAME]
    assert sorted(rec) == sorted(SURVEYS + ("refcat",))
    json.dumps(ext.truth)  # serialisable as it stands
    for survey in SURVEYS:
        t = rec[survey]
        assert (
            t["proxy_band"]
            == {
                "irac1": "F360M",
                "irac4": "F770W",
                "wise1": "F335M",
                "wise3": "F1130W",
                "mips24": "F2100W",
            }[survey]
        )
        assert 0.9 <= t["slope"] <= 1.1 and -0.2 <= t["background_mjysr"] <= 0.5
        img, hdr = _image(ext, survey)
        assert hdr["BUNIT"] == "MJy/sr" and hdr["SURVEY"] == survey and hdr["SIMULATD"] is True
        assert hdr["FWHM"] == pytest.approx(t["fwhm_arcsec"]) == E.SURVEYS[survey]["fwhm"]
        assert img.shape == tuple(t["shape"])
        w = WCS(hdr)
        assert w.wcs.ctype[0] == "RA---TAN" and w.wcs.ctype[1] == "DEC--TAN"
        scale = w.proj_plane_pixel_scales()
        assert [s.to_value("arcsec") for s in scale] == pytest.approx([t["pixel_arcsec"]] * 2)
        assert img.shape[0] * t["pixel_arcsec"] == pytest.approx(60 * E.FIELD_ARCMIN, abs=t["pixel_arcsec"])  # 24'
        # north up, east left; centred on the galaxy
        assert w.wcs.cdelt[0] < 0 < w.wcs.cdelt[1] and np.allclose(w.wcs.get_pc(), np.eye(2))
        ra, dec = w.all_pix2world([(img.shape[1] - 1) / 2], [(img.shape[0] - 1) / 2], 0)
        assert np.abs(tangent_offsets(ra, dec, g.ra, g.dec)).max() < 1e-6
        assert np.isfinite(img).all()
    for band in BANDS:
        assert (ext.out / ext.truth["psf"][band]["file"]).exists()
        assert (ext.out / ext.truth["psf"][band]["jwst_like"]["file"]).exists()
    # atomic writes leave no temporary files behind
    assert not [p for p in ext.out.rglob(".*") if p.is_file()]


def test_grid_offsets_match_the_wcs():
    g = _galaxy()
    for survey in ("irac1", "wise1"):
        w, (n, _) = E.survey_grid(survey, g.ra, g.dec)
        xs, ys = E.grid_offsets(n, E.SURVEYS[survey]["pixel"])
        jj, ii = np.meshgrid(np.arange(0, n, 37), np.arange(0, n, 41), indexing="ij")
        x, y = tangent_offsets(*w.all_pix2world(ii, jj, 0), g.ra, g.dec)
        assert np.abs(x - xs[ii]).max() < 1e-6 and np.abs(y - ys[jj]).max() < 1e-6


def test_split_sky_reproduces_the_sky_model():
    g = _galaxy()
    xs = np.linspace(-130, 130, 601)
    yy, xx = np.meshgrid(xs * 0.93 + 0.37, xs, indexing="ij")
    for band in ("F360M", "F770W", "F335M", "F1130W", "F200W"):
        extended, comps = E.split_sky(g, band)
        total = extended.surface_brightness_xy(band, xx, yy)
        add_gaussians(total, xx, yy, comps)
        full = g.surface_brightness_xy(band, xx, yy)
        assert np.abs(total - full).max() < 1e-9 * full.max()
        assert np.allclose(E.broaden(comps, 0.0), comps, rtol=1e-12, atol=0)


def test_outskirts_sampled_at_pixel_centres_match_the_exact_convolution():
    """Beyond the exactly convolved central 8' the smooth emission is sampled at the pixel
    centres: against the exact convolution of the whole field, within 0.002 MJy/sr (WISE3, the
    widest beam over the dust disk, the worst case)."""
    g = _galaxy()
    spec = E.SURVEYS["wise3"]
    n = int(round(16 * 60 / spec["pixel"]))
    fast = E.convolved_sky(g, E.proxy_band("wise3"), spec["fwhm"], spec["pixel"], n)
    exact = E.convolved_sky(g, E.proxy_band("wise3"), spec["fwhm"], spec["pixel"], n, exact_arcmin=16.0)
    assert np.abs(fast - exact).max() < 0.002


# -- (a) survey images recover slope and background ------------------------------------------
@pytest.mark.parametrize("survey", SURVEYS)
def test_generator_matches_numerical_convolution(ext, references, survey):
    """The generator's noiseless image = every component convolved numerically at JWST mosaic
    sampling and averaged into the survey pixels: within 0.4% at the bright centre (where the
    spiral arms wind at sub-arcsec scales) and 0.002 MJy/sr in the anchoring range."""
    t, r = ext.truth["external"][NAME][survey], references[survey]
    model = E.convolved_sky(ext.galaxy, t["proxy_band"], t["fwhm_arcsec"], t["pixel_arcsec"], t["shape"][0])
    m, k = r.m, r.k
    crop = (slice(r.margin, m - r.margin),) * 2
    ref = r.conv.reshape(m, k, m, k).mean(axis=(1, 3))[crop]
    diff = model[(slice(r.i0, r.i0 + m),) * 2][crop] - ref
    assert (np.abs(diff) < 0.004 * ref + 0.001).all(), (np.abs(diff) / ref).max()
    low = ref < 2.0
    assert low.sum() > 1000 and np.abs(diff[low]).max() < min(0.002, 0.2 * t["noise_mjysr"])
    assert diff.std() < 0.005
    # the image minus its recorded model is white noise of the recorded RMS
    img, _ = _image(ext, survey)
    resid = img - t["slope"] * model - t["background_mjysr"]
    assert resid.std() == pytest.approx(t["noise_mjysr"], rel=0.02)


@pytest.mark.parametrize("survey", SURVEYS)
def test_anchoring_fit_recovers_slope_and_background(ext, references, survey):
    from reproject import reproject_interp

    t, r = ext.truth["external"][NAME][survey], references[survey]
    img, hdr = _image(ext, survey)
    ref, footprint = reproject_interp((r.conv, r.wcs), WCS(hdr), shape_out=img.shape)
    x, y = ref[r.inner], img[r.inner]
    assert np.isfinite(x).all() and footprint[r.inner].min() > 0
    slope, icpt, nbins = _anchor_fit(x, y)
    assert nbins >= 8
    assert slope == pytest.approx(t["slope"], rel=0.02)
    assert icpt == pytest.approx(t["background_mjysr"], abs=0.02)


@pytest.mark.parametrize("survey", SURVEYS)
def test_far_pixels_sit_at_the_background(ext, survey):
    """Beyond 200" of the centre, image minus the scaled sky has mean and median at the recorded
    background within 3 standard errors (sigma/sqrt(N) for the mean, 1.2533 sigma/sqrt(N) for
    the median). The sky is not zero there: the diffuse dust disk still gives a few 0.01 MJy/sr."""
    t = ext.truth["external"][NAME][survey]
    img, _ = _image(ext, survey)
    n, pix = t["shape"][0], t["pixel_arcsec"]
    xs, ys = E.grid_offsets(n, pix)
    far = np.hypot(*np.meshgrid(xs, ys)) > 200.0
    model = E.convolved_sky(ext.galaxy, t["proxy_band"], t["fwhm_arcsec"], pix, n)
    resid = (img - t["slope"] * model)[far]
    err = t["noise_mjysr"] / np.sqrt(far.sum())
    assert abs(resid.mean() - t["background_mjysr"]) < 3 * err
    assert abs(np.median(resid) - t["background_mjysr"]) < 3 * 1.2533 * err
    # and the faintest far pixels alone are background plus a small sky
    faint = far & (model < 0.05)
    assert faint.sum() > 1000
    assert np.median(img[faint]) - t["background_mjysr"] == pytest.approx(
        t["slope"] * np.median(model[faint]), abs=3 * 1.2533 * t["noise_mjysr"] / np.sqrt(faint.sum()) + 0.01
    )


# -- (b) astrometric reference catalogue -----------------------------------------------------
def test_offsets_to_radec_inverts_tangent_offsets():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-600, 600, (2, 2000))
    for ra0, dec0 in [(150.1, 2.2), (0.001, -30.0), (359.999, 60.0), (210.0, -89.0), (12.0, 88.5)]:
        ra, dec = E.offsets_to_radec(x, y, ra0, dec0)
        assert ((ra >= 0) & (ra < 360)).all()
        x2, y2 = tangent_offsets(ra, dec, ra0, dec0)
        assert np.abs(x2 - x).max() < 1e-6 and np.abs(y2 - y).max() < 1e-6
        ra3, dec3 = E.offsets_to_radec(x2, y2, ra0, dec0)
        dra = (ra3 - ra + 180.0) % 360.0 - 180.0
        assert np.abs(dra * np.cos(np.deg2rad(dec))).max() * 3600 < 1e-6
        assert np.abs(dec3 - dec).max() * 3600 < 1e-6


def test_reference_catalog(ext):
    g, t = ext.galaxy, ext.truth["external"][NAME]["refcat"]
    # as stcal's tweakreg reads abs_refcat: Table.read(path), exactly one RA and one DEC column
    cat = Table.read(str(ext.out / t["file"]))
    assert [c.upper() for c in cat.colnames].count("RA") == 1 and [c.upper() for c in cat.colnames].count("DEC") == 1
    for col in ("RA", "DEC", "RA_TRUE", "DEC_TRUE"):
        assert cat[col].unit == "deg" and cat[col].dtype == np.float64
    assert len(cat) == t["n_sources"] and cat["IN_SKY"].sum() == t["n_in_sky"] == len(g.stars)
    # true positions are the sky model's point sources, kinds by their colour code
    x, y = tangent_offsets(cat["RA_TRUE"][cat["IN_SKY"]], cat["DEC_TRUE"][cat["IN_SKY"]], g.ra, g.dec)
    assert np.abs(x - g.stars[:, 0]).max() < 1e-6 and np.abs(y - g.stars[:, 1]).max() < 1e-6
    kinds = np.asarray(cat["KIND"][cat["IN_SKY"]])
    assert ((kinds == "rsg") == (g.star_colour == RED_SUPERGIANT)).all()
    # HST-like density: hundreds of red supergiants, ~0.1 per arcsec^2 within 20" of the centre
    rsg = g.stars[g.star_colour == RED_SUPERGIANT]
    assert len(rsg) > 500
    assert 0.05 < (np.hypot(rsg[:, 0], rsg[:, 1]) < 20).sum() / (np.pi * 20**2) < 0.5
    # the paper's cuts keep most red supergiants and no cluster, foreground star or faint extra
    passing = (
        (cat["SNR_F814W"] >= 10)
        & (cat["CROWD_F814W"] <= 0.01)
        & (cat["FLAG_F814W"] == 0)
        & (cat["OBJTYPE"] == 1)
        & (cat["SHARP_F814W"] > -0.025)
        & (cat["SHARP_F814W"] <= 0.01)
        & (cat["ROUND_F814W"] > -0.15)
        & (cat["ROUND_F814W"] <= 0.4)
        & (cat["COLOR_F555W_F814W"] >= 2)
        & (cat["COLOR_F555W_F814W"] < 4)
    )
    assert passing.sum() == t["n_pass_cuts"]
    assert set(np.asarray(cat["KIND"][passing])) == {"rsg"} and passing.sum() > 0.6 * len(rsg)
    # most red supergiants sit 3-5 mag above the TRGB (the paper's magnitude window; the
    # fluxes spread by 0.65 mag, so the window is a real cut on the tails)
    m = np.asarray(cat["MAG_F814W"][passing])
    assert 0.8 < np.mean((m > cat.meta["trgb_f814w"] - 5) & (m < cat.meta["trgb_f814w"] - 3)) < 1.0
    # catalogue errors: per-axis RMS = the recorded error of each source (good ones 5 mas)
    d_east = (cat["RA"] - cat["RA_TRUE"]) * np.cos(np.deg2rad(cat["DEC_TRUE"])) * 3.6e6
    d_north = (cat["DEC"] - cat["DEC_TRUE"]) * 3.6e6
    z = np.concatenate([d_east / cat["POS_ERR_MAS"], d_north / cat["POS_ERR_MAS"]])
    assert np.sqrt(np.mean(z**2)) == pytest.approx(1.0, rel=0.1)
    good = np.concatenate([d_east[passing], d_north[passing]])
    assert np.sqrt(np.mean(good**2)) == pytest.approx(E.REFCAT_ERROR_MAS["good"], rel=0.15)


# -- (c) PSF models --------------------------------------------------------------------------
def test_measure_fwhm_on_known_profiles():
    from scipy.special import j1

    for n in (323, 324):  # centre on a pixel and between pixels
        yy, xx = np.indices((n, n), float)
        r = np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2)
        for fwhm in (8.0, 24.0):
            gauss = np.exp(-4 * np.log(2) * r**2 / fwhm**2)
            u = np.maximum(2 * 1.616340 * r / fwhm, 1e-12)  # Airy: half maximum at u = 1.61634
            airy = (2 * j1(u) / u) ** 2
            assert measure_fwhm(gauss, 0.5) == pytest.approx(fwhm * 0.5, rel=0.005)
            assert measure_fwhm(airy, 0.5) == pytest.approx(fwhm * 0.5, rel=0.005)


@pytest.mark.parametrize("band", BANDS)
def test_psf_models(ext, band):
    t = ext.truth["psf"][band]
    # the sky's own PSF: the Gaussian of Table 2's FWHM (sky.py renders compact sources so)
    with fits.open(ext.out / t["file"]) as h:
        g, ghdr = h[0].data.astype(float), h[0].header
    assert ghdr["MODEL"] == "gaussian" and g.shape == (81 * 4, 81 * 4) and g.sum() == pytest.approx(1.0, abs=1e-9)
    assert measure_fwhm(g, ghdr["PIXELSCL"]) == pytest.approx(FILTERS[band]["fwhm"], rel=0.01)
    assert g[::-1, ::-1] == pytest.approx(g, abs=1e-15)  # centred on the array centre
    t = t["jwst_like"]
    with fits.open(ext.out / t["file"]) as h:
        psf, hdr = h[0].data.astype(float), h[0].header
    assert psf.shape == (81 * 4, 81 * 4)
    assert hdr["FILTER"] == band and hdr["OVERSAMP"] == 4
    assert hdr["PIXELSCL"] * 4 == pytest.approx({"F200W": 0.031, "F300M": 0.063}.get(band, 0.11))
    assert hdr["WAVELEN"] == pytest.approx(FILTERS[band]["wavelength"] * 1e-6)
    assert psf.sum() == pytest.approx(1.0, abs=1e-9) and psf.min() >= 0
    yy, xx = np.indices(psf.shape, float)
    c = (psf.shape[0] - 1) / 2.0
    assert abs((psf * xx).sum() - c) < 0.1 and abs((psf * yy).sum() - c) < 0.1
    assert np.unravel_index(psf.argmax(), psf.shape)[0] in (np.floor(c), np.ceil(c))
    fwhm = measure_fwhm(psf, hdr["PIXELSCL"])
    assert hdr["MODEL"] == "poppy"
    assert fwhm == pytest.approx(hdr["FWHM"], rel=1e-5) == pytest.approx(t["fwhm_arcsec"], rel=1e-5)
    assert fwhm == pytest.approx(FILTERS[band]["fwhm"], rel=0.25)
    # and about the diffraction limit of a 6.5 m aperture (1.03 lambda / D)
    assert fwhm == pytest.approx(1.03 * FILTERS[band]["wavelength"] * 1e-6 / 6.5 * 206264.8, rel=0.05)


# -- (d) determinism -------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_data(ext, tmp_path):
    g = ext.galaxy
    state = np.random.get_state()[1].copy()
    # the images of the fixture again, from the generator write_external_inputs documents
    rng = np.random.default_rng([SEED, hash_str("external-images"), hash_str(NAME)])
    again = E.write_external_images(tmp_path / "a", NAME, g, rng)
    assert again == {k: v for k, v in ext.truth["external"][NAME].items() if k != "refcat"}
    for survey in SURVEYS:
        f = again[survey]["file"]
        assert (tmp_path / "a" / f).read_bytes() == (ext.out / f).read_bytes()
    rng = np.random.default_rng([SEED, hash_str("refcat"), hash_str(NAME)])
    cat = E.write_reference_catalog(tmp_path / "a", NAME, g, rng)
    assert (tmp_path / "a" / cat["file"]).read_bytes() == (ext.out / cat["file"]).read_bytes()
    # another seed: other slope, background, noise and position errors
    other = E.write_external_images(tmp_path / "b", NAME, g, np.random.default_rng(SEED + 1), surveys=("wise1",))
    img_b = fits.getdata(tmp_path / "b" / other["wise1"]["file"])
    img_a, _ = _image(ext, "wise1")
    assert other["wise1"]["slope"] != again["wise1"]["slope"]
    assert not np.array_equal(img_b, img_a.astype(np.float32))
    cat_b = E.write_reference_catalog(tmp_path / "b", NAME, g, np.random.default_rng(SEED + 1))
    ta = Table.read(ext.out / cat["file"], format="ascii.ecsv")
    tb = Table.read(tmp_path / "b" / cat_b["file"], format="ascii.ecsv")
    assert len(ta) == len(tb)
    sky = ta["IN_SKY"]
    assert np.array_equal(ta["RA_TRUE"][sky], tb["RA_TRUE"][sky])
    assert not np.any(ta["RA"] == tb["RA"])
    # the global random state was never touched
    assert np.array_equal(np.random.get_state()[1], state)


def test_runtime_budget(ext):
    """Four survey images, a catalogue and five PSFs in well under half a minute."""
    assert ext.elapsed < 30.0, ext.elapsed
