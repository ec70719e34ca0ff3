"""The MIRI coronagraph (Lyot) region and the two parts of a separated exposure: what the
Lyot separation stage (processing/lyot.py) writes, level matching (processing/level_match.py)
reads and merges, and the synthetic program injects its coronagraph background into.

The region is the detector footprint of a SIAF aperture (default ``MIRIM_MASKLYOT``, the
readout region of the Lyot coronagraph: full-frame science pixels x 1-320, y 719-1022), from
pysiaf's bundled SIAF, cut to the exposure's subarray. DQ bits set on the other part of a
split exposure: DO_NOT_USE and NON_SCIENCE (jwst's resample and outlier detection skip both).
The split is exactly invertible (:func:`merge`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DO_NOT_USE = 1
NON_SCIENCE = 512
#: the bits that mark the other part of a split exposure
SPLIT_FLAGS = DO_NOT_USE | NON_SCIENCE

#: file-name suffix of the coronagraph part (it ends in ``_cal.fits``: a reader of a cal file
#: that is not level-matched gets both parts)
CORON_SUFFIX = "_coron_cal.fits"
#: primary-header keyword naming the part a file holds
PART_KEYWORD = "HLSPLYOT"
#: the arrays split and merged (those present in a cal file)
ARRAYS = ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat")

APERTURES = ("MIRIM_MASKLYOT", "MIRIM_CORONLYOT")


@functools.cache
def aperture_polygon(aperture: str = "MIRIM_MASKLYOT") -> np.ndarray:
    """Corners of a MIRI SIAF aperture in full-frame science pixels (0-based pixel centres;
    corners at half-pixel edges), from pysiaf's bundled SIAF (no network).

    Returns
    -------
    ndarray (4, 2)
        (x, y) of the corners, 0-based, DMS orientation.
    """
    import pysiaf  # logs a warning on import that the PRD version cannot be checked online

    if aperture not in APERTURES:
        raise ValueError(f"unknown Lyot aperture {aperture!r}; one of {APERTURES}")
    siaf = pysiaf.Siaf("MIRI")
    ap, full = siaf[aperture], siaf["MIRIM_FULL"]
    xd, yd = ap.corners("det")
    xs, ys = full.det_to_sci(np.asarray(xd), np.asarray(yd))
    return np.column_stack([np.asarray(xs) - 1.0, np.asarray(ys) - 1.0])


def lyot_region(
    shape: tuple[int, int], xstart: int = 1, ystart: int = 1, aperture: str = "MIRIM_MASKLYOT"
) -> np.ndarray:
    """Pixels of an image that lie in the coronagraph region.

    Parameters
    ----------
    shape : (ny, nx)
        Shape of the image (a full frame or a subarray), pixels.
    xstart, ystart : int
        1-based full-frame position of the image's first pixel (``meta.subarray``).
    aperture : str
        SIAF aperture of the region (:data:`APERTURES`).

    Returns
    -------
    ndarray of bool (ny, nx)
        True where the pixel centre lies inside the aperture's footprint.
    """
    from matplotlib.path import Path as Polygon

    poly = aperture_polygon(aperture)
    ny, nx = shape
    x0, y0 = xstart - 1, ystart - 1
    # the region's bounding box inside the image: only those pixels are tested
    lo = np.floor(poly.min(axis=0)).astype(int) - np.array([x0, y0])
    hi = np.ceil(poly.max(axis=0)).astype(int) - np.array([x0, y0]) + 1
    cx0, cy0 = max(lo[0], 0), max(lo[1], 0)
    cx1, cy1 = min(hi[0], nx), min(hi[1], ny)
    out = np.zeros(shape, dtype=bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    yy, xx = np.mgrid[cy0:cy1, cx0:cx1]
    inside = Polygon(poly).contains_points(np.column_stack([(xx + x0).ravel(), (yy + y0).ravel()]))
    out[cy0:cy1, cx0:cx1] = inside.reshape(yy.shape)
    return out


def split(dq: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DQ arrays of the two parts of a split exposure.

    Parameters
    ----------
    dq : ndarray of uint32 (ny, nx)
        The exposure's DQ.
    region : ndarray of bool (ny, nx)
        The coronagraph region (:func:`lyot_region`).

    Returns
    -------
    (dq_imager, dq_coron) : ndarrays of uint32 (ny, nx)
        ``dq`` with :data:`SPLIT_FLAGS` added inside the region (imager part) or outside it
        (coronagraph part).
    """
    dq = np.asarray(dq, dtype=np.uint32)
    flags = np.uint32(SPLIT_FLAGS)
    return np.where(region, dq | flags, dq), np.where(region, dq, dq | flags)


def merge(imager: dict[str, np.ndarray], coron: dict[str, np.ndarray], region: np.ndarray) -> dict[str, np.ndarray]:
    """One exposure from its two parts: each pixel from the part in which it is science.

    Parameters
    ----------
    imager, coron : dict of name -> ndarray (ny, nx)
        The arrays of each part (:data:`ARRAYS`, any subset present in both).
    region : ndarray of bool (ny, nx)

    Returns
    -------
    dict of name -> ndarray (ny, nx)
        ``merge(split(x)) == x`` exactly, for every array.
    """
    return {k: np.where(region, coron[k], imager[k]) for k in imager if k in coron}


def has_two_parts(region: np.ndarray, science: np.ndarray) -> bool:
    """Whether an image has science pixels both inside and outside the region."""
    return bool(np.any(region & science)) and bool(np.any(~region & science))


def region_of(model, aperture: str = "MIRIM_MASKLYOT") -> np.ndarray:
    """The coronagraph region on a datamodel's pixels (its subarray position from the header)."""
    sub = model.meta.subarray
    return lyot_region(model.data.shape[-2:], int(sub.xstart or 1), int(sub.ystart or 1), aperture)


def part_of(path: Path, header=None) -> str:
    """'imager', 'coron' or 'full' (an exposure that was not split) for a cal file."""
    from astropy.io import fits

    h = header if header is not None else fits.getheader(path, 0)
    return {"IMAGER": "imager", "CORON": "coron"}.get(str(h.get(PART_KEYWORD, "")).upper(), "full")


def exposure_of(path: Path) -> str:
    """The exposure name of a cal file or of either part of a split one."""
    name = Path(path).name
    for suffix in (CORON_SUFFIX, "_cal.fits"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
