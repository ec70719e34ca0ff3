"""The synthetic instruments: detectors, readouts and calibration, shared by the exposure
generator and the CRDS reference files so the two are consistent by construction.

Geometry comes from pysiaf's bundled SIAF (works offline): V2Ref, V3Ref, V3IdlYAngle, parity
and pixel scale of each full-frame aperture, and the position of each subarray inside it. The
distortion is the linear part of the SIAF transform (the non-linear terms are left out; see
``jwst-offline.md``, "not verified yet").

Calibration arrays (flat, superbias, dark, linearity, gain, read noise, saturation, photometric
conversion, pixel area) are smooth, seeded functions: the exposure generator applies their
inverse, the pipeline applies them, and the truth is recovered.

Pixel coordinates here are 0-based, DMS (science) orientation, full frame unless named
``sub``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: Seed of the calibration arrays (independent of the program seed: the CRDS context is fixed).
CALIBRATION_SEED = 20240101


@dataclass(frozen=True)
class Detector:
    instrument: str  # 'NIRCAM' or 'MIRI' (jwst's meta.instrument.name)
    name: str  # meta.instrument.detector, e.g. 'NRCA1'
    channel: str  # 'SHORT', 'LONG' (NIRCam) or 'MIRIMAGE'
    full_aperture: str  # pysiaf aperture of the full frame
    shape: tuple[int, int]  # full frame (ny, nx)
    refpix: int  # width of the reference-pixel border (NIRCam 4 all round; MIRI 4 columns each side)
    gain: float  # e-/DN
    readnoise: float  # DN per read (CDS/sqrt(2))
    saturation: float  # DN, level of the saturation reference
    bias: float  # DN, mean superbias level
    dark: float  # DN/s, mean dark current
    frame_time: dict  # subarray name -> seconds per frame
    linearity: tuple[float, float]  # corrected = raw + c2*raw**2 + c3*raw**3 (coefficients c2, c3)


DETECTORS: dict[str, Detector] = {
    "NRCA1": Detector(
        "NIRCAM",
        "NRCA1",
        "SHORT",
        "NRCA1_FULL",
        (2048, 2048),
        4,
        2.05,
        9.0,
        60000.0,
        12000.0,
        0.002,
        {"FULL": 10.73677, "SUB640": 4.18},
        (2.0e-6, 1.0e-11),
    ),
    "NRCALONG": Detector(
        "NIRCAM",
        "NRCALONG",
        "LONG",
        "NRCA5_FULL",
        (2048, 2048),
        4,
        1.82,
        8.0,
        60000.0,
        13000.0,
        0.003,
        {"FULL": 10.73677, "SUB320": 1.09},
        (2.0e-6, 1.0e-11),
    ),
    "MIRIMAGE": Detector(
        "MIRI",
        "MIRIMAGE",
        "MIRIMAGE",
        "MIRIM_FULL",
        (1024, 1032),
        4,
        4.0,
        6.0,
        55000.0,
        11000.0,
        0.5,
        {"FULL": 2.77504},
        (1.5e-6, 1.0e-11),
    ),
}

#: Subarray apertures per detector and size knob.
SUBARRAYS = {
    ("NRCA1", "demo"): ("SUB640", "NRCA1_SUB640"),
    ("NRCALONG", "demo"): ("SUB320", "NRCA5_SUB320"),
    ("MIRIMAGE", "demo"): ("FULL", "MIRIM_FULL"),  # the Lyot region needs the full frame
    ("NRCA1", "full"): ("FULL", "NRCA1_FULL"),
    ("NRCALONG", "full"): ("FULL", "NRCA5_FULL"),
    ("MIRIMAGE", "full"): ("FULL", "MIRIM_FULL"),
}


def lyot_mask(shape: tuple[int, int] = (1024, 1032), xstart: int = 1, ystart: int = 1) -> np.ndarray:
    """MIRI Lyot coronagraph region on an image (full frame by default): the SIAF footprint
    the processing's Lyot separation uses (processing/lyot.py), so the two agree by
    construction."""
    from processing.common.coronagraph import lyot_region

    return lyot_region(shape, xstart, ystart)


#: Photometric conversion, MJy/sr per DN/s, and nominal PSF FWHM (arcsec, Table 2 of the paper).
FILTERS = {
    "F200W": {"detector": "NRCA1", "pupil": "CLEAR", "photmjsr": 0.45, "fwhm": 0.064, "wavelength": 1.99},
    "F300M": {"detector": "NRCALONG", "pupil": "CLEAR", "photmjsr": 0.60, "fwhm": 0.104, "wavelength": 2.99},
    "F335M": {"detector": "NRCALONG", "pupil": "CLEAR", "photmjsr": 0.55, "fwhm": 0.115, "wavelength": 3.36},
    "F360M": {"detector": "NRCALONG", "pupil": "CLEAR", "photmjsr": 0.50, "fwhm": 0.122, "wavelength": 3.62},
    "F770W": {"detector": "MIRIMAGE", "pupil": None, "photmjsr": 0.30, "fwhm": 0.238, "wavelength": 7.64},
    "F1000W": {"detector": "MIRIMAGE", "pupil": None, "photmjsr": 0.45, "fwhm": 0.314, "wavelength": 9.95},
    "F1130W": {"detector": "MIRIMAGE", "pupil": None, "photmjsr": 1.20, "fwhm": 0.360, "wavelength": 11.31},
    "F2100W": {"detector": "MIRIMAGE", "pupil": None, "photmjsr": 0.70, "fwhm": 0.651, "wavelength": 20.8},
}


def detector_for(band: str) -> Detector:
    return DETECTORS[FILTERS[band]["detector"]]


@functools.cache
def siaf_aperture(name: str):
    import pysiaf

    inst = "MIRI" if name.startswith("MIRIM") else "NIRCam"
    return pysiaf.Siaf(inst)[name]


@dataclass(frozen=True)
class Geometry:
    """Linear detector -> V2/V3 (arcsec) model of one full frame."""

    v2ref: float
    v3ref: float
    v3yangle: float  # deg, V3IdlYAngle
    parity: int  # VIdlParity
    scale: float  # arcsec / pixel
    xref: float  # 0-based full-frame pixel at (V2Ref, V3Ref)
    yref: float

    def det_to_v2v3(self, x, y):
        xi = (np.asarray(x, float) - self.xref) * self.scale
        yi = (np.asarray(y, float) - self.yref) * self.scale
        t = np.deg2rad(self.v3yangle)
        v2 = self.v2ref + self.parity * xi * np.cos(t) + yi * np.sin(t)
        v3 = self.v3ref - self.parity * xi * np.sin(t) + yi * np.cos(t)
        return v2, v3

    def matrix(self) -> np.ndarray:
        """2x2 matrix M with (v2, v3) - ref = M @ (x - xref, y - yref)."""
        t = np.deg2rad(self.v3yangle)
        s, p = self.scale, self.parity
        return np.array([[p * s * np.cos(t), s * np.sin(t)], [-p * s * np.sin(t), s * np.cos(t)]])


@functools.cache
def geometry(detector: str) -> Geometry:
    d = DETECTORS[detector]
    ap = siaf_aperture(d.full_aperture)
    return Geometry(
        v2ref=ap.V2Ref,
        v3ref=ap.V3Ref,
        v3yangle=ap.V3IdlYAngle,
        parity=int(ap.VIdlParity),
        scale=0.5 * (ap.XSciScale + ap.YSciScale),
        xref=ap.XSciRef - 1.0,
        yref=ap.YSciRef - 1.0,
    )


@functools.cache
def subarray(detector: str, size: str) -> dict:
    """Name, 1-based xstart/ystart and shape of the subarray used for ``size`` ('demo'/'full')."""
    name, aperture = SUBARRAYS[(detector, size)]
    d = DETECTORS[detector]
    if name == "FULL":
        return {"name": "FULL", "aperture": aperture, "xstart": 1, "ystart": 1, "shape": d.shape}
    sub = siaf_aperture(aperture)
    full = siaf_aperture(d.full_aperture)
    # where the subarray's reference point falls in the full frame's science pixels
    xs, ys = full.tel_to_sci(sub.V2Ref, sub.V3Ref)
    xstart = int(round(xs - sub.XSciRef)) + 1
    ystart = int(round(ys - sub.YSciRef)) + 1
    return {
        "name": name,
        "aperture": aperture,
        "xstart": xstart,
        "ystart": ystart,
        "shape": (sub.YSciSize, sub.XSciSize),
    }


# --------------------------------------------------------------------------------------------
# Calibration arrays (full frame, deterministic)
# --------------------------------------------------------------------------------------------


def _rng(detector: str, what: str) -> np.random.Generator:
    key = sum(ord(c) * (i + 1) for i, c in enumerate(f"{detector}:{what}"))
    return np.random.default_rng([CALIBRATION_SEED, key])


def _smooth_field(shape, rng, amplitude: float, scale_frac: float = 0.25) -> np.ndarray:
    """A smooth random field of RMS ~amplitude made of a few low-order cosine modes."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    field = np.zeros(shape)
    for _ in range(6):
        kx, ky = rng.uniform(0.5, 1.0 / scale_frac, 2) * np.pi / np.array([nx, ny])
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(kx * x + ky * y + phase)
    return amplitude * field / max(field.std(), 1e-12)


def science_mask(detector: str) -> np.ndarray:
    """True on illuminated pixels (not reference pixels)."""
    d = DETECTORS[detector]
    m = np.ones(d.shape, bool)
    r = d.refpix
    if d.instrument == "NIRCAM":
        m[:r, :] = m[-r:, :] = False
    m[:, :r] = m[:, -r:] = False
    return m


@functools.cache
def flat(detector: str, band: str) -> np.ndarray:
    """Pixel-to-pixel and large-scale response, mean 1 (float32)."""
    d = DETECTORS[detector]
    rng = _rng(detector, f"flat:{band}")
    f = 1.0 + _smooth_field(d.shape, rng, 0.02) + rng.normal(0, 0.01, d.shape)
    return f.astype(np.float32)


@functools.cache
def superbias(detector: str) -> np.ndarray:
    d = DETECTORS[detector]
    rng = _rng(detector, "bias")
    return (d.bias + _smooth_field(d.shape, rng, 150.0) + rng.normal(0, 20.0, d.shape)).astype(np.float32)


@functools.cache
def dark_rate(detector: str) -> np.ndarray:
    """Dark current in DN/s."""
    d = DETECTORS[detector]
    rng = _rng(detector, "dark")
    return (d.dark * (1.0 + 0.2 * rng.standard_normal(d.shape))).clip(0).astype(np.float32)


@functools.cache
def bad_pixels(detector: str) -> np.ndarray:
    """Boolean map of dead pixels (0.05%), flagged DO_NOT_USE in the mask reference."""
    d = DETECTORS[detector]
    rng = _rng(detector, "mask")
    return (rng.random(d.shape) < 5e-4) & science_mask(detector)


def linearity_coeffs(detector: str) -> np.ndarray:
    """Coefficients (ncoeffs=4, ny, nx) of the jwst linearity polynomial: corrected = sum c_i raw^i."""
    d = DETECTORS[detector]
    c2, c3 = d.linearity
    coeffs = np.zeros((4,) + d.shape, np.float32)
    coeffs[1] = 1.0
    coeffs[2] = c2
    coeffs[3] = c3
    return coeffs


def apply_nonlinearity(linear_dn: np.ndarray, detector: str) -> np.ndarray:
    """Raw (non-linear) DN that the linearity correction maps back to ``linear_dn``.

    Inverts ``lin = raw + c2 raw^2 + c3 raw^3`` with Newton iterations (monotonic in range).
    """
    c2, c3 = DETECTORS[detector].linearity
    raw = np.array(linear_dn, dtype=np.float64)
    for _ in range(6):
        f = raw + c2 * raw**2 + c3 * raw**3 - linear_dn
        raw -= f / (1 + 2 * c2 * raw + 3 * c3 * raw**2)
    return raw


def pixel_area_sr(detector: str) -> float:
    return (geometry(detector).scale / 206264.80624709636) ** 2
