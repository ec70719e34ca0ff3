"""Render one planned exposure into a Level-1b uncal file, as the archive delivers it.

For each exposure: the true attitude (nominal pointing plus the visit's pointing error) maps
every detector pixel to the sky; the true sky (MJy/sr) plus backgrounds becomes a count rate
through the flat and photometric conversion of the CRDS references; the rate becomes a ramp
with Poisson and read noise, dark current, non-linearity, superbias, cosmic rays and 1/f
stripes; the header carries the *nominal* pointing. What was injected goes into the truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from astropy.time import Time

from processing.simulate import detectors as D
from processing.simulate.program import PROGRAM_ID, Exposure, group_time

log = logging.getLogger(__name__)


@dataclass
class Effects:
    """Which instrumental effects to inject (all on for the demo; off for truth-recovery tests)."""

    noise: bool = True  # Poisson + read noise
    one_over_f: bool = True  # NIRCam row stripes per amplifier
    cosmic_rays: bool = True
    pointing: bool = True  # per-visit pointing errors
    miri_background: bool = True  # drifting MIRI backgrounds with per-epoch structure
    lyot: bool = True  # MIRI coronagraph region background offset
    nircam_sky: bool = True  # zodiacal light on NIRCam

    @classmethod
    def none(cls) -> Effects:
        return cls(False, False, False, False, False, False, False)


def attitude_for(sub: dict, ra: float, dec: float, pa_v3: float):
    """Telescope attitude that puts the subarray aperture's reference point at (ra, dec)."""
    from pysiaf.utils import rotations

    ap = D.siaf_aperture(sub["aperture"])
    return rotations.attitude(ap.V2Ref, ap.V3Ref, ra, dec, pa_v3)


def pixel_sky(att, detector: str, sub: dict) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of every pixel centre of the subarray under attitude ``att``."""
    from pysiaf.utils import rotations

    ny, nx = sub["shape"]
    y, x = np.mgrid[0:ny, 0:nx]
    v2, v3 = D.geometry(detector).det_to_v2v3(x + sub["xstart"] - 1, y + sub["ystart"] - 1)
    ra, dec = rotations.pointing(att, v2.ravel(), v3.ravel())
    return np.asarray(ra).reshape(ny, nx), np.asarray(dec).reshape(ny, nx)


def wcsinfo(att, detector: str, sub: dict, pa_v3: float) -> dict:
    """meta.wcsinfo / meta.pointing values for attitude ``att`` (what assign_wcs reads)."""
    from pysiaf.utils import rotations

    ap = D.siaf_aperture(sub["aperture"])
    g = D.geometry(detector)
    # reference point: the subarray aperture's V2Ref/V3Ref (pysiaf), on the linear model
    ra_ref, dec_ref = rotations.pointing(att, ap.V2Ref, ap.V3Ref)
    roll_ref = rotations.posangle(att, ap.V2Ref, ap.V3Ref)
    ra_v1, dec_v1 = rotations.pointing(att, 0.0, 0.0)
    return {
        "v2_ref": float(ap.V2Ref),
        "v3_ref": float(ap.V3Ref),
        "vparity": g.parity,
        "v3yangle": float(g.v3yangle),
        "ra_ref": float(ra_ref),
        "dec_ref": float(dec_ref),
        "roll_ref": float(roll_ref),
        "ra_v1": float(ra_v1),
        "dec_v1": float(dec_v1),
        "pa_v3": float(pa_v3),
    }


def one_over_f(rng: np.random.Generator, ny: int, namps: int, rms: float) -> np.ndarray:
    """Row offsets (ny, namps) in DN/s with a 1/f power spectrum, RMS ``rms``, per amplifier."""
    freqs = np.fft.rfftfreq(ny)
    amp = np.zeros_like(freqs)
    amp[1:] = 1.0 / np.sqrt(freqs[1:])
    out = np.empty((ny, namps))
    for a in range(namps):
        phases = rng.normal(size=freqs.size) + 1j * rng.normal(size=freqs.size)
        series = np.fft.irfft(amp * phases, n=ny)
        series -= series.mean()
        out[:, a] = rms * series / series.std()
    return out


def amplifier_columns(nx: int, namps: int) -> list[slice]:
    w = nx // namps
    return [slice(a * w, (a + 1) * w) for a in range(namps)]


def make_ramp(
    rate: np.ndarray,
    detector: str,
    sub: dict,
    ngroups: int,
    tgroup: float,
    rng: np.random.Generator,
    noise: bool,
    crs: np.ndarray | None,
) -> np.ndarray:
    """Level-1b data (1, ngroups, ny, nx) uint16 for a count rate in DN/s (dark included).

    ``crs``: rows (y, x, first group, amplitude DN) of cosmic-ray hits.
    """
    d = D.DETECTORS[detector]
    ys = slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0])
    xs = slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1])
    bias = D.superbias(detector)[ys, xs].astype(np.float64)
    ramp = np.empty((ngroups,) + rate.shape, np.float64)
    acc = np.zeros(rate.shape)
    mean_e = np.clip(rate, 0, None) * d.gain * tgroup
    for g in range(ngroups):
        acc += (rng.poisson(mean_e) / d.gain) if noise else mean_e / d.gain
        ramp[g] = acc
    if crs is not None and len(crs):
        for y, x, g0, a in crs:
            ramp[int(g0) :, int(y), int(x)] += a
    if d.instrument == "MIRI":
        # MIRI detector1 has no superbias step: linearity acts on raw DN that include the bias
        ramp = D.apply_nonlinearity(ramp + bias, detector)
    else:
        ramp = D.apply_nonlinearity(ramp, detector) + bias
    if noise:
        ramp += rng.normal(0.0, d.readnoise, ramp.shape)
    return np.clip(np.rint(ramp), 0, 65535).astype(np.uint16)[None]


def mjd_to_iso(mjd: float) -> tuple[str, str]:
    t = Time(mjd, format="mjd", scale="utc").isot
    date, time = t.split("T")
    return date, time


def write_uncal(path, exp: Exposure, detector: str, sub: dict, data: np.ndarray, att_nominal, size: str) -> None:
    """A Level1bModel with the metadata the three pipeline stages read."""
    from stdatamodels.jwst import datamodels

    from processing.fileio import save_model_atomic

    d = D.DETECTORS[detector]
    ngroups = data.shape[1]
    tg = group_time(exp.band, size)
    texp = ngroups * tg
    m = datamodels.Level1bModel(data=data)
    meta = m.meta
    meta.telescope = "JWST"
    meta.instrument.name = d.instrument
    meta.instrument.detector = d.name
    meta.instrument.filter = exp.band
    if d.instrument == "NIRCAM":
        meta.instrument.channel = d.channel
        meta.instrument.module = "A"
        meta.instrument.pupil = D.FILTERS[exp.band]["pupil"]
        meta.exposure.type = "NRC_IMAGE"
        meta.exposure.readpatt = "RAPID"
        meta.subarray.fastaxis, meta.subarray.slowaxis = -1, 2
    else:
        meta.exposure.type = "MIR_IMAGE"
        meta.exposure.readpatt = "FASTR1"
        meta.instrument.band = None
        meta.subarray.fastaxis, meta.subarray.slowaxis = 1, 2
    meta.exposure.nframes = 1
    meta.exposure.groupgap = 0
    meta.exposure.ngroups = ngroups
    meta.exposure.nints = 1
    meta.exposure.frame_time = tg
    meta.exposure.group_time = tg
    meta.exposure.integration_time = texp
    meta.exposure.exposure_time = texp
    meta.exposure.effective_exposure_time = texp
    meta.exposure.duration = texp
    meta.exposure.elapsed_exposure_time = texp
    meta.exposure.start_time = exp.mjd_start
    meta.exposure.mid_time = exp.mjd_start + 0.5 * texp / 86400.0
    meta.exposure.end_time = exp.mjd_start + texp / 86400.0
    meta.exposure.sca_num = {"NRCA1": 481, "NRCALONG": 485, "MIRIMAGE": 493}[d.name]
    meta.subarray.name = sub["name"]
    meta.subarray.xstart, meta.subarray.ystart = sub["xstart"], sub["ystart"]
    meta.subarray.ysize, meta.subarray.xsize = sub["shape"]
    date, time = mjd_to_iso(exp.mjd_start)
    meta.observation.date = date
    meta.observation.time = time
    meta.observation.date_beg = f"{date}T{time}"
    meta.observation.program_number = f"{PROGRAM_ID:05d}"
    meta.observation.observation_number = f"{exp.observation:03d}"
    meta.observation.visit_number = f"{exp.visit:03d}"
    meta.observation.visit_group = "02"
    meta.observation.sequence_id = str(exp.sequence)
    meta.observation.activity_id = f"{exp.activity:02d}"
    meta.observation.exposure_number = f"{exp.exposure:05d}"
    meta.observation.obs_id = (
        f"V{PROGRAM_ID:05d}{exp.observation:03d}{exp.visit:03d}02{exp.sequence}{exp.activity:02d}_{exp.exposure:05d}"
    )
    meta.observation.visit_id = f"{PROGRAM_ID:05d}{exp.observation:03d}{exp.visit:03d}"
    meta.visit.type = "PRIME_TARGETED_FIXED"
    # MIRI off-fields are coordinated parallels of the NIRCam prime exposures (as in program 2107)
    meta.exposure.prime_parallel = "PRIME" if exp.sequence == 1 else "PARALLEL_COORDINATED"
    meta.target.proposer_name = exp.target
    meta.target.catalog_name = exp.target
    meta.target.type = "FIXED"
    info = wcsinfo(att_nominal, detector, sub, exp.pa_v3)
    meta.target.ra, meta.target.dec = info["ra_ref"], info["dec_ref"]
    for key in ("v2_ref", "v3_ref", "vparity", "v3yangle", "ra_ref", "dec_ref", "roll_ref"):
        setattr(meta.wcsinfo, key, info[key])
    meta.wcsinfo.siaf_xref_sci = D.siaf_aperture(sub["aperture"]).XSciRef
    meta.wcsinfo.siaf_yref_sci = D.siaf_aperture(sub["aperture"]).YSciRef
    meta.pointing.ra_v1, meta.pointing.dec_v1, meta.pointing.pa_v3 = info["ra_v1"], info["dec_v1"], info["pa_v3"]
    meta.aperture.name = sub["aperture"]
    meta.velocity_aberration.scale_factor = 1.0
    meta.velocity_aberration.va_ra_ref = info["ra_ref"]
    meta.velocity_aberration.va_dec_ref = info["dec_ref"]
    meta.dither.primary_type = "NONE"
    meta.dither.total_points = 1
    meta.filename = path.name
    save_model_atomic(m, path)
    m.close()
