"""The synthetic program: the official pipeline runs on it offline and gets the truth back;
every injected effect is present at its recorded amplitude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing.simulate import detectors as D
from processing.simulate.program import BORROW_GAP_MIN, LATE_DAYS
from processing.simulate.truth import Truth


def _open(path):
    from stdatamodels.jwst import datamodels

    return datamodels.open(str(path))


# -- the default pipeline recovers the truth where nothing was injected ------------------------


def test_default_mosaic_recovers_true_sky(clean_default):
    """(F770W here; `make bench` checks F300M the same way: tests/benchmarks/default_pipeline.py)"""
    from tests.benchmarks.default_pipeline import recovered_flux

    program, result = clean_default
    r = recovered_flux(program, result["mosaics"]["synth1"]["F770W"], "synth1", "F770W")
    assert r["crds_context"] == "jwst_9001.pmap"
    assert abs(r["ratio"] - 1) < 0.01, r
    assert r["pixels"] > 10000, r


# -- the effects, at their recorded amplitudes ---------------------------------------------------


def _rate_and_cal(effects_default, basename):
    work = Path(effects_default["workdir"])
    return work / "rate" / f"{basename}_rate.fits", work / "cal" / f"{basename}_cal.fits"


def _first(truth, **want):
    return next(b for b, e in sorted(truth.exposures.items()) if all(e.get(k) == v for k, v in want.items()))


def test_one_over_f_stripes_present(effects_program, effects_default):
    truth = Truth(effects_program)
    name = _first(truth, target="synth1", band="F200W")
    rate_file, _ = _rate_and_cal(effects_default, name)
    rate = _open(rate_file)
    injected = truth.injected(name)["STRIPES"][:, 0]  # one amplifier in SUB640
    sky = truth.exposure_sky(name)
    det = "NRCA1"
    sub = D.subarray(det, "demo")
    ys = slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0])
    xs = slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1])
    model = (
        (sky + truth.exposures[name]["nircam_sky_mjysr"])
        / D.FILTERS["F200W"]["photmjsr"]
        * D.flat(det, "F200W")[ys, xs]
    )
    resid = np.where(D.science_mask(det)[ys, xs] & (rate.dq == 0), rate.data - model, np.nan)
    rows = np.nanmedian(resid, axis=1)
    ok = np.isfinite(rows)
    rms_injected = truth.exposures[name]["stripe_rms_dns"]
    assert rms_injected == pytest.approx(0.1, rel=1e-6)
    # measured row stripes follow the injected ones: unit slope, scatter at the noise level
    slope = np.polyfit(injected[ok], rows[ok], 1)[0]
    assert slope == pytest.approx(1.0, abs=0.15)
    n_per_row = np.sum(np.isfinite(resid), axis=1)[ok]
    err = np.nanmedian(np.where(np.isfinite(resid), rate.err, np.nan))
    expected_noise = 1.2533 * err / np.sqrt(np.median(n_per_row))  # error of a median
    scatter = np.std(rows[ok] - injected[ok])
    assert scatter < 1.5 * expected_noise, (scatter, expected_noise)
    assert np.std(rows[ok]) ** 2 == pytest.approx(rms_injected**2 + scatter**2, rel=0.25)


def test_miri_background_and_lyot_levels_present(effects_program, effects_default):
    truth = Truth(effects_program)
    name = _first(truth, target="synth1", band="F770W", kind="science")
    _, cal_file = _rate_and_cal(effects_default, name)
    cal = _open(cal_file)
    rec = truth.exposures[name]
    sky = truth.exposure_sky(name)
    resid = cal.data - sky
    good = np.isfinite(resid) & (cal.dq & 1 == 0)
    lyot = D.lyot_mask(good.shape)
    imager = good & ~lyot
    bkg = truth.injected(name)["BKG"]
    # the imager background: level x pattern, recorded to 1%
    assert np.median(resid[imager]) == pytest.approx(np.median(bkg[imager]), rel=0.01)
    assert np.median(bkg[imager]) == pytest.approx(rec["background_level_mjysr"], rel=0.02)
    # the coronagraph region sits at its own recorded offset above the imager
    step = np.median(resid[good & lyot]) - np.median(resid[imager])
    assert step == pytest.approx(rec["lyot_offset_mjysr"], abs=0.05 + 0.1 * abs(rec["lyot_offset_mjysr"]))


def test_miri_background_drifts_and_borrowed_case_timing(effects_program):
    truth = Truth(effects_program)
    exp = truth.exposures
    off1 = [e for e in exp.values() if e["target"] == "synth1" and e["kind"] == "off"]
    sci2 = [e for e in exp.values() if e["target"] == "synth2" and e["kind"] == "science" and e["instrument"] == "miri"]
    off2 = [e for e in exp.values() if e["target"] == "synth2" and e["kind"] == "off"]
    # synth1's off-fields end minutes before synth2's MIRI science; synth2's own come months later
    end_off1 = max(e["mjd_start"] for e in off1)
    gap_min = (min(e["mjd_start"] for e in sci2) - end_off1) * 1440
    assert BORROW_GAP_MIN - 1 < gap_min < BORROW_GAP_MIN + 5
    assert (min(e["mjd_start"] for e in off2) - max(e["mjd_start"] for e in sci2)) > LATE_DAYS * 0.9
    assert {e["background_epoch"] for e in off2} == {1} and {e["background_epoch"] for e in sci2} == {0}
    # within an epoch the level drifts with time
    f770 = sorted((e["mjd_start"], e["background_level_mjysr"]) for e in off1 + sci2 if e["band"] == "F770W")
    t, level = np.array(f770).T
    assert np.polyfit((t - t[0]) * 24, level, 1)[0] > 0.5 * 0.03 * 8.0


def test_pointing_errors_present(effects_program, effects_default):
    """The cal image matches the truth only once the recorded pointing error is applied."""
    from scipy.optimize import least_squares

    truth = Truth(effects_program)
    name = _first(truth, target="synth1", band="F200W")
    _, cal_file = _rate_and_cal(effects_default, name)
    cal = _open(cal_file)
    err = truth.data["visits"][truth.exposures[name]["visit"]]["pointing_error_arcsec"]
    assert 0.1 <= np.hypot(*err) <= 1.0
    ny, nx = cal.data.shape
    sky_level = truth.exposures[name]["nircam_sky_mjysr"]

    def sampled(step):
        y, x = np.mgrid[8 : ny - 8 : step, 8 : nx - 8 : step]
        ra, dec = cal.meta.wcs(x, y)  # the header (nominal) WCS
        data = cal.data[8 : ny - 8 : step, 8 : nx - 8 : step] - sky_level
        ok = np.isfinite(data)
        return ra[ok], dec[ok], data[ok], np.cos(np.deg2rad(dec[ok]))

    def resid(p, ra, dec, data, cosd):
        return data - truth.sky("synth1", "F200W", ra + p[0] / 3600 / cosd, dec + p[1] / 3600)

    def cost(p, *sample):
        return np.mean(resid(p, *sample) ** 2)

    # coarse: a 0.1" grid on a sparse sample (the diffuse structure finds the basin), then a
    # least-squares fit on a dense one (the point sources pin it down): ~20 s, not minutes
    coarse, fine = sampled(12), sampled(2)
    grid = np.arange(-1.2, 1.21, 0.1)
    _, a0, b0 = min((cost((a, b), *coarse), a, b) for a in grid for b in grid)
    fit = least_squares(resid, x0=[a0, b0], args=fine, diff_step=1e-3, xtol=1e-4)
    # pixels are labelled with nominal positions, the sky there is the truth at nominal + error
    assert np.hypot(*(np.array(fit.x) - np.array(err))) < 0.01, (fit.x, err)
    assert cost(fit.x, *fine) < 0.2 * cost((0.0, 0.0), *fine)


def test_cosmic_rays_and_saturation_present(effects_program, effects_default):
    truth = Truth(effects_program)
    name = _first(truth, target="synth1", band="F200W")
    rate_file, _ = _rate_and_cal(effects_default, name)
    rate = _open(rate_file)
    crs = truth.injected(name)["CRAYS"]
    assert len(crs) == truth.exposures[name]["n_cosmic_rays"] > 50
    jump = 4  # JUMP_DET
    flagged = np.mean([(rate.dq[int(y), int(x)] & jump) > 0 for y, x, _, _ in crs])
    assert flagged > 0.9, flagged
    # the nucleus saturates in F200W after the first group, so suppress_one_group matters
    uncal = fits.getdata(truth.file(name), "SCI")
    sat = (uncal[0, -1] >= D.DETECTORS["NRCA1"].saturation) & (uncal[0, 0] < D.DETECTORS["NRCA1"].saturation)
    # synth1's nucleus may fall outside a given tile: look at every F200W exposure of synth1
    any_sat = sat.any()
    for other in (b for b, e in truth.exposures.items() if e["band"] == "F200W" and b != name):
        if any_sat:
            break
        u = fits.getdata(truth.file(other), "SCI")
        any_sat = ((u[0, -1] >= D.DETECTORS["NRCA1"].saturation) & (u[0, 0] < D.DETECTORS["NRCA1"].saturation)).any()
    assert any_sat


def test_same_seed_same_program(tmp_path, effects_program):
    """Deterministic for a seed: the same exposure comes out byte-identical."""
    from processing.simulate.generate import _render_exposure, galaxy_from_dict  # noqa: F401

    idx = json.loads((effects_program / "program.json").read_text())
    assert idx["seed"] == 1
    # regenerate only the truth-independent parts cheaply: the plan and the galaxy
    from processing.simulate.generate import _rng
    from processing.simulate.sky import Galaxy

    g1 = Galaxy.random(150.1, 2.2, _rng(1, "galaxy", "synth1"))
    assert np.array_equal(g1.knots, Truth(effects_program).galaxy("synth1").knots)


def test_full_size_plan():
    """The benchmark size: full detectors, four amplifiers, 4-point dithers."""
    from processing.simulate.program import plan_program

    plan = plan_program(["F200W", "F300M", "F770W", "F1000W", "F2100W"], "full")
    assert len(plan) == 96
    for det, shape in (("NRCA1", (2048, 2048)), ("NRCALONG", (2048, 2048)), ("MIRIMAGE", (1024, 1032))):
        assert D.subarray(det, "full")["shape"] == shape and D.subarray(det, "full")["name"] == "FULL"
    demo = {det: D.subarray(det, "demo") for det in D.DETECTORS}
    assert demo["NRCA1"]["shape"] == (640, 640) and demo["NRCALONG"]["shape"] == (320, 320)


def test_one_over_f_spectrum_and_amplifiers():
    from processing.simulate.exposures import amplifier_columns, one_over_f

    rng = np.random.default_rng(5)
    s = one_over_f(rng, 2048, 4, 0.1)
    assert s.shape == (2048, 4) and np.allclose(s.std(axis=0), 0.1)
    # 1/f: power at low frequencies dominates (ratio of mean power in two decades ~10)
    p = np.abs(np.fft.rfft(s, axis=0)) ** 2
    low, high = p[2:20].mean(), p[200:2000].mean()
    assert 20 < low / high < 2000
    assert [c.start for c in amplifier_columns(2048, 4)] == [0, 512, 1024, 1536]
