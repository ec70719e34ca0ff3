"""PSF-matching kernels (Aniano et al. 2011) on known PSFs: normalisation, the FWHM a point
source gets, the metrics, the safe resolutions' order, grids."""

from __future__ import annotations

import numpy as np
import pytest

from processing.common.psf import measure_fwhm
from processing.psf_matching import kernels as K


def _airy_like(n=161, pixscale=0.02, fwhm=0.3):
    """A centred PSF with an Airy-like ring: a Gaussian core plus a faint annulus."""
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    r = np.hypot(xx, yy) * pixscale
    core = np.exp(-0.5 * (r / (fwhm * K.FWHM_TO_SIGMA)) ** 2)
    ring = 0.02 * np.exp(-0.5 * ((r - 1.6 * fwhm) / (0.15 * fwhm)) ** 2)
    p = core + ring
    return p / p.sum()


def test_kernel_sums_to_one_and_gives_the_target_fwhm():
    from scipy.signal import fftconvolve

    psf = _airy_like()
    for target in (0.5, 0.85, 1.0):
        k, w_minus, d = K.kernel_to_gaussian(psf, 0.02, target)
        assert k.shape[0] % 2 == 1 and abs(k.sum() - 1) < 1e-6
        n = k.shape[0]
        point = fftconvolve(K.pad_to(K.circularise(psf), n), k, mode="same")
        assert measure_fwhm(point, 0.02) == pytest.approx(target, rel=0.02)
        yy, xx = np.indices(k.shape) - (n - 1) / 2
        assert abs((k * xx).sum()) < 1e-3 and abs((k * yy).sum()) < 1e-3  # no shift
        assert d < 0.02


def test_gaussian_to_wider_gaussian_needs_no_negative_weight():
    psf = K.gaussian(121, 0.05, 0.4)
    k, w_minus, d = K.kernel_to_gaussian(psf, 0.05, 1.0)
    assert w_minus < 0.01 and d < 0.01
    # the kernel is the Gaussian of the quadrature difference
    assert measure_fwhm(k, 0.05) == pytest.approx(np.sqrt(1.0 - 0.4**2), rel=0.02)


def test_safe_resolutions_are_ordered_and_near_the_source():
    psf = _airy_like()
    vs, s, ag = (K.safe_fwhm(psf, 0.02, K.SAFETY[k]) for k in ("very_safe", "safe", "aggressive"))
    assert 0.3 < ag < s < vs < 0.6, (vs, s, ag)
    assert K.kernel_to_gaussian(psf, 0.02, vs)[1] <= 0.3 + 1e-3


def test_centred_odd_and_block_sums_keep_the_centre():
    n = 324
    yy, xx = np.indices((n, n)) - (n - 1) / 2  # centre between pixels, as written
    psf = np.exp(-0.5 * (xx**2 + yy**2) / 20.0**2)
    odd = K.centred_odd(psf)
    assert odd.shape == (323, 323)
    y2, x2 = np.indices(odd.shape) - 161
    assert abs((odd * x2).sum()) < 1e-6 and abs((odd * y2).sum()) < 1e-6
    coarse = K.to_pixel_scale(psf, 0.0275, 0.11)
    assert coarse.shape == (81, 81) and np.unravel_index(coarse.argmax(), coarse.shape) == (40, 40)
    assert coarse.sum() == pytest.approx(1.0)


# -- convolving mosaics (processing/psf_matching/convolve.py) -------------------------------------
from processing.psf_matching import convolve as C  # noqa: E402


def _point_image(n=161, pixscale=0.1, fwhm=0.3, flux=1000.0):
    """A Gaussian point source of ``fwhm`` on the centre of an (n, n) image."""
    return flux * K.gaussian(n, pixscale, fwhm)


def test_convolved_point_source_has_the_target_fwhm_and_keeps_its_flux():
    pix, src_fwhm, target = 0.1, 0.3, 0.9
    psf = K.gaussian(81, pix, src_fwhm)
    kernel, w_minus, _ = K.kernel_to_gaussian(psf, pix, target)
    assert abs(kernel.sum() - 1.0) < 1e-6 and w_minus < 0.01
    img = _point_image(201, pix, src_fwhm)
    out, err, cov = C.convolve_block(img, np.ones_like(img), kernel)
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 100])  # the array's corners are rounded off (coverage 1/4)
    out = np.nan_to_num(out)
    assert measure_fwhm(out, pix) == pytest.approx(target, rel=0.02)
    yy, xx = np.indices(img.shape) - 100
    aperture = np.hypot(xx, yy) * pix < 4 * target
    assert out[aperture].sum() == pytest.approx(img[aperture].sum(), rel=0.005)
    assert np.allclose(cov[20:-20, 20:-20], 1.0, atol=1e-9)


def test_propagated_error_matches_the_noise_of_convolved_white_noise():
    rng = np.random.default_rng(3)
    sigma = 2.0
    noise = rng.normal(0.0, sigma, (600, 600))
    kernel = K.gaussian(41, 0.1, 0.8)
    out, err, _ = C.convolve_block(noise, np.full_like(noise, sigma), kernel)
    inner = (slice(40, -40), slice(40, -40))
    measured = np.std(out[inner])
    # uncorrelated pixels: sqrt(sum K^2) sigma exactly; the sample of correlated output pixels
    # scatters by a few percent
    assert np.nanmedian(err[inner]) == pytest.approx(sigma * np.sqrt((kernel**2).sum()), rel=1e-6)
    assert measured == pytest.approx(np.nanmedian(err[inner]), rel=0.1)
    assert measured < sigma / 5  # a 0.8" beam on 0.1" pixels averages ~ (0.8/0.1)^2 pixels


def test_nans_neither_erode_the_map_nor_grow_it():
    kernel = K.gaussian(31, 0.1, 0.6)
    img = np.full((120, 120), 5.0)
    img[:, :40] = np.nan  # outside the footprint
    img[60, 80] = np.nan  # one bad pixel inside
    img[90:110, 60:80] = np.nan  # a hole larger than the kernel's core
    out, err, cov = C.convolve_block(img, np.ones_like(img), kernel)
    # the edge stays where it was: the first valid column is still valid, the last NaN still NaN
    assert np.isfinite(out[10:50, 40]).all() and np.isnan(out[10:50, 39]).all()
    # a single bad pixel is filled, with the right value (a flat image stays flat)
    assert out[60, 80] == pytest.approx(5.0, rel=1e-6)
    assert np.allclose(out[np.isfinite(out)], 5.0, rtol=1e-5)
    # a large hole's middle stays empty; valid pixels next to it are kept
    assert np.isnan(out[100, 70]) and np.isfinite(out[88, 70])
    # a plain FFT convolution would have spread the one NaN over the kernel's area
    from scipy.signal import fftconvolve

    assert np.isnan(fftconvolve(img, kernel, mode="same")[60, 75])


def test_tiled_convolution_equals_the_whole_image():
    rng = np.random.default_rng(5)
    img = rng.normal(1.0, 0.3, (230, 170)).astype(np.float32)
    img[100:110, 30:50] = np.nan
    err = np.full_like(img, 0.3)
    kernel = K.gaussian(25, 0.1, 0.7)
    whole, werr, _ = C.convolve_block(img, err, kernel)
    sci_out, err_out = np.zeros_like(img), np.zeros_like(img)
    finite = C.convolve_tiled(img, err, kernel, sci_out, err_out, tile=64)
    assert np.allclose(sci_out, whole, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.allclose(err_out, werr, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert finite == pytest.approx(np.isfinite(whole).mean())


def test_beam_keywords():
    kw = C.beam_keywords(0.9)
    assert kw["BMAJ"][0] == kw["BMIN"][0] == pytest.approx(0.25e-3) and kw["BPA"][0] == 0.0


# -- the stage on small files --------------------------------------------------------------------
def _write_psf(path, fwhm, pixscale=0.025, n=324, pixelscl=True):
    from astropy.io import fits

    from processing.simulate.external import FILTERS  # noqa: F401 (same layout as the program's)

    yy, xx = np.indices((n, n)) - (n - 1) / 2
    g = np.exp(-0.5 * (np.hypot(xx, yy) * pixscale / (fwhm * K.FWHM_TO_SIGMA)) ** 2)
    h = fits.Header()
    if pixelscl:
        h["PIXELSCL"] = pixscale
    fits.PrimaryHDU(g / g.sum(), header=h).writeto(path, overwrite=True)
    return path


def _write_mosaic(path, fwhm=0.3, pix=0.1, n=241):
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-pix / 3600, pix / 3600]
    rng = np.random.default_rng(1)
    sci = (_point_image(n, pix, fwhm) + 0.5 + rng.normal(0, 0.01, (n, n))).astype(np.float32)
    sci[:, :20] = np.nan
    prim = fits.PrimaryHDU()
    prim.header["EXPSTART"] = 60000.0
    h = w.to_header()
    h["BUNIT"] = "MJy/sr"
    fits.HDUList(
        [prim, fits.ImageHDU(sci, h, name="SCI"), fits.ImageHDU(np.full_like(sci, 0.01), h, name="ERR")]
    ).writeto(path)
    return path


def test_the_stage_writes_each_resolution_with_its_beam_and_kernel(tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    from processing.psf_matching import stage as S

    mosaic = _write_mosaic(tmp_path / "m_i2d.fits")
    psf = _write_psf(tmp_path / "psf_F770W.fits", 0.3)
    out = tmp_path / "out"
    out.mkdir()
    variants = {"gauss0p85as": 0.85, "gauss1p00as": 1.0}
    written = S.run(
        {"mosaic": [str(mosaic)], "psf": [str(psf)]},
        out,
        {"noise_curve_points": 3},
        {"target": "synth1", "band": "F770W", "product": "synth1_f770w", "variants": variants},
    )
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "synth1_f770w_gauss0p85as.fits",
            "synth1_f770w_gauss0p85as_kernel.fits",
            "synth1_f770w_gauss1p00as.fits",
            "synth1_f770w_gauss1p00as_kernel.fits",
            "synth1_f770w_psf_matching.ecsv",
            "synth1_f770w_psf_matching.png",
        ]
    )
    assert not list(out.glob("*.npy"))  # the scratch arrays are gone
    for variant, fwhm in variants.items():
        with fits.open(out / f"synth1_f770w_{variant}.fits") as h:
            assert [x.name for x in h] == ["PRIMARY", "SCI", "ERR"]
            for ext in (0, 1, 2):
                assert h[ext].header["BMAJ"] == h[ext].header["BMIN"] == pytest.approx(fwhm / 3600)
            assert h[0].header["HLSPDPB"] == fwhm and h[0].header["HLSPDPW"] < 0.01
            assert h[0].header["EXPSTART"] == 60000.0  # the mosaic's primary header is kept
            sci = h["SCI"].data
            assert measure_fwhm(np.nan_to_num(sci[60:181, 60:181] - 0.5), 0.1) == pytest.approx(fwhm, rel=0.02)
            # the edge has not moved (the footprint's corners, array corners included, are rounded off)
            assert np.isnan(sci[:, :19]).all() and np.isfinite(sci[10:-10, 20:]).all()
        k = fits.getdata(out / f"synth1_f770w_{variant}_kernel.fits")
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
    t = Table.read(out / "synth1_f770w_psf_matching.ecsv")
    rel = t[t["product"] != "-"]
    assert list(rel["product"]) == ["gauss0p85as", "gauss1p00as"]
    assert np.allclose(rel["point_fwhm_arcsec"], [0.85, 1.0], rtol=0.02)
    noise = t["noise_mjysr"]
    assert np.all(np.diff(noise[np.isfinite(noise)]) < 0)  # smoother is quieter (Figure 10)


def test_the_stage_refuses_a_resolution_the_band_cannot_reach(tmp_path):
    from processing.errors import WorkFailed
    from processing.psf_matching import stage as S

    mosaic = _write_mosaic(tmp_path / "m_i2d.fits")
    psf = _write_psf(tmp_path / "psf_F2100W.fits", 0.65)
    ctx = {
        "target": "synth1",
        "band": "F2100W",
        "product": "synth1_f2100w",
        "variants": {"gauss0p50as": 0.5, "gauss0p90as": 0.9},
    }
    with pytest.raises(WorkFailed, match=r"synth1 F2100W to 0.50\": 0.50\" is not wider than the band's PSF \(0.65"):
        S.run({"mosaic": [str(mosaic)], "psf": [str(psf)]}, tmp_path, {}, ctx)
    # an airy-like PSF with a hard limit: W- above it is refused, naming the finest allowed
    ctx["variants"] = {"gauss0p70as": 0.7}
    with pytest.raises(WorkFailed, match=r"W- .* > max_negative_power 0.01: the finest resolution this band allows is"):
        S.run({"mosaic": [str(mosaic)], "psf": [str(psf)]}, tmp_path, {"max_negative_power": 0.01}, ctx)
    assert not list(tmp_path.glob("*gauss*"))  # refused before anything was written


def test_a_psf_without_its_pixel_scale_is_refused_naming_the_file(tmp_path):
    from processing.errors import WorkFailed
    from processing.psf_matching import stage as S

    psf = _write_psf(tmp_path / "psf_F770W.fits", 0.3, pixelscl=False)
    with pytest.raises(WorkFailed, match=r"psf_F770W.fits: no PIXELSCL"):
        S.read_psf(psf)
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = not fits")
    with pytest.raises(WorkFailed, match="broken.fits could not be read"):
        S.read_psf(tmp_path / "broken.fits")


# -- in the engine ---------------------------------------------------------------------------------
def test_resolutions_enter_the_key_of_psf_matching_only(engine_run, tmp_path):
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest
    from tests.conftest import write_manifest

    lm0 = load_manifest(engine_run["manifest"])
    program = lm0.resolve_path(lm0.manifest.program.data.path)
    changed = write_manifest(
        tmp_path / "changed.toml", program, extra="\n[products]\nconvolved_fwhm_arcsec = [0.85, 1.5]\n"
    )
    lm = load_manifest(changed)
    graph = build_graph(lm)
    status = Engine(lm, graph, tmp_path / "work", cache_dir=engine_run["cache"], read_only=True).plan()
    rerun = sorted(t for t, s in status.items() if s == "run")
    assert rerun == [f"psf_matching/{t}/{b}" for t in ("synth1", "synth2") for b in ("F200W", "F770W")]
    assert graph.tasks["psf_matching/synth1/F770W"].context["variants"] == {"gauss0p85as": 0.85, "gauss1p50as": 1.5}
    none = write_manifest(tmp_path / "none.toml", program, extra="\n[products]\nconvolved_fwhm_arcsec = []\n")
    assert not [t for t in build_graph(load_manifest(none)).tasks if t.startswith("psf_matching/")]


def test_a_band_without_its_psf_is_refused_when_the_graph_is_built(engine_run, tmp_path):
    from processing.errors import BadInput
    from processing.pipeline import build_graph
    from release.manifest import load_manifest
    from tests.conftest import write_manifest

    lm0 = load_manifest(engine_run["manifest"])
    program = lm0.resolve_path(lm0.manifest.program.data.path)
    bad = write_manifest(
        tmp_path / "bad.toml", program, extra=f'\n[products]\npsfs = {{ F770W = "{tmp_path / "nope.fits"}" }}\n'
    )
    with pytest.raises(BadInput, match=r"products.psfs.F770W: the PSF of F770W, .*nope.fits, is not a file"):
        build_graph(load_manifest(bad))
    empty = tmp_path / "psfs"
    empty.mkdir()
    bad = write_manifest(tmp_path / "bad2.toml", program, extra=f'\n[products]\npsf_path = "{empty}"\n')
    with pytest.raises(BadInput, match=r"products.psf_path: the PSF of F200W, .*psf_F200W.fits, is not a file"):
        build_graph(load_manifest(bad))


def test_the_engine_run_matches_the_truth_at_each_resolution(engine_run, effects_program):
    """The convolved mosaics against the synthetic sky rendered at the same Gaussian: the same
    level as the anchored mosaic and far less scatter than the unconvolved one against its own
    truth; the point-source FWHM from the kernels within 2%."""
    import json

    from astropy.table import Table

    from processing.simulate.truth import Truth
    from tests.benchmarks.psf_matching import _against_truth

    truth = Truth(effects_program)
    work = engine_run["workdir"]
    index = json.loads((work / "products" / "index.json").read_text())["products"]
    entry = lambda p: work / "cache" / "objects" / p["key"][:2] / p["key"]  # noqa: E731
    tables = [p for p in index if p["product"] == "psf-matching"]
    assert len(tables) == 4
    for p in tables:
        t = Table.read(entry(p) / p["file"])
        rel = t[t["product"] != "-"]
        assert list(rel["fwhm_arcsec"]) == [0.85, 0.90, 1.00]
        assert np.all(np.abs(rel["point_fwhm_arcsec"] / rel["fwhm_arcsec"] - 1) < 0.02)
        assert np.all(rel["w_minus"] < 0.05)  # the synthetic PSFs are Gaussians: no negative lobes needed
        noise = t["noise_mjysr"][np.isfinite(t["noise_mjysr"])]
        assert noise[-1] < noise[0]  # smoothing lowers the noise (Figure 10)
    mosaic = next(p for p in index if p["product"] == "img" and p["target"] == "synth1" and p["band"] == "F770W")
    conv = next(
        p for p in index if p["product"] == "img-gauss0p90as" and p["target"] == "synth1" and p["band"] == "F770W"
    )
    native = _against_truth(entry(mosaic) / mosaic["file"], truth, "synth1", "F770W", None)
    smooth = _against_truth(entry(conv) / conv["file"], truth, "synth1", "F770W", 0.9)
    assert abs(smooth["median"] - native["median"]) < 0.02
    assert smooth["scatter"] < 0.5 * native["scatter"]
