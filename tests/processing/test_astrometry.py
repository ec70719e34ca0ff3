"""Astrometry: the pure algorithms on arrays against known answers (fast), and the two stages
on the demo run against the synthetic truth (engine fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from processing.astrometry import match as M
from processing.common.psf import psf_fwhm_arcsec


def _field(rng, n=300, half=40.0):
    return rng.uniform(-half, half, (n, 2))


def _observe(ref, theta, shift, rng, noise=0.005, keep=0.7, n_spurious=40, half=40.0):
    """Measured positions of the reference sources under the inverse of ``T``, with centroid
    noise, some sources missing and spurious detections (knots of emission)."""
    sel = rng.random(len(ref)) < keep
    true = ref[sel]
    src = (true - shift) @ M.rotation(-theta).T + rng.normal(0, noise, true.shape)
    return np.vstack([src, rng.uniform(-half, half, (n_spurious, 2))])


def test_two_pass_solution_recovers_a_large_shift_and_small_rotation():
    rng = np.random.default_rng(3)
    ref = _field(rng)
    theta, shift = np.deg2rad(0.01), np.array([0.83, -1.12])  # > 1" guide-star error
    src = _observe(ref, theta, shift, rng)
    sol, i, j, used = M.solve(src, ref, search_radius=2.0, tolerance_wide=0.2, tolerance_strict=0.03)
    assert sol.status == "rshift" and sol.n_matches > 150
    assert np.allclose(sol.shift_arcsec, shift, atol=0.002)
    assert sol.theta_rad == pytest.approx(theta, abs=np.deg2rad(0.002))
    assert sol.rms_arcsec == pytest.approx(0.005, rel=0.2)
    # formal error: RMS / sqrt(n) per axis
    assert sol.shift_err_arcsec[0] == pytest.approx(sol.rms_arcsec / np.sqrt(sol.n_matches))
    # the corrected measured positions land on the reference
    moved = src[i[used]] @ M.rotation(sol.theta_rad).T + sol.shift_arcsec
    assert np.abs(moved - ref[j[used]]).max() < 0.03


def test_groups_match_each_exposure_once_per_star():
    rng = np.random.default_rng(4)
    ref = _field(rng, n=60)
    shift = np.array([0.3, 0.2])
    dithers = [_observe(ref, 0.0, shift, rng, keep=1.0, n_spurious=0) for _ in range(4)]
    sol, i, j, used = M.solve(dithers, ref, 1.5, 0.2, 0.03, rotate=False)
    assert sol.status == "shift" and sol.n_matches == 4 * 60
    assert np.allclose(sol.shift_arcsec, shift, atol=0.002)
    # pooled into one list, one-to-one matching keeps one of the four per star
    pooled, *_ = M.solve(np.vstack(dithers), ref, 1.5, 0.2, 0.03, rotate=False)
    assert pooled.n_matches == 60


def test_too_few_sources_or_matches_is_no_solution_with_the_reason():
    rng = np.random.default_rng(5)
    ref = _field(rng, n=3)
    sol, *_ = M.solve(ref + 0.1, ref, 2.0, 0.2, 0.03)
    assert not sol.ok and "too few sources" in sol.status
    ref = _field(rng, n=50)
    unrelated = _field(rng, n=50)  # nothing in common: the vote finds no consistent shift
    sol, *_ = M.solve(unrelated, ref, 2.0, 0.05, 0.02, min_matches=8)
    assert not sol.ok and "too few matches" in sol.status


def test_strict_pass_falls_back_to_the_wide_shift_and_says_so():
    rng = np.random.default_rng(6)
    ref = _field(rng, n=80)
    src = _observe(ref, 0.0, np.array([0.5, 0.0]), rng, noise=0.05, n_spurious=0)  # 50 mas noise
    sol, *_ = M.solve(src, ref, 2.0, 0.3, 0.005, min_matches=10)  # 5 mas strict tolerance: too tight
    assert sol.status == "shift" and sol.ok
    assert np.allclose(sol.shift_arcsec, [0.5, 0.0], atol=0.02)


def test_transfer_moves_the_shift_to_another_tangent_point():
    theta, shift = np.deg2rad(0.02), np.array([0.4, -0.3])
    p = np.array([[10.0, 5.0], [-30.0, 12.0], [3.0, -40.0]])
    q0 = np.array([20.0, -10.0])  # another centre in the same plane
    direct = p @ M.rotation(theta).T + shift
    moved = (p - q0) @ M.rotation(theta).T + M.transfer(theta, shift, (0, 0), q0) + q0
    assert np.allclose(direct, moved, atol=1e-12)


def test_tangent_plane_round_trip():
    ra0, dec0 = 359.99, -2.2
    x, y = np.array([-100.0, 0.0, 35.5]), np.array([20.0, -60.0, 0.1])
    ra, dec = M.from_tangent(x, y, ra0, dec0)
    x2, y2 = M.to_tangent(ra, dec, ra0, dec0)
    assert np.allclose(x2, x, atol=1e-7) and np.allclose(y2, y, atol=1e-7)


def test_paper_cuts_with_their_ends_and_missing_columns():
    cols = {
        "SHARP_F814W": np.array([-0.025, -0.02, 0.01, 0.011]),
        "COLOR_F555W_F814W": np.array([2.0, 3.0, 3.99, 4.0]),
        "snr_f814w": np.array([10.0, 9.9, 50.0, 50.0]),
    }
    keep, applied, missing = M.select_catalog(
        cols,
        {
            "SHARP_F814W": (-0.025, 0.01),
            "COLOR_F555W_F814W": (2.0, 4.0),
            "SNR_F814W": (10.0, None),
            "CROWD_F814W": (None, 0.01),
        },
    )
    # sharp: -0.025 < v <= 0.01; colour: 2 <= v < 4; S/N >= 10 (column names case-insensitive)
    assert keep.tolist() == [False, False, True, False]
    assert applied == ["SHARP_F814W", "COLOR_F555W_F814W", "SNR_F814W"] and missing == ["CROWD_F814W"]


def test_detect_sources_centroids_gaussian_stars_on_a_gradient():
    rng = np.random.default_rng(7)
    ny, nx, fwhm = 200, 220, 3.0
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    data = 5.0 + 0.02 * xx + 0.01 * yy  # smooth emission under the stars
    truth = rng.uniform(15, 185, (25, 2))
    s = fwhm / 2.3548
    for x0, y0 in truth:
        data += 40.0 * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)
    err = np.full(data.shape, 0.5)
    data += rng.normal(0, 0.5, data.shape)
    bad = np.zeros(data.shape, bool)
    bad[:, :10] = True
    found = M.detect_sources(data, err, bad, fwhm)
    i, j = M.match_nearest(truth, np.column_stack([found["x"], found["y"]]), 1.0)
    # every star but a blended pair (4 pixels apart: one detection between them, dropped as
    # too wide rather than centroided between the two) and one on the masked edge
    assert len(i) >= 21 and len(j) == len(found["x"])
    d = np.column_stack([found["x"], found["y"]])[j] - truth[i]
    assert np.sqrt(np.mean(d**2)) < 0.05  # pixels
    assert np.abs(d.mean(axis=0)).max() < 0.02


def test_gaussian_centroids_beat_the_detection_and_skip_what_they_cannot_fit():
    rng = np.random.default_rng(10)
    yy, xx = np.mgrid[0:120, 0:120].astype(float)
    truth = rng.uniform(10, 110, (30, 2))
    fwhm = 2.0  # NIRCam SW sampling
    data = 3.0 + 0.01 * xx + rng.normal(0, 0.3, xx.shape)
    for x0, y0 in truth:
        data += 25.0 * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / (fwhm / 2.3548) ** 2)
    start = truth + rng.uniform(-0.4, 0.4, truth.shape)  # a detector's rough positions
    cx, cy = M.gaussian_centroids(data, start[:, 0], start[:, 1], fwhm)
    d = np.column_stack([cx, cy]) - truth
    r = np.hypot(d[:, 0], d[:, 1])
    assert (
        np.isfinite(d).all()
        and np.median(r) < 0.02
        and np.sqrt(np.mean(d**2)) < 0.05
        and np.abs(d.mean(axis=0)).max() < 0.015
    )
    # a stamp off the image, and one of only bad pixels, give NaN rather than a guess
    bad = np.zeros(data.shape, bool)
    bad[50:60, 50:60] = True
    cx, cy = M.gaussian_centroids(data, np.array([1.0, 55.0]), np.array([1.0, 55.0]), fwhm, bad)
    assert np.isnan(cx).all() and np.isnan(cy).all()


def _visits(rng, shifts, catalogue_xy, ra0=150.0, dec0=2.0, dithers=2):
    """Fake exposures of visits whose sources sit at the catalogue's positions moved by the
    visit's guide-star error ``shifts[v]`` (arcsec, what the header gets wrong)."""
    from processing.astrometry.relative import ExposureInfo

    exposures, sources = [], {}
    for v, (dx, dy) in shifts.items():
        for d in range(dithers):
            name = f"jw{v}_{d}"
            seen = catalogue_xy[rng.random(len(catalogue_xy)) < 0.8]
            ra, dec = M.from_tangent(
                seen[:, 0] - dx + rng.normal(0, 0.004, len(seen)),
                seen[:, 1] - dy + rng.normal(0, 0.004, len(seen)),
                ra0,
                dec0,
            )
            sources[name] = {"x": ra, "ra": ra, "dec": dec}
            exposures.append(ExposureInfo(Path(name), name, "F300M", v, ra0, dec0, 30.0))
    return exposures, sources


def test_relative_shifts_per_visit_against_the_catalogue_and_without_it():
    from processing.astrometry.parameters import RelativeParameters
    from processing.astrometry.relative import solve_visits

    rng = np.random.default_rng(8)
    cat_xy = rng.uniform(-25, 25, (120, 2))
    shifts = {"v1": (0.8, 0.1), "v2": (-0.3, 0.9)}
    exposures, sources = _visits(rng, shifts, cat_xy)
    p = RelativeParameters(tolerance_wide_arcsec=0.15, tolerance_strict_arcsec=0.03)
    ra, dec = M.from_tangent(cat_xy[:, 0], cat_xy[:, 1], 150.0, 2.0)
    with_cat = solve_visits(exposures, sources, {"ra": ra, "dec": dec}, p)
    for v, (dx, dy) in shifts.items():
        sol, *_, frame = with_cat[v]
        assert frame == "catalog" and sol.ok and np.allclose(sol.shift_arcsec, [dx, dy], atol=0.002)
    # no catalogue: the visits are put on the best-populated visit's frame
    without = solve_visits(exposures, sources, None, p)
    anchor = next(v for v, (sol, *_, frame) in without.items() if frame.startswith("anchor"))
    other = next(v for v in shifts if v != anchor)
    sol = without[other][0]
    want = np.subtract(shifts[other], shifts[anchor])
    assert sol.ok and np.allclose(sol.shift_arcsec, want, atol=0.003)


def test_a_missing_catalogue_file_is_refused_before_any_work(engine_run, tmp_path):
    from tests.conftest import hlsp

    text = engine_run["manifest"].read_text().replace("synth2_refcat.ecsv", "no_such_refcat.ecsv", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = hlsp("plan", str(bad), "--workdir", str(tmp_path / "work"), check_code=2)
    err = " ".join(proc.stderr.split())
    assert "targets.synth2.astrometry_catalog" in err and "no_such_refcat.ecsv is not a file" in err
    assert "Traceback" not in err and not (tmp_path / "work").exists()


def test_psf_fwhm_from_the_band_name():
    assert psf_fwhm_arcsec("F200W") == pytest.approx(0.064, rel=0.03)
    assert psf_fwhm_arcsec("F1000W") == pytest.approx(0.328, rel=0.03)
    assert psf_fwhm_arcsec("f2100w") == pytest.approx(0.674, rel=0.05)


# -- the stages on the engine run (effects program: F200W and F770W, both reference bands
#    absent, so NIRCam solves on F200W and MIRI on F770W, and the tables say so) ---------------
def _task_dirs(engine_run, stage: str) -> dict:
    import json

    out = {}
    for p in (engine_run["cache"] / "objects").glob("*/*/task.json"):
        r = json.loads(p.read_text())
        if r["stage"] == stage:
            out[r["task"]] = p.parent
    return out


@pytest.fixture(scope="module")
def truth(effects_program):
    from processing.simulate.truth import Truth

    return Truth(effects_program)


def test_relative_shifts_recover_the_guide_star_errors(engine_run, truth):
    from astropy.table import Table

    tables = {t: next(d.glob("*_visit_shifts.ecsv")) for t, d in _task_dirs(engine_run, "relative_astrometry").items()}
    assert sorted(tables) == [
        "relative_astrometry/synth1/miri",
        "relative_astrometry/synth1/nircam",
        "relative_astrometry/synth2/miri",
        "relative_astrometry/synth2/nircam",
    ]
    for task, path in tables.items():
        t = Table.read(path)
        assert t.meta["reference_band"] == ("F200W" if task.endswith("nircam") else "F770W")  # the stand-ins
        assert t.meta["catalog"].endswith("_refcat.ecsv") and "CROWD_F814W" in t.meta["catalog_cuts_applied"]
        for row in t:
            assert row["applied"], (task, row["visit"], row["status"])
            true = 1000 * np.array(truth.data["visits"]["jw" + row["visit"]]["pointing_error_arcsec"])
            err = np.hypot(row["shift_east_mas"] - true[0], row["shift_north_mas"] - true[1])
            assert err < (10.0 if task.endswith("nircam") else 25.0), (task, row["visit"], err)


def test_tweakback_files_and_mosaic_carry_the_absolute_solution(engine_run, truth):
    import tarfile

    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS
    from stdatamodels.jwst import datamodels

    from tests.benchmarks.astrometry import wcs_error

    dirs = _task_dirs(engine_run, "astrometry")
    assert sorted(dirs) == [
        "astrometry/synth1/F200W",
        "astrometry/synth1/F770W",
        "astrometry/synth2/F200W",
        "astrometry/synth2/F770W",
    ]
    for task, d in dirs.items():
        band = task.rsplit("/", 1)[1]
        qa = Table.read(next(d.glob("*_astrometry.ecsv")))
        assert qa.meta["solution"]["status"] == "rshift" and qa.meta["solved_on"] == band
        assert next(d.glob("*_astrometry.png")).stat().st_size > 10_000
        mosaic = next(d.glob("*_i2d.fits"))
        h0 = fits.getheader(mosaic, 0)
        assert h0["HLSPDAST"] == "absolute" and h0["HLSPDAM"] >= 5
        # the FITS WCS and the gwcs of the corrected mosaic agree (sub-mas)
        with datamodels.open(mosaic) as m:
            ny, nx = m.data.shape
            xs, ys = np.meshgrid(np.linspace(0, nx - 1, 4), np.linspace(0, ny - 1, 4))
            ra, dec = m.meta.wcs(xs, ys)
        r2, d2 = WCS(fits.getheader(mosaic, "SCI")).all_pix2world(xs, ys, 0)
        assert 3.6e6 * max(np.abs((r2 - ra) * np.cos(np.deg2rad(dec))).max(), np.abs(d2 - dec).max()) < 0.1
        # every exposure of the band, in one folder, each within goal of the truth
        with tarfile.open(next(d.glob("*_tweakback.tar.gz"))) as tar:
            members = tar.getmembers()
            assert {Path(mb.name).parent.name for mb in members} == {mosaic.name.replace("_i2d.fits", "_tweakback")}
            names = [Path(mb.name).name for mb in members]
            expect = [
                n
                for n, e in truth.exposures.items()
                if e["target"] == task.split("/")[1] and e["band"] == band and e["kind"] == "science"
            ]
            assert sorted(n.replace("_cal.fits", "") for n in names) == sorted(expect)
            for mb in members:
                with datamodels.ImageModel(fits.HDUList.fromstring(tar.extractfile(mb).read())) as m:
                    err = wcs_error(truth, Path(mb.name).name.replace("_cal.fits", ""), m.meta.wcs, m.data.shape)
                    assert np.hypot(*err["mean_mas"]) < (10.0 if band == "F200W" else 30.0), (mb.name, err)


def test_correcting_a_mosaic_is_exact_in_both_wcs(engine_run, tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS
    from stdatamodels.jwst import datamodels

    from processing.astrometry.wcs import apply_to_sky, correct_mosaic

    mosaic = next(_task_dirs(engine_run, "lv3")["lv3/synth1/F200W"].glob("*_i2d.fits"))
    with datamodels.open(mosaic) as m:
        ny, nx = m.data.shape
        xs, ys = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
        ra, dec = m.meta.wcs(xs, ys)
        ra0, dec0 = float(ra.mean()) + 0.001, float(dec.mean()) - 0.001  # a tangent point off the CRVAL
        theta, shift = np.deg2rad(0.01), [0.5, -0.3]
        correct_mosaic(m, theta, shift, ra0, dec0)
        want = M.to_tangent(*apply_to_sky(ra, dec, theta, shift, ra0, dec0), ra0, dec0)
        got = M.to_tangent(*m.meta.wcs(xs, ys), ra0, dec0)
        assert 1000 * max(np.abs(got[0] - want[0]).max(), np.abs(got[1] - want[1]).max()) < 0.01  # mas
        m.save(tmp_path / "corrected_i2d.fits")
    w = WCS(fits.getheader(tmp_path / "corrected_i2d.fits", "SCI"))
    got = M.to_tangent(*w.all_pix2world(xs, ys, 0), ra0, dec0)
    assert 1000 * max(np.abs(got[0] - want[0]).max(), np.abs(got[1] - want[1]).max()) < 0.01


def test_correcting_an_exposure_matches_the_sky_transformation(engine_run):
    from stdatamodels.jwst import datamodels

    from processing.astrometry.wcs import apply_to_sky, correct_exposure

    cal = next(p for d in _task_dirs(engine_run, "lv2").values() for p in d.glob("*_cal.fits"))
    with datamodels.open(cal) as m:
        ny, nx = m.data.shape
        xs, ys = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
        ra, dec = m.meta.wcs(xs, ys)
        ra0, dec0 = float(ra.mean()) + 0.003, float(dec.mean()) - 0.002
        theta, shift = np.deg2rad(0.01), [0.5, -0.3]
        correct_exposure(m, theta, shift, ra0, dec0)
        want = M.to_tangent(*apply_to_sky(ra, dec, theta, shift, ra0, dec0), ra0, dec0)
        got = M.to_tangent(*m.meta.wcs(xs, ys), ra0, dec0)
    assert 1000 * max(np.abs(got[0] - want[0]).max(), np.abs(got[1] - want[1]).max()) < 0.01


def test_band_mapping_miri_solves_on_f1000w_nircam_per_band(tmp_path):
    """The graph: MIRI bands read F1000W's mosaic (the paper's mapping), NIRCam bands their
    own; relative astrometry reads every band of the instrument; a target never observed in
    the reference band falls back (no reference input) instead of failing."""
    from processing.pipeline import build_graph
    from release.manifest import load_manifest
    from tests.processing.test_stages import _exposure, toy_manifest

    raw = tmp_path / "raw"
    raw.mkdir()
    bands = {"alpha": ("F200W", "F300M", "F770W", "F1000W", "F2100W"), "beta": ("F200W", "F770W", "F2100W")}
    for target, bb in bands.items():
        for band in bb:
            inst = "miri" if band in ("F770W", "F1000W", "F2100W") else "nircam"
            _exposure(raw / f"jw09001{target}{band.lower()}_uncal.fits", target, inst, band, "001", 60000.0)
    for band in ("F770W", "F1000W", "F2100W"):
        _exposure(
            raw / f"jw09001alphabkg{band.lower()}_uncal.fits", "alpha", "miri", band, "003", 60000.5, parallel=True
        )
    (tmp_path / "cat.ecsv").write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: RA, datatype: float64}\n# - {name: DEC, datatype: float64}\nRA "
        "DEC\n10.0 1.0\n"
    )
    (tmp_path / "m.toml").write_text(
        toy_manifest(
            ["F200W", "F300M", "F770W", "F1000W", "F2100W"],
            """
[targets.alpha]
ra = 10.0
dec = 1.0
astrometry_catalog = "cat.ecsv"
[targets.beta]
ra = 20.0
dec = 2.0
bands = ["F200W", "F770W", "F2100W"]
[products]
convolved_fwhm_arcsec = []  # no PSFs in this toy program: no PSF matching
""",
        )
    )
    g = build_graph(load_manifest(tmp_path / "m.toml"))

    def ref(task):
        return [r["task"] for r in g.tasks[task].inputs["reference_mosaic"]]

    assert (
        ref("astrometry/alpha/F770W")
        == ref("astrometry/alpha/F2100W")
        == ref("astrometry/alpha/F1000W")
        == ["lv3/alpha/F1000W"]
    )
    assert ref("astrometry/alpha/F200W") == ref("astrometry/alpha/F300M") == []  # NIRCam: each band its own
    assert ref("astrometry/beta/F770W") == []  # beta has no F1000W: solved on its own band (recorded)
    cal = g.tasks["relative_astrometry/alpha/miri"].inputs["cal"]
    assert {r["task"].split("/")[0] for r in cal} == {"lv2"}
    assert {r["task"].split("alpha")[1].split("_")[0] for r in cal} == {"f770w", "f1000w", "f2100w"}
    assert g.tasks["astrometry/alpha/F770W"].inputs["catalog"] == [{"file": str(tmp_path / "cat.ecsv")}]
    assert g.tasks["astrometry/beta/F770W"].inputs["catalog"] == []  # no catalogue: relative only, recorded
    # lv3 reads what relative astrometry (then the later refiners) wrote
    lv3_sources = {r["task"].split("/")[0] for r in g.tasks["lv3/alpha/F2100W"].inputs["cal"]}
    assert lv3_sources == {"level_match"}
    lyot_in = g.tasks["lyot/" + cal[0]["task"].split("/", 1)[1]].inputs
    assert {r["task"].split("/")[0] for r in next(iter(lyot_in.values()))} == {"relative_astrometry"}


def test_too_few_matches_keeps_the_relative_astrometry_and_says_why(engine_run, tmp_path):
    """A catalogue with nothing in common with the image: the mosaic and the tweakback files
    keep their WCS, the header and the table say why; with require_solution it is a failure
    naming target and band."""
    from astropy.io import fits
    from astropy.table import Table

    from processing.astrometry import absolute
    from processing.errors import WorkFailed

    d = _task_dirs(engine_run, "lv3")["lv3/synth2/F200W"]
    mosaic = next(d.glob("*_i2d.fits"))
    cal = [next(p for q in _task_dirs(engine_run, "lv2").values() for p in q.glob("*nrca1_cal.fits"))]
    rng = np.random.default_rng(9)
    cat = Table({"RA": 150.6 + rng.uniform(-0.3, -0.2, 50), "DEC": 2.45 + rng.uniform(0.2, 0.3, 50)})  # 15' away
    cat.write(tmp_path / "far.ecsv")
    params = absolute.AbsoluteParameters().model_dump()
    context = {"target": "synth2", "band": "F200W", "instrument": "nircam", "product": "synth2_f200w"}
    out = tmp_path / "out"
    out.mkdir()
    written = absolute.run({"mosaic": [mosaic], "cal": cal, "catalog": [tmp_path / "far.ecsv"]}, out, params, context)
    assert sorted(p.name for p in written) == [
        "synth2_f200w_astrometry.ecsv",
        "synth2_f200w_astrometry.png",
        "synth2_f200w_i2d.fits",
        "synth2_f200w_tweakback.tar.gz",
    ]
    h0 = fits.getheader(out / "synth2_f200w_i2d.fits", 0)
    assert h0["HLSPDAST"] == "relative only" and h0["HLSPDAM"] == 0
    status = Table.read(out / "synth2_f200w_astrometry.ecsv").meta["solution"]["status"]
    assert "too few" in status and "relative astrometry only" in status
    assert fits.getheader(out / "synth2_f200w_i2d.fits", "SCI")["CRPIX1"] == fits.getheader(mosaic, "SCI")["CRPIX1"]
    strict = tmp_path / "strict"
    strict.mkdir()
    with pytest.raises(WorkFailed, match="astrometry synth2 F200W: too few"):
        absolute.run(
            {"mosaic": [mosaic], "cal": cal, "catalog": [tmp_path / "far.ecsv"]},
            strict,
            {**params, "require_solution": True},
            context,
        )
