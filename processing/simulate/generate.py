"""Write the synthetic program: CRDS context, raw exposures and the truth.

Output layout under OUTDIR::

    crds/                     local CRDS cache with the context jwst_9001.pmap
    uncal/<target>/<name>_uncal.fits   Level-1b exposures (science and MIRI off-fields)
    program.json              index of the exposures (target, band, kind, time, file)
    truth/truth.json          everything injected (see processing/simulate/truth.py)
    truth/sky_<target>_<band>.fits      true sky (MJy/sr) on a north-up grid at the mosaic scale
    truth/galaxy_<target>.json          the analytic sky model's parameters
    truth/exposures/<name>_truth.fits   per exposure: STRIPES (DN/s), CRAYS, BKG (MJy/sr)
    external/<target>_<survey>.fits     wide-field IRAC1/IRAC4/WISE1/WISE3 stand-ins (MJy/sr)
    external/<target>_refcat.ecsv       HST-like astrometric reference catalogue (RA, DEC)
    psf/psf_<band>.fits                 the sky's PSF per band (Gaussian, Table 2 FWHM)
    psf/jwst-like/psf_<band>.fits       diffraction PSF per band (poppy, JWST-like pupil)

Deterministic for a seed: every random draw comes from a generator seeded by
(seed, exposure index) or (seed, target), never the global one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from processing.simulate import detectors as D
from processing.simulate.exposures import (
    Effects,
    amplifier_columns,
    attitude_for,
    make_ramp,
    one_over_f,
    pixel_sky,
    write_uncal,
)
from processing.simulate.program import (
    LATE_DAYS,
    PROGRAM_ID,
    T0_MJD,
    Exposure,
    demo_targets,
    group_time,
    offset_radec,
    plan_program,
)
from processing.simulate.seeds import hash_str
from processing.simulate.sky import Field, Galaxy

log = logging.getLogger(__name__)

CONTEXT = "jwst_9001.pmap"
DEFAULT_BANDS = ["F200W", "F300M", "F770W", "F1000W", "F2100W"]

#: MIRI background at the start of the program (MJy/sr) per band, and its drift per hour.
MIRI_BACKGROUND = {
    "F560W": 4.0,
    "F770W": 8.0,
    "F1000W": 15.0,
    "F1130W": 25.0,
    "F1280W": 30.0,
    "F1500W": 45.0,
    "F1800W": 60.0,
    "F2100W": 90.0,
    "F2550W": 200.0,
}
MIRI_DRIFT_PER_HOUR = 0.03
#: A later epoch (months) has a different level and a different spatial structure.
MIRI_EPOCH_LEVEL = {0: 1.0, 1: 1.25}
MIRI_PATTERN_RMS = 0.01  # fraction of the level
MIRI_DITHER_JITTER = 0.004  # fraction of the level, per exposure
LYOT_OFFSET = {"F770W": 0.6, "F1000W": 0.8, "F1130W": 1.2, "F2100W": 3.0}  # MJy/sr, mean extra level
NIRCAM_SKY = {"F200W": 0.15, "F300M": 0.12, "F335M": 0.13, "F360M": 0.14}  # MJy/sr zodiacal light
STRIPE_RMS_DNS = 0.1  # 1/f row-stripe RMS in DN/s
CR_DENSITY = 3e-4  # hits per pixel per exposure
POINTING_ERROR = (0.1, 1.0)  # arcsec, per-visit pointing error magnitude range


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([seed] + [abs(hash_str(str(k))) for k in keys])


def epoch_of(mjd: float) -> int:
    return 1 if mjd - T0_MJD > LATE_DAYS / 2 else 0


def miri_pattern(band: str, epoch: int, shape) -> np.ndarray:
    """Spatial structure (mean 1) of the MIRI background of an epoch (fixed in detector pixels)."""
    rng = np.random.default_rng([20240202, hash_str(band), epoch])
    return 1.0 + D._smooth_field(shape, rng, MIRI_PATTERN_RMS, scale_frac=0.5)


def simulate_program(
    outdir: str | Path,
    size: str = "demo",
    seed: int = 1,
    bands: list[str] | None = None,
    effects: Effects | None = None,
    progress=None,
) -> dict:
    """Write the whole synthetic program under ``outdir``; return the truth dictionary."""
    from processing.simulate.crds_context import write_crds_context

    outdir = Path(outdir)
    bands = list(bands or DEFAULT_BANDS)
    effects = effects or Effects()
    t_start = time.time()
    exposures = plan_program(bands, size)
    write_crds_context(
        outdir / "crds",
        context=CONTEXT,
        bands=bands,
        dark_nframes=max(e.ngroups for e in exposures),
        subarrays={d: [D.subarray(d, size)["name"]] for d in D.DETECTORS},
    )
    targets = demo_targets()
    galaxies = {t.name: Galaxy.random(t.ra, t.dec, _rng(seed, "galaxy", t.name)) for t in targets}
    off_fields: dict[str, Field] = {}
    for t in targets:
        first_off = next((e for e in exposures if e.target == t.name and e.kind == "off"), None)
        if first_off is not None:
            off_fields[t.name] = Field.random(first_off.ra_ref, first_off.dec_ref, _rng(seed, "field", t.name))

    truth: dict = {
        "format": 1,
        "seed": seed,
        "size": size,
        "program": PROGRAM_ID,
        "crds_context": CONTEXT,
        "bands": {b: _band_truth(b) for b in bands},
        "effects": asdict(effects),
        "targets": {
            t.name: {"ra": t.ra, "dec": t.dec, "tiles": t.tiles, "late_nircam": t.late_nircam} for t in targets
        },
        "visits": {},
        "exposures": {},
    }
    index = []
    for i, exp in enumerate(exposures):
        rec = _render_exposure(outdir, exp, i, size, seed, effects, galaxies, off_fields, truth)
        index.append(rec)
        if progress:
            progress(i + 1, len(exposures), exp.basename)
    _write_json(
        outdir / "program.json", {"program": PROGRAM_ID, "size": size, "seed": seed, "bands": bands, "exposures": index}
    )
    for name, g in galaxies.items():
        _write_json(outdir / "truth" / f"galaxy_{name}.json", galaxy_to_dict(g))
    for name, f in off_fields.items():
        _write_json(
            outdir / "truth" / f"offfield_{name}.json",
            {"ra": f.ra, "dec": f.dec, "bg_galaxies": f.bg_galaxies.tolist(), "stars": f.stars.tolist()},
        )
    _write_truth_skies(outdir, exposures, galaxies, size)
    from processing.simulate.external import write_external_inputs

    truth.update(write_external_inputs(outdir, galaxies, bands, seed))
    truth["elapsed_s"] = round(time.time() - t_start, 1)
    _write_json(outdir / "truth" / "truth.json", truth)
    return truth


def _band_truth(band: str) -> dict:
    inst = "miri" if D.FILTERS[band]["detector"] == "MIRIMAGE" else "nircam"
    out = {"instrument": inst, "photmjsr": D.FILTERS[band]["photmjsr"], "psf_fwhm_arcsec": D.FILTERS[band]["fwhm"]}
    # The true sky (galaxy + sources) has zero background: a mosaic anchored to the truth has
    # empty sky at 0 MJy/sr. What the raw data add on top is recorded per exposure.
    out["absolute_background_mjysr"] = 0.0
    if inst == "miri":
        out["miri_background_start_mjysr"] = MIRI_BACKGROUND[band]
        out["lyot_offset_mean_mjysr"] = LYOT_OFFSET.get(band, 1.0)
    else:
        out["nircam_sky_mjysr"] = NIRCAM_SKY.get(band, 0.1)
    return out


def _render_exposure(outdir, exp: Exposure, index, size, seed, effects: Effects, galaxies, off_fields, truth) -> dict:
    det = D.FILTERS[exp.band]["detector"]
    sub = D.subarray(det, size)
    rng = _rng(seed, "exposure", exp.basename)
    # pointing error: one per visit, shared by every exposure of the visit (and its parallels)
    if exp.visit_id not in truth["visits"]:
        vr = _rng(seed, "visit", exp.visit_id)
        mag = vr.uniform(*POINTING_ERROR) if effects.pointing else 0.0
        ang = vr.uniform(0, 2 * np.pi)
        truth["visits"][exp.visit_id] = {
            "target": exp.target,
            "pointing_error_arcsec": [mag * np.sin(ang), mag * np.cos(ang)],
        }
    att_nominal = attitude_for(sub, exp.ra_ref, exp.dec_ref, exp.pa_v3)
    source = galaxies[exp.target] if exp.kind == "science" else off_fields[exp.target]
    sky = true_exposure_sky(exp, sub, truth["visits"][exp.visit_id]["pointing_error_arcsec"], source)
    ys = slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0])
    xs = slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1])
    rec: dict = {
        "file": f"uncal/{exp.target}/{exp.basename}_uncal.fits",
        "target": exp.target,
        "band": exp.band,
        "kind": exp.kind,
        "visit": exp.visit_id,
        "tile": exp.tile,
        "dither": exp.dither,
        "mjd_start": exp.mjd_start,
        "instrument": exp.instrument,
    }
    bkg = np.zeros_like(sky)
    if exp.instrument == "miri" and effects.miri_background:
        epoch = epoch_of(exp.mjd_start)
        hours = (exp.mjd_start - T0_MJD) * 24.0 if epoch == 0 else (exp.mjd_start - T0_MJD - LATE_DAYS) * 24.0
        level = MIRI_BACKGROUND[exp.band] * MIRI_EPOCH_LEVEL[epoch] * (1 + MIRI_DRIFT_PER_HOUR * hours)
        level *= 1 + rng.normal(0, MIRI_DITHER_JITTER)
        bkg += level * miri_pattern(exp.band, epoch, D.DETECTORS[det].shape)[ys, xs]
        rec.update(background_level_mjysr=float(level), background_epoch=epoch)
    if exp.instrument == "miri" and effects.lyot and sub["name"] == "FULL":
        lyot = LYOT_OFFSET.get(exp.band, 1.0) * (1 + rng.normal(0, 0.25))
        bkg[D.lyot_mask(bkg.shape, sub["xstart"], sub["ystart"])] += lyot
        rec["lyot_offset_mjysr"] = float(lyot)
    if exp.instrument == "nircam" and effects.nircam_sky:
        level = NIRCAM_SKY.get(exp.band, 0.1) * (1 + rng.normal(0, 0.03))
        bkg += level
        rec["nircam_sky_mjysr"] = float(level)
    photmjsr = D.FILTERS[exp.band]["photmjsr"]
    signal = (sky + bkg) / photmjsr * D.flat(det, exp.band)[ys, xs]
    rate = signal
    stripes = None
    if exp.instrument == "nircam" and effects.one_over_f:
        namps = 4 if sub["name"] == "FULL" else 1
        stripes = one_over_f(rng, rate.shape[0], namps, STRIPE_RMS_DNS)
        for a, cols in enumerate(amplifier_columns(rate.shape[1], namps)):
            rate[:, cols] += stripes[:, a : a + 1]
        rec["stripe_rms_dns"] = float(stripes.std())
    # light reaches science pixels only; dark current flows in every pixel (MIRI's refpix step
    # subtracts the reference columns, which must carry the dark like the rest)
    rate = np.where(D.science_mask(det)[ys, xs], rate, 0.0) + D.dark_rate(det)[ys, xs]
    crs = None
    ngroups = exp.ngroups
    if effects.cosmic_rays:
        n = rng.poisson(CR_DENSITY * rate.size)
        ny, nx = rate.shape
        crs = np.column_stack(
            [
                rng.integers(4, ny - 4, n),
                rng.integers(4, nx - 4, n),
                rng.integers(1, ngroups, n),
                rng.lognormal(np.log(800.0), 0.6, n),
            ]
        )
        rec["n_cosmic_rays"] = int(n)
    data = make_ramp(rate, det, sub, ngroups, group_time(exp.band, size), rng, effects.noise, crs)
    path = outdir / rec["file"]
    write_uncal(path, exp, det, sub, data, att_nominal, size)
    _write_exposure_truth(outdir / "truth" / "exposures" / f"{exp.basename}_truth.fits", stripes, crs, bkg)
    truth["exposures"][exp.basename] = {k: v for k, v in rec.items() if k != "file"}
    return rec


def true_exposure_sky(exp: Exposure, sub: dict, pointing_error, source) -> np.ndarray:
    """True sky (MJy/sr) on the exposure's pixels at its true pointing (nominal + error)."""
    det = D.FILTERS[exp.band]["detector"]
    de, dn = pointing_error
    att_true = attitude_for(sub, *offset_radec(exp.ra_ref, exp.dec_ref, de, dn), exp.pa_v3)
    ra, dec = pixel_sky(att_true, det, sub)
    return source.surface_brightness(exp.band, ra, dec)


def _write_exposure_truth(path: Path, stripes, crs, bkg) -> None:
    from astropy.io import fits

    from processing.fileio import atomic_path

    hdus = [fits.PrimaryHDU()]
    if stripes is not None:
        h = fits.ImageHDU(stripes.astype(np.float32), name="STRIPES")
        h.header["BUNIT"] = ("DN/s", "row offset per amplifier (rows x amplifiers)")
        hdus.append(h)
    if crs is not None:
        cols = [
            fits.Column(name=n, format=f, array=crs[:, i])
            for i, (n, f) in enumerate([("Y", "J"), ("X", "J"), ("GROUP", "J"), ("AMPLITUDE_DN", "E")])
        ]
        hdus.append(fits.BinTableHDU.from_columns(cols, name="CRAYS"))
    h = fits.ImageHDU(bkg.astype(np.float32), name="BKG")
    h.header["BUNIT"] = ("MJy/sr", "injected background")
    hdus.append(h)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def galaxy_to_dict(g: Galaxy) -> dict:
    d = {}
    for k, v in g.__dict__.items():
        d[k] = v.tolist() if isinstance(v, np.ndarray) else v
    return d


def galaxy_from_dict(d: dict) -> Galaxy:
    kw = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.items()}
    return Galaxy(**kw)


def _write_truth_skies(outdir: Path, exposures: list[Exposure], galaxies: dict, size: str) -> None:
    """True sky per target and band, north up, at the band's mosaic pixel scale."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from processing.fileio import atomic_path
    from processing.instruments import PIXEL_SCALE_ARCSEC, channel_of

    for name, g in galaxies.items():
        for band in sorted({e.band for e in exposures if e.target == name and e.kind == "science"}):
            det = D.FILTERS[band]["detector"]
            sub = D.subarray(det, size)
            ny, nx = sub["shape"]
            scale = PIXEL_SCALE_ARCSEC[channel_of(band)]
            # footprint of the band's science exposures, from their corners (nominal pointing)
            xs, ys = [], []
            for e in (e for e in exposures if e.target == name and e.band == band and e.kind == "science"):
                from pysiaf.utils import rotations

                from processing.simulate.sky import tangent_offsets

                att = attitude_for(sub, e.ra_ref, e.dec_ref, e.pa_v3)
                cx = np.array([0, nx - 1, 0, nx - 1]) + sub["xstart"] - 1
                cy = np.array([0, 0, ny - 1, ny - 1]) + sub["ystart"] - 1
                v2, v3 = D.geometry(det).det_to_v2v3(cx, cy)
                r, d = rotations.pointing(att, v2, v3)
                x, y = tangent_offsets(r, d, g.ra, g.dec)
                xs += list(x)
                ys += list(y)
            pad = 3.0
            x0, x1, y0, y1 = min(xs) - pad, max(xs) + pad, min(ys) - pad, max(ys) + pad
            nxm, nym = int(np.ceil((x1 - x0) / scale)), int(np.ceil((y1 - y0) / scale))
            w = WCS(naxis=2)
            w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
            w.wcs.crval = [g.ra, g.dec]
            w.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
            w.wcs.crpix = [x1 / scale + 1, -y0 / scale + 1]
            w.wcs.radesys = "ICRS"
            yy, xx = np.mgrid[0:nym, 0:nxm]
            ra, dec = w.all_pix2world(xx, yy, 0)
            sky = g.surface_brightness(band, ra, dec).astype(np.float32)
            hdr = w.to_header()
            hdr["BUNIT"] = "MJy/sr"
            hdr["FILTER"] = band
            hdr["TARGET"] = name
            hdr["SIMULATD"] = True
            path = outdir / "truth" / f"sky_{name}_{band}.fits"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                fits.PrimaryHDU(sky, header=hdr).writeto(tmp, overwrite=True)


def _write_json(path: Path, data) -> None:
    from processing.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")
